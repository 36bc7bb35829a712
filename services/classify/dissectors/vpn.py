"""VPN and tunnel protocols: OpenVPN, WireGuard, IPsec (IKE, ESP/AH, NAT-T),
SoftEther, tinc, SOCKS.

References: OpenVPN's protocol description (doc/doxygen/doc_protocol_overview
and ssl_pkt.h opcodes); the WireGuard whitepaper (message types 1-4 and their
sizes); RFC 7296 / RFC 2408 (IKE header), RFC 3948 (UDP encapsulation of ESP,
non-ESP marker); RFC 1928 (SOCKS5) and the SOCKS4 protocol note.
"""

from __future__ import annotations

from shared.models import FlowSample, Verdict
from services.classify.dissectors.base import Dissector, Match
from services.classify.dissectors.breadth_util import TCP, TCP_UDP, UDP, Simple, ordered, u16, u32

# OpenVPN opcodes (high 5 bits of the first byte)
_OVPN_CLIENT_RESET = {1, 7, 10}
_OVPN_SERVER_RESET = {2, 8}


class OpenVPN(Dissector):
    name = "OpenVPN"
    transports = TCP_UDP
    ports = frozenset({1194})
    first_bytes = {"UDP": bytes(b for b in range(256) if b >> 3 in (1, 2, 7, 8, 10))}   # could_be: its opcodes

    def could_be(self, s: FlowSample) -> bool:
        for lst in (s.src_payloads, s.dst_payloads):
            if lst:
                p = lst[0]
                o = 2 if s.transport == "TCP" else 0
                if len(p) >= o + 9 and (p[o] >> 3) in (1, 2, 7, 8, 10) and (o == 0 or u16(p, 0) == len(p) - 2):
                    return True
        return False

    @staticmethod
    def _op(p: bytes, tcp: bool) -> tuple[int, int, bytes]:
        if tcp:
            if len(p) < 3 or u16(p, 0) != len(p) - 2:
                return -1, -1, b""
            p = p[2:]
        if len(p) < 9:
            return -1, -1, b""
        return p[0] >> 3, p[0] & 7, p[1:9]

    def _same_session(self, payloads: list[bytes], tcp: bool) -> bool:
        """Two or more packets of one direction: valid opcodes, the same session id, a reset first."""
        ops = [self._op(p, tcp) for p in payloads[:4]]
        if len(ops) < 2 or ops[0][0] not in _OVPN_CLIENT_RESET | _OVPN_SERVER_RESET or ops[0][1] != 0:
            return False
        if len(set(payloads[:4])) < 2:      # retransmissions of one datagram prove nothing
            return False
        # after the reset: control (P_CONTROL_V1 / WKC) or ACK packets of the same session
        return all(sid == ops[0][2] for _op, _key, sid in ops) and all(op in (4, 5, 11) or op == ops[0][0] for op, _k, _s in ops[1:]) \
            and any(op in (4, 5, 11) for op, _k, _s in ops[1:])

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        tcp = s.transport == "TCP"
        if self._same_session(s.src_payloads, tcp) or self._same_session(s.dst_payloads, tcp):
            v.app_protocol = self.name
            return Match.FINAL
        if not s.src_payloads:
            return Match.NO
        sp = s.src_payloads[0]
        op, key, sid = self._op(sp, tcp)
        if op not in _OVPN_CLIENT_RESET or key != 0:
            return Match.NO
        if not s.dst_payloads:
            # a client reset alone: plausible sizes only (no data in a reset)
            body = sp[2:] if tcp else sp
            # plain reset: opcode, session id, empty ACK array, message packet-id 0 (14 bytes)
            plain = len(body) == 14 and body[9:14] == b"\x00" * 5
            again = len(s.src_payloads) >= 2 and self._op(s.src_payloads[1], tcp)[0] in _OVPN_CLIENT_RESET and \
                self._op(s.src_payloads[1], tcp)[2] == sid    # the client retrying its reset: same session id
            if plain or 14 <= len(sp) <= 1400 and (tcp or again):
                v.app_protocol = self.name
                return Match.PARTIAL
            return Match.NO
        dop, dkey, dsid = self._op(s.dst_payloads[0], tcp)
        if dop in _OVPN_SERVER_RESET and dkey == 0 and dsid != sid:
            v.app_protocol = self.name
            return Match.FINAL
        return Match.NO


class WireGuard(Dissector):
    name = "WireGuard"
    transports = UDP
    ports = frozenset({51820})
    _sizes = {1: 148, 2: 92, 3: 64}

    def could_be(self, s: FlowSample) -> bool:
        p = s.src_payloads[0] if s.src_payloads else (s.dst_payloads[0] if s.dst_payloads else b"")
        return len(p) >= 32 and 1 <= p[0] <= 4 and p[1:4] == b"\x00\x00\x00"

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        seen = 0
        for _src, p in ordered(s, 6):
            if len(p) < 32 or p[1:4] != b"\x00\x00\x00" or not 1 <= p[0] <= 4:
                return Match.NO
            want = self._sizes.get(p[0])
            if want is not None and len(p) != want:
                return Match.NO
            if p[0] == 4 and (len(p) - 16) % 16:
                return Match.NO
            seen += 1
            if p[0] in (1, 2) or seen >= 3:
                v.app_protocol = self.name
                return Match.FINAL
        if seen:
            v.app_protocol = self.name
            return Match.PARTIAL
        return Match.NO


def ike_header_ok(p: bytes, o: int = 0) -> bool:
    """ISAKMP/IKE header (RFC 2408 3.1 / RFC 7296 3.1) at o whose length field covers the datagram."""
    if len(p) < o + 28:
        return False
    ver = p[o + 17]
    if ver not in (0x10, 0x20):
        return False
    exch = p[o + 18]
    if not (exch <= 6 or 32 <= exch <= 43 or exch == 244 or exch == 53):
        return False
    if p[o:o + 8] == b"\x00" * 8:
        return False
    return u32(p, o + 24) == len(p) - o


class IPSec(Dissector):
    name = "IPSec"
    transports = frozenset({"UDP", "ESP", "AH", "50", "51"})
    ports = frozenset({500, 4500})

    def could_be(self, s: FlowSample) -> bool:
        return True

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        if s.transport != "UDP":
            # nDPI 5.0 names the IP protocols themselves: ESP (50, RFC 4303) and AH (51, RFC 4302);
            # IPSec is IKE (UDP 500/4500)
            v.app_protocol = "AH" if s.transport in ("AH", "51") else "ESP"
            return Match.FINAL
        for _src, p in ordered(s, 4):
            if ike_header_ok(p, 0):
                v.app_protocol = self.name
                return Match.FINAL
            if p[:4] == b"\x00\x00\x00\x00" and ike_header_ok(p, 4):
                v.app_protocol = self.name
                return Match.FINAL
            if p == b"\xff" and 4500 in (s.src_port, s.dst_port):  # NAT-keepalive (RFC 3948 2.3)
                v.app_protocol = self.name
                return Match.PARTIAL
        return Match.NO


class SOCKS(Simple):
    """SOCKS4/4a (CONNECT/BIND request) and SOCKS5 (method negotiation + reply)."""

    name = "SOCKS"
    transports = TCP
    ports = frozenset({1080})

    def could_be(self, s: FlowSample) -> bool:
        return (bool(s.src_payloads) and s.src_payloads[0][:1] in (b"\x04", b"\x05")
                or bool(s.dst_payloads) and s.dst_payloads[0][:1] in (b"\x04", b"\x05"))

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        m = self._dissect(s.src_payloads, s.dst_payloads, v)
        if m == Match.NO and s.dst_payloads and s.src_payloads:
            # the capture saw the server's packet first: the client's request is dst's
            m = self._dissect(s.dst_payloads, s.src_payloads, v)
        return m

    def _dissect(self, cl: list[bytes], sv: list[bytes], v: Verdict) -> Match:
        p = cl[0] if cl else b""
        if not p:
            return Match.NO
        if p[0] == 5:
            n = p[1] if len(p) > 1 else 0
            if n == 0 or len(p) != 2 + n or any(m > 9 and m < 0x80 and m != 0xff for m in p[2:2 + n]):
                return Match.NO
            if sv:
                r = sv[0]
                if len(r) >= 2 and r[0] == 5 and (r[1] in p[2:2 + n] or r[1] == 0xFF):
                    v.app_protocol = self.name
                    return Match.FINAL
                return Match.NO
            v.app_protocol = self.name
            return Match.PARTIAL
        if p[0] == 4 and len(p) >= 9 and p[1] in (1, 2) and p[-1] == 0:
            if sv:
                r = sv[0]
                if len(r) == 8 and r[0] == 0 and 90 <= r[1] <= 93:
                    v.app_protocol = self.name
                    return Match.FINAL
                return Match.NO
            v.app_protocol = self.name
            return Match.PARTIAL
        return Match.NO


class Softether(Simple):
    """SoftEther VPN: HTTP-disguised handshake (POST /vpnsvc/connect.cgi) and its
    'SE' binary watermark upload; also its UDP acceleration is not matched."""

    name = "Softether"
    transports = TCP_UDP
    ports = frozenset({443, 992, 1194, 5555})

    def could_be(self, s: FlowSample) -> bool:
        for lst in (s.src_payloads, s.dst_payloads):
            if lst and lst[0][:3] in (b"IP=", b"POS"):
                return True
        return False

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if s.transport == "UDP":
            # NAT-traversal / UDP acceleration hello: "IP=<address>,PORT=<port>"
            return p.startswith(b"IP=") and b",PORT=" in p[:64]
        return p.startswith(b"POST /vpnsvc/") or (b"Content-Type: image/jpeg" in p[:400] and b"/vpnsvc/" in p[:200])


class TINC(Simple):
    """tinc VPN meta protocol: text lines '0 <name> 17[.x]' (ID request) then '1 ...' (METAKEY)."""

    name = "TINC"
    transports = TCP
    ports = frozenset({655})

    def could_be(self, s: FlowSample) -> bool:
        return bool(s.src_payloads) and s.src_payloads[0][:2] == b"0 "

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if not p.startswith(b"0 ") or not p.endswith(b"\n"):
            return False
        parts = p.strip().split(b" ")
        return len(parts) == 3 and parts[1].replace(b"_", b"").isalnum() and parts[2].split(b".")[0].isdigit()


class CiscoVPN(Simple):
    """Cisco VPN client's UDP encapsulation on 10000<->10000: 0xFE577E2B marker."""

    name = "CiscoVPN"
    transports = UDP
    ports = frozenset({10000})
    magic = (b"\xfe\x57\x7e\x2b",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return s.src_port == 10000 and s.dst_port == 10000 and p[:4] == b"\xfe\x57\x7e\x2b"


class Ayiya(Simple):
    """AYIYA tunnels (Anything In Anything, RFC 4891 context) on 5072/udp: the header's epoch must be
    a time near the capture (within five years before it, one day after)."""

    name = "Ayiya"
    transports = UDP
    ports = frozenset({5072})
    port_gate = True

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) <= 44:
            return False
        epoch = u32(p, 4)
        now = int(s.first_seen or s.timestamp)
        return now - 86400 * 365 * 5 <= epoch <= now + 86400


class UltraSurf(Simple):
    """UltraSurf proxy client: its TCP stream opens with a fixed 8-byte marker."""

    name = "UltraSurf"
    transports = TCP
    ports = frozenset()
    magic = (b"\xcc\x1c\x30\x41\x5b\xa4\x38\x66",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return p.startswith(self.magic)


DISSECTORS = [CiscoVPN(), UltraSurf(), Ayiya(), OpenVPN(), WireGuard(), IPSec(), SOCKS(), Softether(), TINC()]
