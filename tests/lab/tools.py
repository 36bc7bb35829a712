"""Small traffic tools run inside lab hosts (no iputils-ping on these machines).

    python tools.py ping DST [--count N] [--interval S]
        ICMP echo over a raw socket (IPv4 or IPv6); prints "replies=N".
    python tools.py udpecho --bind IP --port P
        Echoes every datagram back (prints READY); the server half of an
        "unknown" custom UDP protocol.
    python tools.py udpsend --dst IP --port P --count N --interval S --size B [--sport P]
        Sends N datagrams of B payload bytes (a custom, unclassifiable protocol:
        magic b"FTLB" + counter + filler) and counts echoes; prints
        "sent=N received=M".
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import struct
import sys
import time


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def ping(dst: str, count: int, interval: float, timeout: float = 1.0) -> int:
    v6 = ":" in dst
    if v6:
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        req_type, rep_type = 128, 129
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        req_type, rep_type = 8, 0
    ident = os.getpid() & 0xFFFF
    replies = 0
    for seq in range(1, count + 1):
        payload = b"ftlab-ping" + struct.pack("!d", time.time())
        hdr = struct.pack("!BBHHH", req_type, 0, 0, ident, seq)
        pkt = hdr + payload
        if not v6:  # the kernel fills the ICMPv6 checksum
            pkt = struct.pack("!BBHHH", req_type, 0, _csum(pkt), ident, seq) + payload
        s.sendto(pkt, (dst, 0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([s], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                break
            data = s.recv(2048)
            icmp = data if v6 else data[(data[0] & 0x0F) * 4:]
            if len(icmp) >= 8:
                t, _, _, rid, rseq = struct.unpack("!BBHHH", icmp[:8])
                if t == rep_type and rid == ident and rseq == seq:
                    replies += 1
                    break
        if seq < count:
            time.sleep(interval)
    print(f"replies={replies}", flush=True)
    return replies


def udpecho(bind: str, port: int) -> None:
    fam = socket.AF_INET6 if ":" in bind else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((bind, port))
    print("READY", flush=True)
    while True:
        data, addr = s.recvfrom(65535)
        s.sendto(data, addr)


def udpsend(dst: str, port: int, count: int, interval: float, size: int, sport: int = 0) -> tuple[int, int]:
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if sport:
        s.bind(("", sport))
    s.connect((dst, port))
    s.setblocking(False)
    received = 0

    def drain(until: float) -> None:
        nonlocal received
        while True:
            left = until - time.monotonic()
            if left <= 0 or (i == count - 1 and received >= count):
                return
            r, _, _ = select.select([s], [], [], left)
            if not r:
                return
            try:
                while True:
                    s.recv(65535)
                    received += 1
            except (BlockingIOError, ConnectionRefusedError):
                pass

    start = time.monotonic()
    for i in range(count):
        body = b"FTLB" + struct.pack("!I", i)
        body += bytes((i + j) & 0xFF for j in range(max(0, size - len(body))))
        s.send(body)
        drain(start + (i + 1) * interval if i < count - 1 else time.monotonic() + 1.0)
    print(f"sent={count} received={received}", flush=True)
    return count, received


def start_tcpdump(lab, host: str, iface: str, pcap, timeout: float = 10.0):
    """tcpdump writing every frame of ``iface`` in ``host`` to ``pcap`` at once; returns once it writes."""
    import subprocess
    from pathlib import Path

    pcap = Path(pcap)
    dump = lab.popen(host, "tcpdump", "-i", iface, "--immediate-mode", "-U", "-s", "0", "-w", str(pcap),
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not pcap.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    return dump


def wait_pcap_settled(pcap, timeout: float = 10.0) -> None:
    """Wait until a capture file stops growing (tcpdump lags on a loaded machine)."""
    from pathlib import Path

    pcap = Path(pcap)
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        size = pcap.stat().st_size if pcap.exists() else 0
        if size > 24 and size == last:
            return
        last = size
        time.sleep(0.5)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ping")
    p.add_argument("dst")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--interval", type=float, default=0.2)
    e = sub.add_parser("udpecho")
    e.add_argument("--bind", required=True)
    e.add_argument("--port", type=int, required=True)
    u = sub.add_parser("udpsend")
    u.add_argument("--dst", required=True)
    u.add_argument("--port", type=int, required=True)
    u.add_argument("--count", type=int, default=10)
    u.add_argument("--interval", type=float, default=0.5)
    u.add_argument("--size", type=int, default=64)
    u.add_argument("--sport", type=int, default=0)
    a = ap.parse_args(argv)
    if a.cmd == "ping":
        return 0 if ping(a.dst, a.count, a.interval) == a.count else 1
    if a.cmd == "udpecho":
        udpecho(a.bind, a.port)
        return 0
    udpsend(a.dst, a.port, a.count, a.interval, a.size, a.sport)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
