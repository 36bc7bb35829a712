"""Evidence pcaps: a flow's recent packets, or a filtered timed recording.

File names follow the original design's ExportPack: interface, source IP and
time, ``<iface>_<src-ip>_<YYYYmmdd-HHMMSS>[_<tag>].pcap`` (IPv6 colons and any
other unsafe character become ``-``), and a file is never overwritten.
Pcaps are written with dpkt's writer in the capture's link type.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from pathlib import Path

import dpkt

__all__ = ["evidence_name", "write_pcap", "PcapRecorder"]

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


def write_pcap(directory: str | os.PathLike[str], name: str, packets: Iterable[tuple[float, bytes]],
               linktype: int = 1, snaplen: int = 65535) -> Path:
    """Write ``packets`` to a new pcap ``directory/name`` (made unique); returns its path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = _unique(d / name)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as fh:
        w = dpkt.pcap.Writer(fh, snaplen=snaplen, linktype=linktype)
        for ts, frame in packets:
            w.writepkt(frame, ts=ts)
    os.replace(tmp, path)
    return path


class PcapRecorder:
    """Record the packets matching a BPF filter for ``duration_s`` of packet time.

    ``offer(ts, frame)`` is called by the meter for every packet while the
    recorder is active; ``done`` becomes True when the duration is over or
    ``max_packets`` were kept, and ``close()`` writes the file.
    """

    def __init__(self, directory: str | os.PathLike[str], iface: str, bpf: str, duration_s: float,
                 linktype: int = 1, max_packets: int = 100_000, tag: str = "ctl"):
        self.directory = Path(directory)
        self.iface = iface
        self.bpf = bpf
        self.duration_s = max(0.0, float(duration_s))
        self.linktype = linktype
        self.max_packets = max_packets
        self.tag = tag
        self._filter = None
        if bpf:
            import pcap

            try:
                self._filter = pcap.bpf(bpf.encode(), linktype)
            except Exception as exc:  # noqa: BLE001
                raise ValueError(f"bad BPF filter {bpf!r}: {exc}") from None
        self.start_ts: float | None = None
        self.packets: list[tuple[float, bytes]] = []
        self.done = False
        self.path: Path | None = None

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
        self.packets.append((ts, frame))
        if len(self.packets) >= self.max_packets:
            self.done = True

    def expire(self, now_ts: float) -> None:
        if self.start_ts is not None and now_ts - self.start_ts > self.duration_s:
            self.done = True

    def close(self) -> Path:
        self.done = True
        if self.path is None:
            src = ""
            ts = self.start_ts if self.start_ts is not None else time.time()
            self.path = write_pcap(self.directory, evidence_name(self.iface, src or "any", ts, self.tag),
                                   self.packets, self.linktype)
            self.packets = []
        return self.path
