"""The packet recorder: a bounded rolling pcap store, indexed per file.

capture calls ``Recorder.record(recs, dlt)`` once per batch of ``(ts, frame)``
records (replay and live alike), after the meter has processed the batch.  The
recorder appends the batch to the current pcap file of its directory
(``FT_RECORD_DIR``) and keeps the store bounded:

- files rotate by size (``FT_RECORD_FILE_BYTES``) and by packet time
  (``FT_RECORD_FILE_S``); each closed file gets a sidecar index
  ``<file>.idx.json``: time range, packets, hosts and flows (key, meter flow id,
  flow start), so that an export reads only the files it needs;
- the store never holds more than ``FT_RECORD_MAX_BYTES`` (pcaps and indexes,
  the file being written included): the oldest files are deleted before a
  write that would pass the bound; files whose last packet is older than
  ``FT_RECORD_MAX_AGE_S`` (packet time) are deleted too;
- ``FT_RECORD_CUTOFF_BYTES`` keeps only the first N bytes of every flow (both
  directions together), as Zeek's Time Machine does.

Per packet the recorder does one directional-key computation (the compiled
``eth4`` fast path, else ``decode``), one dict lookup and an int comparison or
two; everything per flow (reverse key, flow id lookup, text addresses) happens
once per flow and file.  Flow state lives in two generations of dicts that
swap every ``idle_timeout_s`` of packet time (or when the newer one reaches
``max_flows``): bounded, aged out with the flows, no per-packet reordering.

With shards, each capture process writes its own files (``s<index>`` in the
name) and bounds its own share: ``FT_RECORD_MAX_BYTES / shards``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import time
from pathlib import Path
from typing import Any

from .decode import decode, format_ip, transport_name
from .fastpath import eth4

__all__ = ["Recorder", "IDX_SUFFIX", "list_store", "flow_key_text"]

log = logging.getLogger("flowtarget.capture.recorder")

IDX_SUFFIX = ".idx.json"
PCAP_HEADER_LEN = 24
_REC = struct.Struct("<IIII").pack
_pp = struct.Struct("!HH").pack
_NAME = re.compile(r"^ft-(?P<probe>[A-Za-z0-9_-]+)-s(?P<shard>\d+)-(?P<seq>\d{8})\.pcap$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_PROTO_NUM = {transport_name(n): n for n in range(256)}


def pcap_header(linktype: int, snaplen: int = 262144) -> bytes:
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)


def flow_key_text(key: tuple) -> list[Any]:
    """A meter-style directional key as ``[proto, src, sport, dst, dport, vlan]`` (text addresses)."""
    proto, raw = key[0], key[1]
    vlan = key[2] if len(key) > 2 else 0
    alen = (len(raw) - 4) // 2
    sp, dp = struct.unpack_from("!HH", raw, 2 * alen)
    return [proto, format_ip(raw[:alen]), sp, format_ip(raw[alen:2 * alen]), dp, vlan]


def _reverse(key: tuple) -> tuple:
    proto, raw = key[0], key[1]
    alen = (len(raw) - 4) // 2
    r = raw[alen:2 * alen] + raw[:alen] + raw[2 * alen + 2:2 * alen + 4] + raw[2 * alen:2 * alen + 2]
    return (proto, r, key[2]) if len(key) > 2 else (proto, r)


def list_store(directory: str | os.PathLike[str]) -> list[Path]:
    """The recorder's pcap files in ``directory`` (every probe and shard), oldest sequence first per shard."""
    d = Path(directory)
    try:
        names = [p for p in d.iterdir() if _NAME.match(p.name)]
    except OSError:
        return []
    return sorted(names, key=lambda p: p.name)


class _Entry:
    """Per flow (both directions share one): bytes recorded, file sequence last indexed in, key."""

    __slots__ = ("nbytes", "fileseq", "key", "flow_id", "start", "relook")

    def __init__(self, key: tuple) -> None:
        self.nbytes = 0
        self.fileseq = -1
        self.key = key
        self.flow_id = ""
        self.start = 0.0
        self.relook = False


class Recorder:
    def __init__(self, directory: str | os.PathLike[str], *, probe: str = "probe1", shard: int = -1, shards: int = 1,
                 max_bytes: int = 0, max_age_s: float = 0.0, file_bytes: int = 64 << 20, file_s: float = 300.0,
                 cutoff_bytes: int = 0, index_max_flows: int = 100_000, max_flows: int = 1_000_000,
                 idle_s: float = 120.0, meter: Any = None, source: str = "") -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.probe = _UNSAFE.sub("-", probe)[:64] or "probe"
        self.shard = max(shard, 0)
        self.max_bytes = int(max_bytes // max(shards, 1)) if max_bytes else 0
        self.max_age_s = float(max_age_s)
        fb = int(file_bytes)
        if self.max_bytes:
            fb = min(fb, max(self.max_bytes // 8, 4096))   # always several files: deleting one frees room
        self.file_bytes = max(fb, 1024)
        self.file_s = float(file_s)
        self.cutoff = int(cutoff_bytes)
        self.index_max_flows = int(index_max_flows)
        self.max_flows = int(max_flows)
        self.idle_s = float(idle_s)
        self.meter = meter
        self.source = source
        self.datalink = 1
        # the store: (pcap path, its size + its index's size, last ts) of closed files, oldest first
        self.files: list[list[Any]] = []
        self.closed_bytes = 0
        self.seq = 0
        self._scan()
        # the file being written
        self._fh: Any = None
        self._path: Path | None = None
        self._fsize = 0
        self._fdlt = -1
        self._first_ts = 0.0
        self._last_ts = 0.0
        self._fpackets = 0
        self._fkeys: list[_Entry] = []
        self._fnonip = 0
        self._started: list[Any] = []     # the meter's start records since the last rotation
        # flow state: two generations
        self._cur: dict[tuple, _Entry] = {}
        self._old: dict[tuple, _Entry] = {}
        self._gen_until = 0.0
        # counters (capture's /metrics: flowtarget_capture_recorder_*)
        self.packets_written = 0
        self.bytes_written = 0
        self.packets_cut = 0
        self.files_written = 0
        self.files_deleted = 0
        self.files_aged_out = 0
        self.bytes_deleted = 0
        self.rotations = 0
        self.write_errors = 0
        self.index_truncated = 0
        self.packets_too_big = 0

    # ------------------------------------------------------------------ the store
    def _scan(self) -> None:
        """Files this probe+shard left earlier: counted in the bound, deleted oldest first."""
        mine = f"ft-{self.probe}-s{self.shard}-"
        for p in list_store(self.dir):
            if not p.name.startswith(mine):
                continue
            m = _NAME.match(p.name)
            self.seq = max(self.seq, int(m.group("seq")) if m else 0)
            size = _size(p) + _size(_idx_path(p))
            last = 0.0
            try:
                last = float(json.loads(_idx_path(p).read_text()).get("last_ts", 0.0))
            except (OSError, ValueError, AttributeError):
                last = 0.0
            self.files.append([p, size, last])
            self.closed_bytes += size

    def stored_bytes(self) -> int:
        return self.closed_bytes + self._fsize

    def _delete_oldest(self, aged: bool = False) -> None:
        p, size, _last = self.files.pop(0)
        for q in (p, _idx_path(p)):
            try:
                q.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                self.write_errors += 1
                log.warning("recorder: cannot delete %s: %s", q.name, exc)
        self.closed_bytes -= size
        self.bytes_deleted += size
        self.files_deleted += 1
        if aged:
            self.files_aged_out += 1

    def _make_room(self, n: int) -> bool:
        """Delete oldest closed files until ``n`` more bytes fit the bound; False when they cannot."""
        if not self.max_bytes:
            return True
        while self.stored_bytes() + n > self.max_bytes and self.files:
            self._delete_oldest()
        return self.stored_bytes() + n <= self.max_bytes

    def expire(self, now_ts: float) -> None:
        """Delete closed files whose last packet is older than the age bound (packet time)."""
        if self.max_age_s <= 0:
            return
        limit = now_ts - self.max_age_s
        while self.files and self.files[0][2] < limit:
            self._delete_oldest(aged=True)
        if self._fh is not None and self._fpackets and self._last_ts < limit:
            self._rotate()      # the open file is all old: close it, then it goes too
            while self.files and self.files[0][2] < limit:
                self._delete_oldest(aged=True)

    # ------------------------------------------------------------------ files
    def _open(self, dlt: int, ts: float) -> bool:
        self.seq += 1
        path = self.dir / f"ft-{self.probe}-s{self.shard}-{self.seq:08d}.pcap"
        if not self._make_room(PCAP_HEADER_LEN):
            return False
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            os.fchmod(fd, 0o640)
            self._fh = os.fdopen(fd, "wb", buffering=0)
            self._fh.write(pcap_header(dlt))
        except OSError as exc:
            self.write_errors += 1
            log.warning("recorder: cannot open %s: %s", path.name, exc)
            self._fh = None
            return False
        self._path = path
        self._fsize = PCAP_HEADER_LEN
        self.source = str(getattr(self.meter, "source", "") or self.source)[:128]
        self._fdlt = dlt
        self._first_ts = self._last_ts = ts
        self._fpackets = 0
        self._fkeys = []
        self._fnonip = 0
        self.files_written += 1
        return True

    def on_flow(self, rec: Any) -> None:
        """The meter's flow records (per flow, not per packet): a start names the flow's id in the index."""
        if rec.phase == "start":
            self._started.append(rec)

    def _started_index(self) -> tuple[list[list[Any]], bool]:
        recs, self._started = self._started, []
        if len(recs) > self.index_max_flows:
            return [], True
        out = []
        for r in recs:
            t = r.transport
            proto = _PROTO_NUM.get(t) or (int(t) if t.isdigit() else 0)
            out.append([r.flow_id, proto, r.src_ip, r.src_port, r.dst_ip, r.dst_port, r.first_seen])
        return out, False

    def _index(self) -> dict[str, Any]:
        hosts: set[str] = set()
        flows = []
        truncated = len(self._fkeys) > self.index_max_flows
        started, st_trunc = self._started_index()
        if not truncated:
            for e in self._fkeys:
                k = flow_key_text(e.key)
                hosts.add(k[1])
                hosts.add(k[3])
                flows.append(k + [e.flow_id, e.start])
        return {"version": 1, "file": self._path.name if self._path else "", "probe": self.probe, "shard": self.shard,
                "source": self.source, "datalink": self._fdlt, "first_ts": self._first_ts, "last_ts": self._last_ts,
                "packets": self._fpackets, "non_ip_packets": self._fnonip, "truncated": truncated,
                "hosts": sorted(hosts), "flows": flows, "started": started, "started_truncated": st_trunc}

    def _rotate(self) -> None:
        """Close the file being written and write its index (within the bound)."""
        if self._fh is None:
            return
        self._lookup_ids(self._fkeys)
        try:
            self._fh.close()
        except OSError:
            self.write_errors += 1
        path = self._path
        assert path is not None
        size = self._fsize
        idx = self._index()
        data = json.dumps(idx, separators=(",", ":")).encode()
        self._fh = None
        self._fsize = 0
        self.closed_bytes += size       # the pcap is now a closed file; its index must fit beside it
        entry = [path, size, self._last_ts]
        self.files.append(entry)
        if not self._make_room(len(data)) or (self.max_bytes and len(data) > self.max_bytes // 8):
            idx.update(truncated=True, hosts=[], flows=[], started=[], started_truncated=True)     # an export reads this file whole
            self.index_truncated += 1
            data = json.dumps(idx, separators=(",", ":")).encode()
            self._make_room(len(data))
        try:
            ip = _idx_path(path)
            tmp = ip.with_name(ip.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, ip)
            entry[1] += len(data)
            self.closed_bytes += len(data)
        except OSError as exc:
            self.write_errors += 1
            log.warning("recorder: cannot write the index of %s: %s", path.name, exc)
        self.rotations += 1

    def close(self) -> None:
        self._rotate()

    # ------------------------------------------------------------------ flows
    def _lookup_ids(self, entries: list[_Entry]) -> None:
        """The meter's flow id and start of flows not yet named (once per flow and file)."""
        meter = self.meter
        table = getattr(meter, "table", None)
        if table is None:
            return
        get = table.get
        for e in entries:
            if e.flow_id and not e.relook:
                continue
            hit = get(e.key)
            if hit is None:
                continue
            f = hit[0]
            fid = getattr(f, "flow_id", "")
            if fid and fid != e.flow_id:
                if e.flow_id and e.fileseq == self.seq:   # a new flow on the same key in this file
                    ne = _Entry(e.key)
                    ne.fileseq = e.fileseq
                    ne.flow_id, ne.start = fid, float(getattr(f, "first", 0.0))
                    self._fkeys.append(ne)
                    e.flow_id, e.start = ne.flow_id, ne.start
                else:
                    e.flow_id, e.start = fid, float(getattr(f, "first", 0.0))
            e.relook = False

    def _age(self, ts: float) -> None:
        self._old = self._cur
        self._cur = {}
        self._gen_until = ts + self.idle_s

    # ------------------------------------------------------------------ the batch
    def record(self, recs: Any, dlt: int | None = None) -> None:
        """Append one batch of ``(ts, frame)`` records (capture order) to the store."""
        if not recs:
            return
        dl = self.datalink if dlt is None else dlt
        fast = dl == 1
        cutoff = self.cutoff
        cur = self._cur
        old = self._old
        cget = cur.get
        parts: list[bytes] = []
        pending = 0
        new: list[_Entry] = []
        fkeys = self._fkeys
        if self._fh is None or self._fdlt != dl:
            self._rotate()
            if not self._open(dl, recs[0][0]):
                return
            fkeys = self._fkeys
        seq = self.seq
        fsize = self._fsize
        fmax = self.file_bytes
        file_s = self.file_s
        first_ts = self._first_ts
        npk = 0
        cut = 0
        last_ts = self._last_ts
        for ts, frame in recs:
            if ts >= self._gen_until or len(cur) >= self.max_flows:
                self._age(ts)
                cur = self._cur
                old = self._old
                cget = cur.get
            r = eth4(frame) if fast else None
            if r is not None:
                key = r[0]
                syn = r[5] & 0x12 == 2
            else:
                d = decode(frame, dl)
                if d[0] or d[17] == 2:
                    key = None      # not an IP flow (ARP, ...), or a later fragment: kept, no flow
                    syn = False
                else:
                    key = (d[2], d[3] + d[4] + _pp(d[5], d[6]), d[13]) if d[13] else (d[2], d[3] + d[4] + _pp(d[5], d[6]))
                    syn = d[2] == 6 and d[10] & 0x12 == 2
            n = len(frame)
            if key is not None:
                e = cget(key)
                if e is None:
                    e = old.get(key)
                    if e is None:
                        e = _Entry(key)
                    cur[key] = e
                    cur[_reverse(key)] = e
                if cutoff:
                    if e.nbytes >= cutoff:
                        cut += 1
                        continue
                    e.nbytes += n
            rlen = 16 + n
            if rlen > fmax - PCAP_HEADER_LEN:
                self.packets_too_big += 1
                continue
            if fsize + pending + rlen > fmax or (file_s and ts - first_ts >= file_s and fsize + pending > PCAP_HEADER_LEN):
                # rotate before this packet: write what is pending, close, open the next file
                self._write(parts, pending, last_ts)
                self._lookup_ids(new)
                new = []
                parts, pending = [], 0
                self._rotate()
                if not self._open(dl, ts):
                    self.packets_cut += cut
                    self.packets_written += npk
                    return
                fkeys = self._fkeys
                seq = self.seq
                fsize = self._fsize
                first_ts = ts
            if key is not None:
                if e.fileseq != seq:
                    e.fileseq = seq
                    fkeys.append(e)
                    new.append(e)
                elif syn:
                    e.relook = True
                    new.append(e)
            else:
                self._fnonip += 1
            sec, usec = divmod(int(round(ts * 1e6)), 1000000)
            parts.append(_REC(sec, usec, n, n))
            parts.append(frame)
            pending += rlen
            npk += 1
            last_ts = ts
        self.packets_cut += cut
        self._write(parts, pending, last_ts)
        self._lookup_ids(new)
        self.packets_written += npk

    def _write(self, parts: list[bytes], n: int, last_ts: float) -> None:
        if not n or self._fh is None:
            return
        if not self._make_room(n):
            self.write_errors += 1      # cannot happen while file_bytes <= max_bytes / 8
            return
        try:
            self._fh.write(b"".join(parts))
        except OSError as exc:
            self.write_errors += 1
            log.warning("recorder: write failed: %s", exc)
            return
        self._fsize += n
        self.bytes_written += n
        self._fpackets += len(parts) // 2
        self._last_ts = last_ts

    def tick(self, now_ts: float) -> None:
        """Periodic (per batch or per tick): age bound and time rotation of an idle live capture."""
        self.expire(now_ts)
        if self._fh is not None and self.file_s and self._fpackets and now_ts - self._first_ts >= self.file_s:
            self._rotate()

    def stats(self) -> dict[str, int]:
        return {"packets_written": self.packets_written, "bytes_written": self.bytes_written,
                "packets_cut": self.packets_cut, "packets_too_big": self.packets_too_big, "files_written": self.files_written,
                "files_deleted": self.files_deleted, "files_aged_out": self.files_aged_out,
                "bytes_deleted": self.bytes_deleted, "rotations": self.rotations,
                "write_errors": self.write_errors, "index_truncated": self.index_truncated,
                "stored_bytes": self.stored_bytes(), "stored_files": len(self.files) + (self._fh is not None),
                "tracked_flows": (len(self._cur) + len(self._old)) // 2}


def _idx_path(p: Path) -> Path:
    return p.with_name(p.name + IDX_SUFFIX)


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def from_settings(settings: Any, meter: Any = None) -> Recorder | None:
    """The capture service's recorder, or None when FT_RECORD_DIR is unset."""
    if not settings.record_dir:
        return None
    return Recorder(settings.record_dir, probe=settings.probe, shard=settings.shard_index, shards=settings.shards,
                    max_bytes=settings.record_max_bytes, max_age_s=settings.record_max_age_s,
                    file_bytes=settings.record_file_bytes, file_s=settings.record_file_s,
                    cutoff_bytes=settings.record_cutoff_bytes, index_max_flows=settings.record_index_max_flows,
                    max_flows=settings.max_flows, idle_s=settings.idle_timeout_s, meter=meter)
