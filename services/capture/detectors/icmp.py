"""icmp_flood, from capture's ICMP flow records (start, update, end)."""

from __future__ import annotations

from functools import partial

from shared.models import Alert, FlowRecord
from shared.settings import DetectSettings

from .incidents import Incident, IncidentTable, LruDict, SlidingCount

_ICMP = ("ICMP", "ICMPV6")
FAST_SPAN_S = 0.4


class IcmpDetector:
    """ICMP packets/s towards one address, summed over every flow that reaches it.

    Each record's new packets (since the flow's previous record) are spread
    over the time they took, per receiving address: src2dst packets go to dst.
    """

    def __init__(self, s: DetectSettings, table: IncidentTable) -> None:
        self.table = table
        self.window = s.icmp_flood_window_s
        self.pps = s.icmp_flood_pps
        self.limit = s.icmp_flood_pps * s.icmp_flood_window_s
        self.flows: LruDict = LruDict(s.detect_max_tracked)    # flow_id -> (packets, last_seen) at its previous record
        self.targets: LruDict = LruDict(s.detect_max_tracked)  # dst_ip -> [SlidingCount, sources set]

    def on_flow(self, r: FlowRecord) -> list[Alert]:
        if r.transport not in _ICMP or not r.dst_ip:
            return []
        # records of one flow may come out of order (hot records on core NATS, the others through
        # JetStream): only packets beyond the most the flow has reported count
        prev = self.flows.pop(r.flow_id, None) if r.phase == "end" else self.flows.get(r.flow_id)
        if prev is None:
            n, t0 = r.src2dst_packets, r.first_seen
        else:
            n, t0 = r.src2dst_packets - prev[0], prev[1]
        if r.phase != "end" and n > 0:
            self.flows.put(r.flow_id, (r.src2dst_packets, r.last_seen))
        if n <= 0:
            return []
        dst = r.dst_ip
        entry = self.targets.get(dst)
        if entry is None:
            entry = self.targets.put(dst, [SlidingCount(self.window), set()])
        else:
            self.targets.touch(dst)
        total = entry[0].add_span(t0, r.last_seen, n)
        if len(entry[1]) < 4096:
            entry[1].add(r.src_ip)
        table = self.table
        key = ("dst", dst)
        inc = table.get("icmp_flood", key)
        new = False
        if inc is not None:
            table.hit("icmp_flood", key, r.last_seen, n)
            if r.first_seen < inc.started_at:
                inc.started_at = r.first_seen
        elif total >= self.limit or self._fast(n, t0, r.last_seen):
            inc, new = table.hit("icmp_flood", key, r.last_seen, max(int(total), n))
            if inc is None:
                return []
            inc.started_at = inc.first_seen = max(t0, r.last_seen - self.window)
            inc.severity = "medium"
            inc.transport = r.transport
            inc.dst_ip = dst
            inc.flow_id = r.flow_id
            inc.rate_unit = "packets/s"
            inc.refresh = partial(self._describe, inc, entry)
            inc.note(target=dst, n=0)
        else:
            return []
        inc.note(source=r.src_ip, target=dst, n=n)
        return [table.alert(inc, "open")] if new else []

    def _fast(self, n: int, t0: float, t1: float) -> bool:
        """One record's packets show the rate already: over half a threshold-second of packets, sent
        at least at the threshold rate for at least FAST_SPAN_S (capture's hot records come every 0.5 s)."""
        span = t1 - t0
        return span >= FAST_SPAN_S and n >= self.pps * FAST_SPAN_S and n / span >= self.pps

    def _describe(self, inc: Incident, entry: list) -> None:
        nsrc = len(entry[1])
        inc.src_ip = next(iter(entry[1])) if nsrc == 1 else ""
        rate = inc.rate()
        inc.details = {"sources": str(nsrc) if nsrc < 4096 else "4096+", "pps": f"{rate:.0f}"}
        inc.message = (f"ICMP flood against {inc.dst_ip}: {rate:.0f} packets/s measured, {inc.count} packets "
                       f"since it started, from {nsrc} source address(es) (threshold {self.pps:g}/s)")

    def prune(self, now: float) -> None:
        low = now - 2 * self.window
        for k in [k for k, e in self.targets.items() if e[0].latest * e[0].width < low]:
            del self.targets[k]
