"""Small helpers shared by the breadth dissectors (everything but HTTP/TLS/QUIC/DNS/SSH).

All helpers are bounds-checked: they return a neutral value instead of raising
on short or hostile input.
"""

from __future__ import annotations

from collections.abc import Iterator

from shared.models import FlowSample, Verdict
from services.classify.dissectors.base import Dissector, Match

TCP = frozenset({"TCP"})
UDP = frozenset({"UDP"})
TCP_UDP = frozenset({"TCP", "UDP"})


def u16(b: bytes, o: int) -> int:
    """Big-endian 16-bit value at o, or -1 when out of range."""
    if o < 0 or o + 2 > len(b):
        return -1
    return (b[o] << 8) | b[o + 1]


def u32(b: bytes, o: int) -> int:
    """Big-endian 32-bit value at o, or -1 when out of range."""
    if o < 0 or o + 4 > len(b):
        return -1
    return int.from_bytes(b[o:o + 4], "big")


def u16le(b: bytes, o: int) -> int:
    if o < 0 or o + 2 > len(b):
        return -1
    return b[o] | (b[o + 1] << 8)


def u32le(b: bytes, o: int) -> int:
    if o < 0 or o + 4 > len(b):
        return -1
    return int.from_bytes(b[o:o + 4], "little")


#: the sample the engine is classifying (``classifying``) and, once asked for, its payloads in arrival
#: order: the dissectors ask ``ordered`` for them about 40 times per sample, each time a new generator
_current: list = [None, None]


def classifying(s: FlowSample | None) -> None:
    """The engine says which sample its dissectors are looking at now (None: none).  While it is set,
    ``ordered(s, n)`` for that very object is a slice of one list built once; any other sample is
    walked as before.  The engine does not change a sample while it classifies it, nor do dissectors."""
    _current[0] = s
    _current[1] = None


def ordered(s: FlowSample, limit: int = 8) -> Iterator[tuple[bool, bytes]]:
    """(from_src, payload) in arrival order, at most ``limit`` payloads.

    Falls back to all src payloads then all dst payloads when payload_dirs
    does not agree with the lists (never raises)."""
    if s is _current[0]:
        c = arrival_order(s)
        return iter(c if limit >= len(c) else c[:limit] if limit > 0 else ())
    return _ordered(s, limit)


def arrival_order(s: FlowSample) -> list[tuple[bool, bytes]]:
    """All of ``ordered(s)`` as a list (built once and shared with the dissectors while the engine
    classifies ``s``)."""
    if s is _current[0]:
        c = _current[1]
        if c is None:
            c = _current[1] = list(_ordered(s, len(s.src_payloads) + len(s.dst_payloads)))
        return c
    return list(_ordered(s, len(s.src_payloads) + len(s.dst_payloads)))


def _ordered(s: FlowSample, limit: int) -> Iterator[tuple[bool, bytes]]:
    sp, dp = s.src_payloads, s.dst_payloads
    dirs = s.payload_dirs
    if len(dirs) == len(sp) + len(dp) and dirs:
        i = j = 0
        for n, c in enumerate(dirs):
            if n >= limit:
                return
            if c == "s" and i < len(sp):
                yield True, sp[i]
                i += 1
            elif c == "d" and j < len(dp):
                yield False, dp[j]
                j += 1
        return
    n = 0
    for p in sp:
        if n >= limit:
            return
        yield True, p
        n += 1
    for p in dp:
        if n >= limit:
            return
        yield False, p
        n += 1


def first(s: FlowSample) -> tuple[bool, bytes]:
    """The first payload of the flow and whether src sent it; (True, b"") when none."""
    for item in ordered(s, 1):
        return item
    return True, b""


def stream(s: FlowSample, from_src: bool, limit: int = 4096) -> bytes:
    """Start of one direction's TCP stream (or the datagrams concatenated), at most limit bytes."""
    out = b""
    for p in (s.src_payloads if from_src else s.dst_payloads):
        out += p
        if len(out) >= limit:
            return out[:limit]
    return out


def has_port(s: FlowSample, ports) -> bool:
    return s.dst_port in ports or s.src_port in ports


def server_is_dst(s: FlowSample, ports) -> bool:
    """True when the well-known port is the dst port (src is the client)."""
    return s.dst_port in ports or s.src_port not in ports


_NOT_PRINTABLE = bytes(c for c in range(256) if not 32 <= c < 127)


def printable(b: bytes, limit: int = 128) -> str:
    """ASCII text of b for metadata: control and non-ASCII characters dropped."""
    return bytes(b[:limit]).translate(None, _NOT_PRINTABLE).decode("ascii")


class Simple(Dissector):
    """A dissector decided by looking at single payloads.

    Subclasses implement ``check(p, from_src, s)``; the first of the first
    ``maxpk`` payloads for which it returns True identifies the flow.  A
    subclass may set ``proto`` on the verdict itself and return a name other
    than ``self.name`` via ``result``."""

    maxpk = 4
    magic: tuple[bytes, ...] = ()   # when set, the first payload of src or dst must start with one of these
    port_gate = False               # when True, one of the flow's ports must be in ``ports``

    def could_be(self, s: FlowSample) -> bool:
        if self.port_gate and s.src_port not in self.ports and s.dst_port not in self.ports:
            return False
        if self.magic:
            a = s.src_payloads[0] if s.src_payloads else b""
            b = s.dst_payloads[0] if s.dst_payloads else b""
            return a.startswith(self.magic) or b.startswith(self.magic)
        return bool(s.src_payloads or s.dst_payloads)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def result(self, s: FlowSample, v: Verdict) -> str:
        return self.name

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        for from_src, p in ordered(s, self.maxpk):
            if p and self.check(p, from_src, s):
                v.app_protocol = self.result(s, v)
                return Match.FINAL
        return Match.NO


class PortHint(Dissector):
    """No payload test at all: only a name and well-known ports, for the engine's
    port guess (marked as a guess) when no dissector recognised the flow."""

    def __init__(self, name: str, ports, transports=TCP_UDP) -> None:
        self.name = name
        self.ports = frozenset(ports)
        self.transports = frozenset(transports)

    def could_be(self, s: FlowSample) -> bool:
        return False

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        return Match.NO
