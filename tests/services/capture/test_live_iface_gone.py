"""A live capture whose interface disappears says so and exits (issue 13 item 12).

libpcap keeps reading nothing, without an error, from a deleted interface: before, ``flowtarget
capture`` sat there forever.  In a namespace lab, the real ``flowtarget capture`` (with its detectors'
process) captures the probe's veth while the client pings the server; the veth is deleted; capture
must log why, publish the end records of its flows, stop its detectors' process and exit 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import nats
import pytest

from tests.lab import Lab, skip_unless_lab

pytestmark = pytest.mark.root


SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
while True:
    s.sendto(b"hello", (sys.argv[1], 40999))
    time.sleep(0.1)
"""


def _children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                out += [int(x) for x in fh.read().split()]
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def test_capture_exits_when_its_interface_is_deleted(nats_server, tmp_path):
    skip_unless_lab()
    with Lab(probe_in_root=True, ipv6=False) as lab:
        env = dict(os.environ, FT_NATS_URL=nats_server.url, FT_PROBE="gone", FT_IFACE=lab.probe_iface,
                   FT_EVIDENCE_DIR=str(tmp_path / "ev"), FT_LOG_LEVEL="INFO", FT_BATCH_INTERVAL_S="0.1")
        proc = subprocess.Popen([sys.executable, "-m", "flowtarget", "capture"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ping = None
        try:
            async def until_capturing_then_delete() -> list[dict]:
                nc = await nats.connect(nats_server.url)
                started = asyncio.Event()
                records: list[dict] = []

                async def on_stats(msg):
                    if json.loads(msg.data).get("counters", {}).get("capture_started"):
                        started.set()

                async def on_flow(msg):
                    data = json.loads(msg.data)
                    records.extend(data if isinstance(data, list) else data.get("events", [data]))

                await nc.subscribe("ft.stats.gone", cb=on_stats)
                await nc.subscribe("ft.flow.gone", cb=on_flow)
                await asyncio.wait_for(started.wait(), 60)
                nonlocal ping
                ping = lab.popen("client", sys.executable, "-c", SENDER, lab.server.ip)
                await asyncio.sleep(1.5)
                kids = _children(proc.pid)
                subprocess.run(["ip", "link", "del", lab.probe_iface], check=True)
                while proc.poll() is None:
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.5)
                await nc.close()
                return kids, records

            kids, records = asyncio.run(asyncio.wait_for(until_capturing_then_delete(), 120))
        finally:
            if ping is not None:
                ping.terminate()
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            out = proc.communicate()[0]
    assert proc.returncode == 1, out[-3000:]
    assert f"flowtarget capture: interface {lab.probe_iface} disappeared" in out.splitlines(), out[-3000:]
    assert "Traceback" not in out
    assert kids and not any(_alive(k) for k in kids)        # its detectors' process went with it
    ends = [r for r in records if r.get("event_type") == "flow" and r.get("phase") == "end"]
    assert any(r.get("transport") == "UDP" and r.get("dst_port") == 40999 for r in ends), records[:5]
