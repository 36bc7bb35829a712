"""Crafted captures for the console's tests (dpkt): many flows, an ARP flood, hostile strings."""

from __future__ import annotations

import socket
from pathlib import Path

import dpkt

BCAST = b"\xff" * 6
FLOOD_MAC = bytes.fromhex("666666666666")
HOSTILE_HOST = '<img src=x onerror="window.__pwned=1;alert(1)">.hostile.test'
HOSTILE_DNS = "<script>window.__pwned=2</script>.evil.test"
HOSTILE_URL = '/"><script>window.__pwned=3</script>'


def mac_of(ip: str) -> bytes:
    return bytes.fromhex("0211") + socket.inet_aton(ip)


def ether(src: bytes, dst: bytes, ethtype: int, data: bytes) -> bytes:
    return bytes(dpkt.ethernet.Ethernet(src=src, dst=dst, type=ethtype, data=data))


def ip_frame(src: str, dst: str, proto: int, l4: object) -> bytes:
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto, ttl=64, data=l4)
    ip.len = 20 + len(bytes(l4))
    return ether(mac_of(src), mac_of(dst), dpkt.ethernet.ETH_TYPE_IP, bytes(ip))


def udp(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    u = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    u.ulen = 8 + len(payload)
    return ip_frame(src, dst, 17, u)


def tcp(src: str, sport: int, dst: str, dport: int, flags: int, seq: int = 1000, ack: int = 0, payload: bytes = b"") -> bytes:
    return ip_frame(src, dst, 6, dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, win=65535,
                                              data=payload))


def arp_request(smac: bytes, sip: str, tip: str) -> bytes:
    a = dpkt.arp.ARP(op=1, sha=smac, spa=socket.inet_aton(sip), tha=b"\0" * 6, tpa=socket.inet_aton(tip))
    return ether(smac, BCAST, dpkt.ethernet.ETH_TYPE_ARP, bytes(a))


def dns_pair(ts: float, client: str, resolver: str, name: str, tid: int, sport: int) -> list[tuple[float, bytes]]:
    q = dpkt.dns.DNS(id=tid, op=dpkt.dns.DNS_RD, qd=[dpkt.dns.DNS.Q(name=name, type=dpkt.dns.DNS_A)])
    r = dpkt.dns.DNS(id=tid, op=dpkt.dns.DNS_RD | dpkt.dns.DNS_RA | 0x8000, qd=q.qd,
                     an=[dpkt.dns.DNS.RR(name=name, type=dpkt.dns.DNS_A, ttl=60, rdata=socket.inet_aton("192.0.2.80"))])
    return [(ts, udp(client, sport, resolver, 53, bytes(q))), (ts + 0.01, udp(resolver, 53, client, sport, bytes(r)))]


def http_session(ts: float, client: str, sport: int, server: str, host: str, url: str = "/") -> list[tuple[float, bytes]]:
    S, A, P, F = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH, dpkt.tcp.TH_FIN
    req = f"GET {url} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {host}\r\n\r\n".encode("latin-1")
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    c, s = 1000, 5000
    return [
        (ts, tcp(client, sport, server, 80, S, c)),
        (ts + 0.01, tcp(server, 80, client, sport, S | A, s, c + 1)),
        (ts + 0.011, tcp(client, sport, server, 80, A, c + 1, s + 1)),
        (ts + 0.02, tcp(client, sport, server, 80, P | A, c + 1, s + 1, req)),
        (ts + 0.03, tcp(server, 80, client, sport, P | A, s + 1, c + 1 + len(req), resp)),
        (ts + 0.04, tcp(client, sport, server, 80, F | A, c + 1 + len(req), s + 1 + len(resp))),
        (ts + 0.05, tcp(server, 80, client, sport, F | A, s + 1 + len(resp), c + 2 + len(req))),
        (ts + 0.06, tcp(client, sport, server, 80, A, c + 2 + len(req), s + 2 + len(resp))),
    ]


def write(path: Path, frames: list[tuple[float, bytes]]) -> Path:
    with open(path, "wb") as fh:
        w = dpkt.pcap.Writer(fh, linktype=dpkt.pcap.DLT_EN10MB)
        for ts, fr in sorted(frames, key=lambda x: x[0]):
            w.writepkt(fr, ts=ts)
    return path


def many_flows(path: Path, n: int, t0: float) -> Path:
    """``n`` short UDP request/answer flows from 50 clients to 20 servers (distinct ports)."""
    frames = []
    for i in range(n):
        c = f"10.20.{i % 50}.{1 + (i // 50) % 200}"
        s = f"198.51.100.{1 + i % 20}"
        ts = t0 + i * 0.0005
        frames.append((ts, udp(c, 10000 + i % 50000, s, 5000 + i % 7, b"q" * 20)))
        frames.append((ts + 0.0001, udp(s, 5000 + i % 7, c, 10000 + i % 50000, b"a" * 40)))
    return write(path, frames)


def hostile(path: Path, t0: float) -> Path:
    """HTTP with a script in Host, User-Agent and URL; a DNS query whose name is a script tag."""
    frames = http_session(t0, "10.30.0.5", 40001, "203.0.113.7", HOSTILE_HOST, HOSTILE_URL)
    frames += dns_pair(t0 + 0.2, "10.30.0.5", "10.30.0.53", HOSTILE_DNS, 0x4242, 40002)
    return write(path, frames)


def arp_flood(path: Path, t0: float, seconds: float = 16.0, flood_from: float = 2.0, flood_pps: int = 200) -> Path:
    """``seconds`` of ordinary traffic (DNS + HTTP, a few ARPs) with an ARP flood from one MAC."""
    frames = []
    k = 0
    t = 0.0
    while t < seconds:
        client = f"10.40.0.{10 + k % 20}"
        frames += dns_pair(t0 + t, client, "10.40.0.53", f"www.site{k % 9}.example", k & 0xFFFF, 20000 + k)
        frames += http_session(t0 + t + 0.05, client, 30000 + k, f"192.0.2.{1 + k % 30}", f"www.site{k % 9}.example")
        if k % 4 == 0:
            frames.append((t0 + t + 0.1, arp_request(mac_of(client), client, "10.40.0.1")))
        k += 1
        t += 0.1
    n = int((seconds - flood_from) * flood_pps)
    for i in range(n):
        frames.append((t0 + flood_from + i / flood_pps,
                       arp_request(FLOOD_MAC, "10.40.0.66", f"10.40.{1 + i // 250}.{1 + i % 250}")))
    return write(path, frames)


def trickle(path: Path, t0: float, seconds: float = 40.0) -> Path:
    """A quiet capture (one small UDP packet every 0.25 s) replayed in real time to keep capture running."""
    frames = [(t0 + i * 0.25, udp("10.50.0.1", 41000, "10.50.0.2", 41001, b"tick")) for i in range(int(seconds * 4))]
    return write(path, frames)
