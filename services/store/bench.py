"""``flowtarget bench store``: points/s end to end from JetStream into the configured sink(s).

1. publishes ``n_points`` flow-end records (``events_per_msg`` per EventBatch
   message, as capture batches them) through JetStream on a subject of their
   own (``ft.flow.<bench probe>``), acks awaited;
2. runs the store's consumer loop (its own durable, filtered to that subject)
   into the sinks the settings ask for (InfluxDB at FT_INFLUX_URL and/or JSON
   lines in FT_OUT_DIR) until every point is written and acknowledged;
3. reports points/s of step 2 (fetch + parse + schema + line protocol + write
   + ack) and removes its consumer and its messages from the stream.

The bench's points carry ``probe=<bench probe>`` (``bench-xxxxxx``) so they
can be told apart (and deleted) in a real InfluxDB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import uuid
from typing import Any

from shared.bus import Bus
from shared.models import EventBatch, FlowRecord
from shared.settings import StoreSettings

from services.store.service import Store, StoreMetrics
from shared.runner import tune_gc
from services.store.sinks import sinks_from_settings

log = logging.getLogger("flowtarget.store.bench")


def bench_flows(probe: str, n: int, start_ts: float = 1_700_000_000.0, start_index: int = 0) -> list[FlowRecord]:
    """Realistic flow-end records with unique counters (src2dst_bytes = index)."""
    apps = (("TLS", "Google", "Web"), ("HTTP", "", "Web"), ("DNS", "", "Network"), ("QUIC", "YouTube", "Media"))
    out = []
    for i in range(start_index, start_index + n):
        proto, app, cat = apps[i % len(apps)]
        t = start_ts + i * 0.001
        out.append(FlowRecord(
            timestamp=t + 2.5, probe=probe, flow_id=f"{probe}-{i:x}", transport="UDP" if proto in ("DNS", "QUIC") else "TCP",
            src_ip=f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", src_port=1024 + i % 60000,
            dst_ip="192.0.2.10", dst_port=443, phase="end", end_reason="fin", source="bench",
            first_seen=t, last_seen=t + 2.5, duration_ms=2500.0, src2dst_packets=12, src2dst_bytes=i,
            dst2src_packets=20, dst2src_bytes=24_000, app_protocol=proto, application=app, category=cat,
            host=f"host{i % 1000}.example.com", confidence="dpi",
        ))
    return out


async def run_store_bench(settings: StoreSettings, n_points: int = 200_000, events_per_msg: int = 500,
                          sinks: list | None = None, timeout_s: float = 600.0) -> dict[str, Any]:
    """Publish ``n_points`` flows into JetStream, store them, return figures (points_per_s, ...)."""
    sinks = sinks if sinks is not None else sinks_from_settings(settings)
    if not sinks:
        raise ValueError("no sink configured: set FT_INFLUX_URL and/or FT_OUT_DIR")
    tune_gc()
    probe = f"bench-{uuid.uuid4().hex[:6]}"
    subject = f"ft.flow.{probe}"
    bus = await Bus.connect(settings, "store-bench")
    try:
        await bus.ensure_stream()
        # 1. publish
        payloads = []
        for i in range(0, n_points, events_per_msg):
            chunk = bench_flows(probe, min(events_per_msg, n_points - i), start_index=i)
            payloads.append(Bus.encode(EventBatch(events=chunk)))
        t0 = time.perf_counter()
        window = 32
        for i in range(0, len(payloads), window):
            await asyncio.gather(*(bus.js_publish(subject, p) for p in payloads[i:i + window]))
        publish_s = time.perf_counter() - t0
        # 2. store
        metrics = StoreMetrics()
        store = Store(settings, bus, sinks=sinks, metrics=metrics, durable=f"{probe}", filter_subject=subject)
        stop = asyncio.Event()
        await store.setup(stop)
        t1 = time.perf_counter()
        task = asyncio.create_task(store.run(stop))
        deadline = time.monotonic() + timeout_s
        while metrics.acked < len(payloads) and time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.01)
        store_s = time.perf_counter() - t1
        stop.set()
        await task
        await store.close()
        # 3. clean up
        try:
            await bus.js.delete_consumer(settings.stream_name, probe)
            await bus.js.purge_stream(settings.stream_name, subject=subject)
        except Exception as exc:
            log.warning("bench cleanup: %s", exc)
        return {
            "points": metrics.points_written,
            "messages": len(payloads),
            "events_per_msg": events_per_msg,
            "store_s": round(store_s, 3),
            "points_per_s": round(metrics.points_written / store_s) if store_s > 0 else 0,
            "publish_s": round(publish_s, 3),
            "publish_events_per_s": round(n_points / publish_s) if publish_s > 0 else 0,
            "batches": metrics.batches,
            "retries": metrics.retries,
            "sinks": [s.name for s in sinks],
            "probe": probe,
            "complete": metrics.points_written >= n_points,
        }
    finally:
        await bus.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m services.store.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=200_000)
    ap.add_argument("--events-per-msg", type=int, default=500)
    ap.add_argument("--nats", help="NATS URL (default FT_NATS_URL; 'embedded' starts one)", default=None)
    ap.add_argument("--influx", default=None,
                    help="InfluxDB URL (default FT_INFLUX_URL); 'vm' starts a temporary victoria-metrics")
    if argv and argv[0] == "--":
        argv = argv[1:]
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    overrides: dict[str, Any] = {}
    vm = None
    if args.influx == "vm":
        from flowtarget.embedded import VictoriaMetrics

        vm = VictoriaMetrics().start()
        overrides["influx_url"] = vm.url
    elif args.influx:
        overrides["influx_url"] = args.influx
    embedded = None
    if args.nats == "embedded":
        from flowtarget.embedded import EmbeddedNats

        embedded = EmbeddedNats()
        embedded.start()
        overrides["nats_url"] = embedded.url
    elif args.nats:
        overrides["nats_url"] = args.nats
    try:
        settings = StoreSettings(**overrides)
        result = asyncio.run(run_store_bench(settings, args.points, args.events_per_msg))
    finally:
        if embedded is not None:
            embedded.close()
        if vm is not None:
            vm.close()
    print(f"store bench: {result['points']} points in {result['store_s']} s = {result['points_per_s']} points/s "
          f"into {'+'.join(result['sinks'])} ({result['batches']} batches, {result['retries']} retries; "
          f"publish {result['publish_events_per_s']} events/s)")
    print(json.dumps(result))
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
