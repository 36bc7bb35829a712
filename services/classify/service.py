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
from shared.models import DnsRecord, FlowSample, PacketEvent, Verdict, batch_json, set_lean
from shared.settings import ClassifySettings
from shared.subjects import subject

from services.classify.engine import Engine

try:   # capture's compiled helper, built with the package: verdict and DNS batches written without their defaults
    from services.capture._meter import lean as _compiled_lean
except ImportError:  # pragma: no cover - built without a compiler: pydantic writes them (the same models)
    _compiled_lean = None
if _compiled_lean is not None:
    set_lean(_compiled_lean)

log = logging.getLogger("flowtarget.classify")

READY_SUBJECT = subject("ctl", "*", "classify_ready")
# every replica answers (no queue group): whether it has samples queued or in hand.  A replay's capture asks
# when verdicts stop coming: every replica idle means the samples still without a verdict were lost on the bus
STATE_SUBJECT = subject("ctl", "*", "classify_state")


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

    busy = [0]   # sample messages being answered now

    async def on_samples(samples: list[FlowSample]) -> None:
        """A message of samples is answered with one message of verdicts per probe."""
        busy[0] += 1
        try:
            counts["samples"] += len(samples)
            by_probe: dict[str, list[Verdict]] = {}
            for s in samples:
                by_probe.setdefault(s.probe, []).append(engine.classify(s))
            for probe, verdicts in by_probe.items():
                await nc_publish(subject("verdict", probe), batch_json(verdicts))
                counts["verdicts"] += len(verdicts)
        finally:
            busy[0] -= 1

    async def on_packets(packets: list[PacketEvent]) -> None:
        """DNS packets become DnsRecords, stored through JetStream one message per batch and probe."""
        by_probe: dict[str, list[DnsRecord]] = {}
        for p in packets:
            if p.kind == "dns":
                rec = engine.dns_record(p)
                if rec is not None:
                    by_probe.setdefault(p.probe, []).append(rec)
        for probe, recs in by_probe.items():
            await bus.js_publish(subject("dns", probe), batch_json(recs))
            counts["dns"] += len(recs)

    sample_sub = await bus.subscribe(subject("sample", "*"), on_samples, queue=settings.queue_group,
                                     types=(FlowSample,), batched=True)
    await bus.subscribe(subject("packet", "*"), on_packets, queue=settings.queue_group, types=(PacketEvent,),
                        batched=True)

    async def on_ready(msg) -> None:   # readiness probe: answered once the subscriptions above exist
        await msg.respond(b"ready")

    await bus.nc.subscribe(READY_SUBJECT, queue=settings.queue_group, cb=on_ready)

    async def on_state(msg) -> None:   # this replica's queue of samples (see STATE_SUBJECT)
        queued = sample_sub.pending_msgs + busy[0]
        await msg.respond(b'{"idle":%s,"queued":%d,"samples":%d}' % (b"false" if queued else b"true", queued,
                                                                      counts["samples"]))

    await bus.nc.subscribe(STATE_SUBJECT, cb=on_state)
    await bus.nc.flush()
    register_stats("classify", lambda: {**counts, **engine.stats()})
    set_ready(True)
    log.info("classify ready (queue group %s)", settings.queue_group)
    await stop.wait()
    log.info("classify: %s", counts)
