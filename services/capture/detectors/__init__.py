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
REWIND_S = 600.0  # packet time going back this far resets all state


class Detectors:
    def __init__(self, settings: DetectSettings, probe: str) -> None:
        wanted = {x.strip() for x in settings.detectors.split(",") if x.strip()}
        unknown = wanted - set(DETECTOR_NAMES)
        if unknown:
            raise ValueError(f"FT_DETECTORS: unknown detector(s) {', '.join(sorted(unknown))}; known: {', '.join(DETECTOR_NAMES)}")
        self.settings = settings
        self.probe = probe
        self.enabled = frozenset(wanted)
        self.stats: dict[str, int] = {"errors": 0, "packets": 0, "flows": 0, "resets": 0}
        self.table = IncidentTable(probe, settings.alert_update_interval_s, settings.alert_expire_s,
                                   settings.alert_max_incidents)
        self._build()
        self._last_error_log = 0.0

    def _build(self) -> None:
        s, wanted, table = self.settings, self.enabled, self.table
        self.arp = ArpDetector(s, table, "arp_flood" in wanted, "arp_spoof" in wanted) \
            if wanted & {"arp_flood", "arp_spoof"} else None
        self.dns = DnsTunnelDetector(s, table) if "dns_tunnel" in wanted else None
        self.scan = ScanDetector(s, table, "port_scan" in wanted, "syn_flood" in wanted) \
            if wanted & {"port_scan", "syn_flood"} else None
        self.icmp = IcmpDetector(s, table) if "icmp_flood" in wanted else None
        self._last_prune = 0.0
        self._max_ts = 0.0

    def reset(self) -> list[Alert]:
        """Close every incident and forget all state (a new, unrelated capture file)."""
        self.stats["resets"] += 1
        out = self.flush()
        self._build()
        return out

    def _clock(self, ts: float) -> list[Alert]:
        # Packet time that jumps far back means the next capture file of a replay: its
        # addresses have nothing to do with the previous file's (same 192.168.1.1, other MAC).
        if ts >= self._max_ts:
            self._max_ts = ts
        elif ts < self._max_ts - REWIND_S:
            out = self.reset()
            self._max_ts = ts
            return out
        return []

    # ------------------------------------------------------------------ inputs
    def on_packet(self, p: PacketEvent) -> list[Alert]:
        """Every ARP packet (kind="arp") and every DNS packet (kind="dns")."""
        self.stats["packets"] += 1
        out = self._clock(p.timestamp)
        try:
            if p.kind == "arp":
                if self.arp is not None:
                    out += self.arp.on_packet(p)
            elif p.kind == "dns":
                if self.dns is not None:
                    out += self.dns.on_packet(p)
        except Exception:  # a detector bug must never stop capture
            self._error("packet")
        return out

    def on_flow(self, r: FlowRecord) -> list[Alert]:
        """Start, update and end records of every flow."""
        self.stats["flows"] += 1
        out = self._clock(r.timestamp)
        if self.scan is not None:
            try:
                out += self.scan.on_flow(r)
            except Exception:
                self._error("flow/scan")
        if self.icmp is not None and r.transport[:4] == "ICMP":
            try:
                out = out + self.icmp.on_flow(r)
            except Exception:
                self._error("flow/icmp")
        return out

    def tick(self, now_ts: float) -> list[Alert]:
        """About once a second, with packet time: updates of open incidents, closes quiet ones."""
        try:
            if now_ts - self._last_prune >= PRUNE_INTERVAL_S:
                self._last_prune = now_ts
                for d in (self.scan, self.icmp, self.dns):
                    if d is not None:
                        d.prune(now_ts)
            return self.table.tick(now_ts)
        except Exception:
            self._error("tick")
            return []

    def flush(self) -> list[Alert]:
        """Close every open incident: call at the end of a capture file and at shutdown."""
        try:
            return self.table.flush()
        except Exception:
            self._error("flush")
            return []

    def counters(self) -> dict[str, int]:
        """Counters for CaptureStats/metrics: inputs, errors, incidents opened/updated/closed/suppressed."""
        c = dict(self.stats)
        c.update({f"alerts_{k}": v for k, v in self.table.stats.items()})
        c["alerts_open"] = len(self.table.open)
        if self.dns is not None:
            c["dns_malformed"] = self.dns.malformed
        return c

    def _error(self, where: str) -> None:
        self.stats["errors"] += 1
        now = time.monotonic()
        if now - self._last_error_log >= 10.0:
            self._last_error_log = now
            log.exception("detector error in %s (counted: %d so far)", where, self.stats["errors"])
