"""ISMS access log from live traffic through the whole pipeline (capture, classify, store).

A custom UDP protocol nothing can classify runs twice at the same time: one
flow for 12 s and one for 5 s, 2 datagrams/s each way.  The unknown flow that
lasts over 10 s at over 1 packet/s enters the access log; the 5 s one does not
(it is only counted in aggregate).  A classified flow (HTTP) is logged however
short it is.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lab import Lab, servers, skip_unless_lab
from tests.lab.pipeline import Services

pytestmark = [pytest.mark.root, pytest.mark.slow]

TOOLS = str(Path(__file__).resolve().parents[2] / "lab" / "tools.py")
LONG_SPORT, SHORT_SPORT = 41001, 41002


def _flows(out_dir: Path) -> list[dict]:
    rows = []
    for p in out_dir.glob("flows*.jsonl"):
        for line in p.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    return rows


def test_unknown_flow_over_10s_is_logged_and_5s_is_not(tmp_path, nats_server):
    skip_unless_lab()
    out_dir = tmp_path / "out"
    with Lab(mode="mirror", probe_in_root=True, net=64) as lab:
        srv = lab.server.ip
        servers.start_udpecho(lab, port=40000)
        servers.start_http(lab)
        with Services(nats_server.url, "isms", lab.probe_iface, tmp_path / "logs", FT_OUT_DIR=str(out_dir),
                      FT_IDLE_TIMEOUT_S="2", FT_VERDICT_WAIT_S="1") as svc:
            for name in ("capture", "classify", "store"):
                svc.start(name)
            for name in ("capture", "classify", "store"):
                assert svc.wait_log(name, "connected to NATS", 30), svc.log(name)
            time.sleep(1.0)

            def udp(sport: int, count: int) -> subprocess.Popen:
                return lab.popen("client", sys.executable, TOOLS, "udpsend", "--dst", srv, "--port", "40000",
                                 "--count", str(count), "--interval", "0.5", "--size", "40", "--sport", str(sport),
                                 stdout=subprocess.PIPE, text=True)

            long_flow, short_flow = udp(LONG_SPORT, 25), udp(SHORT_SPORT, 11)  # 12 s and 5 s
            http = lab.run("client", "curl", "-s", "-o", "/dev/null", "--resolve", f"short.isms.test:80:{srv}",
                           "http://short.isms.test/")
            assert http.returncode == 0
            assert "sent=11 received=11" in short_flow.communicate(timeout=30)[0]
            assert "sent=25 received=25" in long_flow.communicate(timeout=30)[0]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                rows = _flows(out_dir)
                if any(r.get("src_port") == LONG_SPORT for r in rows) and any(r.get("dst_port") == 80 for r in rows):
                    break
                time.sleep(0.5)
            time.sleep(4)  # the short flow has ended too and would have been written by now
            rows = _flows(out_dir)
            logs = {n: svc.log(n) for n in ("capture", "classify", "store")}

    long_rows = [r for r in rows if r.get("src_port") == LONG_SPORT and r.get("dst_port") == 40000]
    short_rows = [r for r in rows if r.get("src_port") == SHORT_SPORT and r.get("dst_port") == 40000]
    assert len(long_rows) == 1, (rows, logs)
    lr = long_rows[0]
    assert lr.get("app_protocol", "Unknown") == "Unknown"
    assert lr["src2dst_packets"] == 25 and lr["dst2src_packets"] == 25
    assert lr["src2dst_bytes"] == 25 * (20 + 8 + 40)
    assert 11.5 <= float(lr["duration_ms"]) / 1000.0 < 13.0
    assert short_rows == [], short_rows
    assert any(r.get("dst_port") == 80 and r.get("app_protocol") == "HTTP" for r in rows)
