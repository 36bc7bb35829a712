"""The TCP race: inject resets / a block page into a flow as it was seen, then judge who won.

A mixin of ``services.block.service.Blocker`` (it uses the blocker's injector,
rate limit, packet ring and event publishing): ``enforce`` starts a race,
``on_packet`` (block's own capture, inside any tunnel) feeds it, ``_judge``
reads each packet of the flow after the injection as evidence (see the
service's docstring for the outcomes), ``_conclude`` decides at the deadline.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from services.block import encap as enc
from services.block import inject as inj
from services.block.rules import MatchContext, Rule
from services.block.state import (
    _TRIGGER_FIRST_BYTES, PREFIX_MAX_KEYS, RECENT_MAX_KEYS, RECENT_PER_KEY, RECENT_S, TH_ACK, TH_FIN, TH_RST,
    TH_SYN, FlowInfo, _reverse_key, _seq_gt, flow_keys,
)

log = logging.getLogger("flowtarget.block")

PENDING_TTL_S = 120.0
PHOTO_FINISH_S = 0.0005  # server data captured this close after our send may still have arrived first


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


class TcpRace:
    """Blocker's TCP part (a mixin: state lives in Blocker.__init__)."""

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
