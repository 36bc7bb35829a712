"""Evidence pcaps: a flow's recent packets, or a filtered timed recording.

File names follow the original design's ExportPack: interface, source IP and
time, ``<iface>_<src-ip>_<YYYYmmdd-HHMMSS>[_<tag>].pcap`` (IPv6 colons and any
other unsafe character become ``-``), and a file is never overwritten.
Pcaps are written in the capture's link type.  A frame that may have been cut
(by the capture's snap length, or to an evidence ring's share) gets the length
its own IP header gives as its original length (``wire_len``), so that a
reader sees it as limited during capture, not as malformed.
"""

from __future__ import annotations

import math
import os
import re
import struct
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["evidence_name", "write_pcap", "pcap_bytes", "wire_len", "PcapRecorder", "EvidenceLimits", "dir_bytes"]

_UNSAFE = re.compile(r"[^A-Za-z0-9.\-]+")


def _safe(text: str, limit: int = 64) -> str:
    return _UNSAFE.sub("-", text)[:limit].strip("-.") or "x"


def evidence_name(iface: str, src_ip: str, ts: float, tag: str = "") -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(ts))
    name = f"{_safe(iface or 'capture')}_{_safe(src_ip or 'none')}_{stamp}"
    if tag:
        name += "_" + _safe(tag)
    return name + ".pcap"


def _unique(path: Path) -> Path:
    if not path.exists():
        return path
    stem, suffix = path.stem, path.suffix
    for i in range(1, 10000):
        p = path.with_name(f"{stem}-{i}{suffix}")
        if not p.exists():
            return p
    raise FileExistsError(str(path))


_PCAP_HDR = struct.Struct("<IHHiIII")
_REC_HDR = struct.Struct("<IIII")
_VLAN_TYPES = (0x8100, 0x88A8, 0x9100, 0x9200)


def wire_len(frame: bytes, dlt: int, cut_at: int) -> int:
    """The frame's length on the wire, for a pcap record's original length.

    A frame of ``cut_at`` bytes or more (``cut_at``: the length at which it may have been cut; 0 = never
    cut) whose outermost IP header (after Ethernet with up to four 802.1Q/802.1ad tags, Linux cooked
    v1/v2, BSD loopback, or raw IP) gives a longer packet than the frame holds: the link header's length
    plus the IP length.  Otherwise ``len(frame)``, also for a short frame whose IP header claims more
    (that one was not cut: it is malformed, and stays so).  ``_recfast.wire_len`` is its compiled twin."""
    n = len(frame)
    if cut_at <= 0 or n < cut_at:
        return n
    et = -1
    if dlt == 1:
        if n < 14:
            return n
        off = 12
        et = (frame[12] << 8) | frame[13]
        tags = 0
        while et in _VLAN_TYPES and tags < 4 and off + 6 <= n:
            off += 4
            et = (frame[off] << 8) | frame[off + 1]
            tags += 1
        off += 2
    elif dlt in (12, 14, 101, 228, 229):
        off = 0
    elif dlt == 113:
        off = 16
        et = (frame[14] << 8) | frame[15] if n >= 16 else -1
    elif dlt == 276:
        off = 20
        et = (frame[0] << 8) | frame[1] if n >= 20 else -1
    elif dlt in (0, 108):
        off = 4
    else:
        return n
    if et not in (-1, 0x0800, 0x86DD) or off + 20 > n:
        return n
    v = frame[off] >> 4
    end = 0
    if v == 4 and et != 0x86DD:
        ihl = (frame[off] & 0xF) * 4
        tot = (frame[off + 2] << 8) | frame[off + 3]
        if ihl >= 20 and tot >= ihl:
            end = off + tot
    elif v == 6 and et != 0x0800 and off + 40 <= n:
        pl = (frame[off + 4] << 8) | frame[off + 5]
        if pl:   # 0: a jumbogram's length is in an extension header
            end = off + 40 + pl
    return end if end > n else n


def pcap_record(ts: float, frame: bytes, olen: int) -> bytes:
    """A pcap record header (microseconds, rounded as the packet recorder rounds them)."""
    us = int(math.floor(ts * 1000000.0 + 0.5))
    return _REC_HDR.pack(us // 1000000, us % 1000000, len(frame), olen)


def pcap_bytes(packets: Iterable[tuple[float, bytes]], linktype: int = 1, snaplen: int = 65535,
               cut_at: int = 0) -> bytes:
    """A whole pcap file of ``packets``.  Frames of ``cut_at`` bytes or more may have been cut: their
    original length is ``wire_len``'s."""
    parts = [_PCAP_HDR.pack(0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)]
    for ts, frame in packets:
        parts.append(pcap_record(ts, frame, wire_len(frame, linktype, cut_at)))
        parts.append(frame)
    return b"".join(parts)


def write_pcap(directory: str | os.PathLike[str], name: str, data: bytes) -> Path:
    """Write a whole pcap file's ``data`` (``pcap_bytes``) to a new file ``directory/name`` (made unique);
    returns its path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = _unique(d / name)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
    return path


def dir_bytes(directory: str | os.PathLike[str]) -> int:
    """Bytes of the files directly in ``directory`` (0 when it does not exist)."""
    total = 0
    try:
        with os.scandir(directory) as it:
            for e in it:
                try:
                    if e.is_file(follow_symlinks=False):
                        total += e.stat(follow_symlinks=False).st_size
                except OSError:
                    pass
    except OSError:
        return 0
    return total


class EvidenceLimits:
    """The bounds on what ``ft.ctl`` requests can make capture hold or write.

    - at most ``max_active`` recordings at once (``FT_RECORDING_MAX_ACTIVE``);
    - a recording streams to disk (nothing but a file buffer in memory) and stops
      at ``max_packets`` packets or ``max_bytes`` bytes (``FT_RECORDING_MAX_PACKETS``,
      ``FT_RECORDING_MAX_MB``);
    - everything capture writes into the evidence directory (recordings and flow
      evidence) stops at ``dir_max_bytes`` (``FT_EVIDENCE_MAX_MB``), judged against the
      directory's size (rescanned, so files an operator removes free room);
    - ``ft.ctl`` pcap and evidence requests beyond ``rate_per_s`` (burst ``2 × rate``,
      ``FT_CTL_REQUESTS_PER_S``) are refused.

    Each refusal is counted (``counters()``, exposed in /metrics as ``flowtarget_capture_evidence_*``)
    and answered with a reason naming the setting.
    """

    RESCAN_S = 5.0
    MIN_ROOM = 64 * 1024    # a new recording needs this much of the directory budget left

    def __init__(self, directory: str | os.PathLike[str], max_active: int = 4, max_packets: int = 100_000,
                 max_bytes: int = 64 * 1024**2, dir_max_bytes: int = 1024**3, rate_per_s: float = 10.0,
                 clock: Any = time.monotonic):
        self.directory = Path(directory)
        self.max_active = max_active
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self.dir_max_bytes = dir_max_bytes
        self.rate_per_s = rate_per_s
        self.burst = max(1.0, 2.0 * rate_per_s)
        self._clock = clock
        self._tokens = self.burst
        self._t_tokens = clock()
        self.used = dir_bytes(self.directory)
        self._t_scan = clock()
        self.active = 0
        self._meter: Any = None
        self.c: dict[str, int] = {k: 0 for k in (
            "recordings_started", "recordings_refused_active", "recordings_refused_disk",
            "recordings_truncated_packets", "recordings_truncated_bytes", "recordings_truncated_disk",
            "evidence_written", "evidence_refused_disk", "ctl_requests_refused_rate")}

    @classmethod
    def from_settings(cls, settings: Any) -> "EvidenceLimits":
        return cls(settings.evidence_dir, max_active=settings.recording_max_active,
                   max_packets=settings.recording_max_packets, max_bytes=int(settings.recording_max_mb * 1024**2),
                   dir_max_bytes=int(settings.evidence_max_mb * 1024**2), rate_per_s=settings.ctl_requests_per_s)

    def counters(self) -> dict[str, int]:
        if self._meter is not None:
            self.active = sum(1 for r in self._meter.recorders if not r.done)
        return {**self.c, "recordings_active": self.active, "evidence_dir_bytes": self.used}

    # --- requests
    def allow_request(self) -> str:
        """'' when a ft.ctl request may be served now, else the reason it is refused (counted)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._t_tokens) * self.rate_per_s)
        self._t_tokens = now
        if self._tokens < 1.0:
            self.c["ctl_requests_refused_rate"] += 1
            return f"too many requests (more than FT_CTL_REQUESTS_PER_S={self.rate_per_s:g} per second)"
        self._tokens -= 1.0
        return ""

    # --- disk
    def has_room(self, need: int = 0) -> bool:
        if self.used + need <= self.dir_max_bytes:
            return True
        now = self._clock()
        if now - self._t_scan >= self.RESCAN_S:     # an operator may have removed files
            self._t_scan = now
            self.used = dir_bytes(self.directory)
            return self.used + need <= self.dir_max_bytes
        return False

    def take(self, n: int) -> bool:
        """Reserve ``n`` bytes of the directory's budget (False, nothing taken, when it is full)."""
        if not self.has_room(n):
            return False
        self.used += n
        return True

    def disk_full_reason(self) -> str:
        return f"evidence directory full (FT_EVIDENCE_MAX_MB={self.dir_max_bytes / 1024**2:g})"

    # --- recordings
    def start_recording(self, meter: Any, bpf: str, duration_s: float, tag: str = "ctl") -> "PcapRecorder":
        """A new bounded recording added to ``meter.recorders``; ValueError (counted) when refused."""
        self._meter = meter
        live = [r for r in meter.recorders if not r.done]
        self.active = len(live)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"evidence directory {self.directory}: {exc.strerror or exc}") from None
        if not os.access(self.directory, os.W_OK):
            raise ValueError(f"evidence directory {self.directory}: not writable")
        if self.active >= self.max_active:
            self.c["recordings_refused_active"] += 1
            raise ValueError(f"too many recordings at once (FT_RECORDING_MAX_ACTIVE={self.max_active})")
        if not self.has_room(self.MIN_ROOM):   # room for more than a header and a packet or two
            self.c["recordings_refused_disk"] += 1
            raise ValueError(self.disk_full_reason())
        rec = PcapRecorder(self.directory, meter.source, bpf, duration_s, meter.datalink,
                           max_packets=self.max_packets, max_bytes=self.max_bytes, tag=tag, limits=self,
                           cut_at=getattr(meter, "snaplen", 0))
        meter.recorders.append(rec)
        self.active += 1
        self.c["recordings_started"] += 1
        return rec

    def recording_closed(self, rec: "PcapRecorder") -> None:
        self.active = max(0, self.active - 1)
        if rec.truncated:
            self.c["recordings_truncated_" + rec.truncated] += 1


class PcapRecorder:
    """Record the packets matching a BPF filter for ``duration_s`` of packet time.

    ``offer(ts, frame)`` is called by the meter for every packet while the
    recorder is active; packets go straight into ``<name>.pcap.part`` in the
    evidence directory (only a file buffer stays in memory).  ``done`` becomes
    True when the duration is over or a bound is reached (``max_packets``,
    ``max_bytes``, the directory budget of ``limits``: ``truncated`` says which),
    and ``close()`` renames the file to its final name.
    """

    def __init__(self, directory: str | os.PathLike[str], iface: str, bpf: str, duration_s: float,
                 linktype: int = 1, max_packets: int = 100_000, tag: str = "ctl",
                 max_bytes: int = 64 * 1024**2, limits: EvidenceLimits | None = None, snaplen: int = 65535,
                 cut_at: int = 0):
        self.directory = Path(directory)
        self.cut_at = cut_at   # the source's snap length: frames this long may have been cut (wire_len)
        self.iface = iface
        self.bpf = bpf
        self.duration_s = max(0.0, float(duration_s))
        self.linktype = linktype
        self.snaplen = snaplen
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self.limits = limits
        self.tag = tag
        self._filter = None
        if bpf:
            import pcap

            try:
                self._filter = pcap.bpf(bpf.encode(), linktype)
            except Exception as exc:  # noqa: BLE001
                raise ValueError(f"bad BPF filter {bpf!r}: {exc}") from None
        self.start_ts: float | None = None
        self.count = 0          # packets written
        self.bytes = 0          # bytes written (file size)
        self.truncated = ""     # "packets", "bytes" or "disk" when a bound ended the recording
        self.done = False
        self.path: Path | None = None
        self._fh: Any = None
        self._part: Path | None = None
        self.write_error = ""

    def _open(self) -> bool:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._part = self.directory / f".rec-{os.getpid()}-{id(self):x}-{time.monotonic_ns()}.pcap.part"
        self._fh = open(self._part, "wb", buffering=64 * 1024)
        self._fh.write(_PCAP_HDR.pack(0xA1B2C3D4, 2, 4, 0, 0, self.snaplen, self.linktype))
        self.bytes = _PCAP_HDR.size
        return True

    def _stop(self, why: str) -> None:
        self.done = True
        self.truncated = why

    def offer(self, ts: float, frame: bytes) -> None:
        if self.done:
            return
        if self.start_ts is None:
            self.start_ts = ts
        elif ts - self.start_ts > self.duration_s:
            self.done = True
            return
        if self._filter is not None and not self._filter.filter(frame):
            return
        n = _REC_HDR.size + len(frame)
        if self.bytes + n > self.max_bytes:
            self._stop("bytes")
            return
        if self.limits is not None and not self.limits.take(n + (_PCAP_HDR.size if self._fh is None else 0)):
            self._stop("disk")
            return
        try:       # the hot path calls this: a full or unwritable disk ends the recording, never capture
            if self._fh is None:
                self._open()
            self._fh.write(pcap_record(ts, frame, wire_len(frame, self.linktype, self.cut_at)))
            self._fh.write(frame)
        except OSError as exc:
            self.write_error = exc.strerror or str(exc)
            self._stop("disk")
            return
        self.bytes += n
        self.count += 1
        if self.count >= self.max_packets:
            self._stop("packets")

    def expire(self, now_ts: float) -> None:
        if self.start_ts is not None and now_ts - self.start_ts > self.duration_s:
            self.done = True

    def close(self) -> Path:
        was_open = self.path is None
        self.done = True
        if self.path is None:
            ts = self.start_ts if self.start_ts is not None else time.time()
            final = self.directory / evidence_name(self.iface, "any", ts, self.tag)
            try:
                if self._fh is None:
                    self._open()
                    if self.limits is not None:
                        self.limits.used += self.bytes
                self._fh.close()
                self._fh = None
                self.path = _unique(final)
                os.replace(self._part, self.path)
            except OSError as exc:      # reported as a recording of what could be kept (maybe nothing)
                self.write_error = exc.strerror or str(exc)
                self.path = self._part if self._part is not None and self._part.exists() else final
        if was_open and self.limits is not None:
            self.limits.recording_closed(self)
        return self.path
