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
- Its own pypcap handle on the interface (``tcp``, inbound only, so it never
  sees its own frames) watches blocked flows after the injection.

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
- ``dry_run`` (FT_DRY_RUN, or no FT_IFACE), ``rate_limited``, ``allowlisted``,
  ``not_possible`` (UDP flows other than DNS, ``drop`` from a mirror port,
  targets that are the probe itself, missing sequence numbers).

Safety: a token-bucket injection rate limit (FT_RATE_LIMIT_PER_S,
FT_RATE_BURST), an allowlist of CIDRs and names (FT_ALLOWLIST), dry-run, and
no injection toward the probe's own addresses or MAC.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from shared.bus import Bus, RateLimitedLog, safe_text
from shared.models import Alert, BlockAction, FlowSample, PacketEvent, Verdict
from shared.settings import BlockSettings
from shared.subjects import subject

from services.block import encap as enc
from services.block import inject as inj
from services.block.fastpath import client_name
from services.block.guard import AddressSet, Allowlist, TokenBucket  # noqa: F401 (TokenBucket re-exported)
from services.block.rules import ENFORCING, MatchContext, Rule, RuleSet, RuleWatcher, normalize_host
from services.block.stats import RuleStats, open_stats_bucket

log = logging.getLogger("flowtarget.block")

FLOW_CACHE_MAX = 100_000
FLOW_CACHE_TTL_S = 1800.0
HANDLED_MAX = 200_000
PENDING_TTL_S = 120.0
DNS_WINDOW_S = 2.0
RECENT_S = 3.0  # recent TCP packets kept per direction, to judge what happened before a watch began
RECENT_MAX_KEYS = 65536
RECENT_PER_KEY = 32
PREFIX_MAX_KEYS = 2 * RECENT_MAX_KEYS  # flow directions whose encapsulation is remembered
PHOTO_FINISH_S = 0.0005  # server data captured this close after our send may still have arrived first
TH_FIN, TH_SYN, TH_RST, TH_ACK = 0x01, 0x02, 0x04, 0x10


def _seq_gt(a: int, b: int) -> bool:
    """a > b in 32-bit sequence space."""
    return 0 < ((a - b) & 0xFFFFFFFF) < 0x80000000


@dataclass
class FlowInfo:
    """What block remembers of a classified flow (from its verdict)."""

    flow_id: str
    transport: str
    client: inj.Endpoint
    server: inj.Endpoint
    vlan_ids: list[int]
    ctx: MatchContext
    seen: float
    t_packet: float = 0.0  # DNS: the query's capture time (one query seen by two paths has one time)


@dataclass
class Watch:
    """A flow block has acted on (or will act on at its next packet)."""

    flow: FlowInfo
    rule: Rule
    action: str
    c_next: int = 0
    s_next: int = 0
    page_len: int = -1
    t_trigger: float = 0.0
    t_send: float = 0.0  # just before the first injection
    t_inj: float = 0.0  # just after it
    latency_ms: float = 0.0
    attempts: int = 0
    pending: bool = False  # established flow: inject at its next packet
    lost: bool = False
    won_evidence: str = ""
    deadline: float = 0.0
    keys: list[bytes] = field(default_factory=list)
    done: bool = False
    photo_finish: bool = False  # real server data captured while we were sending: evidence must decide
    deferring: bool = False  # judging already-captured packets: collect, retry once afterwards
    retry: tuple[int, int] | None = None
    tunnel_seq: dict[tuple[bool, int], int] = field(default_factory=dict)  # (to_server, layer) -> next tunnel seq


@dataclass
class DnsWatch:
    flow: FlowInfo
    rule: Rule
    host: str
    key: tuple
    forged: bytes
    t_send: float
    latency_ms: float
    deadline: float
    lost: bool = False
    real_seen: bool = False
    t_packet: float = 0.0  # the query's capture time


def _reverse_key(key: bytes) -> bytes:
    """The other direction's lookup key."""
    n = (len(key) - 4) // 2
    return key[n:2 * n] + key[:n] + key[2 * n + 2:2 * n + 4] + key[2 * n:2 * n + 2]


def _ip_bytes(ip: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)


def flow_keys(a: inj.Endpoint, b: inj.Endpoint) -> tuple[bytes, bytes]:
    """Lookup keys (src ip, dst ip, sport, dport as on the wire) for both directions."""
    ia, ib = _ip_bytes(a.ip), _ip_bytes(b.ip)
    return (ia + ib + struct.pack("!HH", a.port, b.port), ib + ia + struct.pack("!HH", b.port, a.port))


_TRIGGER_FIRST_BYTES = frozenset(b"GPHDOCT\x16")  # HTTP methods, TLS handshake record
DNS_SAME_PACKET_S = 0.25  # one DNS query seen by our capture and by capture's packet event: same packet time


class Blocker:
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
                        vlan_id=flow.vlan_ids[0] if flow.vlan_ids else 0)
        else:
            base = dict(flow_id=ev.flow_id, transport=ev.transport, src_ip=ev.src_ip, src_port=ev.src_port,
                        dst_ip=ev.dst_ip, dst_port=ev.dst_port, vlan_id=ev.vlan_id)
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
            vlan_ids=list(v.vlan_ids), ctx=ctx, seen=time.monotonic(),
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

    def _new_connection(self, key: bytes, rkey: bytes, hit: tuple[Watch, bool] | None) -> None:
        """A client SYN on ports an earlier connection used: forget that one so this one is judged afresh."""
        for k in (key, rkey):
            self.sniffed.pop(k, None)
        if hit is not None and not hit[0].done:
            self._conclude(hit[0], "the client opened a new connection on the same ports")
        for k in (key, rkey):
            h = self.watch_by_key.get(k)
            if h is not None and h[0].done:
                del self.watch_by_key[k]

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

    def enforce(self, flow: FlowInfo, rule: Rule, host: str, c_next: int, s_next: int, t_trigger: float,
                have_seq: bool = True, pending: bool = False) -> None:
        action = rule.action
        if action == "drop":
            self.publish_action(self._action_event(flow, rule, "drop", "not_possible", host,
                                                   message="drop needs an inline deployment; nothing injected from a mirror port"))
            return
        if flow.transport != "TCP":
            dns_rule = next((r for r in self.rules.matching(MatchContext(host=host), ("dns_block",))), None) if host else None
            msg = f"{flow.transport} flow cannot be reset from a mirror port"
            msg += f"; new lookups of {host} are answered by dns_block rule {dns_rule.id}" if dns_rule else \
                "; add a dns_block rule for the name to block its lookups"
            self.raise_alert(flow, rule, host)
            self.publish_action(self._action_event(flow, rule, action, "not_possible", host, message=msg))
            return
        guard = self._guard([flow.client.ip, flow.server.ip], [flow.client.mac, flow.server.mac], host)
        if guard:
            self.publish_action(self._action_event(flow, rule, action, guard, host,
                                                   message="allowlisted" if guard == "allowlisted" else "target is the probe itself"))
            return
        if flow.ctx.app_protocol.upper() in ("TLS", "QUIC") or flow.server.port == 443:
            if action == "http_block":
                action = "reset"  # no page inside TLS: reset instead
        try:
            self.encapsulations(flow.client, flow.server)
        except enc.NotPossible as exc:
            self.count("encap_not_possible")
            self.publish_action(self._action_event(flow, rule, rule.action, "not_possible", host,
                                                   message=f"cannot inject into the flow's encapsulation: {exc}"))
            return
        if not self.live:
            why = "dry run" if self.s.dry_run else "no injection interface (FT_IFACE): report only"
            self.publish_action(self._action_event(flow, rule, rule.action, "dry_run", host, message=why))
            return
        if not have_seq and not pending:
            self.publish_action(self._action_event(flow, rule, rule.action, "not_possible", host,
                                                   message="no TCP sequence numbers in the verdict"))
            return
        w = Watch(flow=flow, rule=rule, action=action, c_next=c_next, s_next=s_next, t_trigger=t_trigger,
                  pending=pending)
        w.keys = list(flow_keys(flow.client, flow.server))
        self.watches.append(w)
        if pending:
            self._register(w)
            w.deadline = time.monotonic() + PENDING_TTL_S
            return
        if not self.bucket.take():
            self._finish(w, "rate_limited", "injection rate limit reached")
            return
        self._inject(w, first=True)
        # what our capture saw of this flow since the trigger (the server may already have answered)
        if self.drain_capture is not None and not self._in_capture:
            self.drain_capture()
        self._replay(w)
        if not w.done:
            self._register(w)

    def _register(self, w: Watch) -> None:
        self.watch_by_key[w.keys[0]] = (w, True)
        self.watch_by_key[w.keys[1]] = (w, False)

    def _replay(self, w: Watch) -> None:
        """Judge the flow's packets captured since the trigger, then retry once with the latest numbers."""
        pkts = []
        since = w.t_trigger - 0.001 if w.t_trigger else w.t_send - RECENT_S
        for key, from_client in ((w.keys[0], True), (w.keys[1], False)):
            for rec in self.recent.get(key, ()):
                if rec[0] >= since:
                    pkts.append((rec, from_client))
        if not pkts:
            return
        pkts.sort(key=lambda x: x[0][0])
        w.deferring = True
        for (ts, seq, ack, flags, plen), from_client in pkts:
            if w.done:
                break
            self._judge(w, from_client, ts, seq, ack, flags, plen)
        w.deferring = False
        if w.retry is not None and not w.done:
            c, sn = w.retry
            w.retry = None
            self._lost(w, c, sn, w.won_evidence)

    def encapsulations(self, client: inj.Endpoint, server: inj.Endpoint) -> tuple[enc.Encap, enc.Encap] | None:
        """(to the server, to the client) as the flow was seen by our capture; None when it saw none of it.

        Raises ``enc.NotPossible`` when the flow's encapsulation cannot be reproduced."""
        kc, ks = flow_keys(client, server)
        return enc.for_flow(self.prefixes.get(kc), self.prefixes.get(ks))

    @staticmethod
    def _wrap(e: enc.Encap, frame: bytes, n_vlans: int, memory: dict[tuple[bool, int], int], to_server: bool) -> bytes:
        """A plain frame's IP packet inside ``e``; tunnel sequence numbers never repeat within one watch."""
        for lay in e.layers:
            if lay.seq_off >= 0:
                k = (to_server, lay.off)
                prev = memory.get(k)
                if prev is not None:
                    mod = 0xFFFFFFFF if lay.kind == "gre" else 0xFFFF
                    if 0 < ((prev - e.next_seq[lay.off]) & mod) < (mod + 1) // 2:
                        e.next_seq[lay.off] = prev
        out = enc.wrap(e, frame[14 + 4 * n_vlans:])
        for lay in e.layers:
            if lay.seq_off >= 0:
                memory[(to_server, lay.off)] = e.next_seq[lay.off]
        return out

    def _inject(self, w: Watch, first: bool) -> None:
        assert self.injector is not None
        f = w.flow
        try:
            encaps = self.encapsulations(f.client, f.server)
        except enc.NotPossible as exc:
            self.count("encap_not_possible")
            self._finish(w, "not_possible", f"cannot inject into the flow's encapsulation: {exc}")
            return
        vl = [] if encaps else f.vlan_ids
        if w.action == "http_block" and first:
            page = inj.block_page(w.rule.id, w.flow.ctx.host, w.rule.message, w.rule.redirect)
            frames = inj.http_block_frames(f.client, f.server, vl, w.c_next, w.s_next, page)
            w.page_len = len(page)
        else:
            frames = inj.reset_frames(f.client, f.server, vl, w.c_next, w.s_next)
        if encaps:
            frames = (self._wrap(encaps[0], frames[0], 0, w.tunnel_seq, True),
                      self._wrap(encaps[1], frames[1], 0, w.tunnel_seq, False))
            if encaps[0].tunnel:
                self.count("frames_tunnelled", 2)
        t_send = time.time()
        sent = self.injector.send(*frames)
        now = time.time()
        w.attempts += 1
        if first:
            w.t_send = t_send
            w.t_inj = now
            w.latency_ms = (now - w.t_trigger) * 1000.0 if w.t_trigger else 0.0
            if w.t_trigger:
                self.latencies_ms.append(w.latency_ms)
                if len(self.latencies_ms) > 100_000:
                    del self.latencies_ms[:50_000]
        w.deadline = time.monotonic() + self.race_window_s
        self.count("frames_sent", sent)
        if sent != len(frames):
            self.count("send_errors")

    # ------------------------------------------------------------------ the race

    def on_packet(self, ts: float, frame: bytes) -> None:
        """Our own capture of the interface (inbound only): remember recent packets, judge watched flows."""
        s = enc.observe(frame)  # capture's decoder: the flow inside any tunnel
        if s is None:
            return
        if s.proto != 6:
            if (s.dport == 53 or s.sport == 53) and (self.dns_rules or self.dns_watches):
                self._sniff_dns(ts, frame, s)
            return
        key, seq, ack, flags, plen, po = s.key, s.seq, s.ack, s.flags, s.plen, s.po
        recent = self.recent
        dq = recent.get(key)
        if dq is None:
            dq = recent[key] = deque(maxlen=RECENT_PER_KEY)
            if len(recent) > RECENT_MAX_KEYS:
                recent.popitem(last=False)
        else:
            recent.move_to_end(key)
        dq.append((ts, seq, ack, flags, plen))
        if s.ip_off >= 0:
            prefixes = self.prefixes
            if key not in prefixes and len(prefixes) >= PREFIX_MAX_KEYS:
                del prefixes[next(iter(prefixes))]  # the oldest flow direction first seen
            prefixes[key] = (frame[:s.ip_off], s.tunnel)
        hit = self.watch_by_key.get(key)
        if flags & TH_SYN and not flags & TH_ACK:
            # a new connection on these ports (port reuse, a replayed flow): it gets its own outcome
            self._new_connection(key, _reverse_key(key), hit)
            hit = None
        if hit is None:
            if plen and self.fast_rules and po < len(frame) and frame[po] in _TRIGGER_FIRST_BYTES \
                    and key not in self.sniffed:
                self._sniff_trigger(ts, frame, s)
            return
        w, from_client = hit
        if w.done:
            return
        if w.pending:
            # an established flow matched a new rule: reset it at this packet
            if flags & TH_RST:
                self._finish(w, "won", "flow ended by its own RST before injection")
                return
            nxt = (seq + plen + (1 if flags & (TH_FIN | TH_SYN) else 0)) & 0xFFFFFFFF
            if from_client:
                w.c_next, w.s_next = nxt, ack
            else:
                w.s_next, w.c_next = nxt, ack
            w.pending = False
            w.t_trigger = ts
            if not self.bucket.take():
                self._finish(w, "rate_limited", "injection rate limit reached")
                return
            if w.action == "http_block":
                w.action = "reset"
            self._inject(w, first=True)
            return
        self._judge(w, from_client, ts, seq, ack, flags, plen)

    def _judge(self, w: Watch, from_client: bool, ts: float, seq: int, ack: int, flags: int, plen: int) -> None:
        """One packet of a flow after (or around) the injection: evidence for the outcome."""
        nxt = (seq + plen + (1 if flags & TH_FIN else 0)) & 0xFFFFFFFF
        if from_client:
            if ts <= w.t_inj:
                # sent before our frames could all have arrived: only an acknowledgement of server data
                # that is not our page counts, and it proves the real answer got there first (a page
                # longer than the real answer would otherwise have its tail accepted afterwards, and the
                # client's final RST acknowledge the page as if it had won)
                if (flags & TH_ACK and not flags & TH_RST and _seq_gt(ack, w.s_next) and w.attempts == 1
                        and not (w.action == "http_block" and w.page_len >= 0
                                 and ack == (w.s_next + w.page_len + 1) & 0xFFFFFFFF)):
                    self._lost(w, c_next=nxt, s_next=ack, why="client acknowledged real server data before the "
                                                              "injection arrived")
                return
            if flags & TH_RST:
                if (flags & TH_ACK and w.action == "http_block" and w.page_len >= 0 and w.attempts == 1
                        and _seq_gt(ack, w.s_next) and ack != (w.s_next + w.page_len + 1) & 0xFFFFFFFF):
                    # the RST acknowledges data that is not our page: the real answer got there first
                    # (curl closes with a RST after the real page too, so a RST alone proves nothing)
                    self._lost(w, c_next=seq, s_next=ack, why="client acknowledged real server data in its RST")
                    return
                w.won_evidence = w.won_evidence or "client answered with RST (its socket is gone)"
                if not w.lost and not w.deferring:
                    self._finish(w, "won", w.won_evidence)
                return
            accepted_real = False
            if w.action == "http_block" and w.page_len >= 0 and w.attempts == 1:
                expect = (w.s_next + w.page_len + 1) & 0xFFFFFFFF
                if flags & TH_ACK and ack == expect:
                    if not w.lost and not w.deferring:
                        if w.photo_finish:  # the ack is the same whether the real headers came first or not
                            self._finish(w, "unknown", "photo finish: the server answered while the page was sent")
                        else:
                            self._finish(w, "won", "client acknowledged the block page")
                    return
                if flags & TH_ACK and _seq_gt(ack, w.s_next) and ack != expect:
                    accepted_real = True
            elif flags & TH_ACK and _seq_gt(ack, w.s_next):
                accepted_real = True
            if plen and _seq_gt((seq + plen) & 0xFFFFFFFF, w.c_next):
                accepted_real = True
            if accepted_real:
                self._lost(w, c_next=nxt, s_next=ack, why="client acknowledged real server data or kept sending")
        else:
            if flags & TH_RST:
                return
            # server data captured before we started sending reached the client first
            if plen and _seq_gt((seq + plen) & 0xFFFFFFFF, w.s_next):
                if ts < w.t_send:
                    self._lost(w, c_next=ack, s_next=nxt, why="the server's answer was captured before the injection")
                    return
                if ts <= w.t_inj + PHOTO_FINISH_S:
                    w.photo_finish = True
            elif w.lost and flags & TH_FIN:
                w.retry = (ack, nxt) if w.deferring else w.retry

    def _lost(self, w: Watch, c_next: int, s_next: int, why: str) -> None:
        if not w.lost:
            w.lost = True
            w.won_evidence = why
        if w.deferring:  # collect the latest numbers; one retry after the replay
            w.retry = (c_next, s_next)
            return
        if w.attempts < self.max_attempts and self.injector is not None and self.bucket.take():
            w.c_next, w.s_next = c_next, s_next
            self._inject(w, first=False)
        elif w.attempts >= self.max_attempts:
            self._finish(w, "lost", why)

    def _finish(self, w: Watch, outcome: str, message: str) -> None:
        if w.done:
            return
        w.done = True
        for k in w.keys:
            if self.watch_by_key.get(k, (None,))[0] is w:
                del self.watch_by_key[k]
        if outcome == "lost" and w.attempts > 1:
            message = f"{message}; reset again with the next observed sequence numbers ({w.attempts} attempts)"
        if not w.flow.flow_id and self.unnamed is not None:
            # acted on from our own capture: wait (briefly) for capture's flow id
            self.unnamed.append((time.monotonic() + 1.0, w, outcome, message))
            return
        self._publish_watch(w, outcome, message)

    def _publish_watch(self, w: Watch, outcome: str, message: str) -> None:
        self.publish_action(self._action_event(w.flow, w.rule, w.rule.action, outcome, w.flow.ctx.host,
                                               latency_ms=w.latency_ms, attempts=w.attempts, message=message))

    def _conclude(self, w: Watch, why: str = "") -> None:
        """The outcome of a race whose window is over (or whose connection was replaced)."""
        if w.pending:
            self._finish(w, "unknown", "the flow sent no further packet after the rule appeared")
        elif w.lost:
            self._finish(w, "lost", w.won_evidence)
        elif w.photo_finish and not w.won_evidence:
            self._finish(w, "unknown", "photo finish: the server answered while we injected")
        else:
            self._finish(w, "won", w.won_evidence or why or "no sign of the real answer reaching the client")

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

    # ------------------------------------------------------------------ DNS

    async def on_packet_event(self, ev: PacketEvent) -> None:
        """capture's DNS packet events: queries are judged, responses decide open DNS races."""
        if ev.kind != "dns" or not ev.payload:
            return
        self.count("dns_packets")
        q = inj.parse_dns_query(ev.payload)
        if q is None:
            if self.dns_watches:
                t = inj.dns_transaction_of_response(ev.payload)
                if t is not None and t[1]:
                    # a response travels server -> client
                    if ev.from_src:
                        key = (ev.dst_ip, ev.dst_port, ev.src_ip, ev.src_port, t[0])
                    else:
                        key = (ev.src_ip, ev.src_port, ev.dst_ip, ev.dst_port, t[0])
                    self._dns_response(key, ev.timestamp, ev.payload)
            return
        if not self.dns_rules:
            return
        if ev.from_src:
            client = inj.Endpoint(ev.src_ip, ev.src_port, ev.src_mac or "00:00:00:00:00:00")
            server = inj.Endpoint(ev.dst_ip, ev.dst_port, ev.dst_mac or "00:00:00:00:00:00")
        else:
            client = inj.Endpoint(ev.dst_ip, ev.dst_port, ev.src_mac or "00:00:00:00:00:00")
            server = inj.Endpoint(ev.src_ip, ev.src_port, ev.dst_mac or "00:00:00:00:00:00")
        self._dns_query(q, client, server, list(ev.vlan_ids), (ev.transport or "UDP").upper(), ev.timestamp,
                        ev.flow_id)

    def _sniff_dns(self, ts: float, frame: bytes, s: enc.Seen) -> None:
        """A DNS packet from our own capture (UDP port 53), inside any tunnel."""
        sip, dip, sport, dport, smac, dmac, vlans = s.src, s.dst, s.sport, s.dport, s.smac, s.dmac, list(s.vlans)
        payload = frame[s.po:s.po + s.plen]
        if dport == 53:
            q = inj.parse_dns_query(payload)
            if q is not None and self.dns_rules:
                prefix = (frame[:s.ip_off], s.tunnel) if s.ip_off >= 0 else None
                self._dns_query(q, inj.Endpoint(sip, sport, smac), inj.Endpoint(dip, dport, dmac), vlans, "UDP", ts, "",
                                prefix=prefix)
        elif sport == 53 and self.dns_watches:
            t = inj.dns_transaction_of_response(payload)
            if t is not None and t[1]:
                self._dns_response((dip, dport, sip, sport, t[0]), ts, payload)

    def _dns_query(self, q: inj.DnsQuery, client: inj.Endpoint, server: inj.Endpoint, vlans: list[int],
                   transport: str, ts: float, flow_id: str, prefix: tuple[bytes, str] | None = None) -> None:
        key = (client.ip, client.port, server.ip, server.port, q.id)
        open_watch = self.dns_watches.get(key)
        done = self.dns_done.get(key)
        if done is not None and ts and done.t_packet and abs(ts - done.t_packet) > DNS_SAME_PACKET_S:
            # the same query again (a retry, a replay, port and id reused): a new query with its own outcome
            if open_watch is not None:
                del self.dns_watches[key]
                self._finish_dns(open_watch)
                open_watch = None
            del self.dns_done[key]
            done = None
        if open_watch is not None or done is not None:
            if open_watch is not None and flow_id and not open_watch.flow.flow_id:
                open_watch.flow.flow_id = flow_id  # seen first by our own capture
            elif flow_id and done is not None and not done.flow_id:
                done.flow_id = flow_id
            return
        ctx = MatchContext(host=q.name, src_ip=client.ip, dst_ip=server.ip, src_port=client.port,
                           dst_port=server.port, transport=transport, app_protocol="DNS")
        rule = next(iter(self.rules.matching(ctx, ("dns_block",))), None)
        if rule is None:
            return
        flow = FlowInfo(flow_id=flow_id, transport=transport, client=client, server=server, vlan_ids=vlans, ctx=ctx,
                        seen=time.monotonic(), t_packet=ts)
        self.dns_done[key] = flow
        while len(self.dns_done) > HANDLED_MAX:
            self.dns_done.popitem(last=False)
        if transport != "UDP":
            self.publish_action(self._action_event(flow, rule, "dns_block", "not_possible", q.name,
                                                   message="DNS over TCP is not answered; use a reset rule"))
            return
        guard = self._guard([client.ip, server.ip], [client.mac, server.mac], q.name)
        if guard:
            self.publish_action(self._action_event(flow, rule, "dns_block", guard, q.name,
                                                   message="allowlisted" if guard == "allowlisted" else "target is the probe itself"))
            return
        to_client: enc.Encap | None = None
        try:
            if prefix is not None:
                to_client = enc.for_flow(prefix, None)[1]  # type: ignore[index]  # the answer: the query's, mirrored
        except enc.NotPossible as exc:
            self.count("encap_not_possible")
            self.publish_action(self._action_event(flow, rule, "dns_block", "not_possible", q.name,
                                                   message=f"cannot answer into the query's encapsulation: {exc}"))
            return
        if not self.live:
            why = "dry run" if self.s.dry_run else "no injection interface (FT_IFACE): report only"
            self.publish_action(self._action_event(flow, rule, "dns_block", "dry_run", q.name, message=why))
            return
        if not self.bucket.take():
            self.publish_action(self._action_event(flow, rule, "dns_block", "rate_limited", q.name,
                                                   message="injection rate limit reached"))
            return
        answer = inj.forge_dns_answer(q, rule.dns_answer)
        if to_client is not None:
            frame = enc.wrap(to_client, inj.udp_frame(server, client, [], answer)[14:])
        else:
            frame = inj.udp_frame(server, client, vlans, answer)
        assert self.injector is not None
        t_send = time.time()
        sent = self.injector.send(frame)
        now = time.time()
        self.count("frames_sent", sent)
        latency = (now - ts) * 1000.0 if ts else 0.0
        self.latencies_ms.append(latency)
        d = DnsWatch(flow=flow, rule=rule, host=q.name, key=key, forged=answer, t_send=t_send, latency_ms=latency,
                     deadline=time.monotonic() + DNS_WINDOW_S)
        self.dns_watches[key] = d
        # the real answer may already be in our capture's buffer
        if self.drain_capture is not None and not self._in_capture:
            self.drain_capture()

    def _dns_response(self, key: tuple, ts: float, payload: bytes) -> None:
        d = self.dns_watches.get(key)
        if d is None or payload == d.forged:
            return  # not watched, or our own answer
        d.real_seen = True
        if ts < d.t_send:
            d.lost = True
        del self.dns_watches[key]
        self._finish_dns(d)

    def _finish_dns(self, d: DnsWatch) -> None:
        if d.lost:
            outcome, msg = "lost", "the real answer was captured before the forged one was sent"
        else:
            outcome = "won"
            msg = "forged answer sent before the real one" if d.real_seen else "forged answer sent; no real answer seen"
        msg += "; answered " + (d.rule.dns_answer or "NXDOMAIN")
        if not d.flow.flow_id and self.unnamed is not None:
            self.unnamed_dns.append((time.monotonic() + 1.0, d, outcome, msg))
            return
        self._publish_dns(d, outcome, msg)

    def _publish_dns(self, d: DnsWatch, outcome: str, msg: str) -> None:
        self.publish_action(self._action_event(d.flow, d.rule, "dns_block", outcome, d.host,
                                               latency_ms=d.latency_ms, attempts=1, message=msg))

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
    watcher = RuleWatcher(bus.js, settings.rules_bucket, on_change=blocker.on_rules_changed)
    await watcher.start()
    from shared.metrics import register_families, register_stats

    register_stats("block", lambda: dict(blocker.counters))
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
            src = LiveSource(settings.iface, bpf="", snaplen=2048, promisc=True, direction_in=True)
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
    # samples matter only while there are rules (on_sample returns at once otherwise): with none, they
    # are dropped unparsed, which is most of block's CPU on a busy probe without rules
    await bus.subscribe(subject("sample", settings.probe), blocker.on_sample, types=[FlowSample],
                        when=lambda: len(blocker.rules) > 0)
    await bus.subscribe(subject("verdict", settings.probe), blocker.on_verdict, types=[Verdict])
    await bus.subscribe(subject("packet", settings.probe), blocker.on_packet_event, types=[PacketEvent])
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
