"""The live overview: rates, top talkers and protocols, per-service health.

Nothing is read while nobody watches: the flow subscription is made when the
first overview page connects and dropped a little after the last one leaves,
and the services' /metrics are scraped only while a page is open.  So an
idle console costs the pipeline (and the probe's CPU) nothing but one idle
NATS connection.

- packets/s: capture's ``flowtarget_capture_packets_total`` from its /metrics
  (``FT_WEB_HEALTH_URLS``); without it, the ``ft.stats`` reports' deltas;
- flows/s, top talkers (bytes), top protocols: from flow records on
  ``ft.flow.>`` (core NATS delivery of the messages capture stores), over a
  sliding window of ``WINDOW_S``;
- health: each configured service's /metrics: ``flowtarget_ready``,
  ``flowtarget_nats_connected``, reachable or not.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import time
import urllib.error
import urllib.request
from typing import Any

from shared.bus import Bus
from shared.models import CaptureStats, FlowRecord
from shared.settings import WebSettings
from shared.subjects import all_of

log = logging.getLogger("flowtarget.web.live")

WINDOW_S = 10.0
IDLE_UNSUBSCRIBE_S = 10.0
_METRIC = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> {name: sum over label sets} (enough for health and rates)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _METRIC.match(line)
        if not m:
            continue
        try:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
        except ValueError:
            continue
    return out


def _fetch(url: str, timeout_s: float = 1.5) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - configured http(s) URLs only
        return resp.read(4 * 1024 * 1024).decode("utf-8", "replace")


class LiveHub:
    """Aggregates live numbers while at least one viewer is connected."""

    def __init__(self, settings: WebSettings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        self.viewers = 0
        self._sub: Any = None
        self._stats_sub: Any = None
        self._idle_since: float | None = None
        self._lock = asyncio.Lock()
        # (time, flows, bytes) per received batch; per-key byte counts per second bucket
        self._flow_events: collections.deque[tuple[float, int]] = collections.deque()
        self._talkers: collections.deque[tuple[float, dict[str, int]]] = collections.deque()
        self._protos: collections.deque[tuple[float, dict[str, int]]] = collections.deque()
        self._stat_packets: collections.deque[tuple[float, int]] = collections.deque()
        self._last_packets: tuple[float, float] | None = None   # (time, packets_total) from capture's /metrics
        self.packets_per_s = 0.0
        self.health: dict[str, dict[str, Any]] = {}
        self.flows_total = 0
        self.packets_total = 0.0
        self._task: asyncio.Task[None] | None = None
        self.snapshot_seq = 0

    # ------------------------------------------------------------------ viewers

    async def join(self) -> None:
        async with self._lock:
            self.viewers += 1
            self._idle_since = None
            if self._sub is None:
                self._sub = await self.bus.subscribe(all_of("flow"), self._on_flows, types=(FlowRecord,), batched=True)
                self._stats_sub = await self.bus.subscribe(all_of("stats"), self._on_stats, types=(CaptureStats,))
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._scrape_loop(), name="web-live-scrape")

    async def leave(self) -> None:
        async with self._lock:
            self.viewers = max(0, self.viewers - 1)
            if self.viewers == 0:
                self._idle_since = time.monotonic()

    async def reap(self) -> None:
        """Drop the subscriptions once nobody has watched for a while (called periodically)."""
        async with self._lock:
            if self.viewers or self._sub is None or self._idle_since is None:
                return
            if time.monotonic() - self._idle_since < IDLE_UNSUBSCRIBE_S:
                return
            for sub in (self._sub, self._stats_sub):
                try:
                    await sub.unsubscribe()
                except Exception:  # noqa: BLE001 - connection closing
                    pass
                if sub in self.bus._subs:
                    self.bus._subs.remove(sub)
            self._sub = self._stats_sub = None
            if self._task is not None:
                self._task.cancel()
                self._task = None
            self._flow_events.clear()
            self._talkers.clear()
            self._protos.clear()
            log.info("live view idle: unsubscribed")

    @property
    def subscribed(self) -> bool:
        return self._sub is not None

    # ------------------------------------------------------------------ inputs

    async def _on_flows(self, recs: list[FlowRecord]) -> None:
        now = time.monotonic()
        new = 0
        talk: dict[str, int] = collections.Counter()
        proto: dict[str, int] = collections.Counter()
        for r in recs:
            if r.phase == "start":
                new += 1
            elif r.phase == "end":
                b = r.src2dst_bytes + r.dst2src_bytes
                talk[r.src_ip] += b
                talk[r.dst_ip] += b
                proto[r.app_protocol or "Unknown"] += 1
        if new:
            self._flow_events.append((now, new))
            self.flows_total += new
        if talk:
            self._talkers.append((now, dict(talk)))
            self._protos.append((now, dict(proto)))

    async def _on_stats(self, st: CaptureStats) -> None:
        if st.packets > 0 and st.source:    # per-file / periodic deltas
            self._stat_packets.append((time.monotonic(), st.packets))

    # ------------------------------------------------------------------ health and rates

    async def _scrape_loop(self) -> None:
        while True:
            try:
                await self.scrape()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad scrape never ends the loop
                log.debug("scrape failed: %s", exc)
            await asyncio.sleep(self.settings.web_live_interval_s)

    async def scrape(self) -> None:
        urls = self.settings.web_health_urls
        if not urls:
            return
        results = await asyncio.gather(*(asyncio.to_thread(self._scrape_one, n, u) for n, u in urls.items()))
        now = time.monotonic()
        health = {}
        packets = None
        for name, h, metrics in results:
            health[name] = h
            if metrics and "flowtarget_capture_packets_total" in metrics:
                packets = (packets or 0.0) + metrics["flowtarget_capture_packets_total"]
        self.health = health
        if packets is not None:
            if self._last_packets is not None and now > self._last_packets[0]:
                dp = packets - self._last_packets[1]
                self.packets_per_s = max(0.0, dp / (now - self._last_packets[0])) if dp >= 0 else 0.0
            self._last_packets = (now, packets)
            self.packets_total = packets

    @staticmethod
    def _scrape_one(name: str, url: str) -> tuple[str, dict[str, Any], dict[str, float] | None]:
        try:
            metrics = parse_metrics(_fetch(url))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            return name, {"status": "down", "detail": f"unreachable: {reason}"[:120]}, None
        ready = metrics.get("flowtarget_ready", 1.0) >= 1
        nats_up = metrics.get("flowtarget_nats_connected", 0.0) >= 1
        status = "ok" if ready and nats_up else "degraded"
        detail = []
        if not ready:
            detail.append("not ready")
        if not nats_up:
            detail.append("NATS disconnected")
        malformed = metrics.get("flowtarget_bus_malformed_total")
        if malformed:
            detail.append(f"{int(malformed)} malformed")
        return name, {"status": status, "detail": ", ".join(detail)}, metrics

    # ------------------------------------------------------------------ output

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        cut = now - WINDOW_S
        for dq in (self._flow_events, self._talkers, self._protos, self._stat_packets):
            while dq and dq[0][0] < cut:
                dq.popleft()
        span = WINDOW_S
        flows_per_s = sum(n for _, n in self._flow_events) / span
        pps = self.packets_per_s
        if self._last_packets is None:   # no capture /metrics configured: the ft.stats deltas
            pps = sum(n for _, n in self._stat_packets) / span
        talkers: collections.Counter[str] = collections.Counter()
        for _, d in self._talkers:
            talkers.update(d)
        protos: collections.Counter[str] = collections.Counter()
        for _, d in self._protos:
            protos.update(d)
        self.snapshot_seq += 1
        return {
            "seq": self.snapshot_seq,
            "time": time.time(),
            "packets_per_s": round(pps, 1),
            "flows_per_s": round(flows_per_s, 1),
            "flows_total": self.flows_total,
            "packets_total": int(self.packets_total),
            "top_talkers": [[k, v] for k, v in talkers.most_common(10)],
            "top_protocols": [[k, v] for k, v in protos.most_common(10)],
            "health": self.health,
            "window_s": WINDOW_S,
        }
