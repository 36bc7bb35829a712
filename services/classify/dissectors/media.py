"""Streaming and transport-of-media protocols: RTSP, RTMP, MPEG transport
stream over UDP, WebSocket frames joined mid-flow.

References: RFC 2326 / RFC 7826 (RTSP request and status lines), Adobe RTMP
specification 5.2 (C0 version 3 + 1536-byte C1), ISO/IEC 13818-1 (188-byte TS
packets, sync byte 0x47), RFC 6455 5.2 (WebSocket base framing).
"""

from __future__ import annotations

from shared.models import FlowSample, Verdict
from services.classify.dissectors.base import Dissector, Match
from services.classify.dissectors.breadth_util import TCP, TCP_UDP, UDP, Simple, ordered, printable, stream, u16

_RTSP_METHODS = (b"OPTIONS ", b"DESCRIBE ", b"SETUP ", b"PLAY ", b"PAUSE ", b"TEARDOWN ", b"ANNOUNCE ", b"RECORD ",
                 b"GET_PARAMETER ", b"SET_PARAMETER ", b"REDIRECT ")


class RTSP(Dissector):
    name = "RTSP"
    transports = TCP_UDP
    ports = frozenset({554, 8554})
    # RTSP/x.0 or a method of _RTSP_METHODS at the start of one of the first 3 payloads, see dissect
    lead = {"TCP": (3, b"RODSPTAG"), "UDP": (3, b"RODSPTAG")}

    def could_be(self, s: FlowSample) -> bool:
        return bool(s.src_payloads or s.dst_payloads)

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        for _src, p in ordered(s, 3):
            if p.startswith(b"RTSP/1.0 ") or p.startswith(b"RTSP/2.0 "):
                v.app_protocol = self.name
                return Match.FINAL
            if p.startswith(_RTSP_METHODS):
                line = p.split(b"\r\n", 1)[0]
                if line.endswith((b" RTSP/1.0", b" RTSP/2.0")) or b" rtsp://" in line[:30] or b" rtsps://" in line[:30]:
                    v.app_protocol = self.name
                    parts = line.split(b" ")
                    if len(parts) >= 2:
                        v.extra["rtsp_url"] = printable(parts[1], 300)
                    return Match.FINAL
        return Match.NO


class RTMP(Dissector):
    name = "RTMP"
    transports = TCP
    ports = frozenset({1935})

    def could_be(self, s: FlowSample) -> bool:
        return bool(s.src_payloads) and s.src_payloads[0][:1] in (b"\x03", b"\x06")

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        # C0 (version 3, or 6 for RTMPE) then C1 (1536 bytes); the server answers S0 with the same version
        c = stream(s, True, 1600)
        d = stream(s, False, 1600)
        if d and d[0] != c[0]:
            return Match.NO
        first = s.src_payloads[0]
        if len(first) >= 4 and first[1] == 0 and u16(first, 2) == len(first):
            return Match.NO         # a TPKT packet (RFC 1006: version 3, length), not an RTMP C0+C1
        if len(c) >= 1537 or (d and len(d) >= 1537):
            v.app_protocol = self.name
            return Match.FINAL
        if 1935 in (s.src_port, s.dst_port) and (len(c) == 1 or c[5:9] == b"\x00\x00\x00\x00"):
            v.app_protocol = self.name
            return Match.PARTIAL
        return Match.NO

class MPEGTS(Simple):
    name = "MPEG_TS"
    transports = UDP
    ports = frozenset()
    magic = (b"\x47",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 188 or len(p) % 188 or p[0] != 0x47:
            return False
        return all(p[i] == 0x47 for i in range(0, min(len(p), 188 * 7), 188))


class WebSocket(Simple):
    """WebSocket frames seen without the HTTP upgrade (flow joined mid-way)."""

    name = "WebSocket"
    transports = TCP
    ports = frozenset()

    def could_be(self, s: FlowSample) -> bool:
        p = s.src_payloads[0] if s.src_payloads else b""
        return len(p) >= 2 and p[0] in (0x81, 0x82, 0x88, 0x89, 0x8A)

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        ok = 0
        for _src, p in ordered(s, 4):
            if len(p) < 2 or p[0] not in (0x81, 0x82, 0x88, 0x89, 0x8A):
                return Match.NO
            n = p[1] & 0x7F
            hdr = 2 + (4 if p[1] & 0x80 else 0)
            if n == 126:
                n = u16(p, 2)
                hdr += 2
            elif n == 127:
                return Match.NO
            if hdr + n != len(p):
                return Match.NO
            ok += 1
        if ok >= 2:
            v.app_protocol = self.name
            return Match.FINAL
        return Match.NO


class UFTP(Simple):
    """UFTP (encrypted multicast file transfer) v4/v5 header: version 0x40/0x50, function, and the
    function repeated as the first byte of the message body."""

    name = "UFTP"
    transports = UDP
    ports = frozenset({1044})
    magic = (b"\x40", b"\x50")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) > 23 and p[0] in (0x40, 0x50) and p[1] < 22 and p[15] == 0 and p[16] == p[1]


class IQIYI(Simple):
    name = "iQIYI"
    transports = UDP
    ports = frozenset()

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return 120 < len(p) < 300 and b"PPStream" in p


class FLUTE(Simple):
    """FLUTE (RFC 6726) over ALC/LCT (RFC 5651): LCT version 1 header, then the File Delivery Table
    as XML ('<?xml ... <FDT-Instance')."""

    name = "FLUTE"
    transports = UDP
    ports = frozenset()
    magic = (b"\x10",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) <= 250 or p[0] != 0x10:
            return False
        hdr = p[2] * 4
        return len(p) > hdr + 47 and p[hdr + 4:hdr + 9] == b"<?xml" and b"<FDT" in p[hdr + 9:hdr + 120]


DISSECTORS = [RTSP(), RTMP(), MPEGTS(), WebSocket(), UFTP(), IQIYI(), FLUTE()]
