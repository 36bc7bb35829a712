"""arp_flood and arp_spoof, from capture's ARP PacketEvents."""

from __future__ import annotations

from shared.models import Alert, PacketEvent
from shared.settings import DetectSettings

from .incidents import IncidentTable, LruDict, SlidingCount, clean

_NO_MAC = ("", "00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff")
_NO_IP = ("", "0.0.0.0")
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

    def on_packet(self, p: PacketEvent) -> list[Alert]:
        a = p.arp
        if a is None:
            return []
        out: list[Alert] = []
        ts = p.timestamp
        if self.flood:
            self._flood(p, ts, out)
        if self.spoof:
            self._spoof(p, ts, out)
        return out

    # ------------------------------------------------------------------ flood
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
        elif n >= self.mac_limit:
            inc, new = table.hit("arp_flood", key, ts, int(n))
            if inc is not None:
                explained = True
                self.explained.add(ts, n - 1)
                inc.severity = "high"
                inc.src_ip = a.sender_ip if a.sender_ip not in _NO_IP else ""  # type: ignore[union-attr]
                inc.details = {"scope": "mac", "src_mac": clean(mac, 17)}
                rate = n / self.window
                inc.message = f"ARP flood from {clean(mac, 17)}: {rate:.0f} ARP packets/s (threshold {self.mac_limit / self.window:g}/s)"
                if new:
                    out.append(table.alert(inc, "open"))
        if explained:
            self.explained.add(ts)
        total = self.total.add(ts)
        unexplained = total - self.explained.count(ts)
        tinc = table.get("arp_flood", "total")
        if tinc is not None:
            if not explained and unexplained >= self.total_limit / 2:
                table.hit("arp_flood", "total", ts)
        elif unexplained >= self.total_limit:
            tinc, new = table.hit("arp_flood", "total", ts, int(unexplained))
            if tinc is not None and new:
                tinc.severity = "high"
                tinc.details = {"scope": "total", "macs": str(len(self.per_mac))}
                tinc.message = (f"ARP flood on the segment: {unexplained / self.window:.0f} ARP packets/s from many MACs "
                                f"(threshold {self.total_limit / self.window:g}/s)")
                out.append(table.alert(tinc, "open"))

    # ------------------------------------------------------------------ spoof
    def _spoof(self, p: PacketEvent, ts: float, out: list[Alert]) -> None:
        a = p.arp
        sip, smac = a.sender_ip, a.sender_mac  # type: ignore[union-attr]
        if sip in _NO_IP or smac in _NO_MAC:
            return
        table = self.table
        gratuitous = sip == a.target_ip or (a.operation == 2 and p.dst_mac == "ff:ff:ff:ff:ff:ff")  # type: ignore[union-attr]
        if gratuitous:
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
                    inc.details = {"kind": "gratuitous_storm", "src_mac": clean(smac, 17)}
                    inc.message = (f"gratuitous ARP storm from {clean(smac, 17)} claiming {sip}: "
                                   f"{int(n)} in {self.garp_window:g} s")
                    out.append(table.alert(inc, "open"))

        key = ("ip", sip)
        inc = table.get("arp_spoof", key)
        if inc is not None and smac != inc.details.get("old_mac"):
            table.hit("arp_spoof", key, ts)  # the impostor keeps claiming the address
        b = self.bindings.get(sip)
        if b is None:
            self.bindings.put(sip, [smac, ts])
        else:
            self.bindings.touch(sip)
            old_mac, old_ts = b
            if old_mac != smac and inc is None and abs(ts - old_ts) <= self.recent_s:
                inc, new = table.hit("arp_spoof", key, ts)
                if inc is not None and new:
                    gateway = self.is_gateway(old_mac)
                    inc.severity = "critical" if sip in self.protected or gateway else "high"
                    inc.src_ip = sip
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
                                   f"(was {old_mac}, seen {abs(ts - old_ts):.0f} s earlier)")
                    out.append(table.alert(inc, "open"))
            b[0] = smac
            b[1] = ts
        if smac not in self.claims:
            self.claims.put(smac, sip)  # the first address a MAC claims: the attacker's own, usually

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
