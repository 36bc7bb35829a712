"""capture: packets in, flow records / samples / packet events out.

The per-packet work happens synchronously inside ``FlowMeter.process_batch``; this
module is the asyncio glue around it:

- reads a live interface (non-blocking pypcap, driven by the loop) or
  replays capture files in chunks;
- collects what the meter emits in ``Outbox`` and publishes it between chunks:
  samples and packet events on core NATS (latency matters, loss is tolerable),
  update and end flow records and alerts batched through JetStream (must
  reach storage); start records, which only the detectors read, batched on
  core NATS (``ft.live.<probe>``), so nothing is stored that no one reads;
- takes classify's verdicts so the meter stops sampling classified flows,
  stamps their classification on the end record and hands over the best
  verdict, which goes into the same JetStream batch as the end record;
- for files, applies back-pressure when classify falls behind, waits for the
  last verdicts at the end, then publishes every flow's end and exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from shared.bus import Bus, RateLimitedLog, safe_text
from shared.codec import loads_small
from shared.metrics import register_stats, set_ready
from shared.models import (Alert, BlockAction, CaptureStats, Event, Evidence, FlowRecord, FlowSample, PacketEvent,
                           Verdict, batch_json)
from shared.settings import CaptureSettings
from shared.subjects import subject

from services.capture.evidence import EvidenceLimits
from services.capture.flows import FlowMeter
from services.capture.sources import CaptureFileError, check_settings, open_source  # noqa: F401 (the runner's check)

log = logging.getLogger("flowtarget.capture")

CHUNK = 2048                # packets processed between two publishing turns
SAMPLE_BATCH = 64          # samples (and packet events) per message
PUBLISH_WINDOW = 8         # JetStream batches awaiting their ack at once
STATS_INTERVAL_S = 10.0
PROGRESS_INTERVAL_S = 0.5  # replay: ft.stats.<probe>.progress (bytes read of the file, packets) at most this often
LIVE_READ = 4096           # live capture: packets read per call
LIVE_TICK_S = 0.1          # live capture: timeouts and detector ticks
EVIDENCE_DRAIN_S = 120.0   # at the end of a replay: longest wait for evidence cuts from the packet store
EVIDENCE_DRAIN_LIVE_S = 10.0   # at the end of live capture (shutdown)


class Outbox:
    """The meter's sink: collects events synchronously; ``flush`` publishes them."""

    def __init__(self, bus: Bus, settings: CaptureSettings, detectors: Any = None) -> None:
        self.bus = bus
        self.settings = settings
        self.detectors = detectors
        p = settings.probe
        self.s_sample = subject("sample", p)
        self.s_packet = subject("packet", p)
        self.s_flow = subject("flow", p)
        self.s_live = subject("live", p)
        self.hot_records: list[FlowRecord | bytes] = []   # bytes: a hot record's JSON (raw_hot)
        self.samples: list[FlowSample | bytes] = []   # bytes: a sample's JSON (raw_samples)
        self.packets: list[PacketEvent | bytes] = []   # bytes: a DNS or ARP packet event's JSON (raw_packets)
        self.records: list[Event | bytes] = []   # bytes: an end record's JSON (raw_records)
        self.live_records: list[FlowRecord | bytes] = []   # start records: core NATS, for the detectors (raw_live)
        self.alerts: list[Alert] = []
        self.batches: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=64)
        self.meter: FlowMeter | None = None
        # evidence pcaps already written: alert_id / flow_id -> path (bounded)
        self.evidence_paths: OrderedDict[str, str] = OrderedDict()
        self.evidence: list[Evidence] = []
        self.limits = EvidenceLimits.from_settings(settings)   # bounds on recordings and evidence on disk
        self.sent_records = 0
        self.sent_samples = 0
        self.sent_packets = 0
        self.sent_hot = 0
        self._last_batch = time.monotonic()
        self._rlog = RateLimitedLog(log)
        self.recorder: Any = None   # the packet recorder (FT_RECORD_DIR), fed once per batch
        self.store_evidence: Any = None   # evidence cut from the recorder's store (store_evidence.py)

    @property
    def raw_records(self) -> list[Event | bytes] | None:
        """Where the meter may put end records as their JSON (bytes) instead of FlowRecord objects: this
        outbox's records, when nothing in this process reads the objects (no inline detectors); None
        otherwise.  batch_json takes such items as they are.  The packet recorder's index then reads the
        flows themselves (raw_index)."""
        return self.records if self.detectors is None else None

    @property
    def raw_index(self) -> list | None:
        """With the raw records, where the meter puts the flows the packet recorder indexes (its ``pending``:
        a start's flow, None then the flow for an end); None without a recorder."""
        return self.recorder.pending if self.recorder is not None else None

    @property
    def raw_live(self) -> list[FlowRecord | bytes] | None:
        """The same for start records (live_records, published for the detectors)."""
        return self.live_records if self.raw_records is not None else None

    @property
    def raw_hot(self) -> list[FlowRecord | bytes] | None:
        """The same for hot records (hot_records): where no detectors run in this process."""
        return self.hot_records if self.detectors is None else None

    @property
    def raw_packets(self) -> list[PacketEvent | bytes] | None:
        """The same for DNS and ARP packet events (packets): where no detectors run in this process (they read
        the events)."""
        return self.packets if self.detectors is None else None

    @property
    def raw_samples(self) -> list[FlowSample | bytes]:
        """Where the meter may put samples as their JSON (bytes) instead of FlowSample objects: always this
        outbox's samples (nothing in capture reads a sample but its JSON; batch_json takes such items as
        they are)."""
        return self.samples

    # --- MeterSink protocol (called from the hot path: append only)
    def flow(self, rec: FlowRecord) -> None:
        if self.recorder is not None:
            self.recorder.on_flow(rec)   # the packet store's index: which flows each file holds
        if rec.phase == "start":
            self.live_records.append(rec)
        else:
            self.records.append(rec)
        if self.detectors is not None:
            self.alerts.extend(self.detectors.on_flow(rec))

    def hot(self, rec: FlowRecord) -> None:
        """A live record for the detectors (core NATS, never stored)."""
        self.hot_records.append(rec)
        if self.detectors is not None:
            self.alerts.extend(self.detectors.on_flow(rec))

    def flow_verdict(self, v: Verdict) -> None:
        """A classified flow's best verdict, stored in the same batch as its end record."""
        self.records.append(v)

    def sample(self, s: FlowSample) -> None:
        self.samples.append(s)

    def packet(self, p: PacketEvent) -> None:
        self.packets.append(p)
        if self.detectors is not None:
            self.alerts.extend(self.detectors.on_packet(p))

    def add_alerts(self, alerts: list[Alert]) -> None:
        self.alerts.extend(alerts)

    # --- evidence
    def _evidence_event(self, path: str, reason: str, ref: str, packets: int) -> Evidence:
        return Evidence(timestamp=time.time(), probe=self.settings.probe, path=path, reason=reason,  # type: ignore[arg-type]
                        ref=ref[:128], packets=packets)

    def write_evidence(self, key: str, flow_id: str, reason: str, tag: str) -> str:
        """Write a flow's recent packets once per incident/flow; returns the path ('' when none kept)."""
        if key in self.evidence_paths:
            return self.evidence_paths[key]
        path = ""
        if self.meter is not None and self.settings.evidence_packets:
            if not self.limits.has_room():
                self.limits.c["evidence_refused_disk"] += 1
                self._rlog.warning("evidence-full", "no evidence written: %s", self.limits.disk_full_reason())
                return ""
            try:
                path = self.meter.write_evidence(flow_id, tag=tag) or ""
                if path:
                    self.limits.used += os.path.getsize(path)
                    self.limits.c["evidence_written"] += 1
            except OSError as exc:
                self._rlog.warning("evidence", "could not write evidence: %s", safe_text(exc))
        self.evidence_paths[key] = path
        if len(self.evidence_paths) > 10_000:
            self.evidence_paths.popitem(last=False)
        if path:
            ev = self._evidence_event(path, reason, key, 0)
            ev.flow_id = flow_id
            self.evidence.append(ev)
        return path

    def incident_evidence(self, inc: dict[str, Any]) -> str:
        """An incident's evidence file: cut from the packet store (again over its whole window when it
        closes); from the meter's ring of its flow without a store. '' when there is none."""
        se = self.store_evidence
        key = str(inc.get("alert_id", ""))[:128]
        flow_id = str(inc.get("flow_id", ""))[:64]
        if se is None or not key:
            if not flow_id or not key:
                return ""
            return self.write_evidence(key, flow_id, "alert", str(inc.get("alert_type", "alert"))[:32])
        from services.capture.store_evidence import query_for_incident

        state = str((inc.get("details") or {}).get("state", ""))
        path = se.path_for(key)
        if path and state != "closed":
            return path
        q = query_for_incident(inc, self.recorder.flow_span if self.recorder is not None else None)
        if q is None:
            if path:
                return path
            return self.write_evidence(key, flow_id, "alert", str(inc.get("alert_type", "alert"))[:32]) if flow_id else ""
        return se.request(key, q, src_ip=str(inc.get("src_ip", "")), ts=float(inc.get("last_seen") or 0.0),
                          tag=str(inc.get("alert_type", "alert"))[:32] + "-" + key[:8], reason="alert", ref=key,
                          flow_id=flow_id, ring_flow=flow_id)

    def block_evidence(self, b: BlockAction) -> str:
        """A block's evidence: its flow from the packet store (a second after the action, so that the
        race's packets are in it), else the meter's ring."""
        key = "block:" + b.flow_id
        se = self.store_evidence
        if se is not None:
            from services.capture.store_evidence import FLOW_LOOKBACK_S, query_for_flow

            span = self.recorder.flow_span(b.flow_id) if self.recorder is not None else None
            since = span[0] if span else b.timestamp - FLOW_LOOKBACK_S
            q = query_for_flow(b.transport, b.src_ip, b.src_port, b.dst_ip, b.dst_port, since, None)
            if q is not None:
                path = se.path_for(key)
                if path:
                    return path
                return se.request(key, q, src_ip=b.src_ip, ts=b.timestamp, tag=f"block-{b.rule_id}"[:48],
                                  reason="block", ref=key, flow_id=b.flow_id, ring_flow=b.flow_id, delay_s=1.0)
        return self.write_evidence(key, b.flow_id, "block", f"block-{b.rule_id}")

    def take_store_evidence(self) -> None:
        """Evidence events of the cuts the store's thread finished."""
        se = self.store_evidence
        while se is not None and se.done:
            path, reason, ref, packets, flow_id = se.done.popleft()
            ev = self._evidence_event(path, reason, ref, packets)
            ev.flow_id = flow_id
            self.evidence.append(ev)

    async def publish_evidence(self) -> None:
        self.take_store_evidence()
        evidence, self.evidence = self.evidence, []
        for e in evidence:
            await self.bus.nc.publish(subject("evidence", self.settings.probe), e.model_dump_json().encode())

    # --- publishing
    async def flush(self, force: bool = False) -> None:
        if self.meter is not None:
            self.meter.flush_samples()   # one cumulative sample per flow with new payload since the last turn
        nc_publish = self.bus.nc.publish
        if self.samples:
            # one message per SAMPLE_BATCH samples: classify replicas share batches through the
            # queue group, and one serialisation + publish per batch is far cheaper per sample
            samples, self.samples = self.samples, []
            for i in range(0, len(samples), SAMPLE_BATCH):
                part = samples[i:i + SAMPLE_BATCH]
                await nc_publish(self.s_sample, batch_json(part))
            self.sent_samples += len(samples)
        if self.live_records:
            # before this turn's JetStream batches, so a flow's start goes out before its end
            live, self.live_records = self.live_records, []
            bs = self.settings.batch_size
            for i in range(0, len(live), bs):
                await nc_publish(self.s_live, batch_json(live[i:i + bs]))
            self.sent_records += len(live)
        if self.packets:
            packets, self.packets = self.packets, []
            for i in range(0, len(packets), SAMPLE_BATCH):
                await nc_publish(self.s_packet, batch_json(packets[i:i + SAMPLE_BATCH]))
            self.sent_packets += len(packets)
        if self.hot_records:
            hot, self.hot_records = self.hot_records, []
            for i in range(0, len(hot), self.settings.batch_size):
                await nc_publish(self.s_live, batch_json(hot[i:i + self.settings.batch_size]))
            self.sent_hot += len(hot)
        if self.alerts:
            alerts, self.alerts = self.alerts, []
            for a in alerts:
                if not a.evidence_pcap and (a.flow_id or self.store_evidence is not None):
                    from services.capture.store_evidence import incident_of
                    a.evidence_pcap = self.incident_evidence(incident_of(a))
                await self.batches.put((subject("alert", self.settings.probe, a.alert_type), batch_json([a])))
        if self.meter is not None and self.meter.recorders:
            for rec in self.meter.finished_recordings(force=force):
                self.evidence.append(self._evidence_event(str(rec.path), "request", rec.tag, rec.count))
        self.take_store_evidence()
        if self.evidence:
            await self.publish_evidence()
        n = len(self.records)
        if n and (force or n >= self.settings.batch_size
                  or time.monotonic() - self._last_batch >= self.settings.batch_interval_s):
            records, self.records = self.records, []
            for i in range(0, n, self.settings.batch_size):
                await self.batches.put((self.s_flow, batch_json(records[i:i + self.settings.batch_size])))
            self.sent_records += n
            self._last_batch = time.monotonic()

    async def publisher(self) -> None:
        """Background task: JetStream-publishes queued batches, retrying each until stored.

        Up to PUBLISH_WINDOW batches are in flight at once, so the replay does
        not wait one acknowledgement round trip per batch.
        """
        window = asyncio.Semaphore(PUBLISH_WINDOW)

        async def one(subj: str, batch: bytes) -> None:
            try:
                await self.bus.js_publish(subj, batch)
            except Exception as exc:  # only on max_wait; js_publish retries otherwise
                self._rlog.warning("pub", "could not store a batch on %s: %s", subj, safe_text(exc))
            finally:
                window.release()
                self.batches.task_done()

        while True:
            subj, batch = await self.batches.get()
            await window.acquire()
            asyncio.create_task(one(subj, batch))

    async def drain(self) -> None:
        await self.flush(force=True)
        await self.batches.join()
        await self.bus.nc.flush(timeout=10)


def _make_detectors(settings: CaptureSettings) -> Any:
    """Detectors inside this process only with FT_DETECT_INLINE (normally they run in services.capture.detect)."""
    if not settings.detect_inline:
        return None
    try:
        from services.capture.detectors import Detectors
        from shared.settings import DetectSettings
    except ImportError:
        return None
    return Detectors(DetectSettings(), settings.probe, live=not settings.pcap)


async def main(settings: CaptureSettings, bus: Bus, stop: asyncio.Event) -> None:
    set_ready(False)
    if not settings.iface and not settings.pcap:
        raise_config("set FT_IFACE (live) or FT_PCAP (files)")
    await bus.ensure_stream(stop)
    detectors = _make_detectors(settings)
    out = Outbox(bus, settings, detectors)
    meter = FlowMeter(settings, out, source="", probe=settings.probe)
    meter.defer_samples = True
    meter.port_guess = port_guesser()   # names flows that never got a verdict (confidence "port")
    out.meter = meter
    out.recorder = _make_recorder(settings, meter)
    if out.recorder is not None:
        from services.capture.store_evidence import StoreEvidence
        out.store_evidence = StoreEvidence(settings, out.recorder, out.limits, meter)
    publisher = asyncio.create_task(out.publisher(), name="capture-publisher")
    reporter = StatsReporter(bus, settings, meter, out)

    async def on_verdicts(vs: list[Verdict]) -> None:
        take = meter.on_verdict   # a batch per message: no coroutine per verdict
        for v in vs:
            try:
                take(v)
            except Exception as exc:  # noqa: BLE001 - one verdict's trouble never costs the others of its batch
                bus.handler_errors += 1
                out._rlog.log(logging.ERROR, "verdict", "verdict for flow %s failed (%d so far): %s",
                              safe_text(v.flow_id, 64), bus.handler_errors, safe_text(exc), exc_info=exc)

    await bus.subscribe(subject("verdict", settings.probe), on_verdicts, types=(Verdict,), batched=True)

    async def on_block(b: BlockAction) -> None:
        if b.flow_id and b.outcome not in ("dry_run", "allowlisted"):
            out.block_evidence(b)

    await bus.subscribe(subject("block", settings.probe), on_block, types=(BlockAction,))

    async def on_pcap_request(msg: Any) -> None:
        """ft.ctl.<probe>.pcap {"bpf": "...", "duration_s": N}: record matching packets to a pcap."""
        try:
            refused = out.limits.allow_request()
            if refused:
                raise ValueError(refused)
            req = loads_small(msg.data, default={})
            bpf = str(req.get("bpf", ""))[:1024]
            duration = min(max(float(req.get("duration_s", 10.0)), 0.0), 3600.0)
            rec = out.limits.start_recording(meter, bpf, duration)   # bounded: FT_RECORDING_*
            answer = {"status": "recording", "bpf": bpf, "duration_s": duration,
                      "directory": str(settings.evidence_dir), "tag": getattr(rec, "tag", "ctl")}
        except (ValueError, TypeError, AttributeError) as exc:
            answer = {"status": "error", "error": safe_text(exc, 300)}
        if msg.reply:
            await bus.nc.publish(msg.reply, json.dumps(answer).encode())

    await bus.nc.subscribe(subject("ctl", settings.probe, "pcap"), cb=on_pcap_request)

    async def on_evidence_request(msg: Any) -> None:
        """The detectors' process asks for an incident's evidence; every shard answers (the one holding
        the flow, or shard 0 for a cut from the store, with the path; the others with none), so that
        the detectors wait for no timeout when no shard has it (detect.py counts FT_SHARDS answers)."""
        try:
            req = loads_small(msg.data)
            inc = req.get("incident")
        except (ValueError, TypeError, AttributeError):
            return
        se = out.store_evidence
        # the incident's last cut (it closed) is owed to an incident already counted: not rate-limited
        recut = se is not None and isinstance(inc, dict) and bool(se.path_for(str(req.get("key", ""))[:128]))
        refused = "" if recut else out.limits.allow_request()
        if refused:
            if msg.reply:
                await bus.nc.publish(msg.reply, json.dumps({"path": "", "error": refused}).encode())
            return
        try:
            if isinstance(inc, dict) and out.store_evidence is not None:
                # cut from the store, which holds every shard's packets: shard 0 (or the only capture) cuts
                if settings.shard_index > 0:
                    if msg.reply:
                        await bus.nc.publish(msg.reply, b'{"path": ""}')
                    return
                inc["alert_id"] = str(req["key"])
                path = out.incident_evidence(inc)
                if msg.reply:
                    await bus.nc.publish(msg.reply, json.dumps({"path": path}).encode())
                return
            flow_id = str(req.get("flow_id") or "")[:64]
            path = out.write_evidence(str(req["key"])[:128], flow_id, "alert",
                                      str(req.get("tag", "alert"))[:32]) if flow_id else ""
        except (ValueError, KeyError, TypeError, AttributeError):
            path = ""
        if msg.reply:     # also "no evidence": the detectors then need not wait for a timeout
            await bus.nc.publish(msg.reply, json.dumps({"path": path or ""}).encode())

    await bus.nc.subscribe(subject("ctl", settings.probe, "evidence"), cb=on_evidence_request)
    if out.recorder is not None and settings.shard_index <= 0:   # shards share one store: one of them answers
        from services.capture.export import ctl_handler
        exporter = out.store_evidence.export if out.store_evidence is not None else None
        await bus.nc.subscribe(subject("ctl", settings.probe, "export"),
                               cb=ctl_handler(settings, bus, out.limits, exporter))
    if detectors is not None:
        register_stats("capture_detectors", detectors.counters)
    register_stats("capture_evidence", out.limits.counters, gauges=("recordings_active", "evidence_dir_bytes"))
    register_stats("capture", lambda: {**meter.stats(), "samples_sent": out.sent_samples,
                                       "packet_events_sent": out.sent_packets, "flow_records_sent": out.sent_records,
                                       "hot_records_sent": out.sent_hot,
                                       "batches_queued": out.batches.qsize()},
                   gauges=("flows_active", "pending_verdicts", "flows_closing", "batches_queued"))
    set_ready(True)
    try:
        if settings.pcap:
            await replay_files(settings, bus, stop, meter, out, reporter)
        else:
            await capture_live(settings, bus, stop, meter, out, reporter)
    finally:
        meter.finish("shutdown" if not settings.pcap else "eof")
        meter.flush_closing()
        if out.recorder is not None:
            out.recorder.close()
        if detectors is not None:
            out.add_alerts(detectors.tick(detectors.now()))   # a replay's clock is its packets' (as in detect.py)
            out.add_alerts(detectors.flush())      # close every open incident
        await out.drain()
        # the totals; for the detectors' process also the end of this capture's events
        await reporter.publish(source="", finished=False, delta=False,
                               extra={"end_of_capture": 1, **reporter.final_extra})
        from services.capture.detect import own_process

        if settings.pcap and own_process(settings):
            # only when a detectors' process runs: without one, a wildcard subscriber (a bench's
            # subject counter, an operator's `nats sub '>'`) would take the request and leave it unanswered
            await drain_detectors(bus, settings)
        if out.store_evidence is not None:    # the incidents' last cuts, then their evidence events
            # live: within the container's stop grace period
            wait_s = EVIDENCE_DRAIN_S if settings.pcap else EVIDENCE_DRAIN_LIVE_S
            if not await asyncio.to_thread(out.store_evidence.wait, wait_s):
                log.warning("evidence cuts still running after %.0f s; not waiting for them", wait_s)
            await asyncio.to_thread(out.store_evidence.close)
            await out.publish_evidence()
            await bus.nc.flush(timeout=10)
        publisher.cancel()


async def drain_detectors(bus: Bus, settings: CaptureSettings) -> None:
    """After a file replay: wait until the detectors' process has published every incident (if one runs)."""
    try:
        await bus.nc.request(subject("ctl", settings.probe, "detect_drain"), b"", timeout=120)
    except Exception as exc:   # no detectors' process (FT_DETECTORS empty, inline, or not started)
        log.debug("no detector drain: %s", safe_text(exc))


def _make_recorder(settings: CaptureSettings, meter: FlowMeter) -> Any:
    """The rolling packet store (services/capture/recorder.py) when FT_RECORD_DIR is set, its counters in /metrics."""
    if not settings.record_dir:
        return None
    from services.capture.recorder import from_settings

    try:
        rec = from_settings(settings, meter)
    except OSError as exc:
        raise_config(f"FT_RECORD_DIR {settings.record_dir}: {exc.strerror or exc}")
    register_stats("capture_recorder", rec.stats, gauges=("stored_bytes", "stored_files", "cutoff_flows", "index_open_flows"))
    return rec


_PORTS: dict[tuple[str, int], str] | None = None   # classify's port table, built once per process image


def port_guesser() -> Any:
    """classify's well-known-port table, for flows that carried no payload to classify (the rule of
    ``Engine.guess``, which the compiled meter applies itself).

    The table is built once: a sharded replay's parent builds it before forking its shards (importing
    classify's dissectors takes 60-70 ms, which each shard would otherwise spend after the fork)."""
    global _PORTS
    from .flows import PortTable

    if _PORTS is None:
        from services.classify.engine import Engine

        _PORTS = Engine().port_table
    return PortTable(_PORTS)


def raise_config(reason: str) -> None:
    from shared.runner import ConfigError
    raise ConfigError(reason)


GAUGES = ("flows_active", "pending_verdicts", "flows_closing")


class StatsReporter:
    """Publishes CaptureStats: per file the counts of that file (deltas), at the end the totals."""

    def __init__(self, bus: Bus, settings: CaptureSettings, meter: FlowMeter, out: Outbox) -> None:
        self.bus, self.settings, self.meter, self.out = bus, settings, meter, out
        self._prev: dict[str, int] = {}
        self.final_extra: dict[str, int] = {}   # live capture: the kernel's counters at the end

    def _snapshot(self) -> dict[str, int]:
        st = dict(self.meter.stats())
        flat = {k: int(v) for k, v in st.items() if k != "counters" and isinstance(v, (int, float))}
        for k, v in (st.get("counters") or {}).items():
            flat["c:" + k] = int(v)
        flat["c:samples_sent"] = self.out.sent_samples
        flat["c:packet_events_sent"] = self.out.sent_packets
        flat["c:flow_records_sent"] = self.out.sent_records
        return flat

    async def publish(self, source: str, finished: bool, delta: bool, extra: dict[str, int] | None = None) -> None:
        now = self._snapshot()
        vals = now
        if delta:   # counts of this source only; gauges as they are
            vals = {k: v if k.removeprefix("c:") in GAUGES else v - self._prev.get(k, 0) for k, v in now.items()}
            self._prev = now
        for k, v in (extra or {}).items():
            key = k if k in CaptureStats.model_fields else "c:" + k
            vals[key] = vals.get(key, 0) + int(v)
        fields = {k: v for k, v in vals.items() if k in CaptureStats.model_fields}
        counters = {k[2:]: v for k, v in vals.items() if k.startswith("c:") and k[2:] not in GAUGES}
        stats = CaptureStats(timestamp=time.time(), probe=self.settings.probe, source=source, finished=finished,
                             counters=counters, **fields)
        await self.bus.publish(subject("stats", self.settings.probe), stats)
        await self.bus.nc.flush(timeout=10)


REPLAY_STALL_MAX_S = 120.0  # replay: longest wait without any verdict while classify is still subscribed


async def classify_present(bus: Bus, probe: str) -> bool | None:
    """Is a classify replica subscribed?  True: one answered its readiness request; False: none is
    (NATS reports no responders at once); None: one is subscribed but did not answer in time (busy)."""
    from nats.errors import NoRespondersError

    try:
        await bus.nc.request(subject("ctl", probe, "classify_ready"), b"", timeout=1.0)
        return True
    except NoRespondersError:
        return False
    except Exception:  # noqa: BLE001 - timeout (busy) or a connection hiccup: not proof of absence
        return None


CLASSIFY_STATE_WAIT_S = 0.5   # how long the replicas' answers to a state request are collected


async def classify_idle(bus: Bus, probe: str) -> bool:
    """Is every classify replica idle (no sample queued or in hand)?  Every replica answers a state request
    (``ft.ctl.<probe>.classify_state``, no queue group) within ``CLASSIFY_STATE_WAIT_S``; True when at least
    one answered and all that did said idle.  False on any doubt (no answer, a garbled one, a busy replica)."""
    inbox = bus.nc.new_inbox()
    answers: list[Any] = []

    async def on_answer(msg: Any) -> None:
        try:
            answers.append(json.loads(msg.data))
        except ValueError:
            answers.append(None)

    try:
        sub = await bus.nc.subscribe(inbox, cb=on_answer)
        await bus.nc.publish(subject("ctl", probe, "classify_state"), b"", reply=inbox)
        await asyncio.sleep(CLASSIFY_STATE_WAIT_S)
        await sub.unsubscribe()
    except Exception:  # noqa: BLE001 - a connection hiccup: no conclusion
        return False
    return bool(answers) and all(isinstance(a, dict) and a.get("idle") is True for a in answers)


async def _wait_verdicts(meter: FlowMeter, out: Outbox, stop: asyncio.Event, limit: int, max_wait_s: float,
                         present: Any = None, idle: Any = None) -> bool:
    """Wait while classify catches up (pending verdicts above ``limit``), as long as it makes progress.

    Returns False when no verdict arrived for ``max_wait_s`` and classify is gone: the caller stops
    waiting for it.  With ``present`` (an async callable, see ``classify_present``), a stall is
    not the end while a classify replica is still subscribed -- a loaded machine can hold classify
    back for seconds, and giving up then would make a replay's results depend on the machine's
    load -- up to ``REPLAY_STALL_MAX_S`` without any verdict.  Meanwhile ended flows keep waiting
    for their verdicts (no wall-clock deadline: see ``replay_files``).

    With ``idle`` (an async callable, see ``classify_idle``) a stall is also checked for lost samples:
    when every classify replica says twice, a second apart and with no verdict in between, that it has
    no sample queued or in hand, the verdicts still awaited will not come (their samples, or the
    verdicts, were lost on the bus: a NATS node killed under a cluster, a replica killed with samples
    in hand).  The meter writes them off (``write_off_verdicts``, counted as ``verdicts_lost``) and the
    replay goes on, instead of waiting ``REPLAY_STALL_MAX_S`` for nothing.
    """
    last = meter.pending_verdicts()
    progress_at = check_at = time.monotonic()
    while meter.pending_verdicts() > limit and not stop.is_set():
        await out.flush()
        await asyncio.sleep(0.005)
        meter.tick(0.0, 0.0)   # 0: packet time stays where it is; wall 0: no closing flow is due
        now = meter.pending_verdicts()
        t = time.monotonic()
        if now < last:
            last, progress_at, check_at = now, t, t
        elif t - check_at > max_wait_s:
            if present is not None and t - progress_at < REPLAY_STALL_MAX_S and await present() is not False:
                if idle is not None and await idle():
                    await asyncio.sleep(1.0)
                    await out.flush()
                    meter.tick(0.0, 0.0)
                    if meter.pending_verdicts() >= now and await idle():
                        n = meter.write_off_verdicts()
                        log.warning("%d samples' verdicts written off: every classify replica is idle, so they "
                                    "were lost on the bus (a NATS node or a classify replica gone?)", n)
                        last = meter.pending_verdicts()
                        progress_at = time.monotonic()
                check_at = time.monotonic()     # classify is there, only slow: keep waiting
                continue
            log.warning("%d samples still without a verdict after %.1f s; is classify running?", now, t - progress_at)
            return False
    return True


SHARD_SKEW_BYTES = 8 << 20   # sharded replay: a shard waits while it has read this much more of a file than another
SHARD_SILENT_S = 10.0        # ... unless that shard has said nothing for this long (not started, gone)


class ShardPacer:
    """Keeps the shard processes of one file replay (FT_SHARDS) abreast of each other.

    Every shard reads every file; each keeps its share.  Without pacing one shard
    could run far ahead of another, and the detectors' process, which ages its
    incidents with the newest packet time it has seen, would close incidents that
    the slower shard's events still belong to.  Each shard publishes how far it
    has read (``ft.ctl.<probe>.replay_pos_<run>``: file number and bytes) after each
    batch and waits while it is more than ``SHARD_SKEW_BYTES`` ahead of the
    slowest shard that is still reading.  The slowest shard never waits, so
    they cannot deadlock; a shard silent for ``SHARD_SILENT_S`` is no longer
    waited for.
    """

    def __init__(self, bus: Bus, settings: CaptureSettings) -> None:
        self.bus = bus
        self.me = settings.shard_index
        self.shards = settings.shards
        # one replay's shards only (two replays under one probe name would pace each other)
        self.subject = subject("ctl", settings.probe, "replay_pos" + (f"_{settings.shard_run}" if settings.shard_run else ""))
        self.pos: dict[int, tuple[int, int]] = {}
        self.heard: dict[int, float] = {}
        self.changed = asyncio.Event()
        self.t0 = time.monotonic()
        self.waited_s = 0.0
        self._sub: Any = None

    async def start(self) -> None:
        async def on_pos(msg: Any) -> None:
            try:
                d = loads_small(msg.data)
                k, f, o = int(d["shard"]), int(d["file"]), int(d["pos"])
            except (ValueError, TypeError, KeyError, AttributeError):
                return
            if k != self.me and 0 <= k < self.shards:
                self.pos[k] = (f, o)
                self.heard[k] = time.monotonic()
                self.changed.set()

        self._sub = await self.bus.nc.subscribe(self.subject, cb=on_pos)

    async def report(self, file_no: int, pos: int) -> None:
        await self.bus.nc.publish(self.subject, json.dumps({"shard": self.me, "file": file_no, "pos": pos}).encode())

    def _behind(self, file_no: int, pos: int) -> bool:
        """Whether a shard still reading is so far behind (file_no, pos) that this one must wait."""
        now = time.monotonic()
        for k in range(self.shards):
            if k == self.me:
                continue
            seen = self.heard.get(k, self.t0)
            if now - seen > SHARD_SILENT_S:
                continue
            f, o = self.pos.get(k, (0, -1))
            if f < file_no or (f == file_no and pos - o > SHARD_SKEW_BYTES):
                return True
        return False

    async def wait(self, file_no: int, pos: int, stop: asyncio.Event) -> None:
        t = time.monotonic()
        while self._behind(file_no, pos) and not stop.is_set():
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
        self.waited_s += time.monotonic() - t

    async def close(self) -> None:
        await self.report(1 << 30, 0)     # past every file: nobody waits for this shard
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:
                pass


def replay_shard(settings: CaptureSettings) -> tuple[int, int]:
    """(shard, shards) of a file replay: with FT_SHARDS > 1 every shard process reads each file and
    keeps the packets whose IP addresses hash to it (fastpath.shard_hash); else (0, 1), every packet."""
    if settings.shards > 1 and 0 <= settings.shard_index < settings.shards:
        return settings.shard_index, settings.shards
    return 0, 1


async def replay_files(settings: CaptureSettings, bus: Bus, stop: asyncio.Event, meter: FlowMeter, out: Outbox,
                       reporter: StatsReporter) -> None:
    errors = 0
    # Cleared when classify stops answering: no more pauses for it.  While it answers, an ended
    # flow waits for its verdicts however long the replay makes classify lag (back-pressure bounds
    # how many are pending); verdict_wait_s, a wall-clock wait meant for live traffic, applies only
    # once classify has stopped answering, so a replay's results do not depend on the machine's load.
    classify_answers = True

    async def present() -> bool | None:
        return await classify_present(bus, settings.probe)

    async def idle() -> bool:
        return await classify_idle(bus, settings.probe)

    def wall() -> float:
        if classify_answers and settings.replay_max_pending:   # without back-pressure: the deadline
            return 0.0
        return time.monotonic()

    pacer = None
    if replay_shard(settings)[1] > 1:
        pacer = ShardPacer(bus, settings)
        await pacer.start()
        await pacer.report(1, 0)
    for file_no, path in enumerate(settings.pcap, 1):
        if stop.is_set():
            break
        name = Path(path).name
        try:
            reader = open_source(path, *replay_shard(settings))
        except (CaptureFileError, OSError) as exc:
            errors += 1
            log.error("%s", safe_text(exc, 500))
            await bus.publish(subject("stats", settings.probe), CaptureStats(
                timestamp=time.time(), probe=settings.probe, source=name, finished=True,
                counters={"file_errors": 1} if settings.shard_index <= 0 else {}))   # once for all shards
            continue
        meter.set_source(name, reader.datalink, reader.cut_at)
        process = meter.process
        process_batch = meter.process_batch
        progress = getattr(reader, "progress", None)
        next_progress = 0.0       # the first report after the file's first batch, then every interval
        n = 0
        next_tick = None
        wall0 = time.monotonic()
        ts0 = None
        ts = 0.0
        realtime = settings.replay_realtime
        for dlt, recs in reader.batches(CHUNK):
            d = None if dlt == reader.datalink else dlt
            cut_at = reader.cut_at    # lower than the header's snap length once records say they were cut
            if cut_at != meter.snaplen:
                meter.set_cut_at(cut_at)   # for this batch's frames too: its evidence, ft.ctl recordings
            if realtime:   # pace every packet at its recorded time
                for ts, frame in recs:
                    if ts0 is None:
                        ts0, wall0 = ts, time.monotonic()
                    ahead = (ts - ts0) - (time.monotonic() - wall0)
                    if ahead > 0.001:
                        await out.flush()
                        await asyncio.sleep(ahead)
                        if stop.is_set():
                            break
                    process(ts, frame, d)
                    if next_tick is None or ts >= next_tick:
                        meter.tick(ts, wall())
                        if out.detectors is not None:
                            out.add_alerts(out.detectors.tick(ts))
                        next_tick = ts + 1.0
                if stop.is_set():
                    break
            else:
                process_batch(recs, d)
            if out.recorder is not None:
                out.recorder.cut_at = cut_at
                out.recorder.record(recs, dlt)
            n += len(recs)
            ts = recs[-1][0]
            if next_tick is None or ts >= next_tick:
                meter.tick(ts, wall())
                if out.recorder is not None:
                    out.recorder.tick(ts)
                if out.detectors is not None:
                    out.add_alerts(out.detectors.tick(ts))
                next_tick = ts + 1.0
            if progress is not None and time.monotonic() >= next_progress:
                # where the replay is inside this file, for a terminal's progress line (flowtarget analyze/run)
                next_progress = time.monotonic() + PROGRESS_INTERVAL_S
                done, size = progress()
                await bus.nc.publish(subject("stats", settings.probe, "progress"), json.dumps(
                    {"source": name, "file": file_no, "files": len(settings.pcap), "bytes_read": done,
                     "bytes_total": size, "packets": n, "shard": max(settings.shard_index, 0)}).encode())
            # one publishing turn per batch (CHUNK packets)
            await out.flush()
            await asyncio.sleep(0)      # let the publisher send what flush queued
            if pacer is not None and progress is not None:
                pos = progress()[0]
                await pacer.report(file_no, pos)
                await pacer.wait(file_no, pos, stop)
            limit = settings.replay_max_pending
            if limit and classify_answers and meter.pending_verdicts() > limit:
                classify_answers = await _wait_verdicts(meter, out, stop, limit // 2, settings.verdict_wait_s, present,
                                                        idle)
            if stop.is_set():
                break
        if reader.error:
            log.warning("%s: %s", name, safe_text(reader.error, 300))   # says after how many packets, where
        meter.finish("eof")
        if out.detectors is not None:
            out.add_alerts(out.detectors.tick(ts))
        await out.flush(force=True)
        extra = {**reader.counters, **({"file_truncated": 1} if reader.error else {})}   # caplen anomalies too
        await reporter.publish(source=name, finished=True, delta=True, extra=extra)
        if pacer is not None:
            await pacer.report(file_no + 1, 0)
    if pacer is not None:
        await pacer.close()
        if pacer.waited_s >= 1.0:
            log.info("shard %d waited %.1f s for the other shards", settings.shard_index, pacer.waited_s)
    # the last verdicts, then every flow's end record
    await _wait_verdicts(meter, out, stop, 0, settings.verdict_wait_s, present if classify_answers else None, idle)
    meter.flush_closing()
    if errors:
        log.warning("%d capture file(s) could not be read", errors)


async def capture_live(settings: CaptureSettings, bus: Bus, stop: asyncio.Event, meter: FlowMeter, out: Outbox,
                       reporter: StatsReporter) -> None:
    from services.capture.shard import open_live

    try:
        src, how = open_live(settings, direction_in=settings.direction_in)
    except CaptureFileError as exc:      # one line naming the variable, exit 2 (see shared.runner)
        raise_config(f"{exc.setting}: {exc}")
    if how:
        log.info("capture shard %d/%d on %s by %s", settings.shard_index, settings.shards, settings.iface, how)
    meter.set_source(settings.iface, src.datalink, src.cut_at)
    if out.recorder is not None:
        out.recorder.cut_at = src.cut_at
    register_stats("capture_pcap", src.stats, gauges=())
    # the handle is open: from now on nothing on the interface is missed (ft.stats says so)
    await reporter.publish(settings.iface, finished=False, delta=False, extra={"capture_started": 1})
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    loop.add_reader(src.fileno(), ready.set)
    mono = time.monotonic
    last_stats = next_tick = next_check = mono()
    gone = ""
    try:
        while not stop.is_set():
            batch = src.read_available(LIVE_READ)
            n = len(batch)
            if n:
                meter.process_batch(batch)
                if out.recorder is not None:
                    out.recorder.record(batch, src.datalink)
                # a publishing turn at once: block and classify race the server's answer with these samples
                await out.flush()
            now_m = mono()
            if now_m >= next_tick:
                now = time.time()
                meter.tick(now, now_m)
                if out.recorder is not None:
                    out.recorder.tick(now)
                if out.detectors is not None:
                    out.add_alerts(out.detectors.tick(now))
                await out.flush()
                next_tick = now_m + LIVE_TICK_S
                if now_m >= next_check:   # libpcap reads nothing, silently, from a deleted interface
                    next_check = now_m + 1.0
                    gone = src.gone()
                    if gone:
                        log.error("capture: %s; stopping", gone)
                        break
                if now_m - last_stats > STATS_INTERVAL_S:
                    last_stats = now_m
                    live = src.stats()
                    await reporter.publish(settings.iface, finished=False, delta=False,
                                           extra={"dropped_kernel": live.get("dropped_kernel", 0),
                                                  "dropped_interface": live.get("dropped_interface", 0)})
            if n:
                # traffic: read on after one pass of the loop's other work (verdicts, NATS), without
                # wait_for's task per wake-up, which cost more than the read when packets keep coming
                await asyncio.sleep(0)
                continue
            ready.clear()
            try:
                await asyncio.wait_for(ready.wait(), min(0.5, max(0.001, next_tick - now_m)))
            except asyncio.TimeoutError:
                pass
    finally:
        loop.remove_reader(src.fileno())
        live = src.stats()   # the kernel's drop counters go into the final report too
        reporter.final_extra = {"dropped_kernel": live.get("dropped_kernel", 0),
                                "dropped_interface": live.get("dropped_interface", 0)}
        from shared.metrics import unregister_stats
        unregister_stats("capture_pcap")   # /metrics must never ask a closed handle (pypcap crashes on it)
        src.close()
    if gone:   # flows end and are published by main's cleanup; then exit 1 with this line
        from shared.runner import FatalError
        raise FatalError(gone)
