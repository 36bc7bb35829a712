"""Crafted frames of a TCP/UDP flow inside VLAN/QinQ, VXLAN, GRE and GTP-U, for block's tests.

``Tunnel(kind, ...)`` wraps an inner IP packet the way a real tunnel endpoint
on the wire would: outer Ethernet (+ tags), outer IPv4, UDP/GRE/GTP header.
``Flow`` builds a client/server TCP conversation (handshake, request, reply)
with exact sequence numbers, every frame wrapped by the tunnel of its
direction.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

import dpkt

MAC_C, MAC_S = "02:00:00:00:0c:01", "02:00:00:00:0c:02"      # inner (overlay) MACs
MAC_TC, MAC_TS = "02:00:00:00:0e:01", "02:00:00:00:0e:02"    # tunnel endpoints' (underlay) MACs
VTEP_C, VTEP_S = "192.0.2.1", "192.0.2.2"


def _mac(m: str) -> bytes:
    return bytes.fromhex(m.replace(":", ""))


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ip4(src: str, dst: str, proto: int, payload: bytes, ident: int = 1) -> bytes:
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000, 64, proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    return h[:10] + struct.pack("!H", _csum(h)) + h[12:] + payload


def tcp_packet(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int,
               payload: bytes = b"") -> bytes:
    t = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, win=65000, data=payload)
    t.off = 5
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, ttl=64, id=7, data=t)
    ip.len = 20 + len(t)
    return bytes(ip)


def udp_packet(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    u = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    u.ulen = 8 + len(payload)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=17, ttl=64, id=9, data=u)
    ip.len = 20 + len(u)
    return bytes(ip)


@dataclass
class Tunnel:
    """kind: plain, vlan, qinq, mpls, pppoe, ipip, vxlan, vxlan6, gre, gre-key-seq, gre-eth, gre-csum, gtp,
    erspan, tzsp, capwap."""

    kind: str
    vni: int = 4242
    key: int = 0x1234
    teid_up: int = 0x1111
    teid_down: int = 0x2222
    vlans: tuple[int, ...] = (100, 200)
    seq: dict[bool, int] = field(default_factory=lambda: {True: 1000, False: 5000})

    def wrap(self, inner_ip: bytes, from_client: bool) -> bytes:
        smac, dmac = (MAC_C, MAC_S) if from_client else (MAC_S, MAC_C)
        tsmac, tdmac = (MAC_TC, MAC_TS) if from_client else (MAC_TS, MAC_TC)
        tsrc, tdst = (VTEP_C, VTEP_S) if from_client else (VTEP_S, VTEP_C)
        inner_eth = _mac(dmac) + _mac(smac) + b"\x08\x00" + inner_ip
        k = self.kind
        if k == "plain":
            return inner_eth
        if k == "vlan":
            return _mac(dmac) + _mac(smac) + struct.pack("!HH", 0x8100, 0x2000 | self.vlans[0]) + b"\x08\x00" + inner_ip
        if k == "qinq":
            return (_mac(dmac) + _mac(smac) + struct.pack("!HHHH", 0x88A8, self.vlans[0], 0x8100, self.vlans[1])
                    + b"\x08\x00" + inner_ip)
        if k == "mpls":  # one label per direction, bottom of stack
            label = 1001 if from_client else 2002
            return _mac(dmac) + _mac(smac) + b"\x88\x47" + struct.pack("!I", (label << 12) | 0x100 | 64) + inner_ip
        if k == "pppoe":
            return (_mac(dmac) + _mac(smac) + b"\x88\x64" + struct.pack("!BBHHH", 0x11, 0, 0x0042, len(inner_ip) + 2,
                                                                      0x0021) + inner_ip)
        outer_eth = _mac(tdmac) + _mac(tsmac) + b"\x08\x00"
        if k == "ipip":
            return outer_eth + ip4(tsrc, tdst, 4, inner_ip)
        if k == "vxlan6":
            vx = struct.pack("!II", 0x08000000, self.vni << 8) + inner_eth
            u = dpkt.udp.UDP(sport=49152 + (7 if from_client else 9), dport=4789, data=vx)
            u.ulen = 8 + len(vx)
            a, b = ("fd00:e::1", "fd00:e::2") if from_client else ("fd00:e::2", "fd00:e::1")
            ip6 = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, a), dst=socket.inet_pton(socket.AF_INET6, b),
                               nxt=17, hlim=64, plen=len(u), data=u)
            ip6.extension_hdrs = {}
            ip6.all_extension_headers = []
            return _mac(tdmac) + _mac(tsmac) + b"\x86\xdd" + bytes(ip6)
        if k == "tzsp":
            tz = struct.pack("!BBH", 1, 0, 1) + b"\x01" + inner_eth
            udp = struct.pack("!HHHH", 40000, 37008, 8 + len(tz), 0) + tz
            return outer_eth + ip4(tsrc, tdst, 17, udp)
        if k == "capwap":  # RFC 5415 data channel: HLEN 2 (8 bytes), WBID 1, T=0 (an 802.3 frame follows)
            cw = b"\x00\x10\x02\x00\x00\x00\x00\x00" + inner_eth
            udp = struct.pack("!HHHH", 12222 if from_client else 5247, 5247 if from_client else 12222,
                              8 + len(cw), 0) + cw
            return outer_eth + ip4(tsrc, tdst, 17, udp)
        if k == "vxlan":
            vx = struct.pack("!II", 0x08000000, self.vni << 8) + inner_eth
            udp = struct.pack("!HHHH", 49152 + (7 if from_client else 9), 4789, 8 + len(vx), 0) + vx
            return outer_eth + ip4(tsrc, tdst, 17, udp)
        if k == "gtp":
            teid = self.teid_up if from_client else self.teid_down
            gtp = struct.pack("!BBHI", 0x30, 0xFF, len(inner_ip), teid) + inner_ip
            udp = struct.pack("!HHHH", 2152, 2152, 8 + len(gtp), 0) + gtp
            return outer_eth + ip4(tsrc, tdst, 17, udp)
        if k in ("gre", "gre-key-seq", "gre-eth", "gre-csum"):
            if k == "gre-eth":
                payload, ptype, fl = inner_eth, 0x6558, 0
            else:
                payload, ptype, fl = inner_ip, 0x0800, 0
            hdr = b""
            if k == "gre-csum":
                fl |= 0x80
                hdr += b"\0\0\0\0"
            if k == "gre-key-seq":
                fl |= 0x30
                self.seq[from_client] += 1
                hdr += struct.pack("!II", self.key, self.seq[from_client])
            gre = struct.pack("!BBH", fl, 0, ptype) + hdr + payload
            if k == "gre-csum":
                gre = gre[:4] + struct.pack("!H", _csum(gre)) + gre[6:]
            return outer_eth + ip4(tsrc, tdst, 47, gre)
        if k == "erspan":
            gre = struct.pack("!BBHI", 0x10, 0, 0x88BE, 1) + struct.pack("!II", 0x10000000, 0) + inner_eth
            return outer_eth + ip4(tsrc, tdst, 47, gre)
        raise ValueError(k)


@dataclass
class Flow:
    """A TCP conversation between 10.200.0.2:sport and 10.200.0.3:80 (inner addresses)."""

    tunnel: Tunnel
    sport: int = 40001
    cip: str = "10.200.0.2"
    sip: str = "10.200.0.3"
    cseq: int = 1000
    sseq: int = 90000

    def frame(self, from_client: bool, seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
        if from_client:
            p = tcp_packet(self.cip, self.sip, self.sport, 80, seq, ack, flags, payload)
        else:
            p = tcp_packet(self.sip, self.cip, 80, self.sport, seq, ack, flags, payload)
        return self.tunnel.wrap(p, from_client)

    def handshake_and_request(self, host: str) -> list[bytes]:
        c, s = self.cseq, self.sseq
        req = f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n".encode()
        self.request_len = len(req)
        return [self.frame(True, c, 0, 0x02), self.frame(False, s, c + 1, 0x12), self.frame(True, c + 1, s + 1, 0x10),
                self.frame(True, c + 1, s + 1, 0x18, req)]

    def reply(self) -> bytes:
        body = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        return self.frame(False, self.sseq + 1, self.cseq + 1 + self.request_len, 0x18, body)
