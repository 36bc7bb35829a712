"""A userspace delay line: relay Ethernet frames between two interfaces, late.

Used by the lab where ``sch_netem`` is not built (see ../shared/NETLAB.md):
the server's veth end is taken out of the bridge and this relay copies every
frame between it and a second veth whose other end is in the bridge, each
frame ``delay_ms`` after it arrived, in arrival order (a heap by due time).

Run it inside the bridge namespace::

    python delayline.py --a IF1 --b IF2 --delay-ms 50

It prints ``READY`` once both sockets are bound and runs until SIGTERM/SIGINT.
Frames the relay itself sent come back to its sockets as PACKET_OUTGOING and
are skipped, so nothing loops.
"""

from __future__ import annotations

import argparse
import heapq
import select
import signal
import socket
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def _open(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
    s.bind((ifname, 0))
    s.setblocking(False)
    return s


def relay(if_a: str, if_b: str, delay_s: float, stop: list[bool]) -> dict[str, int]:
    sa, sb = _open(if_a), _open(if_b)
    peer = {sa.fileno(): sb, sb.fileno(): sa}
    socks = [sa, sb]
    heap: list[tuple[float, int, socket.socket, bytes]] = []
    n = 0
    stats = {"relayed": 0, "send_errors": 0}
    print("READY", flush=True)
    while not stop[0]:
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            _, _, out, frame = heapq.heappop(heap)
            try:
                out.send(frame)
                stats["relayed"] += 1
            except OSError:
                stats["send_errors"] += 1
        timeout = max(0.0, heap[0][0] - now) if heap else 0.5
        try:
            ready, _, _ = select.select(socks, [], [], timeout)
        except InterruptedError:
            continue
        now = time.monotonic()
        for s in ready:
            while True:
                try:
                    frame, addr = s.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                if addr[2] == PACKET_OUTGOING:
                    continue
                n += 1
                heapq.heappush(heap, (now + delay_s, n, peer[s.fileno()], frame))
    sa.close()
    sb.close()
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--delay-ms", type=float, default=50.0)
    args = ap.parse_args(argv)
    stop = [False]

    def _stop(*_: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    stats = relay(args.a, args.b, args.delay_ms / 1000.0, stop)
    print(f"relayed={stats['relayed']} send_errors={stats['send_errors']}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
