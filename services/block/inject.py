"""Building and sending the frames block injects.

Frames are built with dpkt (IP, TCP, UDP, DNS) behind an Ethernet header with
the observed MACs and 802.1Q tags, IPv4 or IPv6.  Sequence numbers must be
exact (RFC 5961: Linux accepts a RST only at exactly the next expected
sequence number, see ../shared/NETLAB.md):

- a client request seen with (seq S, ack A, payload length L):
  RST to the server: seq S+L; RST to the client: seq A;
- HTTP block page: to the client FIN|PSH|ACK, seq A, ack S+L, a complete
  response with Content-Length; plus the RST to the server;
- DNS: an answer from the server's address and port with the query's id.

``Injector`` sends through an AF_PACKET raw socket bound to the interface.
"""

from __future__ import annotations

import html
import ipaddress
import socket
import struct
from dataclasses import dataclass

import dpkt

TH_FIN, TH_SYN, TH_RST, TH_PUSH, TH_ACK = 0x01, 0x02, 0x04, 0x08, 0x10
ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD = 0x0800, 0x86DD, 0x8100, 0x88A8
_IP_ID = [0x4654]


def mac_bytes(mac: str) -> bytes:
    b = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(b) != 6:
        raise ValueError(f"bad MAC {mac!r}")
    return b


def eth_header(src_mac: str, dst_mac: str, vlan_ids: list[int] | tuple[int, ...], ethertype: int) -> bytes:
    """Ethernet header with 802.1Q tags, outermost first (TPID 0x8100 for each)."""
    hdr = mac_bytes(dst_mac) + mac_bytes(src_mac)
    for vid in vlan_ids:
        hdr += struct.pack("!HH", ETH_P_8021Q, vid & 0x0FFF)
    return hdr + struct.pack("!H", ethertype)


def _ip(src_ip: str, dst_ip: str, proto: int, l4: dpkt.Packet, ttl: int = 64) -> tuple[int, bytes]:
    if ":" in src_ip:
        ip6 = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, src_ip), dst=socket.inet_pton(socket.AF_INET6, dst_ip),
                           nxt=proto, hlim=ttl, plen=len(l4), data=l4)
        ip6.extension_hdrs = {}
        ip6.all_extension_headers = []
        return ETH_P_IPV6, bytes(ip6)
    _IP_ID[0] = (_IP_ID[0] + 1) & 0xFFFF
    ip4 = dpkt.ip.IP(src=socket.inet_aton(src_ip), dst=socket.inet_aton(dst_ip), p=proto, ttl=ttl,
                     id=_IP_ID[0], df=1, data=l4)
    ip4.len = 20 + len(l4)
    return ETH_P_IP, bytes(ip4)


@dataclass(frozen=True)
class Endpoint:
    """One side of a flow as seen on the wire."""

    ip: str
    port: int
    mac: str


def tcp_frame(src: Endpoint, dst: Endpoint, vlan_ids: list[int], seq: int, ack: int, flags: int,
              payload: bytes = b"", window: int = 0) -> bytes:
    tcp = dpkt.tcp.TCP(sport=src.port, dport=dst.port, seq=seq & 0xFFFFFFFF, ack=ack & 0xFFFFFFFF,
                       flags=flags, win=window, data=payload)
    tcp.off = 5
    etype, ipb = _ip(src.ip, dst.ip, dpkt.ip.IP_PROTO_TCP, tcp)
    return eth_header(src.mac, dst.mac, vlan_ids, etype) + ipb


def udp_frame(src: Endpoint, dst: Endpoint, vlan_ids: list[int], payload: bytes) -> bytes:
    udp = dpkt.udp.UDP(sport=src.port, dport=dst.port, data=payload)
    udp.ulen = 8 + len(payload)
    etype, ipb = _ip(src.ip, dst.ip, dpkt.ip.IP_PROTO_UDP, udp)
    return eth_header(src.mac, dst.mac, vlan_ids, etype) + ipb


def reset_frames(client: Endpoint, server: Endpoint, vlan_ids: list[int], client_next_seq: int,
                 server_next_seq: int) -> tuple[bytes, bytes]:
    """(RST to the server, RST to the client) at the exact next sequence numbers of each side."""
    to_server = tcp_frame(client, server, vlan_ids, client_next_seq, server_next_seq, TH_RST | TH_ACK)
    to_client = tcp_frame(server, client, vlan_ids, server_next_seq, client_next_seq, TH_RST | TH_ACK)
    return to_server, to_client


def block_page(rule_id: str, host: str, message: str = "", redirect: str | None = None) -> bytes:
    """A complete HTTP/1.1 response: 302 to ``redirect`` or a 403 block page."""
    if redirect:
        body = b""
        head = (f"HTTP/1.1 302 Found\r\nLocation: {redirect}\r\nContent-Length: 0\r\n"
                "Cache-Control: no-store\r\nConnection: close\r\n\r\n")
        return head.encode("ascii", "replace")
    text = html.escape(message or "Access to this site is blocked by policy.")
    body = (
        "<!doctype html><html><head><title>Blocked</title></head><body>"
        f"<h1>Blocked</h1><p>{text}</p><p>Host: {html.escape(host)}<br>Rule: {html.escape(rule_id)}</p>"
        "<p>FlowTarget</p></body></html>\n"
    ).encode("utf-8", "replace")
    head = (
        "HTTP/1.1 403 Forbidden\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n"
        "X-FlowTarget-Rule: " + "".join(c for c in rule_id if c.isalnum() or c in "-_") + "\r\n\r\n"
    ).encode("ascii")
    return head + body


def http_block_frames(client: Endpoint, server: Endpoint, vlan_ids: list[int], client_next_seq: int,
                      server_next_seq: int, page: bytes) -> tuple[bytes, bytes]:
    """(RST to the server, FIN|PSH|ACK page to the client)."""
    to_server = tcp_frame(client, server, vlan_ids, client_next_seq, server_next_seq, TH_RST | TH_ACK)
    to_client = tcp_frame(server, client, vlan_ids, server_next_seq, client_next_seq,
                          TH_FIN | TH_PUSH | TH_ACK, page, window=502)
    return to_server, to_client


# --------------------------------------------------------------------------- DNS


@dataclass(frozen=True)
class DnsQuery:
    id: int
    name: str
    qtype: int
    qclass: int
    rd: bool
    raw_question: bytes  # the question section as sent
    opcode: int


def parse_dns_query(payload: bytes) -> DnsQuery | None:
    """The first question of a standard query; None for responses and anything malformed."""
    if len(payload) < 12:
        return None
    tid, flags, qd, _an, _ns, _ar = struct.unpack_from("!HHHHHH", payload, 0)
    if flags & 0x8000 or qd < 1:  # a response, or no question
        return None
    opcode = (flags >> 11) & 0xF
    if opcode != 0:
        return None
    labels, o = [], 12
    while True:
        if o >= len(payload):
            return None
        n = payload[o]
        if n == 0:
            o += 1
            break
        if n & 0xC0 or o + 1 + n > len(payload):
            return None  # no compression in a query's first name
        labels.append(payload[o + 1:o + 1 + n])
        o += 1 + n
        if o > 12 + 255:
            return None
    if o + 4 > len(payload):
        return None
    qtype, qclass = struct.unpack_from("!HH", payload, o)
    try:
        name = ".".join(lb.decode("ascii") for lb in labels)
    except UnicodeDecodeError:
        name = ".".join(lb.decode("latin-1") for lb in labels)
    return DnsQuery(tid, name, qtype, qclass, bool(flags & 0x0100), payload[12:o + 4], opcode)


def dns_transaction_of_response(payload: bytes) -> tuple[int, bool] | None:
    """(id, is_response) of a DNS message, None when too short."""
    if len(payload) < 12:
        return None
    tid, flags = struct.unpack_from("!HH", payload, 0)
    return tid, bool(flags & 0x8000)


def forge_dns_answer(q: DnsQuery, sinkhole: str | None, ttl: int = 60) -> bytes:
    """A response to ``q``: the sinkhole for A/AAAA, empty NOERROR for other types, NXDOMAIN without one."""
    rcode = 0
    answers = b""
    an = 0
    if sinkhole is None:
        rcode = 3  # NXDOMAIN
    else:
        addr = ipaddress.ip_address(sinkhole)
        rdata = None
        if q.qtype == 1:  # A
            rdata = addr.packed if addr.version == 4 else ipaddress.IPv4Address("0.0.0.0").packed
        elif q.qtype == 28:  # AAAA
            rdata = addr.packed if addr.version == 6 else ipaddress.IPv6Address("::").packed
        if rdata is not None:
            answers = struct.pack("!HHHIH", 0xC00C, q.qtype, 1, ttl, len(rdata)) + rdata
            an = 1
    flags = 0x8000 | 0x0400 | (0x0100 if q.rd else 0) | 0x0080 | rcode  # QR AA RD RA
    return struct.pack("!HHHHHH", q.id, flags, 1, an, 0, 0) + q.raw_question + answers


# --------------------------------------------------------------------------- sending


class Injector:
    """Sends frames on one interface through an AF_PACKET raw socket."""

    def __init__(self, iface: str) -> None:
        self.iface = iface
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.sock.bind((iface, 0))
        self.sent = 0
        self.errors = 0

    def send(self, *frames: bytes) -> int:
        n = 0
        for f in frames:
            try:
                self.sock.send(f)
                n += 1
            except OSError:
                self.errors += 1
        self.sent += n
        return n

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def iface_mac(iface: str) -> str:
    try:
        with open(f"/sys/class/net/{iface}/address") as f:
            return f.read().strip().lower()
    except OSError:
        return ""


def iface_addresses(iface: str) -> list[str]:
    """The interface's own IPv4/IPv6 addresses (via ``ip -j addr``); [] when unknown."""
    import json
    import subprocess

    try:
        out = subprocess.run(["ip", "-j", "addr", "show", "dev", iface], capture_output=True, text=True, timeout=5).stdout
        data = json.loads(out or "[]")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return []
    addrs = []
    for link in data:
        for a in link.get("addr_info", []):
            if a.get("local"):
                addrs.append(a["local"])
    return addrs
