"""arp_flood and arp_spoof, from capture's ARP PacketEvents."""

from __future__ import annotations

from functools import partial

from shared.models import Alert, PacketEvent
from shared.settings import DetectSettings

from .incidents import Incident, IncidentTable, LruDict, SlidingCount, clean

_NO_MAC = ("", "00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff")
_NO_IP = ("", "0.0.0.0")
HOLD_S = 0.5  # a binding change waits this long for a flood to explain it before it is an incident
RECLAIM_GRACE_S = 5.0  # the owner claimed its address back and the impostor stayed quiet this long: closed
FAST_SPAN_S = 0.6  # a flood also fires when its last FAST_SPAN_S alone reach the threshold rate
BURST_GAP_S = 0.25
GATEWAY_IPS = 8  # a MAC seen with this many addresses in flows is a router


class ArpDetector:
    """ARP packets/s per source MAC and overall; IP-to-MAC binding changes; gratuitous storms."""

    def __init__(self, s: DetectSettings, table: IncidentTable, flood: bool = True, spoof: bool = True) -> None:
        self.table = table
        self.flood = flood
        self.spoof = spoof
        self.window = s.arp_flood_window_s
        self.mac_limit = s.arp_flood_pps * s.arp_flood_window_s
        self.total_limit = s.arp_flood_total_pps * s.arp_flood_window_s
        self.recent_s = s.arp_binding_recent_s
        self.garp_max = s.arp_gratuitous_max
        self.garp_window = s.arp_gratuitous_window_s
        self.protected = frozenset(s.arp_protected_ips)
        cap = s.detect_max_tracked
        self.per_mac: LruDict = LruDict(cap)        # mac -> SlidingCount
        self.total = SlidingCount(self.window)
        self.explained = SlidingCount(self.window)  # packets of MACs already in a flood incident
        self.bindings: LruDict = LruDict(cap)       # ip -> [mac, last_seen]
        self.claims: LruDict = LruDict(cap)         # mac -> last ip it claimed
        self.behind: LruDict = LruDict(cap)         # mac -> set of IPs seen behind it in flows (a router has many)
        self.garp: LruDict = LruDict(cap)           # mac -> SlidingCount of gratuitous ARPs
        self.reclaimed: dict[str, float] = {}      # ip -> clock when its owner claimed it during an incident
        self.pending: list[tuple] = []
        # the segment's ARP bursts: a gap of BURST_GAP_S (or 10 packet intervals at the threshold rate,
        # if longer) starts a new one; a sender's pacing on a busy host has gaps of tens of ms
        self.burst_gap = max(BURST_GAP_S, 10 * self.window / self.total_limit)
        self.burst_start = self.last_ts = 0.0              # binding changes held while the ARP rate looks like a flood

    def on_packet(self, p: PacketEvent) -> list[Alert]:
        a = p.arp
        if a is None:
            return []
        out: list[Alert] = []
        ts = p.timestamp
        if self.pending:
            self._settle(ts, out)   # what was due before this packet
        if self.flood:
            self._flood(p, ts, out)
        if self.spoof:
            self._spoof(p, ts, out)
            if self.pending:
                self._settle(ts, out)
        return out

    def tick(self, now: float) -> list[Alert]:
        """Binding changes held back while the ARP rate looked like a flood, and no flood opened."""
        out: list[Alert] = []
        if self.pending:
            self._settle(now, out)
        if self.reclaimed:
            for ip, t in list(self.reclaimed.items()):
                if now - t >= RECLAIM_GRACE_S:
                    del self.reclaimed[ip]
                    closed = self.table.close("arp_spoof", ("ip", ip), "owner reclaimed its address")
                    if closed is not None:
                        out.append(closed)
        return out

    # ------------------------------------------------------------------ flood
    def _flooding(self, mac: str, ts: float) -> Incident | None:
        """The ongoing flood (evidence within its window) that explains a packet from ``mac``:
        the MAC's own first, else the segment's."""
        t = self.table
        for inc in (t.get("arp_flood", ("mac", mac)), t.get("arp_flood", "total")):
            if inc is not None and ts - inc.last_seen <= self.window:
                return inc
        return None

    def _surge(self, ts: float) -> bool:
        """ARP traffic at a quarter of the flood threshold: new claims are not trusted as bindings yet."""
        return self.total.count(ts) >= self.total_limit / 4

    def _flood(self, p: PacketEvent, ts: float, out: list[Alert]) -> None:
        a = p.arp
        mac = p.src_mac or a.sender_mac  # type: ignore[union-attr]
        c = self.per_mac.get(mac)
        if c is None:
            c = self.per_mac.put(mac, SlidingCount(self.window))
        n = c.add(ts)
        table = self.table
        key = ("mac", mac)
        inc = table.get("arp_flood", key)
        explained = False
        if inc is not None:
            if n >= self.mac_limit / 2:  # hysteresis: keeps counting while the rate stays high
                table.hit("arp_flood", key, ts)
                explained = True
                self._note(inc, p)
        elif n >= self.mac_limit or c.recent(ts, FAST_SPAN_S) >= self.mac_limit / self.window * FAST_SPAN_S:
            inc, new = table.hit("arp_flood", key, ts, int(n))
            if inc is not None:
                explained = True
                self.explained.add(ts, n - 1)
                inc.severity = "high"
                inc.src_ip = a.sender_ip if a.sender_ip not in _NO_IP else ""  # type: ignore[union-attr]
                inc.details = {"scope": "mac", "src_mac": clean(mac, 17)}
                inc.started_at = inc.first_seen = max(c.since, ts - self.window)
                inc.rate_unit = "packets/s"
                inc.refresh = partial(self._describe, inc)
                self._note(inc, p)
                if new:
                    out.append(table.alert(inc, "open"))
        if explained:
            self.explained.add(ts)
        if ts - self.last_ts > self.burst_gap:
            self.burst_start = ts   # a quiet gap: what follows is a new burst (the flood's start)
        if ts > self.last_ts:
            self.last_ts = ts
        total = self.total.add(ts)
        unexplained = total - self.explained.count(ts)
        tinc = table.get("arp_flood", "total")
        if tinc is not None:
            if not explained and unexplained >= self.total_limit / 2:
                table.hit("arp_flood", "total", ts)
                self._note(tinc, p)
        elif unexplained >= self.total_limit or (
                self.total.recent(ts, FAST_SPAN_S) - self.explained.recent(ts, FAST_SPAN_S)
                >= self.total_limit / self.window * FAST_SPAN_S):
            tinc, new = table.hit("arp_flood", "total", ts, int(unexplained))
            if tinc is not None and new:
                tinc.severity = "high"
                tinc.started_at = tinc.first_seen = max(self.burst_start, ts - self.window)
                tinc.rate_unit = "packets/s"
                tinc.details = {"scope": "total"}
                tinc.refresh = partial(self._describe, tinc)
                self._note(tinc, p)
                out.append(table.alert(tinc, "open"))

    def _note(self, inc: Incident, p: PacketEvent) -> None:
        """Sources, targets and signs of spoofing in a flood's packets."""
        a = p.arp
        mac = p.src_mac or a.sender_mac  # type: ignore[union-attr]
        inc.note(source=mac, target=a.target_ip)  # type: ignore[union-attr]
        nt = inc.notes
        if p.src_mac and a.sender_mac != p.src_mac:  # type: ignore[union-attr]
            nt["eth_src_not_sender_mac"] = str(int(nt.get("eth_src_not_sender_mac", "0")) + 1)
        if a.sender_ip == a.target_ip and a.sender_ip not in _NO_IP:  # type: ignore[union-attr]
            nt["gratuitous"] = str(int(nt.get("gratuitous", "0")) + 1)

    def _describe(self, inc: Incident) -> None:
        rate = inc.rate()
        low = inc.last_seen - self.window
        macs = max(len(inc.sources), sum(1 for c in self.per_mac.values() if (c.latest + 1) * c.width >= low))
        inc.details["macs"] = str(macs) if macs < 4096 else "4096+"
        inc.details["pps"] = f"{rate:.0f}"
        if inc.details.get("scope") == "mac":
            inc.message = (f"ARP flood from {inc.details['src_mac']}: {rate:.0f} ARP packets/s measured, {inc.count} "
                           f"packets (threshold {self.mac_limit / self.window:g}/s)")
        else:
            inc.message = (f"ARP flood on the segment: {rate:.0f} ARP packets/s measured, {inc.count} packets from "
                           f"{inc.details['macs']} MACs (threshold {self.total_limit / self.window:g}/s)")
        nt = inc.notes
        spoofing = [f"{nt[k]} {label}" for k, label in (("binding_changes", "claims of addresses bound to other MACs"),
                                                         ("gratuitous", "gratuitous"),
                                                         ("eth_src_not_sender_mac", "with a forged sender MAC"))
                    if nt.get(k)]
        if spoofing:
            nt["spoofing"] = "true"
            inc.message += "; spoofing: " + ", ".join(spoofing)

    # ------------------------------------------------------------------ spoof
    def _spoof(self, p: PacketEvent, ts: float, out: list[Alert]) -> None:
        a = p.arp
        sip, smac = a.sender_ip, a.sender_mac  # type: ignore[union-attr]
        if sip in _NO_IP or smac in _NO_MAC:
            return
        table = self.table
        flood = self._flooding(p.src_mac or smac, ts)
        gratuitous = sip == a.target_ip or (a.operation == 2 and p.dst_mac == "ff:ff:ff:ff:ff:ff")  # type: ignore[union-attr]
        if gratuitous and flood is None:
            g = self.garp.get(smac)
            if g is None:
                g = self.garp.put(smac, SlidingCount(self.garp_window))
            n = g.add(ts)
            key = ("garp", smac)
            if table.get("arp_spoof", key) is not None:
                table.hit("arp_spoof", key, ts)
            elif n >= self.garp_max:
                inc, new = table.hit("arp_spoof", key, ts, int(n))
                if inc is not None and new:
                    inc.severity = "high"
                    inc.src_ip = sip
                    inc.started_at = inc.first_seen = max(g.since, ts - self.garp_window)
                    inc.rate_unit = "packets/s"
                    inc.note(source=smac, target=sip, n=int(n))
                    inc.details = {"kind": "gratuitous_storm", "src_mac": clean(smac, 17)}
                    inc.message = (f"gratuitous ARP storm from {clean(smac, 17)} claiming {sip}: "
                                   f"{int(n)} in {self.garp_window:g} s")
                    out.append(table.alert(inc, "open"))

        key = ("ip", sip)
        inc = table.get("arp_spoof", key)
        b = self.bindings.get(sip)
        if b is None:
            if flood is None and not self._surge(ts):  # a flood's claims are not bindings
                self.bindings.put(sip, [smac, ts])
        else:
            self.bindings.touch(sip)
            owner, owner_ts = b
            if smac == owner:
                b[1] = ts
                if inc is not None and sip not in self.reclaimed:
                    # the real owner claims its address again: the incident ends, unless the impostor
                    # keeps claiming too (arpspoof repeats every 2 s) within RECLAIM_GRACE_S
                    self.reclaimed[sip] = table.now
            elif abs(ts - owner_ts) > self.recent_s and inc is None:
                b[0], b[1] = smac, ts  # the old owner has been silent for long: a new binding
            elif inc is not None:
                table.hit("arp_spoof", key, ts)  # the impostor keeps claiming the address
                inc.note(source=smac, target=sip)
                self.reclaimed.pop(sip, None)
            elif flood is not None:
                self._fold(flood, sip, owner, smac)
            elif len(self.pending) < 1024:
                # held HOLD_S: the first packets of a flood from random MACs look like spoofing too
                self.pending.append((ts, p, owner, owner_ts))
            else:
                self._open_spoof(p, ts, owner, owner_ts, out)
        if smac not in self.claims:
            self.claims.put(smac, sip)  # the first address a MAC claims: the attacker's own, usually

    def _fold(self, flood: Incident, sip: str, owner: str, smac: str) -> None:
        """A binding change inside a flood: noted in the flood's incident, not an incident of its own."""
        nt = flood.notes
        nt["binding_changes"] = str(int(nt.get("binding_changes", "0")) + 1)
        if "claimed_example" not in nt:
            nt["claimed_example"] = f"{sip} bound to {owner} claimed by {smac}"[:200]
        if sip in self.protected:
            nt["protected_claimed"] = sip
            flood.severity = "critical"

    def _settle(self, now: float, out: list[Alert]) -> None:
        """Held binding changes: into the flood that opened meanwhile, or incidents of their own after HOLD_S."""
        pending = self.pending
        total = self._flooding("", now)
        if total is None and now - pending[0][0] < HOLD_S:
            return  # the oldest is not due, and no flood to fold them into
        keep = []
        for item in pending:
            ts, p, owner, owner_ts = item
            flood = total or self._flooding(p.src_mac or p.arp.sender_mac, now)  # type: ignore[union-attr]
            if flood is not None:
                self._fold(flood, p.arp.sender_ip, owner, p.arp.sender_mac)  # type: ignore[union-attr]
            elif now - ts >= HOLD_S:
                sip = p.arp.sender_ip  # type: ignore[union-attr]
                inc = self.table.get("arp_spoof", ("ip", sip))
                if inc is None:
                    self._open_spoof(p, ts, owner, owner_ts, out)
                    b = self.bindings.get(sip)
                    if b is not None and b[0] == owner and b[1] > ts:
                        self.reclaimed.setdefault(sip, self.table.now)  # the owner claimed it back meanwhile
                else:
                    self.table.hit("arp_spoof", ("ip", sip), ts)
            else:
                keep.append(item)
        self.pending = keep

    def _open_spoof(self, p: PacketEvent, ts: float, old_mac: str, old_ts: float, out: list[Alert]) -> None:
        a = p.arp
        sip, smac = a.sender_ip, a.sender_mac  # type: ignore[union-attr]
        inc, new = self.table.hit("arp_spoof", ("ip", sip), ts)
        if inc is None or not new:
            return
        gateway = self.is_gateway(old_mac)
        inc.severity = "critical" if sip in self.protected or gateway else "high"
        inc.src_ip = sip
        inc.started_at = inc.first_seen = ts
        inc.rate_unit = "packets/s"
        inc.note(source=smac, target=sip)
        d = {"kind": "binding_change", "ip": sip, "old_mac": old_mac, "new_mac": smac,
             "old_binding_age_s": f"{abs(ts - old_ts):.1f}", "operation": str(a.operation)}  # type: ignore[union-attr]
        if p.src_mac and p.src_mac != smac:
            d["eth_src_mac"] = p.src_mac
        other = self.claims.get(smac)
        if other and other != sip:
            d["new_mac_also_claims"] = other
        if sip in self.protected:
            d["protected"] = "true"
        if gateway:
            d["gateway"] = "true"  # the old MAC fronts many addresses: a router
        inc.details = d
        inc.message = (f"ARP spoofing: {sip}{' (gateway)' if gateway else ''} is now claimed by {smac} "
                       f"(bound to {old_mac}, seen {abs(ts - old_ts):.0f} s earlier)")
        out.append(self.table.alert(inc, "open"))

    # ------------------------------------------------------------------ gateways
    def on_flow_start(self, src_mac: str, src_ip: str, dst_mac: str, dst_ip: str) -> None:
        """Learn which MACs front many addresses (routers), from flows' first frames."""
        for mac, ip in ((dst_mac, dst_ip), (src_mac, src_ip)):
            if not mac or not ip or ":" in ip:
                continue  # IPv4 only: a host's IPv6 privacy addresses would make it look like a router
            ips = self.behind.get(mac)
            if ips is None:
                self.behind.put(mac, {ip})
            elif len(ips) < GATEWAY_IPS:
                ips.add(ip)

    def is_gateway(self, mac: str) -> bool:
        return len(self.behind.get(mac, ())) >= GATEWAY_IPS
