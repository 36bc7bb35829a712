"""The detectors' process: fed over NATS by several capture shards, one incident per attack."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

from shared.bus import Bus
from shared.models import Alert, CaptureStats, FlowRecord, batch_json
from shared.settings import CommonSettings


def flow(i: int, phase: str, port: int) -> FlowRecord:
    return FlowRecord(timestamp=1000.0 + i * 0.01, probe="det", flow_id=f"s{i % 2}-{port}", transport="TCP",
                      src_ip="10.1.1.66", src_port=40000, dst_ip="10.1.1.1", dst_port=port, phase=phase,
                      end_reason="rst" if phase == "end" else "", source="eth1", first_seen=1000.0 + i * 0.01,
                      last_seen=1000.0 + i * 0.01 + 0.001, src2dst_packets=1, src2dst_bytes=40,
                      dst2src_packets=1 if phase == "end" else 0, dst2src_bytes=40 if phase == "end" else 0,
                      src2dst_tcp_flags=0x02, dst2src_tcp_flags=0x14 if phase == "end" else 0)


def test_scan_split_across_two_shards_is_one_incident(nats_server):
    env = dict(os.environ, FT_NATS_URL=nats_server.url, FT_PROBE="det", FT_CAPTURE_ROLE="detect",
               FT_PCAP='["/nonexistent-just-file-mode"]', FT_LOG_LEVEL="INFO")
    proc = subprocess.Popen([sys.executable, "-m", "flowtarget", "capture"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    async def main():
        settings = CommonSettings(nats_url=nats_server.url, probe="det")
        shards = [await Bus.connect(settings, f"shard{k}") for k in range(2)]
        observer = await Bus.connect(settings, "observer")
        await observer.ensure_stream()
        for _ in range(200):
            try:
                await observer.nc.request("ft.ctl.det.detect_ready", b"", timeout=0.2)
                break
            except Exception:
                await asyncio.sleep(0.1)
        alerts: list[Alert] = []

        async def on_alert(a):
            alerts.append(a)

        await observer.subscribe("ft.alert.>", on_alert, types=(Alert,))
        # 200 failed connections to 200 ports of one host; even ports seen by shard 0, odd by shard 1
        for port in range(1, 201):
            bus = shards[port % 2]
            # as capture publishes them: the start record on core NATS, the end record through JetStream
            await bus.nc.publish("ft.live.det", batch_json([flow(port, "start", port)]))
            await bus.js_publish("ft.flow.det", batch_json([flow(port, "end", port)]))
        for k, bus in enumerate(shards):
            await bus.publish("ft.stats.det", CaptureStats(timestamp=2000.0, probe="det", source="eth1",
                                                           counters={"end_of_capture": 1}))
        reply = await shards[0].nc.request("ft.ctl.det.detect_drain", b"", timeout=60)
        await asyncio.sleep(0.5)
        for b in (*shards, observer):
            await b.close()
        return alerts, json.loads(reply.data)

    try:
        alerts, drained = asyncio.run(main())
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    scans = [a for a in alerts if a.alert_type == "port_scan"]
    assert scans, out[-3000:]
    assert len({a.alert_id for a in scans}) == 1          # one incident, though two shards saw it
    assert max(a.count for a in scans) >= 150
    assert drained["alerts_published"] >= 1
    assert proc.returncode == 0, out[-2000:]
