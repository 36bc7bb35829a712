"""``flowtarget capture --shards 2`` on a live interface: every flow appears exactly once.

Two capture processes share the probe interface, each taking a symmetric-hash
share of the flows.  Many flows (UDP with distinct source ports, HTTP over TCP)
run through the lab; every one must have exactly one start and one end record,
with the right counters, and both shards must have taken some.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.lab import Lab, servers, skip_unless_lab
from tests.lab.pipeline import Services

pytestmark = [pytest.mark.root, pytest.mark.slow]

TOOLS = str(Path(__file__).resolve().parents[2] / "lab" / "tools.py")
CAPTURE_SRC = Path(__file__).resolve().parents[3] / "services" / "capture"
N_UDP, N_HTTP = 40, 10


def _sharding_shipped() -> bool:
    """The capture service opens its live source through the sharding helpers."""
    try:
        return "shard" in (CAPTURE_SRC / "service.py").read_text(errors="replace")
    except OSError:
        return False


class FlowCollector:
    def __init__(self, url: str, probe: str) -> None:
        self.url, self.probe = url, probe
        self.records: list = []
        self.started = 0                # capture_started stats reports: one per shard whose handle is open
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self._connect(ready))
            self.loop.run_forever()

        self.t = threading.Thread(target=run, daemon=True)
        self.t.start()
        assert ready.wait(10)

    async def _connect(self, ready: threading.Event) -> None:
        import nats

        from shared.models import FlowRecord, events_of, parse_event

        self.nc = await nats.connect(self.url)

        async def cb(msg):
            try:
                for ev in events_of(parse_event(msg.data)):
                    if isinstance(ev, FlowRecord):
                        self.records.append(ev)
            except ValueError:
                pass

        async def on_stats(msg):
            try:
                if json.loads(msg.data).get("counters", {}).get("capture_started"):
                    self.started += 1
            except (ValueError, AttributeError):
                pass

        await self.nc.subscribe(f"ft.stats.{self.probe}", cb=on_stats)
        await self.nc.subscribe(f"ft.flow.{self.probe}", cb=cb)
        await self.nc.subscribe(f"ft.live.{self.probe}", cb=cb)     # start records
        await self.nc.flush()
        ready.set()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.nc.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.t.join(5)


def test_two_shards_meter_every_flow_exactly_once(tmp_path, nats_server):
    skip_unless_lab()
    if not _sharding_shipped():
        pytest.skip("capture sharding is not wired into services/capture/service.py yet")
    with Lab(mode="mirror", probe_in_root=True, net=65) as lab:
        srv, cli = lab.server.ip, lab.client.ip
        servers.start_udpecho(lab, port=40000)
        servers.start_http(lab)
        col = FlowCollector(nats_server.url, "shards")
        try:
            with Services(nats_server.url, "shards", lab.probe_iface, tmp_path / "logs",
                          FT_IDLE_TIMEOUT_S="2", FT_VERDICT_WAIT_S="0.5") as svc:
                svc.start("capture", "--shards", "2")
                deadline = time.monotonic() + 60      # both shards' handles open (slow under load)
                while col.started < 2 and time.monotonic() < deadline and svc.alive()["capture"] is None:
                    time.sleep(0.2)
                assert col.started >= 2, svc.log("capture")
                assert svc.alive()["capture"] is None, svc.log("capture")
                prefix = " ".join(lab.exec_prefix("client"))
                script = "; ".join(
                    [f"{prefix} {sys.executable} {TOOLS} udpsend --dst {srv} --port 40000 --count 3 "
                     f"--interval 0.01 --size 30 --sport {42000 + i} >/dev/null" for i in range(N_UDP)]
                    + [f"{prefix} curl -s -o /dev/null --local-port {43000 + i} http://{srv}/" for i in range(N_HTTP)])
                subprocess.run(["sh", "-c", script], check=True, timeout=120)
                want = {("UDP", 42000 + i) for i in range(N_UDP)} | {("TCP", 43000 + i) for i in range(N_HTTP)}
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    ended = {(r.transport, r.src_port) for r in col.records
                             if r.phase == "end" and r.src_ip == cli}
                    if want <= ended:
                        break
                    time.sleep(0.3)
                time.sleep(1.0)
                log = svc.log("capture")
        finally:
            col.close()

    recs = [r for r in col.records if r.src_ip == cli and (r.transport, r.src_port) in want]
    ends = [r for r in recs if r.phase == "end"]
    starts = [r for r in recs if r.phase == "start"]
    keys = [(r.transport, r.src_port) for r in ends]
    assert sorted(keys) == sorted(want), (set(want) - set(keys), log)  # each exactly once
    assert sorted((r.transport, r.src_port) for r in starts) == sorted(want)
    for r in ends:
        if r.transport == "UDP":
            assert (r.src2dst_packets, r.dst2src_packets) == (3, 3)
            assert r.src2dst_bytes == r.dst2src_bytes == 3 * (20 + 8 + 30)
        else:
            assert r.src2dst_packets >= 4 and r.dst2src_packets >= 4  # handshake, request/response, close
    shards = {r.flow_id.split("-")[0] for r in ends}
    assert len(shards) == 2, f"one shard took every flow: {shards}"
