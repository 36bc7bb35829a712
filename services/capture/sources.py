"""Packet sources: capture files (pcap, pcapng, gzip'd) and live interfaces (pypcap).

File sources are parsed here with ``struct`` rather than with dpkt's readers:
dpkt builds a header object per record, which costs more than the rest of the
hot path.  The formats are small (pcap: a 24-byte file header and 16-byte
record headers; pcapng: typed blocks) and the parser detects the format by
its magic number, never by the file name.

A truncated or corrupt file yields every record before the damage, then stops
and reports it (``errors``, ``error``) instead of raising mid-iteration; a
file that is not a capture at all raises ``CaptureFileError`` when opened.
"""

from __future__ import annotations

import gzip
import mmap
import os
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .fastpath import RAW_READER, Collector, RawBatch, in_shard, pcap_records

__all__ = ["CaptureFileError", "FileSource", "LiveSource", "open_source", "DLT_NAMES", "check_settings"]

CHUNK = 1 << 20
MAX_RECORD = 256 * 1024 * 1024  # a caplen/block above this is corruption, not a packet
MAP_RELEASE = 16 << 20   # a mapped file: pages read past are given back to the kernel every this many bytes

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_GZIP_MAGIC = b"\x1f\x8b"

DLT_NAMES = {
    0: "NULL", 1: "EN10MB", 9: "PPP", 12: "RAW", 14: "RAW", 50: "PPP_SERIAL", 101: "RAW",
    104: "C_HDLC", 105: "IEEE802_11", 108: "LOOP", 113: "LINUX_SLL", 127: "IEEE802_11_RADIO",
    192: "PPI", 228: "IPV4", 229: "IPV6", 276: "LINUX_SLL2",
}


class CaptureFileError(Exception):
    """A file that cannot be read as a capture at all (missing, unreadable, not pcap/pcapng),
    or a live source that cannot be opened; ``setting`` names the variable at fault."""

    def __init__(self, msg: str, setting: str = "FT_PCAP") -> None:
        super().__init__(msg)
        self.setting = setting


def check_settings(settings: object) -> None:
    """Before capture connects anything: what its settings name must exist.

    Raises ``shared.runner.ConfigError`` with one line naming the variable: no
    source at all, a capture file that cannot be opened, an interface that does
    not exist, a BPF filter that does not compile.
    """
    import socket

    from shared.runner import ConfigError

    iface, files, bpf = getattr(settings, "iface", ""), getattr(settings, "pcap", []), getattr(settings, "bpf", "")
    if not iface and not files:
        raise ConfigError("FT_IFACE / FT_PCAP: set FT_IFACE (live) or FT_PCAP (files)")
    dlt = 1
    for path in files:
        try:
            src = open_source(path)
        except CaptureFileError as exc:
            raise ConfigError(f"FT_PCAP: {exc}") from None
        dlt = src.datalink if src.datalink >= 0 else dlt
        src.close()
    if iface and not files:
        try:
            socket.if_nametoindex(iface)
        except OSError:
            raise ConfigError(f"FT_IFACE: no network interface {iface!r}") from None
    if bpf:
        import pcap

        try:
            pcap.bpf(bpf.encode(), dlt)
        except Exception as exc:  # noqa: BLE001 - pypcap raises OSError or ValueError
            raise ConfigError(f"FT_BPF: {bpf[:100]!r} does not compile: {exc}") from None


def _open_maybe_gzip(path: str) -> tuple[BinaryIO, bytes]:
    try:
        fh: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by FileSource.close
    except OSError as exc:
        raise CaptureFileError(f"{path}: {exc.strerror or exc}") from None
    try:
        head = fh.read(4)
    except OSError as exc:
        fh.close()
        raise CaptureFileError(f"{path}: {exc.strerror or exc}") from None
    if head[:2] == _GZIP_MAGIC:
        fh.close()
        gz = gzip.open(path, "rb")
        try:
            head = gz.read(4)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            gz.close()
            raise CaptureFileError(f"{path}: bad gzip data ({exc})") from None
        return gz, head  # type: ignore[return-value]
    return fh, head


class FileSource:
    """Iterate ``(ts, frame)`` over a pcap/pcapng file, plain or gzip'd.

    ``datalink`` is the link type of the file (pcapng: of the first interface;
    ``iter_dlt`` yields the link type per packet for multi-interface files).
    After iteration ``packets`` holds the number of records yielded, ``errors``
    the number of problems met (0 or 1: a damaged file stops at the damage) and
    ``error`` a one-line description.
    """

    def __init__(self, path: str | os.PathLike[str], shard: int = 0, shards: int = 1):
        if shards < 1 or not 0 <= shard < shards:
            raise ValueError(f"shard {shard} of {shards}: need 0 <= shard < shards")
        self.path = str(path)
        #: replay only this shard's packets (fastpath.shard_hash: a symmetric hash of the IP addresses)
        self.shard, self.shards = shard, shards
        self.name = os.path.basename(self.path)
        try:
            self.size = os.path.getsize(self.path)   # bytes on disk (compressed for .gz): progress()
        except OSError:
            self.size = 0
        self._fh, head = _open_maybe_gzip(self.path)
        self.errors = 0
        self.error: str | None = None
        self.packets = 0
        #: records taken with a length anomaly: caplen_over_origlen (frame trimmed to the original
        #: length), caplen_over_snaplen (kept); reported in the capture stats
        self.counters: dict[str, int] = {}
        self.format: str
        self.datalink: int = -1
        self._buf: bytes | mmap.mmap = head
        self._pos = 0
        self._base = 0   # the file offset of _buf[0] (uncompressed for .gz files), for error messages
        self._cut_seen = 0   # the shortest record so far that holds less than its packet (cut_at)
        self._eof = False
        # A plain file is mapped, not read: its records are parsed where the kernel has them, without a
        # read() copy and a join per megabyte (3-4 % of a replay's CPU).  A gzip'd file, or one that cannot
        # be mapped (a pipe, an empty file), is read in chunks (_fill).
        self._mm: mmap.mmap | None = None
        self._released = 0   # mapped: bytes at the start whose pages were given back (_release)
        if not isinstance(self._fh, gzip.GzipFile):
            try:
                self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError, AttributeError):
                self._mm = None
            if self._mm is not None and self._mm[:len(head)] == head:
                self._buf = self._mm
                self._eof = True   # all of it is "buffered"
                if hasattr(self._mm, "madvise") and hasattr(mmap, "MADV_SEQUENTIAL"):
                    self._mm.madvise(mmap.MADV_SEQUENTIAL)
            elif self._mm is not None:   # the file changed under us: read it
                self._mm.close()
                self._mm = None
        if len(head) < 4:
            self.close()
            raise CaptureFileError(f"{self.path}: not a pcap/pcapng file")
        if head in _PCAP_MAGICS:
            self.format = "pcap"
            self._endian, self._tsunit = _PCAP_MAGICS[head]
            if not self._fill(24):
                self.close()
                raise CaptureFileError(f"{self.path}: truncated pcap file header")
            _vmaj, _vmin, _tz, _sig, self.snaplen, linktype = struct.unpack_from(self._endian + "HHiIII", self._buf, 4)
            self.datalink = linktype & 0xFFFF  # upper bits may carry FCS information
            self._pos = 24
        elif head == _PCAPNG_MAGIC:
            if not self._fill(12) or self._buf[8:12] not in (b"\x4d\x3c\x2b\x1a", b"\x1a\x2b\x3c\x4d"):
                self.close()
                raise CaptureFileError(f"{self.path}: not a capture file (pcapng section header without "
                                       "a valid byte-order magic)")
            self.format = "pcapng"
            self._endian = "<"
            self._ifaces: list[tuple[int, float, float, int]] = []  # (dlt, ts unit, ts offset, snaplen)
            # read blocks up to the first interface description for datalink
            self._pending: list[tuple[float, bytes, int]] = []
            self._pcapng_prime()
        else:
            self.close()
            raise CaptureFileError(f"{self.path}: not a pcap/pcapng file")

    @property
    def cut_at(self) -> int:
        """The length at which the file's frames may have been cut by their capture (its snap length;
        pcapng: its interfaces' largest, 0 when one has none; lower when records read so far were cut
        shorter, as in files whose header does not say their capture's snap length): frames this long get
        an original length from their IP header when they are written to a pcap again
        (``evidence.wire_len``); 0: never."""
        if self.format == "pcap":
            snap = self.snaplen if 0 < self.snaplen <= MAX_RECORD else 0
        else:
            snaps = [i[3] for i in getattr(self, "_ifaces", ())]
            snap = max(snaps) if snaps and min(snaps) > 0 else 0
        seen = self._cut_seen    # records read so far that hold less than their packet: cut there, whatever
        return min(snap, seen) if snap and seen else snap or seen   # the header says

    def progress(self) -> tuple[int, int]:
        """(bytes of the file read so far, its size on disk); for .gz files both count compressed bytes."""
        if self._mm is not None:
            return min(self._pos, self.size), self.size
        fh = getattr(self._fh, "fileobj", None) or self._fh   # a GzipFile reads from .fileobj
        try:
            return min(fh.tell(), self.size), self.size
        except (OSError, ValueError, AttributeError):   # closed
            return self.size, self.size

    # ------------------------------------------------------------ buffering
    def _fill(self, need: int) -> bool:
        """Make sure ``need`` bytes are buffered at ``_pos``; False at EOF."""
        have = len(self._buf) - self._pos
        if have >= need:
            return True
        if self._eof:
            return False
        parts = [self._buf[self._pos:]]
        self._base += self._pos
        self._pos = 0
        while have < need:
            try:
                data = self._fh.read(max(CHUNK, need - have))
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                self._fail(f"read error: {exc}")
                self._eof = True
                break
            if not data:
                self._eof = True
                break
            parts.append(data)
            have += len(data)
        self._buf = b"".join(parts)
        return have >= need

    def _anomaly(self, over_origlen: int, over_snaplen: int) -> None:
        """Count records longer than the packet they claim to hold (kept trimmed to it) or than the snaplen."""
        c = self.counters
        if over_origlen:
            c["caplen_over_origlen"] = c.get("caplen_over_origlen", 0) + over_origlen
        if over_snaplen:
            c["caplen_over_snaplen"] = c.get("caplen_over_snaplen", 0) + over_snaplen

    def _where(self) -> str:
        """Where reading stopped, for a damaged file's message: after how many packets (of this shard's,
        which are all a sharded replay counts) and at which byte of the file."""
        whose = " of this shard's" if self.shards > 1 else ""
        return f" after {self.packets}{whose} packets, at byte {self._base + self._pos}"

    def _fail(self, msg: str) -> None:
        if self.error is None:
            self.error = f"{self.path}: {msg}"
        self.errors += 1

    def close(self) -> None:
        if self._mm is not None:
            self._buf = b""
            # a batch of records still held (fastpath.RawBatch reads them in the mapping) keeps the mapping
            # open: it is closed with the last of them
            if sys.getrefcount(self._mm) <= 2:
                try:
                    self._mm.close()
                except Exception:  # noqa: BLE001 - closing must not fail (a view still held: the GC closes it)
                    pass
        try:
            self._fh.close()
        except Exception:  # noqa: BLE001 - closing must not fail
            pass

    def _release(self) -> None:
        """A mapped file: give back the pages of what has been parsed (whole pages, every MAP_RELEASE
        bytes), so that a long replay's resident memory does not grow with the file."""
        done = self._pos - self._pos % mmap.PAGESIZE
        if done - self._released >= MAP_RELEASE and hasattr(mmap, "MADV_DONTNEED"):
            try:
                self._mm.madvise(mmap.MADV_DONTNEED, self._released, done - self._released)   # type: ignore[union-attr]
            except (OSError, ValueError):
                pass
            self._released = done

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ pcap
    def _pcap_batches(self, n: int) -> Iterator[list[tuple[float, bytes]]]:
        """Batches of up to ``n`` ``(ts, frame)`` records (compiled parsing where built): lists, or where the
        meter loop is compiled ``RawBatch`` sequences of them."""
        big = self._endian == ">"
        unit = self._tsunit
        head = struct.Struct(self._endian + "IIII").unpack_from
        low = CHUNK // 2
        snaplen = self.snaplen if 0 < self.snaplen <= MAX_RECORD else 0
        shard, shards, dlt = self.shard, self.shards, self.datalink
        mine = (lambda frame: in_shard(frame, dlt, shard, shards)) if shards > 1 else (lambda frame: True)
        raw = RAW_READER is not None and pcap_records is RAW_READER   # not a reader a test patched in
        while True:
            if len(self._buf) - self._pos < low and not self._eof:
                self._fill(CHUNK)  # keep batches whole: read ahead before the buffer runs dry
            before = self._pos
            if raw:   # the records where they are, for the compiled meter loop (fastpath.RawBatch)
                index, pos, bad, cut, over_o, over_s = pcap_records(self._buf, before, big, unit, n, MAX_RECORD,
                                                                    snaplen, shard, shards, dlt, True)
                recs = RawBatch(self._buf, index) if index else []
            else:
                recs, pos, bad, cut, over_o, over_s = pcap_records(self._buf, before, big, unit, n, MAX_RECORD,
                                                                   snaplen, shard, shards, dlt)
            self._pos = pos
            if over_o or over_s:   # caplen above the original length (trimmed) or the snaplen
                self._anomaly(over_o, over_s)
            if self._mm is not None:
                self._release()
            if cut and (not self._cut_seen or cut < self._cut_seen):
                self._cut_seen = cut
            if recs:
                self.packets += len(recs)
                yield recs
                continue
            if pos > before and bad == -1:   # only other shards' records: read on
                continue
            if bad >= 0:
                self._fail(f"corrupt record length {bad}{self._where()}")
                return
            # the next record is not wholly buffered
            if not self._fill(16):
                if len(self._buf) - self._pos:
                    self._fail(f"truncated record header{self._where()}")
                return
            sec, frac, caplen, _olen = head(self._buf, self._pos)
            if caplen > MAX_RECORD:
                self._fail(f"corrupt record length {caplen}{self._where()}")
                return
            if not self._fill(16 + caplen):
                # the file ends inside this record: yield what is there, then report
                part = self._buf[self._pos + 16:]
                self._fail(f"truncated packet data{self._where()}")
                self._pos = len(self._buf)
                if part and mine(part):
                    self.packets += 1
                    yield [(sec + frac * unit, part)]
                return

    # ------------------------------------------------------------ pcapng
    def _pcapng_prime(self) -> None:
        """Read blocks until the first interface is known (to expose datalink)."""
        gen = self._iter_pcapng_blocks()
        self._ng_gen = gen
        for item in gen:
            self._pending.append(item)
            if self._ifaces:
                break
            if len(self._pending) > 1000:
                break
        if not self._ifaces and self.error is None and not self._pending:
            # no interface at all: an empty/damaged section header
            if self.errors:
                return
        if self._ifaces:
            self.datalink = self._ifaces[0][0]

    def _iter_pcapng_blocks(self) -> Iterator[tuple[float, bytes, int]]:
        first = True
        while True:
            if self._mm is not None:
                self._release()
            if not self._fill(12):
                if len(self._buf) - self._pos:
                    self._fail(f"truncated block header{self._where()}")
                return
            buf = self._buf
            pos = self._pos
            btype_raw = buf[pos:pos + 4]
            if btype_raw == _PCAPNG_MAGIC:
                bom = buf[pos + 8:pos + 12]
                if bom == b"\x4d\x3c\x2b\x1a":
                    self._endian = "<"
                elif bom == b"\x1a\x2b\x3c\x4d":
                    self._endian = ">"
                else:
                    self._fail("bad pcapng byte-order magic")
                    return
                self._ifaces = []
            elif first:
                self._fail("pcapng does not start with a section header")
                return
            first = False
            e = self._endian
            btype, blen = struct.unpack_from(e + "II", buf, pos)
            if blen < 12 or blen % 4 or blen > MAX_RECORD:
                self._fail(f"corrupt block length {blen}{self._where()}")
                return
            if not self._fill(blen):
                self._fail(f"truncated block{self._where()}")
                return
            buf = self._buf
            pos = self._pos
            self._pos = pos + blen
            body = pos + 8
            bend = pos + blen - 4
            if btype == 6:  # enhanced packet block
                if bend - body < 20:
                    self._fail("short enhanced packet block")
                    continue
                ifid, hi, lo, caplen, olen = struct.unpack_from(e + "IIIII", buf, body)
                if ifid >= len(self._ifaces) or body + 20 + caplen > bend:
                    self._fail("bad enhanced packet block")
                    continue
                dlt, unit, off, snap = self._ifaces[ifid]
                if caplen > olen or (snap and caplen > snap):
                    self._anomaly(int(caplen > olen), int(bool(snap) and caplen > snap))
                    caplen = min(caplen, olen)
                elif caplen < olen and (not self._cut_seen or caplen < self._cut_seen):
                    self._cut_seen = caplen
                self.packets += 1
                yield ((hi << 32) | lo) * unit + off, buf[body + 20:body + 20 + caplen], dlt
            elif btype == 3:  # simple packet block
                if not self._ifaces or bend - body < 4:
                    self._fail("bad simple packet block")
                    continue
                (olen,) = struct.unpack_from(e + "I", buf, body)
                dlt, unit, off, snap = self._ifaces[0]
                caplen = min(olen, bend - body - 4)
                if snap:
                    caplen = min(caplen, snap)
                self.packets += 1
                yield 0.0, buf[body + 4:body + 4 + caplen], dlt
            elif btype == 2:  # obsolete packet block
                if bend - body < 20:
                    self._fail("short packet block")
                    continue
                ifid, _drops, hi, lo, caplen, _olen = struct.unpack_from(e + "HHIIII", buf, body)
                if ifid >= len(self._ifaces) or body + 20 + caplen > bend:
                    self._fail("bad packet block")
                    continue
                dlt, unit, off, _snap = self._ifaces[ifid]
                self.packets += 1
                yield ((hi << 32) | lo) * unit + off, buf[body + 20:body + 20 + caplen], dlt
            elif btype == 1:  # interface description
                if bend - body < 8:
                    self._fail("short interface description block")
                    return
                linktype, _res, snap = struct.unpack_from(e + "HHI", buf, body)
                unit, offset = 1e-6, 0.0
                o = body + 8
                while o + 4 <= bend:
                    code, olen = struct.unpack_from(e + "HH", buf, o)
                    if code == 0:
                        break
                    val = buf[o + 4:o + 4 + olen]
                    if code == 9 and olen >= 1:  # if_tsresol
                        r = val[0]
                        unit = 2.0 ** -(r & 0x7F) if r & 0x80 else 10.0 ** -r
                    elif code == 14 and olen >= 8:  # if_tsoffset (seconds)
                        offset = float(struct.unpack_from(e + "q", val, 0)[0])
                    o += 4 + ((olen + 3) & ~3)
                self._ifaces.append((linktype, unit, offset, snap))
                if self.datalink < 0:
                    self.datalink = linktype
            # other blocks (statistics, name resolution, custom) are skipped

    def _iter_pcapng(self) -> Iterator[tuple[float, bytes, int]]:
        pending = self._pending
        self._pending = []
        yield from pending
        yield from self._ng_gen

    # ------------------------------------------------------------ public
    def batches(self, n: int = 2048) -> Iterator[tuple[int, list[tuple[float, bytes]]]]:
        """Yield ``(datalink, records)``: up to ``n`` ``(ts, frame)`` records of one link type
        at a time (the replay hot path: one generator step per batch); never raises on damaged data."""
        try:
            if self.format == "pcap":
                dlt = self.datalink
                for recs in self._pcap_batches(n):
                    yield dlt, recs
                return
            cur = -1
            recs: list[tuple[float, bytes]] = []
            damage = None
            try:
                shard, shards = self.shard, self.shards
                for ts, frame, dlt in self._iter_pcapng():
                    if shards > 1 and not in_shard(frame, dlt, shard, shards):
                        self.packets -= 1     # counted as read by _iter_pcapng: another shard's
                        continue
                    if dlt != cur or len(recs) >= n:
                        if recs:
                            yield cur, recs
                            recs = []
                        cur = dlt
                    recs.append((ts, frame))
            except (struct.error, ValueError, IndexError) as exc:  # defensive: damaged data
                damage = exc
            if recs:
                yield cur, recs
            if damage is not None:
                self._fail(f"damaged capture: {damage}")
        except (struct.error, ValueError, IndexError) as exc:  # defensive: damaged data
            self._fail(f"damaged capture: {exc}")
        finally:
            self.close()

    def iter_dlt(self) -> Iterator[tuple[float, bytes, int]]:
        """Yield ``(ts, frame, datalink)``; never raises on damaged data."""
        for dlt, recs in self.batches(4096):
            for ts, frame in recs:
                yield ts, frame, dlt

    def __iter__(self) -> Iterator[tuple[float, bytes]]:
        """Yield ``(ts, frame)``; never raises on damaged data."""
        for _dlt, recs in self.batches(4096):
            yield from recs


def open_source(path: str | os.PathLike[str], shard: int = 0, shards: int = 1) -> FileSource:
    """Open a capture file (raises CaptureFileError when it is not one); with ``shards`` > 1 it
    yields only shard ``shard``'s packets."""
    if isinstance(path, Path):
        path = str(path)
    return FileSource(path, shard, shards)


def _ifindex(name: str) -> int:
    import socket

    try:
        return socket.if_nametoindex(name)
    except (OSError, ValueError):
        return 0


class LiveSource:
    """A live interface through pypcap, read without blocking.

    Register ``fileno()`` with the asyncio loop (``loop.add_reader``) and call
    ``read_available()`` when it is readable: it returns the packets that are
    already buffered, never waits.  Blocking reads on these machines can hang
    forever while holding the GIL, hence non-blocking mode always.
    """

    def __init__(
        self,
        name: str,
        bpf: str = "",
        snaplen: int = 2048,
        promisc: bool = True,
        immediate: bool = True,
        buffer_mb: int = 0,
        direction_in: bool = False,
        timeout_ms: int = 50,
    ):
        import pcap  # local import: file replay must not need libpcap privileges

        self.name = name
        self._closed = False
        try:
            self._p = pcap.pcap(
                name=name,
                snaplen=snaplen,
                promisc=promisc,
                immediate=immediate,
                timeout_ms=timeout_ms,
                buffer_size=buffer_mb * 1024 * 1024 if buffer_mb else 0,
            )
        except OSError as exc:
            raise CaptureFileError(f"{name}: cannot open interface: {exc}", "FT_IFACE") from None
        if bpf:
            try:
                self._p.setfilter(bpf)
            except OSError as exc:
                self._p.close()
                raise CaptureFileError(f"{name}: bad BPF filter {bpf!r}: {exc}", "FT_BPF") from None
        if direction_in:
            self._p.setdirection(pcap.PCAP_D_IN)
        self._p.setnonblock(True)
        self.ifindex = _ifindex(name)   # 0: not a plain interface name ("any", ...): not watched
        self._gone = ""
        self.datalink: int = self._p.datalink()
        self.snaplen = snaplen
        self._collect = Collector()   # dispatch()'s per-packet callback (compiled where built)
        self.packets = 0
        self._error = ""

    @property
    def cut_at(self) -> int:
        """Frames of the snap length may have been cut (``FileSource.cut_at``)."""
        return self.snaplen

    def fileno(self) -> int:
        return self._p.fileno()

    def read_available(self, max_n: int = 10000) -> list[tuple[float, bytes]]:
        """Packets already buffered by the kernel, at most ``max_n``; [] when none."""
        try:
            self._p.dispatch(max_n, self._collect)
        except OSError as exc:
            # the interface went away or down: return what we have; the caller asks gone()
            self._error = str(exc)
        batch = self._collect.take()
        self.packets += len(batch)
        return batch

    def gone(self) -> str:
        """'' while the interface is there, else why capture on it is over.

        libpcap keeps reading nothing, without an error, from an interface that
        was deleted, so the caller asks this every second or so: the name must
        still belong to the interface the handle was opened on (a new interface
        of the same name has another index and is never captured by this handle).
        """
        if self._gone or not self.ifindex:
            return self._gone
        now = _ifindex(self.name)
        if now != self.ifindex:
            self._gone = (f"interface {self.name} disappeared" if not now else
                          f"interface {self.name} was replaced (index {self.ifindex} -> {now})")
            if self._error:
                self._gone += f" ({self._error})"
        return self._gone

    def stats(self) -> dict[str, int]:
        """Kernel counters: received, dropped (buffer full), dropped by the interface."""
        if self._closed:   # pypcap's stats() on a closed handle dereferences freed memory
            return {"received": 0, "dropped_kernel": 0, "dropped_interface": 0}
        try:
            recv, drop, ifdrop = self._p.stats()
        except OSError:
            return {"received": 0, "dropped_kernel": 0, "dropped_interface": 0}
        return {"received": int(recv), "dropped_kernel": int(drop), "dropped_interface": int(ifdrop)}

    def join_fanout(self, group_id: int, defrag: bool = True) -> None:
        """Share the interface with other processes by AF_PACKET fanout (symmetric flow hash)."""
        from .shard import join_fanout

        join_fanout(self._p.fileno(), group_id, defrag=defrag)

    def sendpacket(self, frame: bytes) -> None:
        self._p.sendpacket(frame)

    def close(self) -> None:
        self._closed = True
        try:
            self._p.close()
        except Exception:  # noqa: BLE001
            pass
