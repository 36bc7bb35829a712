"""Miscellaneous application protocols with a fixed header or magic: GTP
(GTPv1/v2/GTP'), Spotify LAN discovery, Agora SD-RTN, Alibaba Cloud, Nest
log sink, Avast, TP-Link Smart Home, Ubiquiti discovery, Canon BJNP, KCP,
RIPE Atlas probes, Xiaomi push, ZUG, OICQ, Photon-engine games (TocaBoca).

References: 3GPP TS 29.060 / 29.274 / 32.295 (GTP-C/U, GTPv2-C, GTP'
headers), the vendors' published or widely documented framing (Spotify
"SpotUdp0", Agora SNI field, TP-Link XOR-autokey JSON, Ubiquiti discovery
TLVs, Canon "BJNP"), the KCP segment header (conv, cmd 81..84, ...), the
OICQ (QQ) UDP packet (0x02 ... 0x03).
"""

from __future__ import annotations

from shared.models import FlowSample, Verdict
from services.classify.dissectors.base import Dissector, Match
from services.classify.dissectors.breadth_util import (TCP, TCP_UDP, UDP, Simple, ordered, printable, u16, u16le,
                                                       u32, u32le)


class GTP(Dissector):
    name = "GTP"
    transports = UDP
    ports = frozenset({2123, 2152, 3386})

    def could_be(self, s: FlowSample) -> bool:
        return s.src_port in self.ports or s.dst_port in self.ports

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        ports = {s.src_port, s.dst_port}
        for _src, p in ordered(s, 3):
            if len(p) < 8:
                continue
            ver = p[0] >> 5
            if 3386 in ports and not p[0] & 0x10 and (p[0] & 0x0E) == 0x0E and u16(p, 2) + 6 == len(p):
                v.app_protocol, v.application = self.name, "GTP_PRIME"
                return Match.FINAL
            if ver == 1 and p[0] & 0x10 and u16(p, 2) + 8 == len(p):
                v.app_protocol = self.name
                v.application = "GTP_U" if 2152 in ports else "GTP_C"
                return Match.FINAL
            if ver == 2 and u16(p, 2) + 4 == len(p) and 2123 in ports:
                v.app_protocol, v.application = self.name, "GTP_C"
                return Match.FINAL
        return Match.NO


class Spotify(Simple):
    name = "Spotify"
    transports = TCP_UDP
    ports = frozenset({57621, 4070})
    magic = (b"SpotUdp0", b"\x00\x04\x00\x00")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if s.transport == "UDP":
            return p.startswith(b"SpotUdp0")
        return p[:4] == b"\x00\x04\x00\x00" and 4070 in (s.src_port, s.dst_port)


class SDRTN(Dissector):
    """Agora SD-RTN: UDP requests carrying an 'SNI' field with the edge name."""

    name = "SD-RTN"
    transports = UDP
    ports = frozenset()

    def could_be(self, s: FlowSample) -> bool:
        p = s.src_payloads[0] if s.src_payloads else b""
        return len(p) > 20 and p[13:16] == b"SNI"

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        p = s.src_payloads[0]
        if p[12] != 4:
            return Match.NO
        ln = u16le(p, 17)
        if 0 < ln <= 255 and 19 + ln <= len(p):
            v.host = printable(p[19:19 + ln], 255)
        v.app_protocol = self.name
        return Match.FINAL


class AliCloud(Simple):
    name = "AliCloud"
    transports = TCP
    ports = frozenset()
    magic = (b"\xce\xfa\xbe\xba",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return p[:4] == b"\xce\xfa\xbe\xba" and len(p) >= 8


class NestLogSink(Simple):
    name = "NestLogSink"
    transports = TCP
    ports = frozenset({11095})

    def could_be(self, s: FlowSample) -> bool:
        return 11095 in (s.src_port, s.dst_port)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 8 and p[2:4] == b"\x00\x13"


class AVAST(Simple):
    name = "AVAST"
    transports = TCP
    ports = frozenset()
    magic = (b"NOSA",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return p.startswith(b"NOSA") and len(p) >= 8 and u16(p, 4) == len(p)


def _tplink_decrypt(p: bytes, n: int = 16) -> bytes:
    key = 171
    out = bytearray()
    for c in p[:n]:
        out.append(c ^ key)
        key = c
    return bytes(out)


class TPLinkSHP(Simple):
    """TP-Link Smart Home Protocol: JSON encrypted with an XOR autokey (initial key 171); TCP adds a length."""

    name = "TPLINK_SHP"
    transports = TCP_UDP
    ports = frozenset({9999})

    def could_be(self, s: FlowSample) -> bool:
        return 9999 in (s.src_port, s.dst_port)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if s.transport == "TCP":
            if len(p) < 6 or u32(p, 0) + 4 != len(p):
                return False
            p = p[4:]
        return _tplink_decrypt(p, 2) == b'{"'


class UBNTAC2(Simple):
    """Ubiquiti device discovery on 10001/udp (v1: 01 00 00 len, v2: 02 cmd len, TLVs)."""

    name = "UBNTAC2"
    transports = UDP
    ports = frozenset({10001})

    def could_be(self, s: FlowSample) -> bool:
        return 10001 in (s.src_port, s.dst_port)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 4 and p[0] in (1, 2) and u16(p, 2) + 4 == len(p)


class BJNP(Simple):
    name = "BJNP"
    transports = TCP_UDP
    ports = frozenset({8611, 8612, 8613, 8614})
    magic = (b"BJNP", b"BNJB", b"BJNB", b"MFNP")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return p[:4] in (b"BJNP", b"BNJB", b"BJNB", b"MFNP") and len(p) >= 16


class KCP(Simple):
    name = "KCP"
    transports = UDP
    ports = frozenset()

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        # one or more segments of one conversation: conv(4) cmd(1) frg(1) wnd(2) ts(4) sn(4) una(4) len(4) data
        o = 0
        conv = p[:4]
        n = 0
        while o + 24 <= len(p) and n < 32:
            if p[o:o + 4] != conv or not 81 <= p[o + 4] <= 84:
                return False
            o += 24 + u32le(p, o + 20)
            n += 1
        return n >= 1 and o == len(p)


class RipeAtlas(Simple):
    name = "RipeAtlas"
    transports = UDP
    ports = frozenset()
    magic = (b"MGLNDD_",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return p.startswith(b"MGLNDD_")


class Xiaomi(Simple):
    """Xiaomi's push service (TCP 5222), as nDPI's xiaomi.c reads it: a 12-byte header (magic
    0xC2FE0005, the length of what follows it, 0x00020016), then from offset 16 a list of
    one-byte-type, one-byte-length fields.  In a client's message (to port 5222) type 0x3a is the
    server it connects to: the flow's host, without a ":port"."""

    name = "Xiaomi"
    transports = TCP
    ports = frozenset()
    magic = (b"\xc2\xfe\x00\x05",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return p[:4] == b"\xc2\xfe\x00\x05" and len(p) >= 12

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        for from_src, p in ordered(s, self.maxpk):
            if not self.check(p, from_src, s):
                continue
            v.app_protocol = self.name
            to_port = s.dst_port if from_src else s.src_port
            if to_port == 5222 and u32(p, 4) + 12 == len(p) and u32(p, 8) == 0x00020016:
                host = _xiaomi_server(p)
                if host:
                    v.host = host
            return Match.FINAL
        return Match.NO


def _xiaomi_server(p: bytes) -> str:
    """The 0x3a field of a Xiaomi client message (nDPI: types 0x08 and 0x28 carry no length byte
    of their own and are stepped over two bytes at a time)."""
    off, n, found = 16, len(p), ""
    while off + 1 < n:
        op, ln = p[off], p[off + 1]
        off += 2
        if op == 0x28 or op == 0x08:
            continue
        if off + ln >= n:
            break
        if op == 0x3A:
            val = p[off:off + ln].split(b":", 1)[0][-79:]
            found = "".join(chr(c) if 32 <= c < 127 else "?" for c in val).lower()
        off += ln
    return found


class ZUG(Simple):
    name = "ZUG"
    transports = UDP
    ports = frozenset()

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 8 and u16(p, 0) == len(p) and p[2:4] == b"UG"


class OICQ(Simple):
    name = "OICQ"
    transports = UDP
    ports = frozenset({8000})
    magic = (b"\x02",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 11 and p[0] == 0x02 and p[-1] == 0x03 and u16(p, 3) < 0x0400 and p[1] != 0


class TocaBoca(Simple):
    """Photon-engine game traffic on 5055/5056 (Toca Boca): command header with peer id 0xffff."""

    name = "TocaBoca"
    transports = UDP
    ports = frozenset({5055, 5056})

    def could_be(self, s: FlowSample) -> bool:
        return s.dst_port in self.ports or s.src_port in self.ports

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        # peer id (2), CRC flag (1), command count (1), server time (4), challenge (4), commands (type 1..12)
        return len(p) >= 24 and p[2] in (0, 1) and 1 <= p[3] <= 20 and 1 <= p[12] <= 12


DISSECTORS = [GTP(), Spotify(), SDRTN(), AliCloud(), NestLogSink(), AVAST(), TPLinkSHP(), UBNTAC2(), BJNP(), KCP(),
              RipeAtlas(), Xiaomi(), ZUG(), OICQ(), TocaBoca()]


class Tailscale(Simple):
    """Tailscale disco messages: magic 'TS' + U+1F4AC (speech balloon) in UTF-8."""

    name = "Tailscale"
    transports = UDP
    ports = frozenset({41641})
    magic = (b"TS\xf0\x9f\x92\xac",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return p.startswith(b"TS\xf0\x9f\x92\xac")


_SMPP_CMDS = {0x00000001, 0x00000002, 0x00000003, 0x00000004, 0x00000005, 0x00000006, 0x00000007, 0x00000009,
              0x0000000B, 0x00000015, 0x00000021, 0x00000102, 0x00000103, 0x00000111, 0x00000112, 0x00000113}


class SMPP(Simple):
    """SMPP v3.4 PDU header: command_length, command_id (bind/submit/... or their 0x80000000 responses)."""

    name = "SMPP"
    transports = TCP
    ports = frozenset({2775})
    magic = (b"\x00",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 16 or u32(p, 0) != len(p):
            return False
        cid = u32(p, 4)
        return (cid & 0x7FFFFFFF) in _SMPP_CMDS and u32(p, 8) < 0x500


class Kismet(Simple):
    name = "Kismet"
    transports = TCP
    ports = frozenset({2501})
    magic = (b"*KISMET: ", b"*PROTOCOLS: ", b"!0 ENABLE ", b"*TIME: ")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return p.startswith((b"*KISMET: ", b"*PROTOCOLS: ", b"!0 ENABLE ", b"*TIME: "))


class FastCGI(Simple):
    """FastCGI record header: version 1, type 1..11, request id, content length, padding, reserved 0."""

    name = "FastCGI"
    transports = TCP
    ports = frozenset({9000})
    magic = (b"\x01",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 16 or p[0] != 1 or not 1 <= p[1] <= 11 or p[7] != 0:
            return False
        if p[1] == 1:   # FCGI_BEGIN_REQUEST: 8-byte body, role 1..3
            return u16(p, 4) == 8 and 1 <= u16(p, 8) <= 3
        return False

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        if not any(self.check(p, f, s) for f, p in ordered(s, self.maxpk)):
            return Match.NO
        v.app_protocol = self.name
        # the host as nDPI's fastcgi.c reads it: from each packet that is exactly one FCGI_PARAMS
        # record whose name-value pairs (read with one-byte lengths) fill it, the HTTP_HOST
        # parameter; an empty FCGI_PARAMS record (the end of the parameters) ends the reading
        seen = 0
        for _src, p in ordered(s, 12):
            seen += 1
            if len(p) < 8 or p[0] != 1 or p[1] != 4 or len(p) != 8 + u16(p, 4) + p[6]:
                continue
            if u16(p, 4) == 0:
                return Match.FINAL
            host = _fcgi_ndpi_host(p)
            if host is not None:
                v.host = host
        return Match.FINAL if seen >= 8 else Match.PARTIAL


def _fcgi_ndpi_host(p: bytes) -> str | None:
    """HTTP_HOST of one FCGI_PARAMS record as nDPI reads it ("" when absent), None when its pairs,
    read with one-byte name and value lengths, do not exactly fill the packet."""
    i, n, host = 8, len(p), b""
    while i + 2 < n:
        kl, vl = p[i], p[i + 1]
        i += 2
        if i + kl + vl > n:
            return None
        if kl == 9 and p[i:i + 9] == b"HTTP_HOST":
            host = p[i + 9:i + 9 + vl]
        i += kl + vl
    if i != n:
        return None
    return "".join(chr(c) if 32 <= c < 127 else "?" for c in host[-79:]).lower()


class CPHA(Simple):
    """Check Point ClusterXL (CPHA) on 8116/udp: magic 0x1A90."""

    name = "CPHA"
    transports = UDP
    ports = frozenset({8116})
    magic = (b"\x1a\x90",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 16 and p[:2] == b"\x1a\x90" and 8116 in (s.src_port, s.dst_port)


class MerakiCloud(Simple):
    name = "MerakiCloud"
    transports = UDP
    ports = frozenset({7351})
    magic = (b"\xfe\xf7\x28\x91",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 12 and p[:4] == b"\xfe\xf7\x28\x91"


class Z3950(Simple):
    """Z39.50 (ISO 23950) APDUs: initRequest [20] / initResponse [21] / searchRequest [22] ... in BER."""

    name = "Z3950"
    transports = TCP
    ports = frozenset({210})
    magic = (b"\xb4", b"\xb5", b"\xb6", b"\xb7", b"\xb8", b"\xb9", b"\xba")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 8 or p[0] not in (0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA):
            return False
        ln = p[1]
        if ln & 0x80:
            n = ln & 0x7F
            if n == 0 or n > 2:
                return False
            ln = int.from_bytes(p[2:2 + n], "big")
            hdr = 2 + n
        else:
            hdr = 2
        return hdr + ln == len(p) and p[hdr] in (0x83, 0x84, 0x85, 0x9F, 0xA2, 0x82)


DISSECTORS += [Tailscale(), SMPP(), Kismet(), FastCGI(), CPHA(), MerakiCloud(), Z3950()]


def _varint(p: bytes, o: int) -> tuple[int, int]:
    """(value, next offset) of a protobuf varint at o; (-1, -1) when truncated or longer than 10 bytes."""
    val = 0
    for i in range(10):
        if o + i >= len(p):
            return -1, -1
        b = p[o + i]
        val |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            return val, o + i + 1
    return -1, -1


def protobuf_fields(p: bytes, limit: int = 32) -> tuple[int, int, bool]:
    """Walk protobuf wire-format fields (developers.google.com/protocol-buffers/docs/encoding):
    (fields, length-delimited fields, whole payload consumed)."""
    o = n = n_len = 0
    while o < len(p) and n < limit:
        tag, o2 = _varint(p, o)
        if tag < 0:
            return n, n_len, False
        wire, field = tag & 7, tag >> 3
        if field == 0 or field > 0x1FFFFFFF or wire in (3, 4, 6, 7):
            return n, n_len, False
        if wire == 0:
            _v, o2 = _varint(p, o2)
            if o2 < 0:
                return n, n_len, False
        elif wire == 1:
            o2 += 8
        elif wire == 5:
            o2 += 4
        else:
            ln, o2 = _varint(p, o2)
            if ln <= 0 or o2 < 0:
                return n, n_len, False
            o2 += ln
            n_len += 1
        if o2 > len(p):
            return n, n_len, False
        o = o2
        n += 1
    return n, n_len, o == len(p)


class Protobuf(Dissector):
    """Bare Protocol Buffers messages (no other framing): many well-formed fields, at least one
    length-delimited, filling the payload.  Last in the registry: a fallback, never a first guess."""

    name = "Protobuf"
    transports = TCP_UDP
    ports = frozenset()

    def could_be(self, s: FlowSample) -> bool:
        p = s.src_payloads[0] if s.src_payloads else b""
        return len(p) >= 8 and (p[0] & 7) in (0, 1, 2, 5) and p[0] >= 8

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        # eight well-formed fields in a row, one of them length-delimited (a segment may end mid-field)
        for _src, p in ordered(s, 2):
            n, n_len, _whole = protobuf_fields(p)
            if n >= 8 and n_len >= 1:
                v.app_protocol = self.name
                # a fallback: final only once the flow has shown enough packets for the protocols
                # before it (RTP, game protocols, ...) to have decided; until then more packets may
                # let one of them claim the flow
                return Match.FINAL if len(s.src_payloads) + len(s.dst_payloads) >= 4 else Match.PARTIAL
        return Match.NO


DISSECTORS += [Protobuf()]
