"""The DNS race: answer a matching query with a forged response before the real one, and judge it.

A mixin of ``services.block.service.Blocker``: queries come from block's own
capture (inside any tunnel; the answer goes back through the query's
encapsulation, mirrored) or from capture's DNS packet events; the real
response, when captured before the forged one was sent, means ``lost``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from shared.models import PacketEvent

from services.block import encap as enc
from services.block import inject as inj
from services.block.rules import MatchContext, Rule
from services.block.state import HANDLED_MAX, FlowInfo

DNS_WINDOW_S = 2.0
DNS_SAME_PACKET_S = 0.25  # one DNS query seen by our capture and by capture's packet event: same packet time


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


class DnsRace:
    """Blocker's DNS part (a mixin: state lives in Blocker.__init__)."""

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
