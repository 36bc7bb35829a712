"""block: passive blocking from a mirror port — inject, then judge the race.

Inputs
- Verdicts (``ft.verdict.<probe>``): classify's answer about a flow, carrying
  the trigger packet's context copied from the sample (MACs, VLAN tags, the
  next sequence number and the latest ack of each direction, capture time).
  TCP flows that match a ``reset``/``http_block`` rule are reset (or answered
  with a block page) at once.
- DNS packet events (``ft.packet.<probe>``, ``kind == "dns"``): every query is
  matched against ``dns_block`` rules and answered with a forged response.
- Rules: a JetStream KV bucket watched live (``services.block.rules``).  When a
  rule appears, flows already classified (a bounded cache of recent verdicts)
  that match it are reset at their next packet.
- Samples, verdicts and DNS packet events are subscribed only while the rules
  need them (``Blocker.wanted_inputs``), re-checked at every rule change.
- Its own pypcap handle on the interface (every frame, inbound only, so it
  never sees its own frames), decoded by capture's decoder so that a flow inside
  VLAN/QinQ, MPLS, PPPoE, GRE, VXLAN, GTP-U or IP-in-IP is seen as its inner
  flow: it acts first on HTTP Host / TLS SNI / DNS names, remembers each flow
  direction's encapsulation (injected frames are wrapped in it, see
  ``services.block.encap``) and watches blocked flows after the injection.

Parts: ``guard`` (allowlist, own addresses, rate limit), ``tcp_race`` (inject
into a flow, judge the race), ``dns_race`` (forge answers, judge the race),
``stats`` (per-rule counts in the KV bucket and /metrics), ``state`` (what is
remembered of flows); this module holds the paths that decide and ``main``.

Race outcome (``BlockAction.outcome``)
- ``lost`` when the server's real data was captured before the injection (it
  reached the client first), or when the client later acknowledges real server
  data / keeps sending: the connection survived.  Block then tries again with
  the latest observed sequence numbers (up to ``max_attempts``).
- ``won`` when the client shows it took the injected frames (a RST from its
  closed socket, or its ACK of the block page and FIN) or nothing contradicts
  the injection within ``race_window_s``.
- DNS: ``lost`` when the real answer was captured before the forged one was
  sent, else ``won``.
- ``dry_run`` (FT_DRY_RUN, the default, or no FT_IFACE), ``rate_limited``,
  ``allowlisted``, ``not_possible`` (UDP flows other than DNS, ``drop`` from a
  mirror port, targets that are the probe itself, missing sequence numbers, an
  encapsulation that cannot carry a frame to an endpoint — with the reason).
- Every matching flow gets one: a new connection on the ports of an earlier
  one (a client SYN) starts afresh, a repeated DNS query is answered again.

Safety: dry run unless FT_DRY_RUN=false (``flowtarget run --enforce``), stated
in the startup line; a token-bucket injection rate limit (FT_RATE_LIMIT_PER_S,
FT_RATE_BURST); an allowlist of networks and names (FT_ALLOWLIST) and the
probe's own addresses (FT_PROBE_ADDRESSES), parsed at start and compared as ip
objects; no injection toward the probe's own addresses or MAC.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from collections import OrderedDict, deque
from typing import Any

from shared.bus import Bus, RateLimitedLog, safe_text
from shared.models import Alert, BlockAction, FlowSample, PacketEvent, Verdict
from shared.settings import BlockSettings
from shared.subjects import subject

from services.block import encap as enc
from services.block import inject as inj
from services.block.fastpath import client_name
from services.block.dns_race import DnsRace, DnsWatch
from services.block.guard import AddressSet, Allowlist, TokenBucket
from services.block.rules import ENFORCING, MatchContext, Rule, RuleSet, RuleWatcher
from services.block.state import (
    FLOW_CACHE_MAX, FLOW_CACHE_TTL_S, HANDLED_MAX, RECENT_S, TH_ACK, TH_FIN, TH_RST, TH_SYN,
    FlowInfo, _ip_bytes, flow_keys,
)
from services.block.stats import RuleStats, open_stats_bucket
from services.block.tcp_race import TcpRace, Watch

# the names tests and tools import from here (the parts live in guard, state, tcp_race, dns_race)
__all__ = ["Blocker", "DnsWatch", "FlowInfo", "TokenBucket", "Watch", "flow_keys", "main", "mode_line",
           "latency_summary", "TH_ACK", "TH_FIN", "TH_RST", "TH_SYN"]

log = logging.getLogger("flowtarget.block")


class Blocker(TcpRace, DnsRace):
    """The policy engine: matching, injection, race watching, events."""

    def __init__(self, settings: BlockSettings, bus: Bus | None) -> None:
        self.s = settings
        self.bus = bus
        self.rules = RuleSet()
        self.allow = Allowlist(list(settings.allowlist))
        self.bucket = TokenBucket(settings.rate_limit_per_s, settings.rate_burst)
        self.injector: inj.Injector | None = None
        self.own_mac = ""
        self.own_ips = AddressSet(settings.probe_addresses)
        self.flows: OrderedDict[str, FlowInfo] = OrderedDict()
        self.handled: OrderedDict[str, float] = OrderedDict()
        self.watch_by_key: dict[bytes, tuple[Watch, bool]] = {}
        self.recent: OrderedDict[bytes, deque] = OrderedDict()
        # latest encapsulation (frame bytes in front of the inner IP header) seen per flow direction, bounded
        self.prefixes: dict[bytes, tuple[bytes, str]] = {}
        self.sniffed: OrderedDict[bytes, FlowInfo] = OrderedDict()  # flows our own capture acted on
        self.fast_rules = False  # any rule the capture/sample fast paths can act on
        self.drain_capture: Any = None  # reads what our capture handle has buffered (set by main)
        self._in_capture = False
        self.unnamed: list[tuple[float, Watch, str, str]] | None = []
        self.watches: list[Watch] = []
        self.dns_watches: dict[tuple, DnsWatch] = {}
        self.dns_done: OrderedDict[tuple, FlowInfo] = OrderedDict()  # DNS queries already judged
        self.dns_rules = False
        self.unnamed_dns: list[tuple[float, DnsWatch, str, str]] = []
        self.latencies_ms: list[float] = []
        self.recent_actions: deque[BlockAction] = deque(maxlen=1000)
        self.recent_alerts: deque[Alert] = deque(maxlen=1000)
        self.arrival_ms: list[float] = []  # trigger capture -> verdict/packet event received by block
        self.counters: dict[str, int] = {}
        self.rule_stats = RuleStats()
        self.race_window_s = float(getattr(settings, "race_window_s", 1.0))
        self.max_attempts = int(getattr(settings, "max_attempts", 3))
        self._rlog = RateLimitedLog(log)
        self._tasks: set[asyncio.Task] = set()
        self.s_block = subject("block", settings.probe)
        self.s_alert = subject("alert", settings.probe, "policy")

    # ------------------------------------------------------------------ setup

    def open_interface(self) -> None:
        if not self.s.iface:
            return
        try:
            self.injector = inj.Injector(self.s.iface)
        except OSError as exc:
            from shared.runner import ConfigError

            raise ConfigError(f"FT_IFACE {self.s.iface!r}: cannot inject there: {exc.strerror or exc}") from None
        self.own_mac = inj.iface_mac(self.s.iface)
        self.own_ips.update(inj.iface_addresses(self.s.iface))

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    @property
    def live(self) -> bool:
        return self.injector is not None and not self.s.dry_run

    # ------------------------------------------------------------------ events out

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def publish_action(self, ev: BlockAction) -> None:
        self.count(f"outcome_{ev.outcome}")
        self.rule_stats.record(ev.rule_id, ev.outcome, ev.timestamp)
        self.recent_actions.append(ev)
        log.info("block %s %s rule=%s host=%s %s:%d->%s:%d outcome=%s latency=%.2fms attempts=%d %s",
                 ev.action, ev.flow_id, ev.rule_id, safe_text(ev.host, 100), ev.src_ip, ev.src_port, ev.dst_ip,
                 ev.dst_port, ev.outcome, ev.latency_ms, ev.attempts, safe_text(ev.message, 200))
        if self.bus is not None:
            self._spawn(self.bus.js_publish(self.s_block, ev, max_wait_s=60))

    def _action_event(self, flow: FlowInfo | None, rule: Rule, action: str, outcome: str, host: str = "",
                      latency_ms: float = 0.0, attempts: int = 0, message: str = "", ev: Any = None) -> BlockAction:
        if flow is not None:
            base = dict(flow_id=flow.flow_id, transport=flow.transport, src_ip=flow.client.ip,
                        src_port=flow.client.port, dst_ip=flow.server.ip, dst_port=flow.server.port,
                        vlan_id=flow.vlan_ids[0] if flow.vlan_ids else 0, icmp_type=flow.icmp_type,
                        icmp_code=flow.icmp_code)
        else:
            base = dict(flow_id=ev.flow_id, transport=ev.transport, src_ip=ev.src_ip, src_port=ev.src_port,
                        dst_ip=ev.dst_ip, dst_port=ev.dst_port, vlan_id=ev.vlan_id,
                        icmp_type=getattr(ev, "icmp_type", None), icmp_code=getattr(ev, "icmp_code", None))
        return BlockAction(timestamp=time.time(), probe=self.s.probe, rule_id=rule.id, action=action,  # type: ignore[arg-type]
                           outcome=outcome, host=host[:512], latency_ms=round(max(0.0, latency_ms), 3),  # type: ignore[arg-type]
                           attempts=attempts, message=message[:1024], **base)

    def raise_alert(self, flow: FlowInfo | None, rule: Rule, host: str, ev: Any = None) -> None:
        base = flow if flow is not None else None
        now = time.time()
        fid = base.flow_id if base else ev.flow_id
        if not fid:  # acted on from our own capture before capture named the flow
            fid = f"{base.client.ip}-{base.client.port}-{base.server.ip}-{base.server.port}" if base else f"{now:.6f}"
        a = Alert(
            timestamp=now, probe=self.s.probe, alert_id=f"policy-{rule.id}-{fid}"[-64:],
            alert_type="policy", severity="medium", first_seen=now, last_seen=now, rule_id=rule.id,
            message=(rule.message or f"policy rule {rule.id} matched {host}")[:2048],
            flow_id=base.flow_id if base else ev.flow_id, transport=base.transport if base else ev.transport,
            src_ip=base.client.ip if base else ev.src_ip, src_port=base.client.port if base else ev.src_port,
            dst_ip=base.server.ip if base else ev.dst_ip, dst_port=base.server.port if base else ev.dst_port,
            icmp_type=base.icmp_type if base else getattr(ev, "icmp_type", None),
            icmp_code=base.icmp_code if base else getattr(ev, "icmp_code", None),
            details={"host": host[:256], "action": rule.action},
        )
        self.count("alerts")
        self.recent_alerts.append(a)
        if self.bus is not None:
            self._spawn(self.bus.js_publish(self.s_alert, a, max_wait_s=60))

    # ------------------------------------------------------------------ guards

    def _guard(self, ips: list[str], macs: list[str], host: str) -> str | None:
        """The outcome that stops an injection before it happens, or None."""
        if self.allow.hit(ips, host):
            return "allowlisted"
        if any(ip in self.own_ips for ip in ips) or (self.own_mac and self.own_mac in [m.lower() for m in macs]):
            return "not_possible"
        return None

    def _mark_handled(self, flow_id: str) -> bool:
        """False when the flow was already handled."""
        if flow_id in self.handled:
            return False
        self.handled[flow_id] = time.monotonic()
        while len(self.handled) > HANDLED_MAX:
            self.handled.popitem(last=False)
        return True

    # ------------------------------------------------------------------ verdicts

    @staticmethod
    def _verdict_host(v: Verdict) -> str:
        if v.host:
            return v.host
        for part in (v.http and v.http.host, v.tls and v.tls.sni, v.quic and v.quic.sni):
            if part:
                return part
        return ""

    def _flow_from_verdict(self, v: Verdict, host: str) -> FlowInfo:
        ctx = MatchContext(host=host, src_ip=v.src_ip, dst_ip=v.dst_ip, src_port=v.src_port, dst_port=v.dst_port,
                           transport=v.transport, app_protocol=v.app_protocol, application=v.application,
                           category=v.category)
        return FlowInfo(
            flow_id=v.flow_id, transport=v.transport.upper(),
            client=inj.Endpoint(v.src_ip, v.src_port, v.src_mac or "00:00:00:00:00:00"),
            server=inj.Endpoint(v.dst_ip, v.dst_port, v.dst_mac or "00:00:00:00:00:00"),
            vlan_ids=list(v.vlan_ids), ctx=ctx, seen=time.monotonic(), icmp_type=v.icmp_type, icmp_code=v.icmp_code,
        )

    async def on_verdict(self, v: Verdict) -> None:
        self.count("verdicts")
        if not v.flow_id:
            return
        if v.flow_id in self.handled:
            return
        if self._claimed_by_capture_path(v.flow_id, v.src_ip, v.src_port, v.dst_ip, v.dst_port):
            return
        host = self._verdict_host(v)
        flow = self._flow_from_verdict(v, host)
        if flow.transport == "TCP" and v.src_mac and v.dst_mac:
            self.flows[v.flow_id] = flow
            self.flows.move_to_end(v.flow_id)
            if len(self.flows) > FLOW_CACHE_MAX:
                self.flows.popitem(last=False)
        if not len(self.rules):
            return
        if v.trigger_time and self.live:
            self.arrival_ms.append((time.time() - v.trigger_time) * 1000.0)
            if len(self.arrival_ms) > 100_000:
                del self.arrival_ms[:50_000]
        is_dns = v.app_protocol.upper() == "DNS"
        matched = self.rules.matching(flow.ctx, ("alert", "reset", "http_block", "drop"))
        if not matched:
            return
        rule = next((r for r in matched if r.action in ENFORCING and not is_dns), None)
        alerts = [r for r in matched if r.action == "alert"]
        if rule is None:
            if alerts and self._mark_handled(v.flow_id):
                r = alerts[0]
                self.raise_alert(flow, r, host)
                self.publish_action(self._action_event(flow, r, "alert", "unknown", host, message="alert only (monitor)"))
            return
        if not self._mark_handled(v.flow_id):
            return
        for r in alerts:
            self.raise_alert(flow, r, host)
        self.enforce(flow, rule, host, v.src2dst_next_seq, v.dst2src_next_seq or v.src2dst_ack, v.trigger_time,
                     have_seq=bool(v.src2dst_next_seq or v.dst2src_next_seq or v.src2dst_ack))

    # ------------------------------------------------------------------ our own capture: the fastest path

    def _sniff_trigger(self, ts: float, frame: bytes, s: enc.Seen) -> None:
        """A client's HTTP request or TLS ClientHello seen by our own capture: act before any NATS hop.

        Only rules that need nothing but the name, addresses and ports (``fast_eligible``).
        The flow id is filled in when capture's sample or classify's verdict for the flow arrives.
        """
        found = client_name(frame[s.po:s.po + s.plen])
        if found is None:
            return
        sip, dip, sport, dport, smac, dmac, vlans = s.src, s.dst, s.sport, s.dport, s.smac, s.dmac, list(s.vlans)
        seq, ack, plen = s.seq, s.ack, s.plen
        proto, host = found
        ctx = MatchContext(host=host, src_ip=sip, dst_ip=dip, src_port=sport, dst_port=dport, transport="TCP",
                           app_protocol=proto)
        rule = next((r for r in self.rules.matching(ctx, ("reset", "http_block")) if self.fast_eligible(r)), None)
        if rule is None:
            return
        flow = FlowInfo(flow_id="", transport="TCP", client=inj.Endpoint(sip, sport, smac),
                        server=inj.Endpoint(dip, dport, dmac), vlan_ids=vlans, ctx=ctx, seen=time.monotonic())
        keys = flow_keys(flow.client, flow.server)
        for k in keys:
            self.sniffed[k] = flow
        while len(self.sniffed) > HANDLED_MAX:
            self.sniffed.popitem(last=False)
        self.count("capture_path")
        for r in self.rules.matching(ctx, ("alert",)):
            self.raise_alert(flow, r, host)
        self.enforce(flow, rule, host, (seq + plen) & 0xFFFFFFFF, ack, ts)

    def _claimed_by_capture_path(self, flow_id: str, src_ip: str, src_port: int, dst_ip: str, dst_port: int) -> bool:
        """True when our own capture already acted on this flow (and give it its flow id)."""
        if not self.sniffed or not flow_id:
            return False
        try:
            k = _ip_bytes(src_ip) + _ip_bytes(dst_ip) + struct.pack("!HH", src_port, dst_port)
        except (OSError, ValueError, struct.error):
            return False
        flow = self.sniffed.get(k)
        if flow is None:
            return False
        if flow.flow_id and flow.flow_id != flow_id:
            return False  # an earlier connection on the same ports: this one is not ours yet
        if not flow.flow_id:
            flow.flow_id = flow_id
        self._mark_handled(flow_id)
        return True

    # ------------------------------------------------------------------ samples: the fast path

    @staticmethod
    def fast_eligible(rule: Rule) -> bool:
        """Rules that need no more than what a sample shows (name, addresses, ports, HTTP/TLS)."""
        return rule.action in ("reset", "http_block") and not rule.application and not rule.category

    async def on_sample(self, s: FlowSample) -> None:
        """Act on capture's sample before classify answers, for rules on names and addresses only."""
        if not len(self.rules) or s.flow_id in self.handled or not s.src_payloads:
            return
        if self._claimed_by_capture_path(s.flow_id, s.src_ip, s.src_port, s.dst_ip, s.dst_port):
            return
        if s.transport.upper() != "TCP" or not s.payload_dirs.startswith("s") or not (s.src_mac and s.dst_mac):
            return
        found = client_name(b"".join(s.src_payloads[:8])[:16384])
        if found is None:
            return
        proto, host = found
        self.count("samples_named")
        ctx = MatchContext(host=host, src_ip=s.src_ip, dst_ip=s.dst_ip, src_port=s.src_port, dst_port=s.dst_port,
                           transport="TCP", app_protocol=proto)
        rule = next((r for r in self.rules.matching(ctx, ("reset", "http_block")) if self.fast_eligible(r)), None)
        if rule is None:
            return
        if s.trigger_time and self.live:
            self.arrival_ms.append((time.time() - s.trigger_time) * 1000.0)
        flow = FlowInfo(flow_id=s.flow_id, transport="TCP", client=inj.Endpoint(s.src_ip, s.src_port, s.src_mac),
                        server=inj.Endpoint(s.dst_ip, s.dst_port, s.dst_mac), vlan_ids=list(s.vlan_ids), ctx=ctx,
                        seen=time.monotonic())
        if not self._mark_handled(s.flow_id):
            return
        self.count("fast_path")
        for r in self.rules.matching(ctx, ("alert",)):
            self.raise_alert(flow, r, host)
        self.enforce(flow, rule, host, s.src2dst_next_seq, s.dst2src_next_seq or s.src2dst_ack, s.trigger_time,
                     have_seq=bool(s.src2dst_next_seq))

    def tick(self) -> None:
        now = time.monotonic()
        if self.unnamed:
            keep = []
            for item in self.unnamed:
                if item[1].flow.flow_id or now >= item[0]:
                    self._publish_watch(item[1], item[2], item[3])
                else:
                    keep.append(item)
            self.unnamed = keep
        if self.unnamed_dns:
            keep_dns = []
            for item in self.unnamed_dns:
                if item[1].flow.flow_id or now >= item[0]:
                    self._publish_dns(item[1], item[2], item[3])
                else:
                    keep_dns.append(item)
            self.unnamed_dns = keep_dns
        if self.watches:
            keep = []
            for w in self.watches:
                if w.done:
                    continue
                if now >= w.deadline:
                    self._conclude(w)
                    continue
                keep.append(w)
            self.watches = keep
        if self.dns_watches:
            for k, d in list(self.dns_watches.items()):
                if now >= d.deadline:
                    del self.dns_watches[k]
                    self._finish_dns(d)
        if self.recent:
            cutoff = time.time() - RECENT_S
            recent = self.recent
            while recent:
                k, dq = next(iter(recent.items()))
                if dq and dq[-1][0] >= cutoff:
                    break
                recent.popitem(last=False)
        while self.dns_done:
            k, f = next(iter(self.dns_done.items()))
            if now - f.seen < 30.0:
                break
            self.dns_done.popitem(last=False)
        if self.handled:
            while self.handled:
                k, t = next(iter(self.handled.items()))
                if now - t < FLOW_CACHE_TTL_S:
                    break
                self.handled.popitem(last=False)
        while self.flows:
            k, f = next(iter(self.flows.items()))
            if now - f.seen < FLOW_CACHE_TTL_S:
                break
            self.flows.popitem(last=False)

    # ------------------------------------------------------------------ rules changing

    def on_rules_changed(self, rules: RuleSet, changed: list[Rule]) -> None:
        self.rules = rules
        self.fast_rules = any(self.fast_eligible(r) for r in rules)
        self.dns_rules = any(r.action == "dns_block" for r in rules)
        new = [r for r in changed if r.action in ("reset", "http_block")]
        if not new or not self.flows:
            return
        for flow in list(self.flows.values()):
            if flow.flow_id in self.handled:
                continue
            rule = next((r for r in new if r.matches(flow.ctx)), None)
            if rule is None:
                continue
            self._mark_handled(flow.flow_id)
            self.enforce(flow, rule, flow.ctx.host, 0, 0, 0.0, pending=True)

    def wanted_inputs(self) -> set[str]:
        """The bus inputs the rules in force (and open races) need: ``sample``, ``verdict``, ``packet``.

        Samples only feed the fast path of name/address rules; verdicts every rule but
        ``dns_block`` (and, where block can inject, the cache of recent flows a rule added
        later resets); DNS packet events ``dns_block`` rules and DNS races still open.  With
        no rules block reads none of them: on a busy probe they were most of its CPU.
        """
        want: set[str] = set()
        if self.fast_rules:
            want.add("sample")
        if self.injector is not None or any(r.action != "dns_block" for r in self.rules):
            want.add("verdict")
        if self.dns_rules or self.dns_watches or self.unnamed_dns:
            want.add("packet")
        return want

    def close(self) -> None:
        if self.injector is not None:
            self.injector.close()


def latency_summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    v = sorted(values)

    def pct(p: float) -> float:
        return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]

    return {"n": len(v), "p50_ms": round(pct(50), 3), "p99_ms": round(pct(99), 3), "max_ms": round(v[-1], 3)}


def mode_line(settings: BlockSettings) -> str:
    """What block will do, for its startup line: enforcing only when asked for explicitly."""
    if not settings.iface:
        return "mode=REPORT-ONLY (no FT_IFACE: nothing is injected)"
    if settings.dry_run:
        return "mode=DRY-RUN (nothing is injected; FT_DRY_RUN=false or flowtarget run --enforce to inject)"
    return "mode=ENFORCING (injecting on the interface)"


async def main(settings: BlockSettings, bus: Bus, stop: asyncio.Event) -> None:
    """The block service: see the module docstring."""
    blocker = Blocker(settings, bus)
    if settings.iface and not settings.dry_run:
        # injection is a race: ask for CPU before ordinary processes where allowed (root)
        try:
            os.setpriority(os.PRIO_PROCESS, 0, -10)
        except (OSError, AttributeError):
            pass
    blocker.open_interface()
    # samples, verdicts and DNS packet events are subscribed only while the rules need them
    # (Blocker.wanted_inputs): re-checked at every rule change and every turn of the loop below
    inputs: dict[str, Any] = {}
    handlers: dict[str, tuple[Any, type]] = {"sample": (blocker.on_sample, FlowSample),
                                              "verdict": (blocker.on_verdict, Verdict),
                                              "packet": (blocker.on_packet_event, PacketEvent)}
    syncing = asyncio.Lock()

    async def sync_inputs() -> None:
        async with syncing:
            want = blocker.wanted_inputs()
            if want == inputs.keys():
                return
            for kind in [k for k in inputs if k not in want]:
                await bus.unsubscribe(inputs.pop(kind))
            for kind in sorted(want - inputs.keys()):
                handler, typ = handlers[kind]
                inputs[kind] = await bus.subscribe(subject(kind, settings.probe), handler, types=[typ])
            try:
                await bus.nc.flush(timeout=5)   # the server has the subscriptions before we go on
            except Exception as exc:
                blocker._rlog.warning("flush", "flush after subscribing failed: %s", safe_text(exc))
            log.info("block reads %s", ", ".join(f"ft.{k}" for k in sorted(inputs)) or "no samples, verdicts "
                     "nor DNS packet events (no rule needs them)")

    async def on_rules_changed(rules: RuleSet, changed: list[Rule]) -> None:
        blocker.on_rules_changed(rules, changed)
        await sync_inputs()

    watcher = RuleWatcher(bus.js, settings.rules_bucket, on_change=on_rules_changed, max_rules=settings.max_rules)
    await watcher.start()
    from shared.metrics import register_families, register_stats

    register_stats("block", lambda: {**blocker.counters, "rules_in_force": len(watcher.rules),
                                     "rules_malformed": watcher.malformed, "rules_over_limit": watcher.over_limit})
    register_families("block_rules", blocker.rule_stats.metric_families)
    stats_kv: Any = None
    flushing: asyncio.Task | None = None

    async def flush_stats() -> None:
        nonlocal stats_kv
        try:
            if stats_kv is None:
                stats_kv = await open_stats_bucket(bus.js, settings.rule_stats_bucket)
            await blocker.rule_stats.flush(stats_kv)
        except Exception as exc:  # NATS down: the counts stay pending
            blocker._rlog.warning("stats", "rule statistics not written: %s", safe_text(exc))
    src = None
    loop = asyncio.get_running_loop()
    if settings.iface:
        from services.capture.sources import LiveSource

        from services.capture.sources import CaptureFileError
        from shared.runner import ConfigError

        try:
            src = LiveSource(settings.iface, bpf="", snaplen=settings.snaplen, promisc=True, direction_in=True)
        except CaptureFileError as exc:
            blocker.close()
            await watcher.stop()
            raise ConfigError(str(exc)) from None

        def readable() -> None:
            if blocker._in_capture:
                return
            blocker._in_capture = True
            try:
                for ts, frame in src.read_available(4096):
                    try:
                        blocker.on_packet(ts, frame)
                    except Exception as exc:  # one bad frame never stops block
                        blocker.count("packet_errors")
                        blocker._rlog.warning("pkt", "watch error: %s", safe_text(exc))
            finally:
                blocker._in_capture = False

        loop.add_reader(src.fileno(), readable)
        blocker.drain_capture = readable
    await sync_inputs()
    log.info("block running: %s iface=%s dry_run=%s bucket=%s", mode_line(settings), settings.iface or "(none)",
             settings.dry_run, settings.rules_bucket)
    last_report = last_flush = time.monotonic()
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 0.05)
            except asyncio.TimeoutError:
                pass
            blocker.tick()
            if blocker.wanted_inputs() != inputs.keys():   # e.g. the last DNS race of a removed rule ended
                await sync_inputs()
            if blocker.rule_stats.pending and (flushing is None or flushing.done()) \
                    and time.monotonic() - last_flush >= settings.rule_stats_flush_s:
                last_flush = time.monotonic()
                flushing = asyncio.get_running_loop().create_task(flush_stats())
            if time.monotonic() - last_report > 60:
                last_report = time.monotonic()
                log.info("block: %s latency %s", blocker.counters, latency_summary(blocker.latencies_ms[-10000:]))
    finally:
        # finish open races so their BlockActions are not lost
        for w in list(blocker.watches):
            if not w.done:
                blocker._finish(w, "lost" if w.lost else ("unknown" if w.pending else "won"),
                                w.won_evidence or "service stopping")
        for k, d in list(blocker.dns_watches.items()):
            blocker._finish_dns(d)
        for _, w, outcome, message in blocker.unnamed or []:
            blocker._publish_watch(w, outcome, message)
        for _, d, outcome, message in blocker.unnamed_dns:
            blocker._publish_dns(d, outcome, message)
        blocker.unnamed = None
        blocker.dns_watches.clear()
        if blocker._tasks:
            await asyncio.wait(list(blocker._tasks), timeout=5)
        if flushing is not None and not flushing.done():
            await asyncio.wait([flushing], timeout=5)
        if blocker.rule_stats.pending:
            try:
                await asyncio.wait_for(flush_stats(), 5)
            except asyncio.TimeoutError:
                log.warning("rule statistics of %d rule(s) not written at stop", len(blocker.rule_stats.pending))
        if src is not None:
            loop.remove_reader(src.fileno())
            src.close()
        await watcher.stop()
        blocker.close()
        log.info("block stopped: %s latency %s arrival %s", blocker.counters, latency_summary(blocker.latencies_ms),
                 latency_summary(blocker.arrival_ms))
