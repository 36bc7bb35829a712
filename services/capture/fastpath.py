"""The capture hot path's two compiled steps, with their pure-Python twins.

``services/capture/_fastpath.c`` is built at install time when a C compiler
is there (setup.py, optional).  Without it, or with ``FT_PURE_PYTHON=1`` in
the environment, the twins below are used: the same results, about 1 µs a
packet slower.  ``tests/services/capture/test_fastpath.py`` keeps both equal.

``eth4(frame)``
    ``None`` or ``(key, proto, ip_len, payload_off, payload_len, tcp_flags,
    seq, ack, sport, dport)`` for an untagged Ethernet II / IPv4 frame without
    IP options that is not a fragment and carries TCP (with a sane data
    offset) or UDP (not on a tunnel port).  ``key`` is ``bytes((proto,)) +
    frame[26:38]`` (the protocol, both addresses and both ports, 13 bytes): the
    meter's directional flow key (one small bytes object per flow entry).

``pcap_records(buf, pos, big_endian, ts_unit, limit, max_record, snaplen=0)``
    ``(records, new_pos, bad_caplen, cut, over_origlen, over_snaplen)``: up to
    ``limit`` whole pcap records of ``buf`` from ``pos`` as ``(timestamp, frame)``;
    stops at a record not wholly in ``buf`` or with caplen above ``max_record``
    (``bad_caplen``, else -1).  A record with caplen above its original length is
    kept trimmed to that length, one above a non-zero ``snaplen`` kept as it is;
    ``over_origlen`` / ``over_snaplen`` count them (among the records returned).
    ``cut``: the shortest caplen among the other records read that hold less than
    their packet (0: none), where the file's snaplen does not say it.

``RawBatch(buf, index)``
    A batch of a pcap file's records where they are: ``pcap_records(..., raw=True)``'s index into the
    mapped file.  The compiled meter loop reads the frames there (no time, frame and tuple object per
    packet, which cost ~12 % of a replay); to anyone else it is a sequence of ``(timestamp, frame)``.

``shard_hash(frame, dlt)``
    A symmetric hash of the outer IP addresses (``>= 0``), or -1 for a frame
    without IPv4/IPv6 (shard 0 takes those).  A file replayed by N shard
    processes (``FT_SHARDS``): shard k keeps the frames with
    ``shard_hash % N == k``, so a flow's two directions, its fragments and
    every flow tunnelled between two hosts stay in one shard.
    ``pcap_records(..., snaplen, shard, shards, dlt)`` skips the other shards'
    records in C.

``METER``
    ``services.capture._meter`` (``bind(Flow)``, ``run(...)``: the meter's
    per-packet loop for records of known flows that need only counters), or
    None where it is not built or with ``FT_PURE_PYTHON=1``; see flows.py.

``Collector()``
    A packet callback for pypcap's ``dispatch()``: ``collector(ts, frame, ...)``
    appends ``(ts, bytes(frame))``; ``collector.take()`` returns the list so
    far and starts a new one.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from .decode import _UDP_TUNNEL_PORTS as _TUNNEL_PORTS  # the UDP ports decode() decapsulates (listed in the C too)

__all__ = ["eth4", "pcap_records", "Collector", "eth4_py", "pcap_records_py", "CollectorPy", "COMPILED",
           "shard_hash", "shard_hash_py", "in_shard", "RawBatch", "RAW"]

_u16x3 = struct.Struct("!HHH").unpack_from
_tcp = struct.Struct("!HHIIBB").unpack_from
_ports = struct.Struct("!HH").unpack_from
_REC = {False: struct.Struct("<IIII").unpack_from, True: struct.Struct(">IIII").unpack_from}


def eth4_py(frame: bytes) -> tuple | None:
    n = len(frame)
    if n < 42 or frame[14] != 0x45 or frame[12] != 8 or frame[13] != 0:
        return None
    nbytes, _ipid, fragw = _u16x3(frame, 16)
    if fragw & 0x3FFF or nbytes < 20:
        return None
    end = 14 + nbytes
    if end > n:
        end = n
    proto = frame[23]
    if proto == 6:
        if end < 54:
            return None
        sp, dp, seq, ack, doff, flags = _tcp(frame, 34)
        po = 34 + ((doff >> 4) << 2)
        if po < 54 or po > end:
            return None
        return b"\x06" + frame[26:38], 6, nbytes, po, end - po, flags, seq, ack, sp, dp
    if proto == 17:
        sp, dp = _ports(frame, 34)
        if sp in _TUNNEL_PORTS or dp in _TUNNEL_PORTS:
            return None
        return b"\x11" + frame[26:38], 17, nbytes, 42, end - 42, 0, 0, 0, sp, dp
    return None


_M64 = (1 << 64) - 1
_VLAN = (0x8100, 0x88A8, 0x9100)


def _fmix64(v: int) -> int:
    v &= _M64
    v ^= v >> 33
    v = (v * 0xFF51AFD7ED558CCD) & _M64
    v ^= v >> 33
    v = (v * 0xC4CEB9FE1A85EC53) & _M64
    return v ^ (v >> 33)


def _ip_offset(f: bytes, dlt: int) -> tuple[int, int]:
    """(offset of the IP header, version 4/6) or (-1, 0)."""
    n = len(f)
    et = 0
    if dlt == 1:
        if n < 14:
            return -1, 0
        et, off = (f[12] << 8) | f[13], 14
        while et in _VLAN and n >= off + 4:
            et, off = (f[off + 2] << 8) | f[off + 3], off + 4
        if et == 0x8864:
            if n < off + 8:
                return -1, 0
            ppp = (f[off + 6] << 8) | f[off + 7]
            off += 8
            et = 0x0800 if ppp == 0x0021 else 0x86DD if ppp == 0x0057 else 0
        elif et in (0x8847, 0x8848):
            while n >= off + 4:
                bottom = f[off + 2] & 1
                off += 4
                if bottom:
                    break
            et = 0
            if n > off:
                et = 0x0800 if f[off] >> 4 == 4 else 0x86DD if f[off] >> 4 == 6 else 0
        return (off, 4) if et == 0x0800 else (off, 6) if et == 0x86DD else (-1, 0)
    if dlt == 113:
        if n < 16:
            return -1, 0
        et, off = (f[14] << 8) | f[15], 16
    elif dlt == 276:
        if n < 20:
            return -1, 0
        et, off = (f[0] << 8) | f[1], 20
    elif dlt in (0, 108):
        off = 4
    elif dlt in (12, 14, 101):
        off = 0
    elif dlt == 228:
        et, off = 0x0800, 0
    elif dlt == 229:
        et, off = 0x86DD, 0
    else:
        return -1, 0
    if et == 0 and n > off:
        et = 0x0800 if f[off] >> 4 == 4 else 0x86DD if f[off] >> 4 == 6 else 0
    return (off, 4) if et == 0x0800 else (off, 6) if et == 0x86DD else (-1, 0)


def shard_hash_py(frame: bytes, dlt: int) -> int:
    off, ver = _ip_offset(frame, dlt)
    if ver == 4 and len(frame) >= off + 20:
        a = _fmix64(int.from_bytes(frame[off + 12:off + 16], "big"))
        b = _fmix64(int.from_bytes(frame[off + 16:off + 20], "big"))
    elif ver == 6 and len(frame) >= off + 40:
        w = [int.from_bytes(frame[off + o:off + o + 8], "big") for o in (8, 16, 24, 32)]
        a = _fmix64(w[0] ^ _fmix64(w[1]))
        b = _fmix64(w[2] ^ _fmix64(w[3]))
    else:
        return -1
    return _fmix64(a + b) >> 1


def pcap_records_py(buf: bytes, pos: int, big_endian: bool, ts_unit: float, limit: int,
                    max_record: int, snaplen: int = 0, shard: int = 0, shards: int = 1,
                    dlt: int = 1) -> tuple[list[tuple[float, bytes]], int, int, int, int, int]:
    if shards < 1 or not 0 <= shard < shards:
        raise ValueError("pcap_records: need 0 <= shard < shards")
    unpack = _REC[bool(big_endian)]
    out: list[tuple[float, bytes]] = []
    blen = len(buf)
    pos = max(pos, 0)
    cut = over_orig = over_snap = 0
    while len(out) < limit and blen - pos >= 16:
        sec, frac, caplen, origlen = unpack(buf, pos)
        if caplen > max_record:
            return out, pos, caplen, cut, over_orig, over_snap
        end = pos + 16 + caplen
        if end > blen:
            break
        over_o = caplen > origlen
        over_s = bool(snaplen) and caplen > snaplen
        frame_end = pos + 16 + origlen if over_o else end
        if not over_o and not over_s and caplen < origlen and (not cut or caplen < cut):
            cut = caplen
        if shards > 1 and not in_shard_py(buf[pos + 16:frame_end], dlt, shard, shards):
            pos = end
            continue
        over_orig += over_o
        over_snap += over_s
        out.append((sec + frac * ts_unit, buf[pos + 16:frame_end]))
        pos = end
    return out, pos, -1, cut, over_orig, over_snap


def shard_of_hash(h: int, shards: int) -> int:
    """The shard of a ``shard_hash`` value: frames without IP (-1) go to shard 0 (as in the C)."""
    return 0 if h < 0 else h % shards


def in_shard_py(frame: bytes, dlt: int, shard: int, shards: int) -> bool:
    return shard_of_hash(shard_hash_py(frame, dlt), shards) == shard


class CollectorPy:
    __slots__ = ("_list",)

    def __init__(self) -> None:
        self._list: list[tuple[float, bytes]] = []

    def __call__(self, ts: float, frame: Any, *args: Any) -> None:
        self._list.append((ts, bytes(frame)))

    def take(self) -> list[tuple[float, bytes]]:
        out, self._list = self._list, []
        return out


_c: Any = None
if os.environ.get("FT_PURE_PYTHON", "").lower() not in ("1", "true", "yes"):
    try:
        from services.capture import _fastpath as _c  # type: ignore[no-redef]
    except ImportError:  # not built (no C compiler at install time)
        _c = None

_m: Any = None
if _c is not None:
    try:
        from services.capture import _meter as _m  # type: ignore[no-redef]
    except ImportError:  # built before _meter.c existed: the meter runs in Python
        _m = None

COMPILED = _c is not None
#: the compiled meter loop (services/capture/_meter.c) or None: FlowMeter then meters every record in Python
METER = _m
eth4 = _c.eth4 if COMPILED else eth4_py
pcap_records = _c.pcap_records if COMPILED else pcap_records_py
Collector = _c.Collector if COMPILED else CollectorPy
shard_hash = _c.shard_hash if COMPILED and hasattr(_c, "shard_hash") else shard_hash_py


_ENTRY = struct.Struct("=dqq")   # an index entry: time, frame offset, frame length (RawEntry in both C modules)
#: whether pcap_records can return raw batches: the compiled reader and meter loop both take them, with
#: index entries of the same size as here
RAW = (COMPILED and getattr(_c, "RAW_ENTRY", 0) == _ENTRY.size and _m is not None
       and getattr(_m, "RAW_BATCHES", 0) == _ENTRY.size)
#: the compiled reader that makes them (a reader patched in for tests makes lists)
RAW_READER = _c.pcap_records if RAW else None


class RawBatch:
    """Records of a pcap file where they are (``buf``, the mapped file) by ``index`` (``pcap_records``' raw
    index): what the compiled meter loop reads without an object per packet.  Anything else sees a sequence
    of ``(timestamp, frame)`` records, made on first use.  It holds ``buf``: a source's mapping stays open
    while a batch of it does (FileSource.close)."""

    __slots__ = ("buf", "index", "n", "_recs")

    def __init__(self, buf: Any, index: bytes) -> None:
        self.buf = buf
        self.index = index
        self.n = len(index) // _ENTRY.size
        self._recs: list[tuple[float, bytes]] | None = None

    def records(self) -> list[tuple[float, bytes]]:
        if self._recs is None:
            self._recs = _c.raw_records(self.buf, self.index)
        return self._recs

    def __len__(self) -> int:
        return self.n

    def __bool__(self) -> bool:
        return self.n > 0

    def __iter__(self) -> Any:
        return iter(self.records())

    def __getitem__(self, i: Any) -> Any:
        if self._recs is not None or not isinstance(i, int):
            return self.records()[i]
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError("RawBatch index out of range")
        ts, off, ln = _ENTRY.unpack_from(self.index, i * _ENTRY.size)
        return ts, bytes(self.buf[off:off + ln])


def in_shard(frame: bytes, dlt: int, shard: int, shards: int) -> bool:
    """Whether shard ``shard`` of ``shards`` replays ``frame`` (records the compiled reader did not take)."""
    return shard_of_hash(shard_hash(frame, dlt), shards) == shard
