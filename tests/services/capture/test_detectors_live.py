"""Detectors on live traffic in the namespace lab: a real TCP scan of 1,000 ports is one port_scan.

The client first does ordinary things (curl, dig), then connects with plain
Python sockets to ports 1-1000 of the server (no nmap needed).  The probe
captures on its mirror port with LiveSource + FlowMeter and feeds the
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


def test_real_tcp_scan_over_1000_ports_is_one_port_scan():
    skip_unless_lab()
    from services.capture.detectors import Detectors
    from services.capture.flows import FlowMeter
    from services.capture.sources import LiveSource
    from shared.settings import CaptureSettings, DetectSettings

    class Sink:
        def __init__(self, det):
            self.det, self.alerts = det, []

        def flow(self, r):
            self.alerts += self.det.on_flow(r)

        def sample(self, s):
            pass

        def packet(self, p):
            self.alerts += self.det.on_packet(p)

    with Lab(mode="hub", probe_in_root=True, net=87) as lab:
        srv, cli = lab.server, lab.client
        servers.start_http(lab)
        servers.start_dnsmasq(lab, {"www.scan.test": [srv.ip]})
        det = Detectors(DetectSettings(), "live")
        sink = Sink(det)
        meter = FlowMeter(CaptureSettings(probe="live", iface=lab.probe_iface, verdict_wait_s=0), sink,
                          source=lab.probe_iface)
        src = LiveSource(lab.probe_iface, snaplen=2048, direction_in=True)
        meter.set_source(lab.probe_iface, src.datalink)
        time.sleep(0.5)
        prefix = lab.exec_prefix("client")

        def pump(proc, linger=1.0, limit=120.0):
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
