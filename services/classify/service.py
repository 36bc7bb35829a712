"""classify: FlowSample in, Verdict out; DNS packets in, DnsRecord out.

Stateless per message — every sample carries the flow so far — so replicas
share the work through one NATS queue group.  Serves every probe on the bus:
answers go to the probe named in the event.
"""

from __future__ import annotations

import asyncio
import logging

from shared.bus import Bus
from shared.metrics import register_stats, set_ready
from shared.models import FlowSample, PacketEvent
from shared.settings import ClassifySettings
from shared.subjects import subject

from services.classify.engine import Engine

log = logging.getLogger("flowtarget.classify")

READY_SUBJECT = subject("ctl", "*", "classify_ready")


async def main(settings: ClassifySettings, bus: Bus, stop: asyncio.Event) -> None:
    set_ready(False)
    await bus.ensure_stream(stop)
    second = None
    if settings.use_ndpi:
        from services.classify.ndpi_engine import load_ndpi

        second = load_ndpi()     # None (with a log line) where libndpi is not installed
    engine = Engine(second=second)
    nc_publish = bus.nc.publish
    counts = {"samples": 0, "verdicts": 0, "dns": 0}

    async def on_sample(s: FlowSample) -> None:
        counts["samples"] += 1
        v = engine.classify(s)
        await nc_publish(subject("verdict", s.probe), v.model_dump_json().encode())
        counts["verdicts"] += 1

    async def on_packet(p: PacketEvent) -> None:
        if p.kind != "dns":
            return
        rec = engine.dns_record(p)
        if rec is not None:
            await bus.js_publish(subject("dns", p.probe), rec)
            counts["dns"] += 1

    await bus.subscribe(subject("sample", "*"), on_sample, queue=settings.queue_group, types=(FlowSample,))
    await bus.subscribe(subject("packet", "*"), on_packet, queue=settings.queue_group, types=(PacketEvent,))

    async def on_ready(msg) -> None:   # readiness probe: answered once the subscriptions above exist
        await msg.respond(b"ready")

    await bus.nc.subscribe(READY_SUBJECT, queue=settings.queue_group, cb=on_ready)
    await bus.nc.flush()
    register_stats("classify", lambda: {**counts, **engine.stats()})
    set_ready(True)
    log.info("classify ready (queue group %s)", settings.queue_group)
    await stop.wait()
    log.info("classify: %s", counts)
