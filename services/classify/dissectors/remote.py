"""Remote access and RPC: RDP (TCP and RDP-UDP), VNC (RFB), Telnet, Radmin,
RSH, XDMCP, Citrix ICA/CGP, TeamViewer, AJP13, CORBA GIOP, DCE/RPC, IRC,
NNTP (Usenet), AFP over DSI, Ceph.

References: [MS-RDPBCGR] 2.2.1.1 (TPKT + X.224 Connection Request),
[MS-RDPEUDP] 2.2.2.1 (SYN datagram: snSourceAck -1, RDPUDP_FLAG_SYN),
RFC 6143 (RFB ProtocolVersion), RFC 854/855 (Telnet IAC negotiation),
RFC 1258/rshd(8), X11 XDMCP 1.1, Citrix ICA handshake bytes, Apache AJP13
packet magic, OMG GIOP header, DCE 1.1 RPC PDU headers, RFC 2812 (IRC),
RFC 3977 (NNTP), Apple DSI header, Ceph messenger banners.
"""

from __future__ import annotations

import re

from shared.models import FlowSample, Verdict
from services.classify.dissectors.base import Dissector, Match
from services.classify.dissectors.breadth_util import (TCP, TCP_UDP, UDP, PortHint, Simple, ordered, printable,
                                                       u16, u16le, u32)


class RDP(Dissector):
    name = "RDP"
    transports = TCP_UDP
    ports = frozenset({3389})

    def could_be(self, s: FlowSample) -> bool:
        p = s.src_payloads[0] if s.src_payloads else b""
        if s.transport == "TCP" and s.dst_payloads and p[5:6] != b"\xe0":
            p = s.dst_payloads[0]       # the server's packet was seen first: the client's CR is dst's
        return len(p) >= 11 and (p[0] == 3 or p[:4] == b"\xff\xff\xff\xff")

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        p = s.src_payloads[0] if s.src_payloads else b""
        if s.transport == "TCP":
            if p[5:6] != b"\xe0" and s.dst_payloads:
                p = s.dst_payloads[0]
            if len(p) < 11:
                return Match.NO
            var = p[11:]
            # X.224 CR whose variable part is RDP's (empty, a routing cookie or an RDP_NEG_REQ), not ISO TSAPs
            rdp_var = (not var or var.startswith((b"Cookie: ", b"Cookie:")) or var[:1] == b"\x01" and u16le(var, 2) == 8
                       or b"\r\n\x01\x00\x08\x00" in var)
            if p[1] == 0 and u16(p, 2) == len(p) and p[5] == 0xE0 and p[4] + 5 == len(p) and p[4] >= 6 and rdp_var:
                v.app_protocol = self.name
                i = p.find(b"Cookie: mstshash=")
                if i >= 0:
                    v.extra["rdp_cookie"] = printable(p[i + 17:].split(b"\r\n", 1)[0], 128)
                return Match.FINAL
            return Match.NO
        if p[:4] == b"\xff\xff\xff\xff" and u16(p, 6) & 0x0001 and len(p) >= 1000:   # SYN padded to 1232
            v.app_protocol = self.name
            return Match.FINAL
        return Match.NO


class VNC(Simple):
    name = "VNC"
    transports = TCP
    ports = frozenset({5900, 5901, 5902, 5903, 5800})
    magic = (b"RFB 0",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) == 12 and p.startswith(b"RFB 0") and p[7:8] == b"." and p[11:12] == b"\n"


class Telnet(Simple):
    name = "Telnet"
    transports = TCP
    ports = frozenset({23})
    magic = (b"\xff",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        # at least one IAC WILL/WONT/DO/DONT <option> sequence and nothing else before it
        if len(p) < 3 or p[0] != 0xFF or not 0xFA <= p[1] <= 0xFE:
            return False
        return p[2] < 50 or p[2] == 0xFF


class Radmin(Simple):
    name = "Radmin"
    transports = TCP
    ports = frozenset({4899})

    def could_be(self, s: FlowSample) -> bool:
        return 4899 in (s.src_port, s.dst_port) and bool(s.src_payloads)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        # Radmin frames start with 01 00 00 00 and a small big-endian length
        return len(p) >= 10 and p[:4] == b"\x01\x00\x00\x00" and u32(p, 4) < 0x10000000


class RSH(Dissector):
    name = "RSH"
    transports = TCP
    ports = frozenset({514})

    def could_be(self, s: FlowSample) -> bool:
        return bool({s.src_port, s.dst_port} & {512, 513, 514}) and bool(s.src_payloads) and s.src_payloads[0][-1:] == b"\x00"

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        data = b"".join(s.src_payloads[:3])[:1200]
        parts = data.split(b"\x00")
        # stderr port (digits or empty), local user, remote user, command, each NUL-terminated
        if len(parts) >= 5 and (parts[0].isdigit() or parts[0] == b"") and len(parts[0]) <= 5 and parts[1] and parts[2]:
            if all(32 <= c < 127 for c in parts[1] + parts[2]):
                v.app_protocol = self.name
                v.extra["rsh_command"] = printable(parts[3], 200)
                return Match.FINAL
        if len(parts) == 2 and parts[0].isdigit() and len(parts[0]) <= 5 and not s.dst_payloads:
            v.app_protocol = self.name
            return Match.PARTIAL
        return Match.NO


class XDMCP(Simple):
    name = "XDMCP"
    transports = UDP
    ports = frozenset({177})
    magic = (b"\x00\x01",)
    port_gate = True

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 6 and u16(p, 0) == 1 and 1 <= u16(p, 2) <= 16 and u16(p, 4) + 6 == len(p)


class Citrix(Simple):
    name = "Citrix"
    transports = TCP
    ports = frozenset({1494, 2598})
    magic = (b"\x7f\x7fICA\x00", b"\x1aCGP/01")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return p.startswith((b"\x7f\x7fICA\x00", b"\x1aCGP/01"))


class TeamViewer(Simple):
    name = "TeamViewer"
    transports = TCP_UDP
    ports = frozenset({5938})
    magic = (b"\x17\x24", b"\x11\x30", b"\x00")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if s.transport == "UDP" and len(p) >= 16 and p[0] == 0 and p[11:13] == b"\x17\x24":
            return True
        return len(p) >= 4 and (p[:2] == b"\x17\x24" or p[:2] == b"\x11\x30") and (5938 in (s.src_port, s.dst_port) or len(s.src_payloads) >= 2 and s.src_payloads[1][:2] == p[:2])


class AJP(Simple):
    name = "AJP"
    transports = TCP
    ports = frozenset({8009})
    magic = (b"\x12\x34", b"AB")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) >= 5 and p[:2] == b"\x12\x34" and u16(p, 2) + 4 == len(p) and p[4] in (2, 7, 8, 10):
            return True
        return len(p) >= 5 and p[:2] == b"AB" and u16(p, 2) + 4 == len(p) and 3 <= p[4] <= 9


class Corba(Simple):
    name = "Corba"
    transports = TCP_UDP
    ports = frozenset({683, 684, 2809})
    magic = (b"GIOP", b"RMI\x01", b"MIOP")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if p[:4] == b"MIOP" and len(p) >= 16:      # MIOP packet header (UDP multicast GIOP)
            return p[4] in (0x10, 0x20) and b"GIOP" in p[8:48]
        return len(p) >= 12 and p[:4] in (b"GIOP", b"RMI\x01") and p[4] == 1 and p[5] <= 3 and p[7] <= 7


class DCERPC(Dissector):
    name = "DCERPC"
    transports = TCP_UDP
    ports = frozenset({135})

    def could_be(self, s: FlowSample) -> bool:
        p = s.src_payloads[0] if s.src_payloads else b""
        return len(p) >= 16 and p[0] in (4, 5)

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        p = s.src_payloads[0]
        if s.transport == "TCP":
            # connection-oriented PDU: 5.0/5.1, ptype, flags, drep, frag_length
            if p[0] == 5 and p[1] in (0, 1) and p[2] <= 19 and p[4] in (0x10, 0x00) and \
                    (u16le(p, 8) if p[4] == 0x10 else u16(p, 8)) == len(p):
                v.app_protocol = self.name
                return Match.FINAL
            return Match.NO
        # connectionless PDU: version 4, ptype 0..10, 80-byte header
        if p[0] == 4 and p[1] <= 10 and len(p) >= 80 and p[4] in (0x10, 0x00) and p[5] in (0, 1, 2, 3):
            v.app_protocol = self.name
            if p[24:28] in (b"\xde\xa0\x00\x01", b"\x01\x00\xa0\xde", b"\xde\xa0\x00\x02", b"\x02\x00\xa0\xde") or \
                    p[8:12] in (b"\xde\xa0\x00\x00", b"\x00\x00\xa0\xde"):
                v.application = "PROFINET_IO"
            return Match.FINAL
        return Match.NO


class IRC(Dissector):
    name = "IRC"
    transports = TCP
    ports = frozenset({6667, 6697, 194})

    def could_be(self, s: FlowSample) -> bool:
        return bool(s.src_payloads or s.dst_payloads)

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        # the client's registration (RFC 2812 3.1: NICK with USER or PASS) from whichever side sent it:
        # the capture may have seen the server's packet first
        for cl, sv in ((s.src_payloads, s.dst_payloads), (s.dst_payloads, s.src_payloads)):
            c = b"".join(cl[:4])[:2048]
            if b"NICK " not in c and b"USER " not in c:
                continue
            d = b"".join(sv[:2])[:512]
            lines = c.split(b"\r\n")
            has_nick = any(x.startswith(b"NICK ") for x in lines)
            has_user = any(x.startswith(b"USER ") and b" :" in x for x in lines)
            if (has_nick and (has_user or any(x.startswith(b"PASS ") for x in lines))) or \
                    (d.startswith(b":") and (b" NOTICE " in d[:120] or b" 001 " in d[:120]) and (has_nick or has_user)):
                v.app_protocol = self.name
                return Match.FINAL
        return Match.NO


# an NNTP client command at the start of a line of the segment (commands may be pipelined, RFC 3977 3.5)
_NNTP_CMD = re.compile(rb"(?:^|\r\n)(?:MODE READER|AUTHINFO USER |LIST NEWSGROUPS|GROUP |ARTICLE )")
_NNTP_STARTS = (b"MODE READER", b"AUTHINFO USER ", b"LIST NEWSGROUPS", b"GROUP ", b"ARTICLE ")


class Usenet(Dissector):
    name = "Usenet"
    transports = TCP
    ports = frozenset({119, 563})

    def could_be(self, s: FlowSample) -> bool:
        return bool(s.dst_payloads or s.src_payloads)

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        # the client is the side away from NNTP's port (the capture may have seen the server's packet first)
        client_src = s.dst_port in self.ports or s.src_port not in self.ports
        server = s.dst_payloads if client_src else s.src_payloads
        for src, p in ordered(s, 6):
            if src != client_src and p.startswith((b"200 ", b"201 ")) and b"NNTP" in p[:200].upper():
                v.app_protocol = self.name
                return Match.FINAL
            # (the pattern starts at the payload's start or after a CRLF: without either no search)
            if src == client_src and (p.startswith(_NNTP_STARTS) or p.find(b"\r\n", 0, 512) >= 0) and \
                    _NNTP_CMD.search(p, 0, 512):
                if 119 in (s.src_port, s.dst_port) or any(q.startswith((b"200 ", b"201 ")) for q in server[:1]):
                    v.app_protocol = self.name
                    return Match.FINAL
        return Match.NO


class AFP(Simple):
    """AFP over TCP: DSI header (flags, command 1..8, request id, offset, length, reserved)."""

    name = "AFP"
    transports = TCP
    ports = frozenset({548})
    magic = (b"\x00", b"\x01")
    port_gate = True

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 16 and p[0] in (0, 1) and 1 <= p[1] <= 8 and u32(p, 8) == len(p) - 16 and u32(p, 12) == 0


class Ceph(Simple):
    name = "Ceph"
    transports = TCP
    ports = frozenset({3300, 6789})
    magic = (b"ceph v",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return p.startswith((b"ceph v027", b"ceph v2\n", b"ceph v2"))


class HAProxy(Simple):
    """The PROXY protocol (haproxy's proxy-protocol.txt): v1 text line 'PROXY TCP4|TCP6|UNKNOWN ...\\r\\n'
    or the v2 binary signature, in front of the proxied stream."""

    name = "HAProxy"
    transports = TCP
    ports = frozenset()
    magic = (b"PROXY ", b"\r\n\r\n\x00\r\nQUIT\n")
    maxpk = 1

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if p.startswith(b"PROXY "):
            line = p.split(b"\r\n", 1)[0]
            return len(line) <= 107 and line[6:11] in (b"TCP4 ", b"TCP6 ", b"UNKNO")
        return len(p) >= 16 and p[:12] == b"\r\n\r\n\x00\r\nQUIT\n" and (p[12] >> 4) == 2


DISSECTORS = [HAProxy(), RDP(), VNC(), Telnet(), Radmin(), RSH(), XDMCP(), Citrix(), TeamViewer(), AJP(), Corba(), DCERPC(),
              IRC(), Usenet(), AFP(), Ceph()]

PORT_HINTS = [PortHint("iSCSI", {3260}, TCP)]
