"""store: JetStream durable pull consumer -> points -> InfluxDB 2 and/or JSON lines.

Lossless by construction:
- one durable pull consumer (``FT_DURABLE``) shared by every store replica
  (each message goes to one replica; explicit acks);
- a message is acknowledged only after every sink wrote its points; while a
  sink fails the batch is retried with exponential backoff (capped by
  ``FT_RETRY_MAX_S``), the messages kept unacknowledged and marked "in
  progress" so JetStream does not hand them to another replica meanwhile;
- on stop with a failing sink the messages are nak'ed: redelivered to another
  replica or to this one after its restart;
- redelivered points land on the same InfluxDB point (deterministic timestamps,
  see ``schema``), so a redelivery overwrites instead of duplicating.
Hostile or broken input never stops storage (``shared.codec`` decodes with
size, depth, schema-version and probe checks): a message that cannot be used
is counted, logged at most once per interval, copied to the dead-letter
stream (``ft.dlq.<probe>``, header ``Ft-Dlq-Reason``) and acknowledged; a bad
event inside a batch (or one whose probe is not the subject's) is skipped and
counted, its valid siblings stored, and the message copied to the dead-letter
stream too; a message delivered ``FT_DLQ_MAX_DELIVER`` times without being
stored (it keeps killing or failing the store) is dead-lettered unread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError
from shared.bus import RateLimitedLog, safe_text
from shared.codec import DecodeError, Decoder
from shared.runner import tune_gc
from shared.settings import StoreSettings

from services.store.lineproto import Point
from services.store.repeats import WRITTEN, Repeats, stream_seq
from services.store.report import ReportFile
from services.store.schema import AccessLogRule, Schema
from services.store.sinks import sinks_from_settings

log = logging.getLogger("flowtarget.store")

# How long JetStream waits for an ack before redelivering a message: the delay
# before a killed replica's unacknowledged batch goes to another replica (or to
# it after a restart).  Live batches are kept by "in progress" acks every
# ACK_WAIT_S / 3 while they are written or retried, however long that takes.
ACK_WAIT_S = 10.0
MAX_ACK_PENDING = 50_000
MAX_FETCH_MSGS = 256
# Batches written at the same time (each acks its own messages when written):
# the database parses one request per core, the next batch is converted meanwhile.
MAX_INFLIGHT = 2
# At a stop, how long a pull request still out may take to bring its messages in (a pull with messages
# waiting returns in milliseconds; one waiting on an empty stream is given up, not its second of timeout)
STOP_FETCH_GRACE_S = 0.2


@dataclass
class StoreMetrics:
    """Plain counters (exposed as Prometheus metrics elsewhere)."""

    messages: int = 0  # JetStream messages received (incl. redeliveries)
    redelivered: int = 0  # of which redeliveries
    events: int = 0
    points_written: int = 0
    points_by_measurement: dict[str, int] = field(default_factory=dict)
    batches: int = 0  # successful sink writes (one per flush)
    retries: int = 0  # failed write attempts that were retried
    write_errors: int = 0  # failed write attempts, per sink
    malformed_messages: int = 0  # messages with no usable event (dead-lettered)
    malformed_events: int = 0  # events rejected from a batch whose others were stored
    dead_lettered: int = 0  # messages copied to ft.dlq.<probe>
    max_delivered: int = 0  # of which delivered FT_DLQ_MAX_DELIVER times without being stored
    conversion_errors: int = 0  # messages whose events could not be turned into points (dead-lettered)
    decode: dict[str, int] = field(default_factory=dict)  # shared.codec counters (unknown_fields, ...)
    acked: int = 0
    nacked: int = 0
    consumer_lag: int = 0  # messages in the stream not yet delivered to this consumer
    unlogged_flows: int = 0  # short unknown flows left out of the access log (ISMS rule)
    unlogged_packets: int = 0
    unlogged_bytes: int = 0
    ignored_events: int = 0  # events of kinds that are not stored
    bad_timestamps: int = 0
    rejected_points: int = 0  # points the database refused as bad (isolated, counted, dropped)
    repeats_skipped: int = 0  # redeliveries of messages this replica already took (acked again if written, not rewritten)
    started: float = field(default_factory=time.monotonic)
    _rate_t: float = field(default_factory=time.monotonic)
    _rate_n: int = 0
    points_per_s: float = 0.0  # over the last interval of >= 1 s

    def update_rate(self) -> None:
        now = time.monotonic()
        if now - self._rate_t >= 1.0:
            self.points_per_s = (self.points_written - self._rate_n) / (now - self._rate_t)
            self._rate_t, self._rate_n = now, self.points_written

    def snapshot(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        d["uptime_s"] = round(time.monotonic() - self.started, 3)
        d.pop("started", None)
        return d


class Store:
    """The consumer loop; also used by the bench with its own durable and subject filter."""

    def __init__(self, settings: StoreSettings, bus, sinks: list | None = None, metrics: StoreMetrics | None = None,
                 durable: str | None = None, filter_subject: str | None = None) -> None:
        self.settings = settings
        self.bus = bus
        self.sinks = sinks if sinks is not None else sinks_from_settings(settings)
        self.metrics = metrics or StoreMetrics()
        self.durable = durable or settings.durable
        self.filter_subject = filter_subject
        self.schema = Schema(AccessLogRule(settings.isms_min_duration_s, settings.isms_min_pps,
                                           settings.log_all_flows))
        self._psub = None
        self._inflight: list[asyncio.Task] = []
        self._fetching: asyncio.Task | None = None
        self._points_per_msg = 100.0
        self._last_log = time.monotonic()
        self.decoder = Decoder.from_settings(settings)
        self.metrics.decode = self.decoder.counters
        self._rlog = RateLimitedLog(log, 10.0)
        self.repeats = Repeats()
        #: FT_REPORT_FILE: the events ``flowtarget analyze`` reports, as this store decoded them
        self.report = ReportFile(settings.report_file) if getattr(settings, "report_file", "") else None

    # ------------------------------------------------------------------ setup

    def consumer_config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ACK_WAIT_S,
            max_deliver=-1,
            max_ack_pending=MAX_ACK_PENDING,
            filter_subject=self.filter_subject,
        )

    async def setup(self, stop: asyncio.Event | None = None) -> None:
        await self.bus.ensure_stream()
        js = self.bus.js
        delay = 0.2
        while True:
            try:
                try:
                    await js.add_consumer(self.settings.stream_name, self.consumer_config())
                except BadRequestError as exc:
                    # exists with another config: bind to it as it is
                    log.warning("consumer %s exists with another configuration (%s); using it",
                                self.durable, exc.description)
                self._psub = await js.pull_subscribe_bind(durable=self.durable, stream=self.settings.stream_name,
                                                          pending_msgs_limit=-1, pending_bytes_limit=-1)
                break
            except (nats.errors.Error, asyncio.TimeoutError, OSError) as exc:
                if stop is not None and stop.is_set():
                    raise
                log.warning("consumer setup failed (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        for s in self.sinks:
            await s.start()
        log.info("store consuming %s (durable %s) into %s", self.filter_subject or self.settings.stream_name,
                 self.durable, ", ".join(s.name for s in self.sinks) or "the report file only")

    # ------------------------------------------------------------------ messages → points

    async def _dead_letter(self, msg, reason: str, detail: str) -> None:
        """Copy an unusable message to ft.dlq.<probe> and acknowledge it; left for redelivery if NATS fails."""
        if await self.bus.dead_letter(msg, reason, detail):
            self.metrics.dead_lettered += 1
            try:
                await msg.ack()
                self.metrics.acked += 1
            except Exception:
                pass

    async def _take(self, msg, points: list[Point]) -> bool:
        """Turn one message into points; False when it had no usable event (dead-lettered)."""
        m = self.metrics
        m.messages += 1
        delivered = 1
        try:
            md = msg.metadata
            m.consumer_lag = md.num_pending
            delivered = md.num_delivered
            if delivered > 1:
                m.redelivered += 1
        except Exception:
            pass
        if delivered >= self.settings.dlq_max_deliver:
            m.max_delivered += 1
            self._rlog.warning("maxdeliver", "message on %s delivered %d times without being stored: dead-lettered",
                               safe_text(msg.subject, 80), delivered)
            await self._dead_letter(msg, "max_deliver", f"delivered {delivered} times without being stored")
            return False
        try:
            decoded = self.decoder.decode(msg.data, msg.subject, msg.headers)
        except DecodeError as exc:
            m.malformed_messages += 1
            self._rlog.warning("malformed:" + exc.reason, "malformed message on %s dead-lettered (%d so far): %s %s",
                               safe_text(msg.subject, 80), m.malformed_messages, exc.reason,
                               safe_text(exc.detail, 200))
            await self._dead_letter(msg, exc.reason, exc.detail)
            return False
        if decoded.rejected:
            m.malformed_events += decoded.rejected
            detail = "; ".join(decoded.reasons)
            self._rlog.warning("rejected", "%d event(s) of a message on %s rejected (%d so far), the other %d stored: %s",
                               decoded.rejected, safe_text(msg.subject, 80), m.malformed_events,
                               len(decoded.events), safe_text(detail, 300))
            if await self.bus.dead_letter(msg, "rejected_events", f"{decoded.rejected} event(s) rejected: {detail}"):
                m.dead_lettered += 1
        events = decoded.events
        n0 = len(points)
        add = self.schema.points
        try:
            if self.sinks:     # without sinks (report only: analyze without --out) no points are built
                for ev in events:
                    add(ev, points)
        except Exception as exc:   # a conversion bug must not stop storage: this message only
            del points[n0:]
            m.conversion_errors += 1
            self._rlog.log(logging.ERROR, "convert", "could not convert a message on %s: %s",
                           safe_text(msg.subject, 80), safe_text(exc), exc_info=exc)
            await self._dead_letter(msg, "conversion_failed", f"{type(exc).__name__}: {exc}")
            return False
        m.events += len(events)
        if self.report is not None:
            self.report.add(stream_seq(msg), events)
        return True

    # ------------------------------------------------------------------ writing

    async def _sleep(self, seconds: float, stop: asyncio.Event) -> None:
        try:
            await asyncio.wait_for(stop.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _flush(self, msgs: list, points: list[Point], stop: asyncio.Event, final: bool = False) -> bool:
        """Write points to every sink, retrying failed sinks; ack on success.  False if given up (nak'ed)."""
        m = self.metrics
        todo = list(self.sinks)
        delay = 0.25
        attempts = 0
        keepalive = asyncio.create_task(self._keepalive(msgs))
        try:
            while todo:
                failed = []
                for sink in todo:
                    try:
                        await sink.write(points)
                    except Exception as exc:
                        m.write_errors += 1
                        failed.append(sink)
                        if attempts < 3 or attempts % 10 == 0:
                            log.warning("%s write of %d points failed (attempt %d): %s", sink.name, len(points),
                                        attempts + 1, str(exc)[:300])
                if not failed:
                    break
                todo = failed
                attempts += 1
                m.retries += 1
                if stop.is_set() and (final or attempts >= 3):
                    await self._nak(msgs)
                    return False
                await self._sleep(delay, stop)
                delay = min(delay * 2, self.settings.retry_max_s)
        finally:
            keepalive.cancel()
        if attempts:
            log.info("write succeeded after %d retries", attempts)
        self.repeats.written(msgs)
        if self.report is not None:
            self.report.flush()     # on disk before the ack: what is acknowledged is in the report
        m.batches += 1
        m.points_written += len(points)
        by = m.points_by_measurement
        for p in points:
            by[p.measurement] = by.get(p.measurement, 0) + 1
        for msg in msgs:
            try:
                await msg.ack()
                m.acked += 1
            except Exception:
                pass  # redelivered later, lands on the same points
        self._sync_rule_counters()
        m.update_rate()
        return True

    async def _keepalive(self, msgs: list) -> None:
        """Tell JetStream these messages are still being worked on (no redelivery meanwhile)."""
        while True:
            await asyncio.sleep(ACK_WAIT_S / 3)
            for msg in msgs:
                try:
                    await msg.in_progress()
                except Exception:
                    pass

    async def _nak(self, msgs: list) -> None:
        self.repeats.forget(msgs)
        for msg in msgs:
            try:
                await msg.nak()
                self.metrics.nacked += 1
            except Exception:
                pass

    def _sync_rule_counters(self) -> None:
        r = self.schema.rule
        m = self.metrics
        m.unlogged_flows, m.unlogged_packets, m.unlogged_bytes = r.skipped_flows, r.skipped_packets, r.skipped_bytes
        m.ignored_events, m.bad_timestamps = self.schema.ignored, self.schema.bad_timestamps
        m.rejected_points = sum(getattr(s, "rejected_points", 0) for s in self.sinks)

    # ------------------------------------------------------------------ loop

    async def _wait_inflight(self, waiting: list, stop: asyncio.Event, limit: int = 0) -> None:
        """Wait until at most ``limit`` batches are being written; keep ``waiting`` messages ours meanwhile."""
        while len(self._inflight) > limit:
            task = self._inflight[0]
            while not task.done():
                done, _ = await asyncio.wait({task}, timeout=ACK_WAIT_S / 3)
                if not done:
                    prefetched = self._prefetched()
                    for msg in [*waiting, *prefetched]:
                        try:
                            await msg.in_progress()
                        except Exception:
                            pass
            self._inflight.pop(0)
            task.result()

    def _prefetched(self) -> list:
        """Messages the next pull request already brought in (not yet converted)."""
        task = self._fetching
        if task is not None and task.done() and not task.cancelled() and task.exception() is None:
            return task.result()
        return []

    async def _fetch(self, msgs: list, points: list, first_at: float, stop: asyncio.Event) -> list:
        """One pull request sized to fill the current batch; [] on timeout or while disconnected."""
        batch_size = self.settings.batch_size
        if msgs:
            remaining = self.settings.flush_interval_s - (time.monotonic() - first_at)
            want = max(1, min(MAX_FETCH_MSGS, int((batch_size - len(points)) / self._points_per_msg) + 1))
            timeout = max(0.05, min(remaining, 1.0))
        else:
            want = max(1, min(MAX_FETCH_MSGS, int(batch_size / self._points_per_msg) + 1))
            timeout = 1.0
        try:
            return await self._psub.fetch(want, timeout=timeout)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            return []
        except Exception as exc:  # disconnected, connection closed, ...
            if not stop.is_set():
                log.debug("fetch failed: %s", exc)
                await self._sleep(0.5, stop)
            return []

    async def _fetched(self, stopping: asyncio.Future) -> list:
        """The pending pull request's messages, or [] when ``stopping`` completes first: then the request
        (an idle wait of up to a second on an empty stream) is cancelled, so that a stop takes effect at
        once instead of after the pull's timeout."""
        task = self._fetching
        assert task is not None
        if not task.done():
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                task.cancel()
                self._fetching = None
                return []
        return task.result()

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch, convert and write until ``stop``; one batch is written while the next one is built."""
        assert self._psub is not None, "call setup() first"
        self._inflight = []
        self._fetching = None
        stopping = asyncio.ensure_future(stop.wait())   # wakes a pull's wait at a stop (_fetched)
        try:
            await self._loop(stop, stopping)
        finally:
            stopping.cancel()

    async def _loop(self, stop: asyncio.Event, stopping: asyncio.Future) -> None:
        batch_size = self.settings.batch_size
        flush_s = self.settings.flush_interval_s
        msgs: list = []
        points: list[Point] = []
        first_at = 0.0
        while not stop.is_set():
            if self._fetching is None:
                self._fetching = asyncio.create_task(self._fetch(msgs, points, first_at, stop))
            got = await self._fetched(stopping)
            # ask for the next messages now, so they travel while these are converted
            self._fetching = asyncio.create_task(self._fetch(msgs, points, first_at, stop)) if got else None
            await asyncio.sleep(0)
            n_before = len(points)
            for msg in got:
                if await self._repeat(msg):
                    continue
                if await self._take(msg, points):
                    if not msgs:
                        first_at = time.monotonic()
                    msgs.append(msg)
            if got:
                per = (len(points) - n_before) / len(got)
                self._points_per_msg = max(1.0, 0.8 * self._points_per_msg + 0.2 * per)
            if msgs and (len(points) >= batch_size or not got or time.monotonic() - first_at >= flush_s
                         or (not self.sinks and len(msgs) >= MAX_FETCH_MSGS)):   # report only: no points to count
                await self._wait_inflight(msgs, stop, MAX_INFLIGHT - 1)
                self._inflight.append(asyncio.create_task(self._flush(msgs, points, stop)))
                msgs, points = [], []
            self._maybe_log()
        if self._fetching is not None:
            # messages already fetched go with the last batch; a pull still waiting on an empty stream is
            # given up (what it would still bring is redelivered to the next consumer: never acked here)
            grace = asyncio.ensure_future(asyncio.sleep(STOP_FETCH_GRACE_S))
            try:
                late = await self._fetched(grace)
            except Exception:
                late = []
            finally:
                grace.cancel()
            for msg in late:
                if await self._repeat(msg):
                    continue
                if await self._take(msg, points):
                    msgs.append(msg)
        await self._wait_inflight(msgs, stop)
        if msgs:
            await self._flush(msgs, points, stop, final=True)
        self._sync_rule_counters()

    async def _repeat(self, msg) -> bool:
        """True for a redelivery of a message this replica already took (see ``repeats``): not taken again."""
        seq = stream_seq(msg)
        if seq is None:
            return False
        state = self.repeats.state(seq)
        if state is None:
            self.repeats.take(seq)
            return False
        self.metrics.repeats_skipped += 1
        if state == WRITTEN:
            try:
                await msg.ack()
                self.metrics.acked += 1
            except Exception:
                pass  # redelivered again, absorbed again
        return True

    def _maybe_log(self) -> None:
        now = time.monotonic()
        if now - self._last_log >= 60.0:
            self._last_log = now
            m = self.metrics
            log.info("store: %d points written (%.0f/s), %d batches, %d retries, lag %d, %d short unknown flows "
                     "not logged, %d malformed", m.points_written, m.points_per_s, m.batches, m.retries,
                     m.consumer_lag, m.unlogged_flows, m.malformed_messages)

    async def close(self) -> None:
        if self.report is not None:
            self.report.close()
        if self._psub is not None:
            # a pull subscription never marks its queue done: unsubscribe instead of letting drain wait on it
            try:
                await self._psub.unsubscribe()
            except Exception:
                pass
            self._psub = None
        for s in self.sinks:
            try:
                await s.close()
            except Exception as exc:
                log.warning("closing %s: %s", s.name, exc)


async def main(settings: StoreSettings, bus, stop: asyncio.Event, metrics: StoreMetrics | None = None) -> None:
    """The store service (``flowtarget store``): runs until ``stop`` is set."""
    from shared.metrics import register_stats, set_ready

    set_ready(False)
    tune_gc()      # idempotent: the runner does it too; here for in-process use (bench, tests)
    store = Store(settings, bus, metrics=metrics)
    register_stats("store", store.metrics.snapshot)
    if not store.sinks and store.report is None:
        log.warning("store has no sink configured (set FT_INFLUX_URL and/or FT_OUT_DIR): messages stay in the stream")
        await stop.wait()
        return
    try:
        await store.setup(stop)
        set_ready(True)
        await store.run(stop)
    finally:
        await store.close()
        m = store.metrics
        log.info("store stopped: %d points written in %d batches, %d retries, %d malformed messages, "
                 "%d short unknown flows not logged", m.points_written, m.batches, m.retries,
                 m.malformed_messages, m.unlogged_flows)
