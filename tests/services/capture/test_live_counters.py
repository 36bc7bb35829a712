"""Live capture in the lab: the probe's flow counters equal what the endpoints sent.

Real client/server traffic (curl over HTTP, dig against dnsmasq, a custom UDP
protocol with known datagram counts and sizes, ping) is captured on the probe
interface with ``LiveSource`` + ``FlowMeter``; the ground truth is a pcap taken
by tcpdump on the client's own interface and the known UDP datagram sizes.
Both hub mode and mirror mode (tc mirred) are checked.
"""

from __future__ import annotations

import select
import subprocess
import sys
import time
from pathlib import Path

import dpkt
import pytest

from tests.lab import Lab, servers, skip_unless_lab
from tests.lab.tools import start_tcpdump

pytestmark = pytest.mark.root

TOOLS = str(Path(__file__).resolve().parents[2] / "lab" / "tools.py")
UDP_COUNT, UDP_SIZE, UDP_SPORT = 17, 123, 41234


def _truth(pcap_path: Path, client_ip: str) -> dict[tuple, list[int]]:
    """Per (transport, client port, server ip, server port): [c2s pkts, c2s bytes, s2c pkts, s2c bytes]."""
    import socket

    out: dict[tuple, list[int]] = {}
    with open(pcap_path, "rb") as f:
        for _ts, buf in dpkt.pcap.Reader(f):
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if isinstance(ip, dpkt.ip.IP):
                src, dst, size, proto = socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst), ip.len, ip.p
            elif isinstance(ip, dpkt.ip6.IP6):
                src, dst = socket.inet_ntop(socket.AF_INET6, ip.src), socket.inet_ntop(socket.AF_INET6, ip.dst)
                size, proto = 40 + ip.plen, ip.nxt
            else:
                continue
            l4 = ip.data
            sp, dp = (l4.sport, l4.dport) if proto in (6, 17) else (0, 0)
            name = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPV6"}.get(proto)
            if name is None or (src != client_ip and dst != client_ip):
                continue
            if name == "ICMPV6":
                continue  # neighbour discovery, MLD: not client/server flows
            c2s = src == client_ip
            key = (name, sp if c2s else dp, dst if c2s else src, dp if c2s else sp)
            row = out.setdefault(key, [0, 0, 0, 0])
            if c2s:
                row[0] += 1
                row[1] += size
            else:
                row[2] += 1
                row[3] += size
    return out


@pytest.mark.parametrize("mode", ["hub", "mirror"])
def test_live_flow_counters_equal_what_the_endpoints_sent(mode, tmp_path):
    skip_unless_lab()
    from services.capture.flows import FlowMeter, ListSink
    from services.capture.sources import LiveSource
    from shared.settings import CaptureSettings

    with Lab(mode=mode, probe_in_root=True, net=62 if mode == "hub" else 63) as lab:
        srv, cli = lab.server, lab.client
        servers.start_http(lab)
        servers.start_dnsmasq(lab, {"www.live.test": [srv.ip]})
        servers.start_udpecho(lab, port=40000)
        truth_pcap = tmp_path / "client.pcap"
        dump = start_tcpdump(lab, "client", "eth0", truth_pcap)
        settings = CaptureSettings(probe="live", iface=lab.probe_iface)
        sink = ListSink()
        meter = FlowMeter(settings, sink, source=lab.probe_iface)
        src = LiveSource(lab.probe_iface, snaplen=2048, direction_in=True, buffer_mb=settings.buffer_mb)
        meter.set_source(lab.probe_iface, src.datalink)
        time.sleep(0.5)
        prefix = lab.exec_prefix("client")
        traffic = subprocess.Popen(
            ["sh", "-c", " && ".join([
                " ".join(prefix + ["curl", "-s", "-o", "/dev/null", "--resolve", f"www.live.test:80:{srv.ip}",
                                   "http://www.live.test/"]),
                " ".join(prefix + ["dig", "+short", f"@{srv.ip}", "www.live.test"]),
                " ".join(prefix + [sys.executable, TOOLS, "udpsend", "--dst", srv.ip, "--port", "40000", "--count",
                                   str(UDP_COUNT), "--interval", "0.02", "--size", str(UDP_SIZE), "--sport",
                                   str(UDP_SPORT)]),
                " ".join(prefix + [sys.executable, TOOLS, "ping", srv.ip, "--count", "3", "--interval", "0.05"]),
            ])], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 30
        done_at = None
        while time.monotonic() < deadline:
            r, _, _ = select.select([src.fileno()], [], [], 0.05)
            for ts, frame in src.read_available():
                meter.process(ts, frame)
            if done_at is None and traffic.poll() is not None:
                done_at = time.monotonic()
            if done_at is not None and time.monotonic() - done_at > 1.0:
                break
        out = traffic.stdout.read()
        assert traffic.returncode == 0, out
        assert f"sent={UDP_COUNT} received={UDP_COUNT}" in out
        stats = src.stats()
        src.close()
        meter.finish("shutdown")
        meter.flush_closing()
        dump.terminate()
        dump.wait(5)

    assert stats["dropped_kernel"] == 0
    truth = _truth(truth_pcap, cli.ip)
    ends = [f for f in sink.flows if f.phase == "end"]
    got: dict[tuple, list[int]] = {}
    for f in ends:
        if cli.ip not in (f.src_ip, f.dst_ip):
            continue
        c_is_src = f.src_ip == cli.ip
        key = (f.transport, f.src_port if c_is_src else f.dst_port, f.dst_ip if c_is_src else f.src_ip,
               f.dst_port if c_is_src else f.src_port)
        row = [f.src2dst_packets, f.src2dst_bytes, f.dst2src_packets, f.dst2src_bytes]
        if not c_is_src:
            row = row[2:] + row[:2]
        assert key not in got, f"flow {key} reported twice"
        got[key] = row
    # the endpoint's own capture and the probe agree flow by flow
    assert {k: v for k, v in got.items() if k[0] != "ICMPV6"} == truth
    kinds = {k[0] for k in truth}
    assert {"TCP", "UDP", "ICMP"} <= kinds and any(k[3] == 53 for k in truth) and any(k[3] == 80 for k in truth)
    # and the custom UDP flow matches the datagrams the sender counted
    udp = got[("UDP", UDP_SPORT, srv.ip, 40000)]
    assert udp == [UDP_COUNT, UDP_COUNT * (20 + 8 + UDP_SIZE)] * 2
