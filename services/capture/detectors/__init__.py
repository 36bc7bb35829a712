"""Alert detectors that run inside the capture service.

They are fed the events capture already emits — every ARP and DNS
:class:`PacketEvent` and every :class:`FlowRecord` (start, update, end) — not
raw packets, so the per-packet path stays clean and their state is sharded
the same way as capture's flows.  Each returns :class:`Alert` objects that
capture publishes on ``ft.alert.<alert_type>.<probe>``.

One incident = one ``alert_id``: an alert is returned when the incident opens,
``tick`` returns rate-limited updates (growing ``count``/``last_seen``) and a
last ``closed`` one when it goes quiet; ``flush`` closes everything (end of a
file, shutdown).  ``details["state"]`` is ``open``, ``update`` or ``closed``.

A detector's exception is counted (``stats["errors"]``) and logged at a
limited rate; it never reaches capture nor stops the other detectors.
See docs/alerts.md for the schema and thresholds.
"""

from __future__ import annotations

import logging
import time

from shared.models import Alert, FlowRecord, PacketEvent
from shared.settings import DetectSettings

from .arp import ArpDetector
from .dns import DnsTunnelDetector
from .icmp import IcmpDetector
from .incidents import IncidentTable
from .scan import ScanDetector

__all__ = ["Detectors", "DETECTOR_NAMES"]

log = logging.getLogger("flowtarget.capture.detectors")

DETECTOR_NAMES = ("arp_flood", "arp_spoof", "port_scan", "syn_flood", "icmp_flood", "dns_tunnel")
PRUNE_INTERVAL_S = 5.0
PART_BEHIND_S = 600.0  # a source whose packet time is this far behind the clock is over: close its incidents


class _Part:
    """Everything one capture source (an interface, or one replayed file) has taught the detectors.

    Sources never share state: two capture files replayed one after the other
    both have a 192.168.1.1, with different MACs, and that is no spoofing.
    """

    __slots__ = ("source", "table", "arp", "dns", "scan", "icmp", "max_ts", "idle_ticks", "last_prune")

    def __init__(self, det: "Detectors", source: str) -> None:
        s, wanted = det.settings, det.enabled
        self.source = source
        self.table = IncidentTable(det.probe, s.alert_update_interval_s, s.alert_expire_s, s.alert_max_incidents,
                                   salt=source)
        t = self.table
        self.arp = ArpDetector(s, t, "arp_flood" in wanted, "arp_spoof" in wanted) \
            if wanted & {"arp_flood", "arp_spoof"} else None
        self.dns = DnsTunnelDetector(s, t) if "dns_tunnel" in wanted else None
        self.scan = ScanDetector(s, t, "port_scan" in wanted, "syn_flood" in wanted) \
            if wanted & {"port_scan", "syn_flood"} else None
        self.icmp = IcmpDetector(s, t) if "icmp_flood" in wanted else None
        self.max_ts = 0.0
        self.idle_ticks = 0
        self.last_prune = 0.0


class Detectors:
    def __init__(self, settings: DetectSettings, probe: str, live: bool = False) -> None:
        wanted = {x.strip() for x in settings.detectors.split(",") if x.strip()}
        unknown = wanted - set(DETECTOR_NAMES)
        if unknown:
            raise ValueError(f"FT_DETECTORS: unknown detector(s) {', '.join(sorted(unknown))}; known: {', '.join(DETECTOR_NAMES)}")
        self.settings = settings
        self.probe = probe
        #: live: incidents age with the wall clock (or packet time, if ahead); replays: with packet time
        self.live = live
        self.enabled = frozenset(wanted)
        # plain counters (exported as metrics by capture)
        self.stats: dict[str, int] = {"errors": 0, "packets": 0, "flows": 0, "sources": 0, "alerts_opened": 0,
                                      "alerts_updates": 0, "alerts_closed": 0, "alerts_suppressed": 0,
                                      "alerts_open": 0, "dns_malformed": 0, "sources_dropped": 0}
        self.parts: dict[str, _Part] = {}
        self.current = self._part("")
        self._last_error_log = 0.0

    # the current source's detectors (tests and introspection)
    @property
    def table(self) -> IncidentTable:
        return self.current.table

    @property
    def arp(self) -> ArpDetector | None:
        return self.current.arp

    @property
    def dns(self) -> DnsTunnelDetector | None:
        return self.current.dns

    @property
    def scan(self) -> ScanDetector | None:
        return self.current.scan

    @property
    def icmp(self) -> IcmpDetector | None:
        return self.current.icmp

    def _part(self, source: str, out: list[Alert] | None = None) -> _Part:
        part = self.parts.get(source)
        if part is None:
            if len(self.parts) >= self.settings.detect_max_sources:
                oldest = self.parts.pop(next(iter(self.parts)))
                self.stats["sources_dropped"] += 1
                closed = oldest.table.flush()
                if out is not None:
                    out += closed
                self._account(oldest)
            part = self.parts[source] = _Part(self, source)
            self.stats["sources"] += 1
        elif self.parts.get(next(reversed(self.parts))) is not part:
            del self.parts[source]
            self.parts[source] = part  # most recently used last
        part.idle_ticks = 0
        self.current = part
        return part

    # ------------------------------------------------------------------ inputs
    def on_packet(self, p: PacketEvent) -> list[Alert]:
        """Every ARP packet (kind="arp") and every DNS packet (kind="dns")."""
        self.stats["packets"] += 1
        out: list[Alert] = []
        try:
            part = self.current if p.source == self.current.source else self._part(p.source, out)
            if p.timestamp > part.max_ts:
                part.max_ts = p.timestamp
            part.table.now = self._clock(part)
            if p.kind == "arp":
                if part.arp is not None:
                    out += part.arp.on_packet(p)
            elif p.kind == "dns":
                if part.dns is not None:
                    out += part.dns.on_packet(p)
        except Exception:  # a detector bug must never stop capture
            self._error("packet")
        return out

    def on_flow(self, r: FlowRecord) -> list[Alert]:
        """Start, update and end records of every flow."""
        self.stats["flows"] += 1
        out: list[Alert] = []
        try:
            part = self.current
            if r.source != part.source:
                part = self._part(r.source, out)
            ts = r.timestamp
            if ts > part.max_ts:
                part.max_ts = ts
            part.table.now = self._clock(part)
            arp = part.arp
            if arp is not None and arp.spoof and r.phase == "start":
                arp.on_flow_start(r.src_mac, r.src_ip, r.dst_mac, r.dst_ip)
            scan = part.scan
            if scan is not None:
                got = scan.on_flow(r)
                if got:
                    out += got
            if part.icmp is not None and r.transport[:4] == "ICMP":
                out += part.icmp.on_flow(r)
        except Exception:
            self._error("flow")
        return out

    def tick(self, now_ts: float) -> list[Alert]:
        """About once a second, with packet time: updates of open incidents, closes quiet ones.

        The current source's incidents age with ``now_ts``.  Other sources (earlier
        files of a replay) keep their own clock: their incidents close once ``now_ts``
        is far past it, and reopen under the same id if late records still come.
        """
        out: list[Alert] = []
        try:
            for part in list(self.parts.values()):
                if part is self.current:
                    if now_ts > part.table.now:
                        part.table.now = now_ts
                    if part.arp is not None:
                        out += part.arp.tick(now_ts)
                    out += part.table.tick(now_ts)
                    if now_ts - part.last_prune >= PRUNE_INTERVAL_S:
                        part.last_prune = now_ts
                        for d in (part.scan, part.icmp, part.dns):
                            if d is not None:
                                d.prune(now_ts)
                else:
                    part.idle_ticks += 1
                    if part.table.open and now_ts - part.max_ts >= PART_BEHIND_S:
                        out += part.table.flush()
                    else:
                        out += part.table.tick(part.max_ts)
            self._count()
        except Exception:
            self._error("tick")
        return out

    def _clock(self, part: _Part) -> float:
        if self.live:
            now = time.time()
            return now if now > part.max_ts else part.max_ts
        return part.max_ts

    def now(self) -> float:
        """The current source's clock: its latest event time in a replay, at least the wall clock live."""
        return self._clock(self.current)

    def flush(self) -> list[Alert]:
        """Close every open incident: call at the end of a replay and at shutdown."""
        out: list[Alert] = []
        try:
            for part in self.parts.values():
                out += part.table.flush()
            self._count()
        except Exception:
            self._error("flush")
        return out

    def reset(self) -> list[Alert]:
        """Close every incident and forget all state."""
        out = self.flush()
        for part in self.parts.values():
            self._account(part)
        self.parts.clear()
        self.current = self._part("")
        return out

    def counters(self) -> dict[str, int]:
        """Counters for CaptureStats/metrics: inputs, errors, incidents opened/updated/closed/suppressed."""
        self._count()
        return dict(self.stats)

    def _account(self, part: _Part) -> None:
        """Keep the counters of a source whose state is dropped."""
        self._gone = getattr(self, "_gone", {})
        for k, v in part.table.stats.items():
            self._gone[k] = self._gone.get(k, 0) + v
        if part.dns is not None:
            self._gone["dns_malformed"] = self._gone.get("dns_malformed", 0) + part.dns.malformed

    def _count(self) -> None:
        gone = getattr(self, "_gone", {})
        st = self.stats
        for k in ("opened", "updates", "closed", "suppressed"):
            st["alerts_" + k] = gone.get(k, 0) + sum(p.table.stats[k] for p in self.parts.values())
        st["alerts_open"] = sum(len(p.table.open) for p in self.parts.values())
        st["dns_malformed"] = gone.get("dns_malformed", 0) + sum(p.dns.malformed for p in self.parts.values()
                                                                 if p.dns is not None)

    def _error(self, where: str) -> None:
        self.stats["errors"] += 1
        now = time.monotonic()
        if now - self._last_error_log >= 10.0:
            self._last_error_log = now
            log.exception("detector error in %s (counted: %d so far)", where, self.stats["errors"])
