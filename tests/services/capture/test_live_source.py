"""LiveSource on a real veth pair: non-blocking reads, BPF, stats, AF_PACKET fanout and the BPF shard filter."""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import time

import pytest

from services.capture.shard import shard_filter
from services.capture.sources import LiveSource

pytestmark = pytest.mark.root


@pytest.fixture
def veth():
    if os.geteuid() != 0:
        pytest.skip("needs root to create a veth pair (CI runs as root)")
    tag = os.urandom(3).hex()
    a, b = f"fta{tag}", f"ftb{tag}"
    try:
        subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot create a veth pair here: {exc}")
    try:
        for dev in (a, b):
            subprocess.run(["ip", "link", "set", dev, "up"], check=True)
            subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1"], check=False, capture_output=True)
        yield a, b
    finally:
        subprocess.run(["ip", "link", "del", a], check=False, capture_output=True)


def udp_frame(src: str, sport: int, dst: str, dport: int, payload: bytes = b"x" * 10) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst)) + udp
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip


def send(dev: str, frames: list[bytes]) -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        s.bind((dev, 0))
        for f in frames:
            s.send(f)
    finally:
        s.close()


def drain(srcs: list[LiveSource], want: int, timeout: float = 3.0) -> list[list[tuple[float, bytes]]]:
    got: list[list[tuple[float, bytes]]] = [[] for _ in srcs]
    deadline = time.monotonic() + timeout
    while sum(len(g) for g in got) < want and time.monotonic() < deadline:
        select.select([s.fileno() for s in srcs], [], [], 0.1)
        for i, s in enumerate(srcs):
            got[i].extend(s.read_available(1000))
    return got


def test_nonblocking_reads_filter_and_stats(veth):
    a, b = veth
    src = LiveSource(b, bpf="udp and port 5000")
    try:
        assert src.read_available() == []  # nothing there: returns at once
        frames = [udp_frame("10.9.0.1", 5000, "10.9.0.2", 6000, bytes([i]) * 20) for i in range(20)]
        send(a, frames + [udp_frame("10.9.0.1", 7000, "10.9.0.2", 7001)])
        (got,) = drain([src], 20)
        assert [f for _, f in got] == frames
        assert all(abs(ts - time.time()) < 60 for ts, _ in got)
        st = src.stats()
        assert st["received"] >= 20 and st["dropped_kernel"] == 0
        assert src.datalink == 1
    finally:
        src.close()


def _flows(n: int) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(n):
        c = f"10.8.{i // 200}.{i % 200 + 1}"
        out.append((udp_frame(c, 20000 + i, "10.8.250.1", 53), udp_frame("10.8.250.1", 53, c, 20000 + i)))
    return out


def test_fanout_keeps_both_directions_in_one_shard(veth):
    a, b = veth
    group = int.from_bytes(os.urandom(2), "big") | 1
    srcs = [LiveSource(b), LiveSource(b)]
    try:
        for s in srcs:
            s.join_fanout(group)
        flows = _flows(60)
        send(a, [f for pair in flows for f in pair])
        got = drain(srcs, 120)
        sets = [{f for _, f in g} for g in got]
        assert sum(len(g) for g in got) == 120
        for fwd, rev in flows:
            where = [i for i in range(2) if fwd in sets[i]]
            assert len(where) == 1 and rev in sets[where[0]]
        assert all(len(s) > 0 for s in sets)  # both shards got work
    finally:
        for s in srcs:
            s.close()


def test_bpf_shard_filters_partition_flows(veth):
    a, b = veth
    srcs = [LiveSource(b, bpf=shard_filter(k, 3)) for k in range(3)]
    try:
        flows = _flows(60)
        arp = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01\x08\x06" + b"\x00\x01\x08\x00\x06\x04\x00\x01" + b"\x00" * 20
        send(a, [f for pair in flows for f in pair] + [arp])
        got = drain(srcs, 121)
        sets = [{f for _, f in g} for g in got]
        assert sum(len(g) for g in got) == 121
        for fwd, rev in flows:
            where = [i for i in range(3) if fwd in sets[i]]
            assert len(where) == 1 and rev in sets[where[0]]
        assert arp in sets[0]
        assert sum(1 for s in sets if s) == 3
    finally:
        for s in srcs:
            s.close()


def test_open_live_shards_by_fanout(veth):
    from services.capture.shard import open_live
    from shared.settings import CaptureSettings

    a, b = veth
    opened = [open_live(CaptureSettings(iface=b, shards=2, shard_index=k)) for k in range(2)]
    single, how1 = open_live(CaptureSettings(iface=b))
    try:
        assert [how for _, how in opened] == ["fanout", "fanout"] and how1 == ""
        flows = _flows(40)
        send(a, [f for pair in flows for f in pair])
        got = drain([s for s, _ in opened] + [single], 160)
        sets = [{f for _, f in g} for g in got]
        assert len(got[2]) == 80  # the unsharded source sees everything
        assert len(got[0]) + len(got[1]) == 80
        for fwd, rev in flows:
            where = [i for i in range(2) if fwd in sets[i]]
            assert len(where) == 1 and rev in sets[where[0]]
    finally:
        for s, _ in opened:
            s.close()
        single.close()


def test_stats_of_a_closed_handle_are_zero_not_a_crash():
    """/metrics may still hold a reference after capture closed the handle: pypcap's stats() would crash."""
    if os.geteuid() != 0:
        pytest.skip("needs root to open an interface (CI runs as root)")
    src = LiveSource("lo")
    assert set(src.stats()) == {"received", "dropped_kernel", "dropped_interface"}
    src.close()
    assert src.stats() == {"received": 0, "dropped_kernel": 0, "dropped_interface": 0}
