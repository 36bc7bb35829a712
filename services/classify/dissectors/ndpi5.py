"""Protocols nDPI 5.0 names that classify did not know, each from its public specification or
documentation (names as nDPI 5.0 spells them).

- VXLAN (RFC 7348 5): UDP 4789, 8-byte header, flags 0x08 (VNI valid), reserved fields zero.
- i3D game-server hosting: nDPI's patterns for i3D.net dedicated servers (a Discord-like 74-byte
  discovery exchange with the i3D SSRC 0x0003cfa8/9, and its RTP-style media with that SSRC).
- ATG: Veeder-Root TLS-3xx tank gauge serial-over-TCP commands (<SOH>, function code I/S in either
  case, CR LF end) on TCP 10001.
- SOAP without HTTP: an XML-declaration first message (``<?xml version="1.0"``) on a TCP flow that
  goes on for more packets (nDPI's soap dissector).
- STOMP 1.0-1.2 (stomp.github.io): a CONNECT/STOMP frame (command line, headers, NUL) or CONNECTED.
- HiSLIP (IVI-6.1): 16-byte message header "HS", message type, control code, 4-byte parameter,
  8-byte payload length; Initialize (0) / InitializeResponse (1) open the synchronous channel.
- OpenWire (ActiveMQ): the WireFormatInfo command opening each side: 4-byte size, type 1, the magic
  "ActiveMQ".
- TRDP (IEC 61375-2-3): process data (UDP 17224) and message data (UDP/TCP 17225) headers:
  protocol version 1.x and the two-letter message type (Pd, Pp, Pr, Pe; Mn, Mr, Mp, Mq, Mc, Me).
- Nano (nano node protocol, docs.nano.org): 8-byte header, magic 'R', network 'A'/'B'/'C'/'X',
  version max >= using >= min, message type 2..0x0f, on port 7075.
- Lustre LNet socket LND: the hello message magic (0xeebc0ded, either byte order) or the acceptor
  connection request magic (0xacce7100) on TCP 988.
- ClickHouse native protocol (TCP 9000): a client Hello packet (type 0, then the client name,
  which ClickHouse clients and drivers start with "ClickHouse") or a server Hello.
- Warcraft3 (W3GS, battle.net game protocol): every message starts with 0xF7, a message id and a
  little-endian length equal to the packet's (TCP 6112).
- CloudflareWarp (Cloudflare's WARP client firewall documentation: UDP 2408): WireGuard framing with
  the message types moved to 0xC1-0xC4 (handshake initiation/response, cookie, data).
- JSON-RPC 2.0 (jsonrpc.org/specification) straight over TCP: a JSON object (or a batch array of
  them) whose first member is "jsonrpc": "2.0" followed by method/params or result/error.
- Mumble (protocol docs, UDP ping): a 12-byte ping (4-byte zero type + 8-byte timestamp) answered
  by a 24-byte pong carrying the same timestamp, version, users, max users, bandwidth.
- Raft (canonical/raft's TCP transport, used by dqlite/LXD): every message is a 16-byte header, a
  little-endian 64-bit message type (1 append entries, 2 its result, 3 request vote, 4 its result,
  5 install snapshot, 6 timeout now) and the 64-bit length of the body that follows.
- MS-RPCH, RPC over HTTP v1 ([MS-RPCH] 2.1.1.1): on a direct connection (TCP 593) the server opens
  with the string "ncacn_http/1.0", then DCE/RPC PDUs follow.  (RPC over HTTP v2 is HTTP with the
  RPC_IN_DATA / RPC_OUT_DATA methods: http.py.)
- VHUA (vhua.com softphone): its UDP datagrams open with a fixed 9-byte preamble (05 14 3a 05 08 f8 a1 b1 03),
  the signature nDPI documents for it.
- WorldOfKungFu: the game client's 16-byte TCP login message (length 0x0c, opcode 0x00d2, message
  class 0x0c, type 0x16 at byte 9, zero padding), the signature nDPI documents for it.
- SAP (NetWeaver gateway/dispatcher on TCP 3201): nDPI has no dissector for it, only the port; so a
  port hint here.
"""

from __future__ import annotations

from shared.models import FlowSample, Verdict
from services.classify.dissectors.base import Match
from services.classify.dissectors.breadth_util import TCP, TCP_UDP, UDP, PortHint, Simple, ordered, u16, u16le, u32, u32le


class VXLAN(Simple):
    name = "VXLAN"
    transports = UDP
    ports = frozenset({4789})
    port_gate = True
    magic = (b"\x08",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        # flags 0x08, 24 reserved bits, VNI, 8 reserved bits; then an Ethernet frame (>= 14 bytes)
        return len(p) >= 8 + 14 and p[0] == 0x08 and p[1:4] == b"\x00\x00\x00" and p[7] == 0


class I3D(Simple):
    name = "i3D"
    transports = UDP
    ports = frozenset()
    magic = (b"\x00", b"\x90")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 74:
            return False
        if u32(p, 0) in (0x00010046, 0x00020046) and u32(p, 4) == 0x0003CFA8:
            return True
        return u16(p, 0) in (0x9078, 0x9067) and u32(p, 8) == 0x0003CFA9 and u32(p, 12) == 0xBEDE0003


class ATG(Simple):
    name = "ATG"
    transports = TCP
    ports = frozenset({10001})
    port_gate = True
    magic = (b"\x01",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 8 and p[0] == 1 and p[1] in b"IiSs" and p.endswith(b"\r\n")


class SOAP(Simple):
    name = "SOAP"
    transports = TCP
    ports = frozenset()
    magic = (b"<?xml",)

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        sp, dp = s.src_payloads, s.dst_payloads
        first = sp[0] if sp else dp[0] if dp else b""
        if not first.startswith(b'<?xml version="1.0"'):
            return Match.NO
        v.app_protocol = self.name
        # nDPI decides after its fourth packet; before that, other dissectors may still claim the flow
        return Match.FINAL if len(sp) + len(dp) >= 4 else Match.PARTIAL


class STOMP(Simple):
    name = "STOMP"
    transports = TCP
    ports = frozenset({61613, 61614})
    magic = (b"CONNECT\n", b"CONNECT\r\n", b"STOMP\n", b"STOMP\r\n", b"CONNECTED\n", b"CONNECTED\r\n")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if not p.startswith(self.magic):
            return False
        head = p[:1024].lower()
        return b"accept-version:" in head or b"\nversion:" in head or b"\nhost:" in head or b"\x00" in p[-2:]


class HiSLIP(Simple):
    name = "HiSLIP"
    transports = TCP
    ports = frozenset({4880})
    magic = (b"HS",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 16 or p[:2] != b"HS" or p[2] > 25:
            return False
        ln = int.from_bytes(p[8:16], "big")
        return ln + 16 == len(p) or (p[2] in (0, 1) and ln + 16 <= len(p))


class OpenWire(Simple):
    name = "OpenWire"
    transports = TCP
    ports = frozenset({61616})

    def could_be(self, s: FlowSample) -> bool:
        for lst in (s.src_payloads, s.dst_payloads):
            if lst and lst[0][4:5] == b"\x01" and lst[0][5:13] == b"ActiveMQ":
                return True
        return False

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 17 and p[4] == 1 and p[5:13] == b"ActiveMQ" and u32(p, 0) + 4 >= len(p) - 4


_TRDP_PD = (b"Pd", b"Pp", b"Pr", b"Pe")
_TRDP_MD = (b"Mn", b"Mr", b"Mp", b"Mq", b"Mc", b"Me")


class TRDP(Simple):
    name = "TRDP"
    transports = TCP_UDP
    ports = frozenset({17224, 17225})
    port_gate = True

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        # sequence counter (4), protocol version (2, major 1), message type (2 ASCII), ComId (4), ...
        if len(p) < 40 or p[4] != 1:
            return False
        kind = p[6:8]
        if kind in _TRDP_PD:
            return len(p) >= 40 and u32(p, 20) + 40 <= len(p) + 3     # dataset length after the header
        return kind in _TRDP_MD and len(p) >= 116


class Nano(Simple):
    name = "Nano"
    transports = TCP_UDP
    ports = frozenset({7075})
    port_gate = True
    magic = (b"R",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return (len(p) >= 8 and p[0] == 0x52 and p[1] in b"ABCX" and p[2] >= p[3] >= p[4] and p[2] < 64
                and 2 <= p[5] <= 0x0F)


class Lustre(Simple):
    name = "Lustre"
    transports = TCP
    ports = frozenset({988})
    port_gate = True

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 8:
            return False
        magic_le, magic_be = u32le(p, 0), u32(p, 0)
        return 0xEEBC0DED in (magic_le, magic_be) or 0xACCE7100 in (magic_le, magic_be)


class ClickHouse(Simple):
    name = "ClickHouse"
    transports = TCP
    ports = frozenset({9000, 9440})
    magic = (b"\x00",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        # packet type 0 (Hello), then a length-prefixed (varint) name
        if len(p) < 12 or p[0] != 0 or not 4 <= p[1] < 128:
            return False
        name = p[2:2 + p[1]]
        return name.startswith(b"ClickHouse") and all(32 <= c < 127 for c in name)


class Warcraft3(Simple):
    name = "Warcraft3"
    transports = TCP_UDP
    ports = frozenset({6112})
    port_gate = True
    magic = (b"\xf7",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 4 or p[0] != 0xF7:
            return False
        # one or more W3GS messages back to back, each with its own length
        o = 0
        while o + 4 <= len(p) and p[o] == 0xF7:
            ln = u16le(p, o + 2)
            if ln < 4:
                return False
            o += ln
        return o == len(p)


class Mumble(Simple):
    name = "Mumble"
    transports = UDP
    ports = frozenset({64738})
    port_gate = True

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        for ping in s.src_payloads[:4]:
            if len(ping) == 12 and ping[:4] == b"\x00\x00\x00\x00":
                if any(len(q) == 24 and q[4:12] == ping[4:12] for q in s.dst_payloads[:4]):
                    v.app_protocol = self.name
                    return Match.FINAL
        return Match.NO


class CloudflareWarp(Simple):
    name = "CloudflareWarp"
    transports = UDP
    ports = frozenset({2408})
    port_gate = True
    magic = (b"\xc1", b"\xc2", b"\xc3", b"\xc4")

    # (a flow joined after the handshake, data messages only, reads like a QUIC long header: left alone)
    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        a = s.src_payloads[0] if s.src_payloads else b""
        b = s.dst_payloads[0] if s.dst_payloads else b""
        init = a if a[:1] == b"\xc1" else b if b[:1] == b"\xc1" else b""
        if init and len(init) >= 148:
            reply = b if init is a else a
            if not reply or reply[:1] in (b"\xc2", b"\xc3", b"\xc4"):
                v.app_protocol = self.name
                return Match.FINAL if reply else Match.PARTIAL
        return Match.NO


class JSONRPC(Simple):
    name = "JSON-RPC"
    transports = TCP
    ports = frozenset()
    magic = (b"{", b"[")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        head = p[:160].lstrip(b"[ \t\r\n").replace(b" ", b"")
        if not head.startswith(b'{"jsonrpc":"2.0"'):
            return False
        return any(k in p[:4096] for k in (b'"method"', b'"result"', b'"error"'))


_RAFT_TYPES = frozenset(range(1, 7))


def _raft_type(p: bytes) -> int:
    """The message type of a canonical/raft header at the start of p (0 when it cannot be one)."""
    if len(p) < 16 or p[1:8] != b"\x00" * 7 or p[0] not in _RAFT_TYPES:
        return 0
    return p[0]


class Raft(Simple):
    name = "Raft"
    transports = TCP
    ports = frozenset()
    magic = tuple(bytes((t,)) + b"\x00" * 7 for t in range(1, 7))

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        n = 0
        for _src, p in ordered(s, 3):
            if not _raft_type(p):
                return Match.NO
            n += 1
            # one or more whole messages filling the segment: header, body of the declared length
            o = 0
            while o + 16 <= len(p) and _raft_type(p[o:o + 16]):
                ln = u64le(p, o + 8)
                if ln > len(p) - o - 16:
                    break
                o += 16 + ln
            if o == len(p):
                v.app_protocol = self.name
                return Match.FINAL
        if n >= 3:      # three segments that each open with a Raft header (messages split across segments)
            v.app_protocol = self.name
            return Match.FINAL
        return Match.NO         # nDPI too waits for a third segment


def u64le(b: bytes, o: int) -> int:
    return int.from_bytes(b[o:o + 8], "little") if 0 <= o and o + 8 <= len(b) else -1


class MSRPCH(Simple):
    name = "MS-RPCH"
    transports = TCP
    ports = frozenset()     # 593 is its port, but nDPI guesses nothing there: no port guess either
    magic = (b"ncacn_http/",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        # "ncacn_http/" major "." minor, nothing else in the segment but possibly the first PDU
        head = p[11:14]
        return len(head) == 3 and head[0:1].isdigit() and head[1:2] == b"." and head[2:3].isdigit()


class VHUA(Simple):
    name = "VHUA"
    transports = UDP
    ports = frozenset()
    maxpk = 3
    magic = (b"\x05\x14\x3a\x05\x08\xf8\xa1\xb1\x03",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return p.startswith(self.magic[0])


class WorldOfKungFu(Simple):
    name = "WorldOfKungFu"
    transports = TCP
    ports = frozenset()
    magic = (b"\x0c\x00\x00\x00\xd2\x00\x0c\x00",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) == 16 and p.startswith(self.magic[0]) and p[9] == 0x16 and p[10:12] == b"\x00\x00" \
            and p[14:16] == b"\x00\x00"


PORT_HINTS = [PortHint("SAP", {3201}, TCP)]

DISSECTORS = [VXLAN(), CloudflareWarp(), JSONRPC(), I3D(), ATG(), STOMP(), HiSLIP(), OpenWire(), TRDP(), Nano(), Lustre(), ClickHouse(),
              Warcraft3(), Mumble(), SOAP(), Raft(), MSRPCH(), VHUA(), WorldOfKungFu()]
