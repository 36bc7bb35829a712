"""The alert detectors in a process of their own, beside capture.

capture already publishes every flow record (start records on
``ft.live.<probe>``, update and end records on ``ft.flow.<probe>``) and every
ARP and DNS packet on NATS; the detectors read them there instead of inside
capture's packet loop.  That keeps their per-flow cost off capture's core
(on the 1 M-packet replica: 142 k packets/s with detectors inline, 181 k
without), and with ``--shards N`` one detector process sees every shard's
events, so an attack whose flows hash to different shards is one incident.

``flowtarget capture`` starts this process first (``FT_CAPTURE_ROLE=detect``)
and waits until it answers ``ft.ctl.<probe>.detect_ready``.  Alerts go to
``ft.alert.<alert_type>.<probe>`` through JetStream; before the first
publication of an incident, the detector asks capture for the evidence pcap
(``ft.ctl.<probe>.evidence``, with the incident's facts): cut from the packet
store when capture records (every packet of the incident, services/capture/
store_evidence.py), else the meter's last packets of the incident's latest
flow; before its last publication (``closed``) it asks again, so that the
store's cut covers the whole incident.  For files,
capture's final stats message marks the end of its events; capture then asks
``ft.ctl.<probe>.detect_drain`` and waits until every incident is published
(a replay by N shard processes: once all N ended).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from collections import OrderedDict
from typing import Any

from shared.bus import Bus, RateLimitedLog, safe_text
from shared.codec import loads_small
from shared.metrics import register_stats, set_ready
from shared.models import Alert, CaptureStats, PacketEvent, batch_json
from shared.settings import CaptureSettings, DetectSettings
from shared.subjects import subject

log = logging.getLogger("flowtarget.detect")

END_OF_CAPTURE = "end_of_capture"     # counter set in capture's final stats message
EVIDENCE_TIMEOUT_S = 2.0   # capture answers at once (a store cut runs after the answer); a busy loop may delay it
TICK_S = 0.25    # live: incidents age, held ARP binding changes settle


#: what the detectors read (``ft.<kind>.<probe>``), on subscriptions that share one queue
#: (``Bus.subscribe_in_order``) so capture's order holds across them, as it did on the single
#: ``ft.*.<probe>`` subscription that also brought every sample, verdict and DNS record
INPUT_KINDS = ("flow", "live", "packet", "stats")
EVENT_KINDS = ("flow", "packet", "capture_stats")
#: the flow record fields the detectors read (``services/capture/detectors``): flow records are built
#: with only these (``shared.codec.view_model``, validated as in FlowRecord), the others skipped unbuilt;
#: a detector that reads another field gets an AttributeError, counted in its errors
#: (tests/services/capture/test_detect_views.py compares the alerts with those of full records)
FLOW_FIELDS = ("flow_id", "phase", "source", "transport", "src_ip", "src_port", "dst_ip", "dst_port",
               "first_seen", "last_seen", "src2dst_packets", "dst2src_packets", "src2dst_tcp_flags",
               "dst2src_tcp_flags", "src_mac", "dst_mac")
VIEWS = {"flow": FLOW_FIELDS}


def ctl(probe: str, verb: str) -> str:
    return subject("ctl", probe, verb)


def detectors_enabled() -> bool:
    return bool(DetectSettings().detectors.strip())


def own_process(settings: CaptureSettings) -> bool:
    """Whether this capture has a detectors' process (started by ``flowtarget capture``; one for all shards)."""
    return not settings.detect_inline and detectors_enabled()


class DetectorProcess:
    def __init__(self, settings: CaptureSettings, bus: Bus) -> None:
        from services.capture.detectors import Detectors

        self.settings = settings
        self.bus = bus
        self.det = Detectors(DetectSettings(), settings.probe, live=not settings.pcap)
        self.alerts: list[Alert] = []
        self.evidence: OrderedDict[str, str] = OrderedDict()   # alert_id -> path
        self.max_ts = 0.0
        self.next_tick = 0.0
        self.end_seen = asyncio.Event()
        # a replay by N shard processes (FT_SHARDS) ends when each has sent its end; each asks to drain
        self.shards = max(1, settings.shards)
        self.ends = self.drains = 0
        self.published = 0
        self.chains: dict[str, asyncio.Task[None]] = {}   # alert_id -> its latest publication
        self._rlog = RateLimitedLog(log)

    # --- inputs (in capture's order: see INPUTS)
    async def on_message(self, msg: Any) -> None:
        kind = msg.subject.split(".", 2)[1]
        if kind not in INPUT_KINDS:
            return                                  # samples, verdicts ...: not ours
        # only flow records, packet events and capture's stats are built: a flow batch also
        # carries each flow's verdict for storage, skipped unvalidated
        events = self.bus.decode(msg, kinds=EVENT_KINDS, views=VIEWS)
        if events is None:
            return
        det = self.det
        for ev in events:
            if ev.event_type == "flow":        # a view of FlowRecord (VIEWS)
                self.alerts += det.on_flow(ev)
            elif isinstance(ev, PacketEvent):
                self.alerts += det.on_packet(ev)
            elif isinstance(ev, CaptureStats):
                if ev.counters.get(END_OF_CAPTURE):
                    self.ends += 1
                    if self.ends >= self.shards:
                        self.end_seen.set()
                continue
            else:
                continue
            if ev.timestamp > self.max_ts:
                self.max_ts = ev.timestamp
        if self.max_ts >= self.next_tick:
            self.next_tick = self.max_ts + 1.0
            self.alerts += det.tick(self.max_ts)
        if self.alerts:
            await self.publish()

    # --- outputs
    async def _evidence_for(self, a: Alert) -> str:
        from services.capture.store_evidence import incident_of

        known = self.evidence.get(a.alert_id)
        closed = a.details.get("state") == "closed"
        if known is not None and not closed:
            return known
        # with a packet store, capture cuts evidence for any incident (also those without a flow, e.g. ARP);
        # a closed incident's evidence is cut again over its whole window (same file)
        req = json.dumps({"key": a.alert_id, "flow_id": a.flow_id, "tag": a.alert_type,
                          "incident": incident_of(a)}).encode()
        path = await self._ask_evidence(req) or known or ""
        self.evidence[a.alert_id] = path
        if len(self.evidence) > 10_000:
            self.evidence.popitem(last=False)
        return path

    async def _ask_evidence(self, req: bytes) -> str:
        """Every capture shard answers an evidence request (the one holding the flow, or shard 0 for a
        store cut, with the path; the others with none): the first path, or "" once all answered."""
        nc = self.bus.nc
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, max_msgs=self.shards)
        try:
            await nc.publish(ctl(self.settings.probe, "evidence"), req, reply=inbox)
            deadline = time.monotonic() + EVIDENCE_TIMEOUT_S
            for _ in range(self.shards):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                msg = await sub.next_msg(timeout=left)
                path = str(loads_small(msg.data, default={}).get("path", ""))[:1024]
                if path:
                    return path
        except Exception:     # no capture answered in time (capture gone, busy): no evidence
            pass
        finally:
            try:
                await sub.unsubscribe()
            except Exception:
                pass
        return ""

    async def publish(self) -> None:
        """Publish the pending alerts without holding up the event loop's reading.

        The first publication of an incident waits for its evidence path; each
        incident's publications stay in order (each waits for the one before).
        """
        alerts, self.alerts = self.alerts, []
        for a in alerts:
            prev = self.chains.get(a.alert_id)
            task = asyncio.create_task(self._publish_one(a, prev))
            self.chains[a.alert_id] = task
            task.add_done_callback(lambda t, k=a.alert_id: self.chains.pop(k, None)
                                   if self.chains.get(k) is t else None)

    async def _publish_one(self, a: Alert, prev: asyncio.Task[None] | None) -> None:
        if prev is not None:
            try:
                await prev
            except Exception:
                pass
        try:
            if not a.evidence_pcap:
                a.evidence_pcap = await self._evidence_for(a)
            await self.bus.js_publish(subject("alert", self.settings.probe, a.alert_type), batch_json([a]))
            self.published += 1
        except Exception as exc:
            self._rlog.warning("alert", "could not publish an alert: %s", safe_text(exc))

    async def settle(self) -> None:
        """Wait until every alert handed to publish() is published."""
        await self.publish()
        while self.chains:
            await asyncio.gather(*list(self.chains.values()), return_exceptions=True)

    async def ticker(self, stop: asyncio.Event) -> None:
        """Live capture: incidents age with the wall clock even when no event comes."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), TICK_S)
            except asyncio.TimeoutError:
                pass
            if not self.settings.pcap:
                self.alerts += self.det.tick(max(time.time(), self.max_ts))
                if self.alerts:
                    await self.publish()


async def main(settings: CaptureSettings, bus: Bus, stop: asyncio.Event) -> None:
    set_ready(False)
    await bus.ensure_stream(stop)
    proc = DetectorProcess(settings, bus)
    # what was built up to here (modules, pydantic's validators, settings) lives as long as the process:
    # out of the collector's way, so that its full collections (every ~700 x 10 x 10 allocations of
    # decoded events) walk only the detectors' own state (issue 12: ~0.1 CPU-s in one in-process replay of
    # the 1 M-packet replica's detector input, 2.07 -> 1.96; within the noise of bench pipeline)
    gc.collect()
    gc.freeze()
    register_stats("detect", lambda: {**proc.det.counters(), "alerts_published": proc.published})
    p = settings.probe
    await bus.subscribe_in_order([subject(k, p) for k in INPUT_KINDS], proc.on_message, fallback=f"ft.*.{p}")

    async def on_ready(msg: Any) -> None:
        await msg.respond(b"ready")

    async def on_drain(msg: Any) -> None:
        """capture finished a file replay: wait for its last events, close every incident, answer."""
        try:
            await asyncio.wait_for(proc.end_seen.wait(), 120)
        except asyncio.TimeoutError:
            log.warning("end of capture not seen (%d of %d shards); closing incidents anyway", proc.ends, proc.shards)
        proc.drains += 1
        if proc.drains >= proc.shards:     # every shard asked: the next replay starts afresh
            proc.end_seen.clear()
            proc.ends = proc.drains = 0
        proc.alerts += proc.det.tick(proc.max_ts)
        proc.alerts += proc.det.flush()
        await proc.settle()
        await bus.nc.flush(timeout=10)
        await msg.respond(json.dumps({"alerts_published": proc.published}).encode())

    await bus.nc.subscribe(ctl(p, "detect_ready"), cb=on_ready)
    await bus.nc.subscribe(ctl(p, "detect_drain"), cb=on_drain)
    await bus.nc.flush()
    ticker = asyncio.create_task(proc.ticker(stop))
    set_ready(True)
    log.info("detectors ready for probe %s", safe_text(p))
    try:
        await stop.wait()
    finally:
        ticker.cancel()
        proc.alerts += proc.det.flush()      # close every open incident
        try:
            await asyncio.wait_for(proc.settle(), 10)
        except Exception as exc:
            log.warning("could not publish the last alerts: %s", safe_text(exc))
