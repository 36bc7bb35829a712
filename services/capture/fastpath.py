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
    ``(records, new_pos, bad_caplen)``: up to ``limit`` whole pcap records of
    ``buf`` from ``pos`` as ``(timestamp, frame)``; stops at a record not
    wholly in ``buf`` or with caplen above ``max_record`` (``bad_caplen``,
    else -1), or at a record with caplen above its original length or above
    a non-zero ``snaplen`` (``bad_caplen`` -2: the caller reads that one).

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

__all__ = ["eth4", "pcap_records", "Collector", "eth4_py", "pcap_records_py", "CollectorPy", "COMPILED"]

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


def pcap_records_py(buf: bytes, pos: int, big_endian: bool, ts_unit: float, limit: int,
                    max_record: int, snaplen: int = 0) -> tuple[list[tuple[float, bytes]], int, int]:
    unpack = _REC[bool(big_endian)]
    out: list[tuple[float, bytes]] = []
    blen = len(buf)
    pos = max(pos, 0)
    while len(out) < limit and blen - pos >= 16:
        sec, frac, caplen, origlen = unpack(buf, pos)
        if caplen > max_record:
            return out, pos, caplen
        if caplen > origlen or (snaplen and caplen > snaplen):
            return out, pos, -2
        end = pos + 16 + caplen
        if end > blen:
            break
        out.append((sec + frac * ts_unit, buf[pos + 16:end]))
        pos = end
    return out, pos, -1


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
