"""NetBIOS (RFC 1001/1002: name service 137/udp, datagram service 138/udp,
session service 139/tcp) and SMB carried over it or over direct TCP 445
([MS-SMB] / [MS-SMB2]).

nDPI reports SMB as the application on top of NetBIOS: ``NetBIOS.SMBv1`` /
``NetBIOS.SMBv23``; our verdict has app_protocol ``NetBIOS`` and application
``SMBv1`` / ``SMBv23``.
"""

from __future__ import annotations

from shared.models import FlowSample, Verdict
from services.classify.dissectors.base import Dissector, Match
from services.classify.dissectors.breadth_util import TCP_UDP, ordered, u16


def _encoded_name(b: bytes, o: int) -> str | None:
    """First-level encoded NetBIOS name (RFC 1001 14.1) at o: 0x20 + 32 chars A..P; decoded name or None.
    Decoding stops at the first pair outside A..P (the prefix is kept)."""
    if o + 33 > len(b) or b[o] != 0x20:
        return None
    raw = b[o + 1:o + 33]
    out = []
    for i in range(0, 32, 2):
        hi, lo = raw[i] - 0x41, raw[i + 1] - 0x41
        if not (0 <= hi < 16 and 0 <= lo < 16):
            break           # a damaged name: keep what decoded before the damage, as nDPI does
        out.append((hi << 4) | lo)
    if not out:
        return None
    name = bytes(out[:15]).rstrip(b" \x00")
    return "".join(chr(c) for c in name if 32 <= c < 127)


def _smb_kind(b: bytes, o: int) -> str:
    if len(b) >= o + 4:
        magic = b[o:o + 4]
        if magic == b"\xffSMB":
            return "SMBv1"
        if magic in (b"\xfeSMB", b"\xfdSMB", b"\xfcSMB"):
            return "SMBv23"
    return ""


def nbns_ok(p: bytes) -> bool:
    """NetBIOS name service packet (RFC 1002 4.2): DNS-like header, encoded name or a known opcode."""
    if len(p) < 12:
        return False
    flags = u16(p, 2)
    opcode = (flags >> 11) & 0xF
    if opcode not in (0, 5, 6, 7, 8, 9):
        return False
    qd, an, ns, ar = u16(p, 4), u16(p, 6), u16(p, 8), u16(p, 10)
    if qd > 1 or an > 1 or ns > 1 or ar > 1 or (qd + an) == 0:
        return False
    return _encoded_name(p, 12) is not None or (len(p) > 12 and p[12] == 0x20)


def nbds_ok(p: bytes) -> bool:
    """NetBIOS datagram service header (RFC 1002 4.4): type 0x10..0x16, source port field."""
    if len(p) < 10 or not (0x10 <= p[0] <= 0x16):
        return False
    if p[1] & 0xF0:
        return False
    if p[0] in (0x10, 0x11, 0x12):
        return u16(p, 8) in (137, 138) or u16(p, 8) > 1023 or _encoded_name(p, 14) is not None
    return True


class NetBIOS(Dissector):
    name = "NetBIOS"
    transports = TCP_UDP
    ports = frozenset({137, 138, 139, 445})
    first_bytes = {"TCP": bytes((0x00, 0x81, 0x82, 0x83, 0x84))}   # could_be: a session message type

    def could_be(self, s: FlowSample) -> bool:
        if s.transport == "UDP":
            return bool({s.src_port, s.dst_port} & {137, 138}) and bool(s.src_payloads or s.dst_payloads)
        p = s.src_payloads[0] if s.src_payloads else (s.dst_payloads[0] if s.dst_payloads else b"")
        return len(p) >= 4 and p[0] in (0x00, 0x81, 0x82, 0x83, 0x84)

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        if s.transport == "UDP":
            for _src, p in ordered(s, 3):
                if (137 in (s.src_port, s.dst_port)) and nbns_ok(p):
                    v.app_protocol = "NetBIOS"
                    name = _encoded_name(p, 12)
                    if name:
                        v.host = name.lower()
                    return Match.FINAL
                if (138 in (s.src_port, s.dst_port)) and nbds_ok(p):
                    v.app_protocol = "NetBIOS"
                    # SMB in a datagram: 14-byte header + two 34-byte names
                    kind = _smb_kind(p, 82) if p[0] in (0x10, 0x11, 0x12) else ""
                    if kind:
                        v.application = kind
                    name = _encoded_name(p, 14) if p[0] in (0x10, 0x11, 0x12) else None
                    if name:
                        v.host = name.lower()      # the source NetBIOS name
                    return Match.FINAL
            return Match.NO
        # TCP: NBSS header (type, flags, 16-bit length) on 139 or the direct-hosted 445 header
        for _src, p in ordered(s, 4):
            if len(p) < 4:
                continue
            t = p[0]
            if t == 0x00:
                kind = _smb_kind(p, 4)
                if kind:
                    v.app_protocol = "NetBIOS"
                    v.application = kind
                    return Match.FINAL
            elif t == 0x81 and (p[1] & 0xFE) == 0 and u16(p, 2) + 4 == len(p) and _encoded_name(p, 4) is not None:
                v.app_protocol = "NetBIOS"
                v.host = (_encoded_name(p, 4) or "").lower()     # the called name
                return Match.FINAL
            elif t in (0x82, 0x83, 0x84) and p[1] == 0 and u16(p, 2) + 4 == len(p) and 139 in (s.src_port, s.dst_port):
                v.app_protocol = "NetBIOS"
                return Match.FINAL
        return Match.NO


DISSECTORS = [NetBIOS()]
