"""port_scan and syn_flood, from capture's flow records."""

from __future__ import annotations

from functools import partial
from itertools import islice

from shared.models import Alert, FlowRecord
from shared.settings import DetectSettings

from .incidents import Incident, IncidentTable, LruDict, SlidingCount

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10


def is_group_address(ip: str) -> bool:
    """Multicast or broadcast destinations are never scan targets."""
    if ":" in ip:
        return ip[:2].lower() == "ff"
    if ip.endswith(".255"):
        return True
    head = ip.split(".", 1)[0]
    return head.isdigit() and int(head) >= 224


#: is_group_address of the destinations seen lately (a scan's or a busy server's repeat); bounded
_GROUP_CACHE: dict[str, bool] = {}
_GROUP_CACHE_MAX = 65536


def _is_group_cached(ip: str) -> bool:
    g = _GROUP_CACHE.get(ip)
    if g is None:
        if len(_GROUP_CACHE) >= _GROUP_CACHE_MAX:
            _GROUP_CACHE.clear()
        g = _GROUP_CACHE[ip] = is_group_address(ip)
    return g


def tcp_failed(r: FlowRecord) -> bool:
    """A TCP flow that never became a conversation: no answer, reset, or connect-and-close."""
    sf, df = r.src2dst_tcp_flags, r.dst2src_tcp_flags
    if not (sf & ACK):
        return True  # src never acknowledged anything: no answer, a RST, or a half-open SYN scan
    if r.dst2src_packets == 0:
        return False  # src ACKed answers we did not see: a one-way mirror, not a failure
    if not (df & SYN and df & ACK):
        return True  # answered with RST (or never accepted)
    return r.src2dst_packets <= 3 and r.dst2src_packets <= 2  # SYN, ACK, RST/FIN: a connect scan


class _Source:
    """What one source probed inside the window: nested maps of last-seen times."""

    __slots__ = ("ports_of", "hosts_of", "fail_ports_of", "fail_hosts_of", "pruned", "last", "oldest")

    def __init__(self, ts: float) -> None:
        self.ports_of: dict[str, dict[int, float]] = {}
        self.hosts_of: dict[int, dict[str, float]] = {}
        self.fail_ports_of: dict[str, dict[int, float]] = {}
        self.fail_hosts_of: dict[int, dict[str, float]] = {}
        self.pruned = ts
        self.last = ts
        self.oldest = ts   # no entry is older than this (a lower bound: entries only get newer or go)

    def prune(self, low: float) -> None:
        if low <= self.oldest:
            return   # nothing is older than low: a walk would delete nothing
        oldest = float("inf")
        for outer in (self.ports_of, self.hosts_of, self.fail_ports_of, self.fail_hosts_of):
            for k in list(outer):
                inner = outer[k]
                for k2 in [k2 for k2, t in inner.items() if t < low]:
                    del inner[k2]
                if inner:
                    m = min(inner.values())
                    if m < oldest:
                        oldest = m
                else:
                    del outer[k]
        self.oldest = oldest

    def targets(self) -> int:
        return sum(len(v) for v in self.ports_of.values())


def _add(outer: dict, k1, k2, ts: float, cap: int) -> tuple[int, bool]:
    """Record k2 under k1 at ts; returns (distinct k2 under k1, k2 was new)."""
    inner = outer.get(k1)
    if inner is None:
        if len(outer) >= cap:
            _halve(outer)
        inner = outer[k1] = {}
    new = k2 not in inner
    if new and len(inner) >= cap:
        _halve(inner)  # far past any threshold: forget the oldest half, keep counting
    inner[k2] = ts
    return len(inner), new


def _halve(d: dict) -> None:
    """Drop the older half of a dict (amortised O(1) per insertion, unlike evicting one at a time)."""
    for k in list(islice(d, len(d) // 2)):
        del d[k]


def _forget(outer: dict, k1, k2) -> None:
    inner = outer.get(k1)
    if inner is not None:
        inner.pop(k2, None)
        if not inner:
            del outer[k1]


class ScanDetector:
    def __init__(self, s: DetectSettings, table: IncidentTable, scan: bool = True, syn: bool = True) -> None:
        self.table = table
        self.scan = scan
        self.syn = syn
        self.window = s.scan_window_s
        self.vp, self.vf = s.scan_vertical_ports, s.scan_vertical_failed_ports
        self.hh, self.hf = s.scan_horizontal_hosts, s.scan_horizontal_failed_hosts
        self.udp_limit = s.scan_udp_unanswered
        self.inner_cap = 2 * max(self.vp, self.vf, self.hh, self.hf, self.udp_limit, 64)
        self.sources: LruDict = LruDict(s.detect_max_tracked)
        self.syn_limit = s.syn_flood_half_open
        self.syn_window = s.syn_flood_window_s
        self.targets: LruDict = LruDict(s.detect_max_tracked)  # (dst_ip, dst_port) -> [SlidingCount, sources set]
        self.syn_counted: LruDict = LruDict(max(s.detect_max_tracked, 65536))  # half-open flow ids counted

    def on_flow(self, r: FlowRecord) -> list[Alert]:
        t = r.transport
        if t == "TCP":
            out: list[Alert] = []
            sf = r.src2dst_tcp_flags
            if sf & ACK and self.syn and r.phase != "start" and r.flow_id in self.syn_counted:
                self._syn_completed(r)  # counted half-open from its hot record, then the handshake completed
            if not (sf & SYN) and sf & ACK:
                # picked up mid-stream: not initiated by src as far as we saw
                if self.scan and r.phase != "start":
                    self._succeeded(r)  # drop what its start record provisionally counted
                return out
            if not sf and r.src_port < 1024 <= r.dst_port:
                return out  # no flags known yet (a start record) and it looks like a server's side
            end = r.phase == "end"
            if end and not r.src2dst_packets:
                if self.scan:
                    self._succeeded(r)  # we saw only the answers (a one-way mirror): nothing to judge
                return out
            if self.scan:
                if end and not tcp_failed(r):
                    self._succeeded(r)
                else:
                    self._scan(r, end, out)
            if self.syn and r.phase != "start" and sf & SYN and not (sf & ACK):
                self._syn(r, out)  # half-open: capture's hot record of it (or its end, if none came)
            return out
        if t == "UDP" and self.scan and r.phase == "end" and r.dst2src_packets == 0:
            if r.src_port < 1024 <= r.dst_port:
                return []  # looks like a server's answer whose question we missed
            out = []
            self._scan(r, True, out, udp=True)
            return out
        return []

    # ------------------------------------------------------------------ port scan
    def _succeeded(self, r: FlowRecord) -> None:
        """A conversation, not a probe: it no longer counts as an attempt."""
        st = self.sources.get((r.src_ip, False))
        if st is not None:
            _forget(st.ports_of, r.dst_ip, r.dst_port)
            _forget(st.hosts_of, r.dst_port, r.dst_ip)

    def _over(self, udp: bool, v: int, vf: int, h: int, hf: int) -> bool:
        """Ports of one target (v, failed vf) or targets on one port (h, failed hf) over a threshold."""
        if udp:
            return vf >= self.udp_limit or hf >= self.udp_limit
        return v >= self.vp or vf >= self.vf or h >= self.hh or hf >= self.hf

    def _scan(self, r: FlowRecord, failed: bool, out: list[Alert], udp: bool = False) -> None:
        src, dst, port = r.src_ip, r.dst_ip, r.dst_port
        if not src or not dst or _is_group_cached(dst):
            return
        ts = r.first_seen
        skey = (src, udp)
        sources = self.sources
        st = sources.get(skey)
        if st is None:
            st = sources.put(skey, _Source(ts))
        else:
            sources.move_to_end(skey)     # LruDict.touch
        if ts > st.last:
            st.last = ts
        if ts < st.oldest:
            st.oldest = ts
        if st.last - st.pruned >= self.window / 4:
            st.prune(st.last - self.window)
            st.pruned = st.last
        cap = self.inner_cap
        v, new_a = _add(st.ports_of, dst, port, ts, cap)
        h, _ = _add(st.hosts_of, port, dst, ts, cap)
        vf = hf = 0
        new_f = False
        if failed:
            vf, new_f = _add(st.fail_ports_of, dst, port, ts, cap)
            hf, _ = _add(st.fail_hosts_of, port, dst, ts, cap)
        table = self.table
        key = ("src", src)
        inc = table.get("port_scan", key)
        if inc is not None:
            if new_a or new_f:
                table.hit("port_scan", key, max(ts, r.last_seen), 1 if new_a else 0)
                inc.flow_id = r.flow_id
            return
        if not self._over(udp, v, vf, h, hf):
            return
        # records arrive out of first_seen order: recount inside the window before alerting
        st.prune(st.last - self.window)
        st.pruned = st.last
        v, vf = len(st.ports_of.get(dst, ())), len(st.fail_ports_of.get(dst, ()))
        h, hf = len(st.hosts_of.get(port, ())), len(st.fail_hosts_of.get(port, ()))
        if not self._over(udp, v, vf, h, hf):
            return
        inc, new = table.hit("port_scan", key, max(ts, r.last_seen), st.targets())
        if inc is None:
            return
        inc.first_seen = min(min(x.values()) for x in st.ports_of.values())
        inc.severity = "medium"
        inc.src_ip = src
        inc.transport = r.transport
        inc.flow_id = r.flow_id
        inc.started_at = inc.first_seen
        inc.rate_unit = "targets/s"
        inc.note(source=src, target=dst, n=0)
        inc.refresh = partial(self._describe, inc, st)
        if new:
            out.append(table.alert(inc, "open"))

    @staticmethod
    def _describe(inc: Incident, st: _Source) -> None:
        if not st.ports_of or not st.hosts_of:
            return  # pruned since: keep the last description
        inc.targets = {h: len(p) for h, p in islice(st.ports_of.items(), 4096)}
        top_host, ports = max(st.ports_of.items(), key=lambda kv: len(kv[1]))
        top_port, hosts = max(st.hosts_of.items(), key=lambda kv: len(kv[1]))
        failed_ports = len(st.fail_ports_of.get(top_host, ()))
        failed_hosts = len(st.fail_hosts_of.get(top_port, ()))
        vertical = len(ports) >= len(hosts)
        if vertical:
            inc.dst_ip, inc.dst_port = top_host, 0
            inc.message = (f"port scan (vertical) from {inc.src_ip}: {len(ports)} ports of {top_host} probed "
                           f"({failed_ports} failed/reset) within the window; {inc.count} targets in all")
        else:
            inc.dst_ip, inc.dst_port = "", top_port
            inc.message = (f"port scan (horizontal) from {inc.src_ip}: {len(hosts)} hosts probed on "
                           f"{inc.transport} port {top_port} ({failed_hosts} failed/reset) within the window; "
                           f"{inc.count} targets in all")
        inc.details = {
            "kind": "vertical" if vertical else "horizontal",
            "hosts": str(len(st.ports_of)),
            "ports_on_top_host": str(len(ports)),
            "failed_ports_on_top_host": str(failed_ports),
            "top_host": top_host,
            "hosts_on_top_port": str(len(hosts)),
            "failed_hosts_on_top_port": str(failed_hosts),
            "top_port": str(top_port),
        }

    # ------------------------------------------------------------------ SYN flood
    def _syn(self, r: FlowRecord, out: list[Alert]) -> None:
        dst = r.dst_ip
        if not dst:
            return
        # each half-open flow counts once: from capture's hot record, else from its end record
        if r.phase == "end":
            if self.syn_counted.pop(r.flow_id, None) is not None:
                return
        elif r.flow_id in self.syn_counted:
            return
        else:
            self.syn_counted.put(r.flow_id, True)
        tkey = (dst, r.dst_port)
        entry = self.targets.get(tkey)
        if entry is None:
            entry = self.targets.put(tkey, [SlidingCount(self.syn_window), set(), r.first_seen])
        else:
            self.targets.touch(tkey)
            if r.first_seen > entry[2]:
                entry[2] = r.first_seen   # records come in batches, not in time order: the latest SYN seen
        n = entry[0].add(r.first_seen)
        srcs: set = entry[1]
        if len(srcs) < 4096:
            srcs.add(r.src_ip)
        table = self.table
        key = ("dst", dst, r.dst_port)
        inc = table.get("syn_flood", key)
        new = False
        # evidence time: the SYN's (a half-open flow's later packets are the victim's retransmissions)
        if inc is not None:
            table.hit("syn_flood", key, r.first_seen)
        elif n >= self.syn_limit:
            inc, new = table.hit("syn_flood", key, r.first_seen, int(n))
            if inc is None:
                return
            inc.severity = "high"
            inc.transport = "TCP"
            inc.dst_ip, inc.dst_port = dst, r.dst_port
            inc.flow_id = r.flow_id
            inc.rate_unit = "flows/s"
            inc.started_at = inc.first_seen = max(entry[0].since, r.first_seen - self.syn_window)
            inc.last_seen = max(inc.last_seen, entry[2])
        else:
            return
        if inc.first_seen > r.first_seen:
            inc.first_seen = inc.started_at = r.first_seen
        inc.note(source=r.src_ip, target=f"{dst}:{r.dst_port}")
        if new:
            inc.refresh = partial(self._describe_syn, inc, srcs, r.src_ip)
            out.append(table.alert(inc, "open"))

    def _syn_completed(self, r: FlowRecord) -> None:
        """A slow handshake (SYN-ACK or ACK later than capture's hot check): it no longer counts."""
        self.syn_counted.pop(r.flow_id, None)
        entry = self.targets.get((r.dst_ip, r.dst_port))
        if entry is not None:
            entry[0].add(r.first_seen, -1.0)

    def _describe_syn(self, inc: Incident, srcs: set, first_src: str) -> None:
        nsrc = len(srcs)
        inc.src_ip = first_src if nsrc == 1 else ""
        rate = inc.rate()
        inc.details = {"sources": str(nsrc) if nsrc < 4096 else "4096+", "window_s": f"{self.syn_window:g}",
                       "flows_per_s": f"{rate:.0f}"}
        inc.message = (f"SYN flood against {inc.dst_ip} port {inc.dst_port}: {inc.count} half-open connections "
                       f"({rate:.0f}/s measured) from {inc.details['sources']} source address(es)")

    def prune(self, now: float) -> None:
        """Forget sources idle for a whole window (called from tick)."""
        low = now - self.window
        for k in [k for k, st in self.sources.items() if st.last < low]:
            del self.sources[k]
        low = now - self.syn_window * 2
        for k in [k for k, e in self.targets.items() if (e[0].latest + 1) * e[0].width < low]:
            del self.targets[k]
