"""The packet recorder: a bounded rolling pcap store, indexed per file.

capture calls ``Recorder.record(recs, dlt)`` once per batch of ``(ts, frame)``
records (replay and live alike), after the meter has processed the batch.  The
recorder appends the batch to the current pcap file of its directory
(``FT_RECORD_DIR``) and keeps the store bounded:

- files rotate by size (``FT_RECORD_FILE_BYTES``) and by packet time
  (``FT_RECORD_FILE_S``); each closed file gets a sidecar index
  ``<file>.idx.json``: time range, packets, hosts and flows (5-tuple, the
  meter's flow id, flow start), so that an export reads only the files it needs.
  The index comes from the meter's flow records (``on_flow``, once per record;
  where the compiled meter writes records as JSON, from the flows themselves,
  which it puts in ``pending``): a file lists the flows open while it was
  written and those that ended after its first packet (a superset of the flows
  with packets in it, by at most the meter's idle timeout), and costs nothing
  per packet;
- the store never holds more than ``FT_RECORD_MAX_BYTES`` (pcaps and indexes,
  the file being written included): the oldest files are deleted before a
  write that would pass the bound; files whose last packet is older than
  ``FT_RECORD_MAX_AGE_S`` (packet time) are deleted too;
- ``FT_RECORD_CUTOFF_BYTES`` keeps only the first N bytes of every flow (both
  directions together), as Zeek's Time Machine does.

Per packet the recorder builds the 16-byte pcap record header.  The compiled
writer (``_recfast.Writer``, a C thread that never takes the interpreter's
lock) gets each batch's headers and frames and copies them into the file; the
pure-Python twin, a Python thread, gets the packed records 4 MB at a time.
Both write with O_DIRECT where the filesystem takes it (``_Writer`` is the
twin's file).  With a cutoff, the
meter given as ``meter`` does the counting: the Recorder sets its
``record_cutoff``, the meter marks every record it meters (one comparison on
its flow's ``rec_bytes``, frame bytes of both directions; packets of no flow,
such as ARP, are kept) and ``record`` takes the marks of its batch
(``meter.take_keep()``) and keeps the marked records.  The count is per meter
flow: a flow that ends and comes back on the same 5-tuple starts again.  Without
a meter, or when the marks do not match the batch, the recorder computes each
packet's directional flow key itself (the compiled ``eth4`` fast path, else
``decode``) and counts in two generations of dicts that swap every
``idle_timeout_s`` of packet time (or when the newer one reaches
``max_flows``).

With shards, each capture process writes its own files (``s<index>`` in the
name) and bounds its own share: ``FT_RECORD_MAX_BYTES / shards``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import mmap
import os
import queue
import re
import struct
import threading
import time
from itertools import compress
from pathlib import Path
from typing import Any

import orjson

from .decode import decode, transport_name
from .evidence import wire_len
from .fastpath import eth4

__all__ = ["Recorder", "IDX_SUFFIX", "list_store", "scan_store", "pcap_pack", "pcap_header", "from_settings"]

log = logging.getLogger("flowtarget.capture.recorder")

IDX_SUFFIX = ".idx.json"
PCAP_HEADER_LEN = 24
BLOCK = 4096                  # O_DIRECT's alignment of buffer, offset and length (a multiple of every disk's)
WRITE_BYTES = 4 << 20         # packets handed to the writer thread this many bytes at a time
QUEUE_BYTES = 64 << 20        # at most this many bytes of packets queued for the writer thread
BUF_BYTES = 8 << 20           # the direct writer's buffer
FLUSH_BYTES = 4 << 20         # written to the disk once it holds this much
SYNC_S = 1.0                  # the file being written is readable up to about this long ago (tick)
_O_DIRECT = getattr(os, "O_DIRECT", 0)
_REC = struct.Struct("<IIII").pack
_pp = struct.Struct("!HH").pack
_NAME = re.compile(r"^ft-(?P<probe>[A-Za-z0-9_-]+)-s(?P<shard>\d+)-(?P<seq>\d{8})\.pcap$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_PROTO_NUM = {transport_name(n): n for n in range(256)}

_c: Any = None
if os.environ.get("FT_PURE_PYTHON", "").lower() not in ("1", "true", "yes"):
    try:
        from services.capture import _recfast as _c  # type: ignore[no-redef]
    except ImportError:   # not built (no C compiler at install time): the twin below
        _c = None


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def pcap_pack_py(recs: list, start: int, room: int, until_ts: float,
                 max_rec: int, cut_at: int = 0, dlt: int = 1) -> tuple[bytes, int, int, float, int]:
    """``(data, stop, too_big, last_ts, packets)``: pcap records of ``recs[start:]`` concatenated, stopping
    before the first that would pass ``room`` bytes or whose time is ``>= until_ts``; records longer than
    ``max_rec`` are skipped; frames of ``cut_at`` bytes or more get ``wire_len``'s original length.  The
    compiled ``_recfast.pcap_pack`` gives the same (a test keeps them equal)."""
    parts: list[bytes] = []
    append = parts.append
    total = big = 0
    last = 0.0
    stop = len(recs)
    for i in range(start, stop):
        ts, frame = recs[i]
        n = len(frame)
        rlen = 16 + n
        if rlen > max_rec:
            big += 1
            continue
        if ts >= until_ts or total + rlen > room:
            stop = i
            break
        us = int(math.floor(ts * 1000000.0 + 0.5))
        append(_REC(us // 1000000, us % 1000000, n, wire_len(frame, dlt, cut_at)))
        append(frame)
        total += rlen
        last = ts
    return b"".join(parts), stop, big, last, len(parts) // 2


def pcap_header(linktype: int, snaplen: int = 262144) -> bytes:
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)


def _reverse(key: Any) -> Any:
    """The other direction of a recorder flow key: ``proto byte + src + dst + sport + dport`` [, vlan]."""
    if type(key) is tuple:
        return (_reverse(key[0]), key[1])
    alen = (len(key) - 5) // 2
    p = 1 + 2 * alen
    return key[:1] + key[1 + alen:p] + key[1:1 + alen] + key[p + 2:p + 4] + key[p:p + 2]


def scan_store(directory: str | os.PathLike[str], index_stats: bool = False
               ) -> tuple[list[Path], dict[str, tuple[int, int, int]]]:
    """The recorder's pcap files in ``directory`` (every probe and shard), oldest sequence first per shard;
    with ``index_stats`` also each index file's (inode, mtime_ns, size) by name, from the same directory read."""
    d = Path(directory)
    files: list[Path] = []
    idx: dict[str, tuple[int, int, int]] = {}
    try:
        with os.scandir(d) as it:
            for e in it:
                n = e.name
                if index_stats and n.endswith(IDX_SUFFIX):
                    try:
                        st = e.stat()
                    except OSError:     # deleted meanwhile
                        continue
                    idx[n] = (st.st_ino, st.st_mtime_ns, st.st_size)
                elif _NAME.match(n):
                    files.append(d / n)
    except OSError:
        return [], {}
    files.sort(key=lambda p: p.name)
    return files, idx


def list_store(directory: str | os.PathLike[str]) -> list[Path]:
    """The recorder's pcap files in ``directory`` (every probe and shard), oldest sequence first per shard."""
    return scan_store(directory)[0]


class Recorder:
    def __init__(self, directory: str | os.PathLike[str], *, probe: str = "probe1", shard: int = -1, shards: int = 1,
                 max_bytes: int = 0, max_age_s: float = 0.0, file_bytes: int = 64 << 20, file_s: float = 300.0,
                 cutoff_bytes: int = 0, index_max_flows: int = 100_000, max_flows: int = 1_000_000,
                 idle_s: float = 120.0, meter: Any = None, source: str = "", direct_io: bool = True,
                 c_writer: bool | None = None) -> None:
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
        # with a cutoff, the meter marks each record it meters (keep or not: one comparison on its flow's
        # byte count) and record() takes the marks of its batch; the own key path (_cut) is the fallback
        self._meter_keeps = self.cutoff > 0 and hasattr(meter, "take_keep")
        if self._meter_keeps:
            meter.record_cutoff = self.cutoff
        self.source = source
        self.datalink = 1
        #: the source's snap length (the capture service sets it per source; 0: frames are never cut): a
        #: frame this long gets its IP header's length as its original length (evidence.wire_len), and the
        #: store's files say it as their snap length (so an export does the same)
        self.cut_at = 0
        # the store: (pcap path, its size + its index's size, last ts) of closed files, oldest first
        self.files: list[list[Any]] = []
        self.closed_bytes = 0
        self.seq = 0
        self._scan()
        # the file being written
        self._fh: Any = None          # True while a file is being written (the writer thread holds it)
        self._wfh: Any = None         # the writer thread's file (_Writer)
        #: write the pcaps with O_DIRECT where the filesystem takes it (_Writer)
        self.direct_io = bool(direct_io)
        self._wbuf: Any = None
        #: the compiled writer (_recfast.Writer) where built, else the writer thread below
        self._use_c = (c_writer if c_writer is not None else True) and _c is not None and hasattr(_c, "Writer")
        self._cw: Any = None
        self._cw_pid = 0
        self._c_seen_errors = 0
        self._c_direct_base = 0
        self._q: queue.Queue = queue.Queue(maxsize=1024)    # operations; their packets bounded by QUEUE_BYTES
        self._qcv = threading.Condition()
        self._qbytes = 0
        self._thread: threading.Thread | None = None
        self._path: Path | None = None
        self._fsize = 0
        self._fdlt = -1
        self._fcut = 0
        self._first_ts = 0.0
        self._last_ts = 0.0
        self._fpackets = 0
        # the index, from the meter's flow records (per flow, never per packet): flows open now, and
        # flows that ended since the last rotation
        self._open_flows: dict[str, list[Any]] = {}
        self._ended: list[list[Any]] = []
        self._ended_overflow = False
        #: where the compiled meter puts the flows of the records it writes as JSON (capture's outbox offers
        #: it as raw_index): a start's Flow, or None then the Flow for an end; read in order (_drain) before
        #: the index is used, so it holds what on_flow would have been given
        self.pending: list[Any] = []
        # the cutoff's per-flow byte counts (only with a cutoff): two generations of dicts
        self._cur: dict[Any, list[int]] = {}
        self._old: dict[Any, list[int]] = {}
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
        self.files_direct = 0
        self._synced = 0.0
        self._wpend: list[bytes] = []     # packets for the file being written, not yet queued (_io)
        self._wpend_n = 0

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
            last = _index_last_ts(_idx_path(p))
            if last is None:                   # no index (a crash): its write time
                try:
                    last = p.stat().st_mtime
                except OSError:
                    last = 0.0
            self.files.append([p, size, last])
            self.closed_bytes += size

    def stored_bytes(self) -> int:
        return self.closed_bytes + self._fsize

    # ------------------------------------------------------------------ the writer thread
    # File operations run in order on one thread, so that a slow disk does not stall capture's
    # loop; the byte accounting (and so the bound) is done here, before an operation is queued:
    # the disk only ever holds a prefix of the queued operations, each within the bound.
    # Packets go to the writer thread WRITE_BYTES at a time (and before any other operation): each item the
    # thread takes costs a turn of the interpreter's lock, which capture's loop then waits for.
    def _io(self, fn: Any, *args: Any) -> None:
        if self._wpend:
            self._io_pending()
        self._put(fn, args)

    def _put(self, fn: Any, args: tuple) -> None:
        if self._use_c:
            self._c_op(fn, args)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._io_loop, name="ft-recorder-io", daemon=True)
            self._thread.start()
        self._q.put((fn, args))          # bounded: blocks when the disk is this far behind

    def _io_pending(self) -> None:
        pieces, n, self._wpend, self._wpend_n = self._wpend, self._wpend_n, [], 0
        if self._use_c:                  # the compiled writer bounds its queue itself
            self._c_op(self._do_write, (pieces, n))
            return
        with self._qcv:     # bounded in bytes: blocks while the disk is QUEUE_BYTES behind
            while self._qbytes and self._qbytes + n > QUEUE_BYTES:
                self._qcv.wait(1.0)
            self._qbytes += n
        self._put(self._do_write, (pieces, n))

    def _io_loop(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except OSError as exc:
                self.write_errors += 1
                log.warning("recorder: %s", exc)
            except Exception:   # noqa: BLE001 - the thread must live on: capture waits on its queue
                self.write_errors += 1
                log.exception("recorder: a file operation failed")

    def _c_op(self, fn: Any, args: tuple) -> None:
        """An operation for the compiled writer (_recfast.Writer: a thread that never takes the interpreter's
        lock), started at the first one (after any fork: sharded replays fork their capture processes)."""
        cw = self._mine()
        if cw is None:
            cw = self._cw = _c.Writer(direct=self.direct_io, buf_bytes=BUF_BYTES, flush_bytes=FLUSH_BYTES,
                                      queue_bytes=QUEUE_BYTES)
            self._cw_pid = os.getpid()
            self._c_seen_errors = 0               # a new writer counts from zero
            self._c_direct_base = self.files_direct
        if fn == self._do_write:          # blocks while QUEUE_BYTES of packets wait for the disk
            if type(args[0]) is bytes:    # (heads, frames, size): pcap_heads' records
                cw.write_records(args[0], args[1])
            else:
                cw.write(args[0])
        elif fn == self._do_open:
            path, dlt, snaplen = args
            cw.open(os.fspath(path), pcap_header(dlt, snaplen))
        elif fn == self._do_sync:
            cw.sync()
        elif fn == self._do_close:
            cw.close_file()
        elif fn == self._do_index:
            ip = _idx_path(args[0])
            cw.index(os.fspath(ip), os.fspath(ip.with_name(ip.name + ".tmp")), args[1])
        elif fn == self._do_unlink:
            cw.unlink(os.fspath(args[0]))
            cw.unlink(os.fspath(_idx_path(args[0])))
        else:
            raise TypeError(f"not a file operation: {fn!r}")

    def _mine(self) -> Any:
        """The compiled writer of this process: None where there is none yet or it is the parent's (this
        process was forked since; dropping it does not touch the parent's thread or file)."""
        if self._cw is not None and self._cw_pid != os.getpid():
            self._cw = None
        return self._cw

    def _c_errors(self) -> None:
        """The compiled writer's errors into write_errors (logged), and its direct files into files_direct."""
        if self._mine() is None:
            return
        errors, direct, last, _done = self._cw.stats()
        if errors > self._c_seen_errors:
            self.write_errors += errors - self._c_seen_errors
            self._c_seen_errors = errors
            log.warning("recorder: %s", last)
        self.files_direct = self._c_direct_base + direct

    def flush(self) -> None:
        """Wait until every queued file operation is done (and what was written is readable in the files)."""
        if self._use_c:
            if self._mine() is not None:
                self._io(self._do_sync)
                self._cw.wait(self._cw.fence())
                self._c_errors()
            return
        if self._thread is not None:
            self._io(self._do_sync)
            self._q.put(None)
            self._thread.join()
            self._thread = None

    @contextlib.contextmanager
    def hold_writer(self) -> Any:
        """The writer stopped between two file operations while the block runs (tests read the store then:
        a size read while it works could count a file it deletes next and the bytes it then appends)."""
        if self._use_c:
            if self._mine() is None:
                yield
                return
            self._cw.hold()
            try:
                yield
            finally:
                self._cw.release()
            return
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            held.set()
            release.wait(10)

        self._io(hold)
        held.wait(10)
        try:
            yield
        finally:
            release.set()

    def barrier(self) -> Any:
        """Something to ``wait(timeout)`` on until every file operation queued so far is done (evidence cut
        from the store waits on it, from another thread, so that it reads the packets recorded before it
        was asked)."""
        if self._use_c:
            if self._mine() is None:
                return _Done(None, 0)
            self._io(self._do_sync)
            return _Done(self._cw, self._cw.fence())
        ev = threading.Event()
        if self._thread is None:
            ev.set()
        else:
            self._io(self._do_sync)
            self._put(ev.set, ())
        return ev

    def flow_span(self, flow_id: str) -> tuple[float, float] | None:
        """(start, end or 0 while open) of a flow the index still holds (open, or ended since the last rotation)."""
        self._drain()
        e = self._open_flows.get(flow_id)
        if e is None:
            e = next((x for x in reversed(self._ended) if x[6] == flow_id), None)
        return (float(e[7]), float(e[8])) if e is not None else None

    def _do_open(self, path: Path, dlt: int, snaplen: int = 262144) -> None:
        if self.direct_io and self._wbuf is None:
            self._wbuf = mmap.mmap(-1, BUF_BYTES, flags=mmap.MAP_PRIVATE)   # page-aligned, one per recorder
        self._wfh = _Writer(path, self._wbuf)
        if self._wfh.direct:
            self.files_direct += 1
        self._wfh.write(pcap_header(dlt, snaplen))

    def _do_write(self, pieces: list[bytes], n: int) -> None:
        try:
            if self._wfh is None:
                raise OSError("write to a file that could not be opened")
            for data in pieces:
                self._wfh.write(data)
        finally:
            with self._qcv:
                self._qbytes -= n
                self._qcv.notify()

    def _do_sync(self) -> None:
        """What the file being written holds so far, readable in it (the direct writer's unaligned tail)."""
        if self._wfh is not None:
            self._wfh.sync()

    def _do_close(self) -> None:
        fh, self._wfh = self._wfh, None
        if fh is not None:
            fh.close()

    def _do_index(self, path: Path, data: bytes) -> None:
        ip = _idx_path(path)
        tmp = ip.with_name(ip.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, ip)

    @staticmethod
    def _do_unlink(p: Path) -> None:
        for q in (p, _idx_path(p)):
            try:
                q.unlink()
            except FileNotFoundError:
                pass

    def _delete_oldest(self, aged: bool = False) -> None:
        p, size, _last = self.files.pop(0)
        self._io(self._do_unlink, p)
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
        self._io(self._do_open, path, dlt, self.cut_at or 262144)
        self._fh = True
        self._path = path
        self._fsize = PCAP_HEADER_LEN
        self.source = str(getattr(self.meter, "source", "") or self.source)[:128]
        self._fdlt = dlt
        self._fcut = self.cut_at
        self._first_ts = self._last_ts = ts
        self._fpackets = 0
        self.files_written += 1
        return True

    def on_flow(self, rec: Any) -> None:
        """The meter's flow records (capture's Outbox passes each one it gets as an object): the index's flows
        and hosts."""
        self._drain()
        phase = rec.phase
        if phase == "start":
            self._started(rec.transport, rec.src_ip, rec.src_port, rec.dst_ip, rec.dst_port, rec.vlan_id,
                          rec.flow_id, rec.first_seen)
        elif phase == "end":
            self._ended_at(rec.flow_id, rec.last_seen)

    def _started(self, t: str, src: str, sport: int, dst: str, dport: int, vlan: int, fid: str, first: float) -> None:
        proto = _PROTO_NUM.get(t) or (int(t) if t.isdigit() else 0)
        of = self._open_flows
        if len(of) >= self.max_flows:     # the meter ends every flow it starts; a bound all the same
            del of[next(iter(of))]
        of[fid] = [proto, src, sport, dst, dport, vlan, fid, first, 0.0]

    def _ended_at(self, fid: str, last: float) -> None:
        e = self._open_flows.pop(fid, None)
        if e is not None:
            e[8] = last
            self._ended.append(e)
            if len(self._ended) > 2 * self.index_max_flows + 16:   # this file's index will be truncated
                self._ended.clear()
                self._ended_overflow = True

    def _drain(self) -> None:
        """The flows the compiled meter put in ``pending`` since the last call, as on_flow takes records: a
        Flow is a start (the record's fields are the flow's: transport, addresses, ports, its first VLAN,
        id, first packet), None marks the next Flow as an end (at its last packet)."""
        pend = self.pending
        if not pend:
            return
        # _started and _ended_at inlined: this runs once per flow start and end
        of, ended, pnum, cap = self._open_flows, self._ended, _PROTO_NUM, self.max_flows
        pop, over = of.pop, 2 * self.index_max_flows + 16
        it = iter(pend)
        for f in it:
            if f is None:
                f = next(it)
                e = pop(f.flow_id, None)
                if e is not None:
                    e[8] = f.last
                    ended.append(e)
                    if len(ended) > over:   # this file's index will be truncated
                        ended.clear()
                        self._ended_overflow = True
            else:
                if len(of) >= cap:
                    del of[next(iter(of))]
                t, v, fid = f.transport, f.vlan_ids, f.flow_id
                of[fid] = [pnum.get(t) or (int(t) if t.isdigit() else 0), f.src_ip, f.sport, f.dst_ip, f.dport,
                           v[0] if v else 0, fid, f.first, 0.0]
        pend.clear()   # in place: the meter holds this list while it runs a batch

    def _index(self) -> dict[str, Any]:
        """Flows that can have packets in the file: open now, or ended after its first packet."""
        self._drain()
        first = self._first_ts
        ended = self._ended
        rows = [e for e in ended if e[8] >= first]
        # a flow whose end record came before its last packets were written (the batch is metered
        # before it is recorded) belongs to the next file too
        self._ended = [e for e in ended if e[8] > self._last_ts]
        n = len(rows) + len(self._open_flows)
        truncated = n > self.index_max_flows or self._ended_overflow
        self._ended_overflow = False
        if truncated:
            self.index_truncated += 1
        flows: list[list[Any]] = []
        hosts: set[str] = set()
        if not truncated:
            # [proto, src, sport, dst, dport, vlan, flow_id, start, end (0: open)]
            flows = rows + list(self._open_flows.values())
            hosts = {e[1] for e in flows}
            hosts.update([e[3] for e in flows])
        return {"version": 1, "file": self._path.name if self._path else "", "probe": self.probe, "shard": self.shard,
                "source": self.source, "datalink": self._fdlt, "first_ts": first, "last_ts": self._last_ts,
                "packets": self._fpackets, "truncated": truncated, "hosts": sorted(hosts), "flows": flows}

    def _rotate(self) -> None:
        """Close the file being written and write its index (within the bound)."""
        if self._fh is None:
            return
        self._io(self._do_close)
        path = self._path
        assert path is not None
        size = self._fsize
        idx = self._index()
        data = _dumps(idx)
        self._fh = None
        self._fsize = 0
        self.closed_bytes += size       # the pcap is now a closed file; its index must fit beside it
        entry = [path, size, self._last_ts]
        self.files.append(entry)
        if not self._make_room(len(data)) or (self.max_bytes and len(data) > self.max_bytes // 8):
            idx.update(truncated=True, hosts=[], flows=[])     # an export reads this file whole
            self.index_truncated += 1
            data = _dumps(idx)
            self._make_room(len(data))
        self._io(self._do_index, path, data)
        entry[1] += len(data)
        self.closed_bytes += len(data)
        self.rotations += 1

    def close(self) -> None:
        """Close the file being written (with its index) and wait for the writer thread."""
        self._rotate()
        self.flush()
        if self._mine() is not None:
            self._cw.shutdown()
            self._cw = None

    # ------------------------------------------------------------------ the cutoff
    def _age(self, ts: float) -> None:
        self._old = self._cur
        self._cur = {}
        self._gen_until = ts + self.idle_s

    # ------------------------------------------------------------------ the batch
    def record(self, recs: Any, dlt: int | None = None) -> None:
        """Append one batch of ``(ts, frame)`` records (capture order) to the store."""
        keep = self.meter.take_keep() if self._meter_keeps else None   # the meter's marks for this batch
        self._drain()
        if not recs:
            return
        dl = self.datalink if dlt is None else dlt
        if self._fh is None or self._fdlt != dl or self._fcut != self.cut_at:
            self._rotate()
            if not self._open(dl, recs[0][0]):
                return
        if self.cutoff:
            if keep is not None and len(keep) == len(recs):
                kept = list(compress(recs, keep))
                self.packets_cut += len(recs) - len(kept)
                recs = kept
            else:     # no marks for this batch (records the meter did not meter just before): the own keys
                recs = self._cut(recs, dl)
        elif type(recs) is not list:
            recs = list(recs)
        n = len(recs)
        i = 0
        file_s = self.file_s or float("inf")
        maxrec = self.file_bytes - PCAP_HEADER_LEN
        while i < n:
            if not self._fpackets:            # an empty file's time starts with its first packet
                self._first_ts = recs[i][0]
            # the records that fit this file (size and time), packed in one step (compiled where built); for
            # the compiled writer only their headers: it copies the frames on its own thread
            if self._use_c:
                heads, frames, nb, j, big, last, npk = _c.pcap_heads(recs, i, self.file_bytes - self._fsize,
                                                                     self._first_ts + file_s, maxrec, self.cut_at, dl)
                data: Any = (heads, frames, nb)
            else:
                data, j, big, last, npk = pcap_pack(recs, i, self.file_bytes - self._fsize, self._first_ts + file_s,
                                                    maxrec, self.cut_at, dl)
            self.packets_too_big += big
            if npk:
                self._write(data, npk, last)
            if j >= n:
                break
            self._rotate()                    # recs[j] belongs to the next file
            if not self._open(dl, recs[j][0]):
                return
            i = j

    def _cut(self, recs: Any, dl: int) -> list[tuple[float, bytes]]:
        """The packets within the first ``cutoff`` bytes of their flow (non-IP packets are all kept)."""
        cutoff = self.cutoff
        fast = dl == 1
        cur = self._cur
        old = self._old
        cget = cur.get
        gen_until = self._gen_until
        max_flows = self.max_flows
        kept: list[tuple[float, bytes]] = []
        keep = kept.append
        cut = 0
        for rec in recs:
            frame = rec[1]
            # the packet's directional flow key, one dict lookup
            if fast and eth4(frame) is not None:
                # plain Ethernet + IPv4 without options, TCP or UDP: protocol, addresses and ports
                # lie at fixed offsets (the recorder's own key; eth4 only says the frame is one)
                key = frame[23:24] + frame[26:38]
            else:
                d = decode(frame, dl)
                if d[0] or d[17] == 2:
                    keep(rec)       # not an IP flow (ARP, ...), or a later fragment: kept
                    continue
                k = bytes((d[2],)) + d[3] + d[4] + _pp(d[5], d[6])
                key = (k, d[13]) if d[13] else k
            e = cget(key)
            if e is None:
                ts = rec[0]
                if ts >= gen_until or len(cur) >= max_flows:
                    self._age(ts)
                    cur, old, gen_until = self._cur, self._old, self._gen_until
                    cget = cur.get
                e = old.get(key)
                if e is None:
                    e = [0]
                cur[key] = e
                cur[_reverse(key)] = e
            if e[0] >= cutoff:
                cut += 1
                continue
            e[0] += len(frame)
            keep(rec)
        self.packets_cut += cut
        return kept

    def _write(self, data: Any, npk: int, last_ts: float) -> None:
        """``data``: the records' bytes (pcap_pack), or for the compiled writer (headers, frames, size)."""
        n = len(data) if type(data) is bytes else data[2]
        if not n or self._fh is None:
            return
        if not self._make_room(n):
            self.write_errors += 1      # cannot happen while file_bytes <= max_bytes / 8
            return
        if type(data) is tuple:           # the compiled writer: queued at once (it bounds its queue in bytes)
            self._c_op(self._do_write, data)
        else:
            self._wpend.append(data)      # queued WRITE_BYTES at a time (_io)
            self._wpend_n += n
            if self._wpend_n >= WRITE_BYTES:
                self._io_pending()
        self._fsize += n
        self.bytes_written += n
        self._fpackets += npk
        self.packets_written += npk
        self._last_ts = last_ts

    def tick(self, now_ts: float) -> None:
        """Periodic (per batch or per tick): age bound and time rotation of an idle live capture."""
        self._drain()
        self._c_errors()
        self.expire(now_ts)
        if self._fh is not None and self.file_s and self._fpackets and now_ts - self._first_ts >= self.file_s:
            self._rotate()
        elif (self._fh is not None and (self._thread is not None or self._cw is not None)
              and time.monotonic() - self._synced >= SYNC_S):
            self._synced = time.monotonic()    # the file being written readable up to its last second or so
            self._io(self._do_sync)

    def stats(self) -> dict[str, int]:
        self._c_errors()
        return {"packets_written": self.packets_written, "bytes_written": self.bytes_written,
                "packets_cut": self.packets_cut, "packets_too_big": self.packets_too_big, "files_written": self.files_written,
                "files_deleted": self.files_deleted, "files_direct": self.files_direct, "files_aged_out": self.files_aged_out,
                "bytes_deleted": self.bytes_deleted, "rotations": self.rotations,
                "write_errors": self.write_errors, "index_truncated": self.index_truncated,
                "stored_bytes": self.stored_bytes(), "stored_files": len(self.files) + (self._fh is not None),
                "cutoff_flows": (len(self._cur) + len(self._old)) // 2, "index_open_flows": len(self._open_flows)}


_LAST_TS = re.compile(rb'"last_ts":(-?[0-9][0-9.eE+-]*)[,}]')


def _index_last_ts(ip: Path) -> float | None:
    """An index file's last_ts: from its head, where the recorder writes it before the (long) host and flow
    lists (a JSON string cannot hold an unescaped quote, so no value can look like the key), else by
    parsing the whole file; None where it cannot be read."""
    try:
        with open(ip, "rb") as fh:
            head = fh.read(4096)
            m = _LAST_TS.search(head)
            if m is not None:
                return float(m.group(1))
            v = orjson.loads(head + fh.read()).get("last_ts", 0.0)
            return float(v)
    except (OSError, ValueError, AttributeError, TypeError):
        return None


class _Done:
    """The compiled writer's barrier: wait(timeout) until its operation ``seq`` is done."""

    __slots__ = ("cw", "seq")

    def __init__(self, cw: Any, seq: int) -> None:
        self.cw, self.seq = cw, seq

    def wait(self, timeout: float | None = None) -> bool:
        return True if self.cw is None else bool(self.cw.wait(self.seq, -1.0 if timeout is None else timeout))


class _Writer:
    """One store file being written, on the recorder's writer thread.

    Given the recorder's buffer (O_DIRECT on, where the filesystem takes it), the bytes go from a page-aligned buffer to
    the disk without the kernel's copy into the page cache, which cost as much CPU as the rest of the
    recorder: writes of whole 4 KB blocks at block offsets, of ``FLUSH`` bytes or more at a time; the last
    partial block stays in the buffer.  ``sync`` (a barrier, the recorder's tick about once a second, close)
    makes that tail readable: it writes the buffer through a second, ordinary descriptor at its offset and
    keeps it, so that the next direct write covers the same block again.  Where the filesystem refuses
    O_DIRECT (at open or at a write), the file is written through the page cache as before."""

    def __init__(self, path: Path, buf: Any) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        self.fd = os.open(path, flags, 0o640)      # the ordinary descriptor (the tail, and the fallback)
        os.fchmod(self.fd, 0o640)
        self.dfd = -1
        if buf is not None and _O_DIRECT:
            try:
                self.dfd = os.open(path, os.O_WRONLY | _O_DIRECT)
            except OSError:                        # e.g. a tmpfs that does not take it
                self.dfd = -1
        self.direct = self.dfd >= 0
        self.mv = memoryview(buf) if self.direct else None   # the recorder's page-aligned buffer (BUF_BYTES)
        self.n = 0        # bytes in the buffer
        self.off = 0      # the file offset of the buffer's first byte (a block boundary)

    def write(self, data: bytes) -> None:
        if not self.direct:
            _write_all(self.fd, data)
            return
        mv, cap = self.mv, BUF_BYTES
        i, n = 0, len(data)
        while i < n:
            k = min(n - i, cap - self.n)
            mv[self.n:self.n + k] = data[i:i + k]
            self.n += k
            i += k
            if self.n >= FLUSH_BYTES:
                self._flush_blocks()

    def _flush_blocks(self) -> None:
        """The buffer's whole blocks to the disk (direct); the partial one moves to the buffer's start."""
        whole = self.n & ~(BLOCK - 1)
        if not whole:
            return
        try:
            w = os.pwrite(self.dfd, self.mv[:whole], self.off)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            w = -1
        if w != whole:                  # refused (EINVAL) or short: this file goes through the page cache
            self._fallback()
            return
        rest = self.n - whole
        self.mv[:rest] = self.mv[whole:self.n]
        self.off += whole
        self.n = rest

    def _fallback(self) -> None:
        _pwrite_all(self.fd, self.mv[:self.n], self.off)
        os.lseek(self.fd, self.off + self.n, os.SEEK_SET)
        self._drop_direct()

    def _drop_direct(self) -> None:
        self.direct = False
        os.close(self.dfd)
        self.dfd = -1
        self.mv.release()
        self.mv = None
        self.n = 0

    def sync(self) -> None:
        if self.direct and self.n:
            self._flush_blocks()
            if self.direct and self.n:
                _pwrite_all(self.fd, self.mv[:self.n], self.off)

    def close(self) -> None:
        try:
            if self.direct:
                self._flush_blocks()
                if self.direct:
                    _pwrite_all(self.fd, self.mv[:self.n], self.off)
                    self._drop_direct()
        finally:
            if self.dfd >= 0:
                os.close(self.dfd)
            if self.mv is not None:
                self.mv.release()
            os.close(self.fd)


def _write_all(fd: int, data: Any) -> None:
    mv = memoryview(data)
    while mv:
        mv = mv[os.write(fd, mv):]


def _pwrite_all(fd: int, data: Any, off: int) -> None:
    mv = memoryview(data)
    while mv:
        w = os.pwrite(fd, mv, off)
        mv, off = mv[w:], off + w


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
                    max_flows=settings.max_flows, idle_s=settings.idle_timeout_s, meter=meter,
                    direct_io=settings.record_direct_io)


pcap_pack = _c.pcap_pack if _c is not None else pcap_pack_py
