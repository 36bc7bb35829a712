"""Detectors on live traffic in the namespace lab.

- The client first does ordinary things (curl, dig), then connects with plain
  Python sockets to ports 1-1000 of the server (no nmap needed): one port_scan.
- From a raw socket in the client: an ARP flood, a spoofed ARP reply for the
  server's address (whose binding the probe learnt from real ARP), and a SYN
  flood from spoofed sources: arp_flood, arp_spoof, syn_flood.

The probe captures on its mirror port with LiveSource + FlowMeter and feeds the
detectors exactly as the capture service does.
"""

from __future__ import annotations

import select
import subprocess
import sys
import time

import pytest

from tests.lab import Lab, servers, skip_unless_lab

pytestmark = [pytest.mark.root, pytest.mark.slow]

SCAN = """
import socket, sys
dst = sys.argv[1]
opened = 0
for port in range(1, 1001):
    s = socket.socket()
    s.settimeout(1.0)
    if s.connect_ex((dst, port)) == 0:
        opened += 1
    s.close()
print("open", opened)
"""


class Sink:
    """The meter's sink, feeding the detectors as capture's detectors' process does."""

    def __init__(self, det):
        self.det, self.alerts = det, []

    def flow(self, r):
        self.alerts += self.det.on_flow(r)

    def sample(self, s):
        pass

    def packet(self, p):
        self.alerts += self.det.on_packet(p)


def capture_until_done(src, meter, det, sink, proc, linger: float, limit: float = 120.0) -> str:
    """Meter live packets (and run the detectors) until ``proc`` has ended ``linger`` seconds ago."""
    deadline, done_at = time.monotonic() + limit, None
    while time.monotonic() < deadline:
        select.select([src.fileno()], [], [], 0.05)
        for ts, frame in src.read_available():
            meter.process(ts, frame)
        now = time.time()
        meter.tick(now)
        sink.alerts.extend(det.tick(now))
        if done_at is None and proc.poll() is not None:
            done_at = time.monotonic()
        if done_at is not None and time.monotonic() - done_at > linger:
            return proc.stdout.read()
    raise AssertionError("traffic did not finish")


def test_real_tcp_scan_over_1000_ports_is_one_port_scan():
    skip_unless_lab()
    from services.capture.detectors import Detectors
    from services.capture.flows import FlowMeter
    from services.capture.sources import LiveSource
    from shared.settings import CaptureSettings, DetectSettings

    with Lab(mode="hub", probe_in_root=True, net=87) as lab:
        srv, cli = lab.server, lab.client
        servers.start_http(lab)
        servers.start_dnsmasq(lab, {"www.scan.test": [srv.ip]})
        det = Detectors(DetectSettings(), "live")
        sink = Sink(det)
        meter = FlowMeter(CaptureSettings(probe="live", iface=lab.probe_iface, verdict_wait_s=0), sink,
                          source=lab.probe_iface)
        src = LiveSource(lab.probe_iface, snaplen=2048, direction_in=True, buffer_mb=CaptureSettings().buffer_mb)
        meter.set_source(lab.probe_iface, src.datalink)
        time.sleep(0.5)
        prefix = lab.exec_prefix("client")

        def pump(proc, linger=1.0):
            return capture_until_done(src, meter, det, sink, proc, linger)

        ordinary = subprocess.Popen(["sh", "-c", " && ".join([
            " ".join(prefix + ["dig", "+short", f"@{srv.ip}", "www.scan.test"]),
            " ".join(prefix + ["curl", "-s", "-o", "/dev/null", f"http://{srv.ip}/"]),
            " ".join(prefix + ["curl", "-s", "-o", "/dev/null", f"http://{srv.ip}/"]),
        ])], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        pump(ordinary)
        assert ordinary.returncode == 0
        quiet = list(sink.alerts)
        scan = subprocess.Popen(prefix + [sys.executable, "-c", SCAN, srv.ip], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        out = pump(scan, linger=3.0)  # RST-closed flows end after capture's 2 s grace
        assert scan.returncode == 0 and out.startswith("open "), out
        opened = int(out.split()[1])
        assert 1 <= opened <= 5, out  # http on 80, dnsmasq on 53
        stats = src.stats()
        src.close()
        meter.finish("shutdown")
        meter.flush_closing()
        sink.alerts.extend(det.flush())

    assert stats["dropped_kernel"] == 0
    assert quiet == [], [a.message for a in quiet]
    kinds = {a.alert_type for a in sink.alerts}
    assert kinds == {"port_scan"}, [a.message for a in sink.alerts]
    ids = {a.alert_id for a in sink.alerts}
    assert len(ids) == 1
    last = sink.alerts[-1]
    assert last.src_ip == cli.ip and last.dst_ip == srv.ip and last.details["kind"] == "vertical"
    assert last.count == 1000 and last.details["state"] == "closed"
    assert int(last.details["failed_ports_on_top_host"]) >= 1000 - opened  # refused (open ports: handshake + FIN)


ATTACKS = r"""
import random, socket, sys, time
import dpkt
iface, my_mac, my_ip, victim_ip = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", "")), sys.argv[3], sys.argv[4]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
aton = socket.inet_aton
def arp(op, sha, spa, tha, tpa, dst):
    a = dpkt.arp.ARP(op=op, sha=sha, spa=aton(spa), tha=tha, tpa=aton(tpa))
    return bytes(dpkt.ethernet.Ethernet(src=my_mac, dst=dst, type=dpkt.ethernet.ETH_TYPE_ARP, data=a))
bcast = b"\xff" * 6
# 1. ARP flood: 1500 requests as fast as we can
for i in range(1500):
    s.send(arp(1, my_mac, my_ip, b"\0" * 6, f"10.99.{i // 250}.{i % 250 + 1}", bcast))
time.sleep(3)
# 2. the impostor: the victim's address is at 66:66:66:66:66:66
for _ in range(3):
    s.send(arp(2, bytes.fromhex("666666666666"), victim_ip, b"\0" * 6, my_ip, bcast))
    time.sleep(0.2)
# 3. SYN flood from 600 spoofed sources to the victim's port 80
rnd = random.Random(5)
for i in range(600):
    src = f"172.{rnd.randrange(16, 32)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
    tcp = dpkt.tcp.TCP(sport=rnd.randrange(1024, 65535), dport=80, seq=rnd.randrange(1 << 31), flags=dpkt.tcp.TH_SYN,
                       win=1024)
    ip = dpkt.ip.IP(src=aton(src), dst=aton(victim_ip), p=6, ttl=64, data=tcp)
    ip.len = 40
    s.send(bytes(dpkt.ethernet.Ethernet(src=my_mac, dst=bytes.fromhex(sys.argv[5].replace(":", "")),
                                        type=dpkt.ethernet.ETH_TYPE_IP, data=ip)))
print("sent")
"""


def test_live_arp_flood_spoof_and_syn_flood():
    skip_unless_lab()
    from services.capture.detectors import Detectors
    from services.capture.flows import FlowMeter
    from services.capture.sources import LiveSource
    from shared.settings import CaptureSettings, DetectSettings

    with Lab(mode="hub", probe_in_root=True, net=88) as lab:
        srv, cli = lab.server, lab.client
        servers.start_http(lab)
        det = Detectors(DetectSettings(), "live")
        sink = Sink(det)
        # short idle timeout: half-open flows end (and count) within the test
        meter = FlowMeter(CaptureSettings(probe="live", iface=lab.probe_iface, verdict_wait_s=0, idle_timeout_s=3),
                          sink, source=lab.probe_iface)
        src = LiveSource(lab.probe_iface, snaplen=2048, direction_in=True, buffer_mb=CaptureSettings().buffer_mb)
        meter.set_source(lab.probe_iface, src.datalink)
        time.sleep(0.5)
        prefix = lab.exec_prefix("client")

        def pump(proc, linger):
            return capture_until_done(src, meter, det, sink, proc, linger)

        # real ARP: the client resolves the server (the binding the impostor will contradict)
        ordinary = subprocess.Popen(prefix + ["curl", "-s", "-o", "/dev/null", f"http://{srv.ip}/"],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        pump(ordinary, 0.5)
        assert sink.alerts == []
        attack = subprocess.Popen(prefix + [sys.executable, "-c", ATTACKS, "eth0", cli.mac, cli.ip, srv.ip, srv.mac],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out = pump(attack, linger=6.0)  # half-open flows idle out after 3 s
        assert attack.returncode == 0 and "sent" in out, out
        src.close()
        meter.finish("shutdown")
        sink.alerts.extend(det.flush())

    opened = {}
    for a in sink.alerts:
        opened.setdefault(a.alert_id, a)
    kinds = sorted(a.alert_type for a in opened.values())
    assert kinds == ["arp_flood", "arp_spoof", "syn_flood"], [a.message for a in sink.alerts]
    spoof = next(a for a in opened.values() if a.alert_type == "arp_spoof")
    assert spoof.src_ip == srv.ip and spoof.details["new_mac"] == "66:66:66:66:66:66"
    assert spoof.details["old_mac"] == srv.mac
    flood = next(a for a in opened.values() if a.alert_type == "arp_flood")
    assert flood.details["src_mac"] == cli.mac
    syn = [a for a in sink.alerts if a.alert_type == "syn_flood"][-1]
    assert syn.dst_ip == srv.ip and syn.dst_port == 80 and syn.count == 600 and int(syn.details["sources"]) > 500
