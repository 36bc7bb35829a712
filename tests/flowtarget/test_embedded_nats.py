"""The embedded nats-server holds a replay's backlog for a client that reads slower than it is sent to."""

from __future__ import annotations

import asyncio
import socket
import time

import nats

from flowtarget.embedded import EMBEDDED_MAX_PENDING, EmbeddedNats

MB = 1024 * 1024


def _raw_subscriber(host: str, port: int, subject: str) -> socket.socket:
    s = socket.create_connection((host, port), timeout=30)
    s.recv(4096)                                              # INFO
    s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB ' + subject.encode() + b" 1\r\nPING\r\n")
    buf = b""
    while b"PONG" not in buf:
        buf += s.recv(4096)
    return s


def _count_messages(s: socket.socket, want: int, size: int) -> tuple[int, bytes]:
    """Read until ``want`` messages of ``size`` bytes came (or the server closed the connection)."""
    buf, got, deadline = b"", 0, time.monotonic() + 60
    while got < want and time.monotonic() < deadline:
        chunk = s.recv(4 * MB)
        if not chunk:
            break
        buf += chunk
        while True:
            if buf.startswith(b"PING\r\n"):
                s.sendall(b"PONG\r\n")
                buf = buf[6:]
                continue
            head_end = buf.find(b"\r\n")
            if head_end < 0 or not buf.startswith(b"MSG "):
                break
            if len(buf) < head_end + 2 + size + 2:
                break
            buf = buf[head_end + 2 + size + 2:]
            got += 1
    return got, buf[:200]


def test_a_client_far_behind_is_kept_not_cut_off_as_a_slow_consumer():
    """A subscriber that reads nothing while 3x nats-server's default max_pending (64 MB) is published to it,
    then reads: every message comes (the default would close its connection: 'Slow Consumer')."""
    assert EMBEDDED_MAX_PENDING >= 256 * MB
    size, n = MB, 192
    with EmbeddedNats() as server:
        sub = _raw_subscriber(server.host, server.port, "ft.live.t")

        async def publish() -> None:
            nc = await nats.connect(server.url)
            data = b"x" * size
            for _ in range(n):
                await nc.publish("ft.live.t", data)
            await nc.flush(timeout=60)
            await nc.close()

        asyncio.run(publish())                # everything sent while the subscriber read nothing
        try:
            got, tail = _count_messages(sub, n, size)
        finally:
            sub.close()
    assert got == n, f"{got} of {n} messages; the server said {tail!r}"
