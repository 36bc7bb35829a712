"""block's decisions that need no injection: what it reports for flows it cannot or must not touch."""

from __future__ import annotations

import asyncio
import time

from shared.models import PacketEvent, QuicInfo, Verdict
from shared.settings import BlockSettings

from services.block.rules import RuleSet, parse_rules_text
from services.block.service import Blocker

RULES = parse_rules_text("""
rules:
  - {id: r-quic, host: "*.video.test", action: reset}
  - {id: r-dnsq, host: "*.video.test", action: dns_block}
  - {id: r-drop, host: "drop.test", action: drop}
  - {id: r-watch, host: "watch.test", action: alert, message: "someone watches"}
  - {id: r-reset, host: "bad.test", action: reset}
  - {id: r-ads, host: "ads.test", action: dns_block, dns_answer: 0.0.0.0}
""")


def _blocker(**kw) -> Blocker:
    b = Blocker(BlockSettings(probe="unit", **kw), bus=None)
    b.on_rules_changed(RuleSet(RULES), [])
    return b


def _verdict(host: str, transport: str = "TCP", app: str = "TLS", **kw) -> Verdict:
    base = dict(timestamp=time.time(), probe="unit", flow_id=f"f-{host}-{transport}", transport=transport,
                src_ip="10.1.0.2", src_port=40000, dst_ip="10.1.0.3", dst_port=443, app_protocol=app, host=host,
                src_mac="02:00:00:00:00:02", dst_mac="02:00:00:00:00:03", src2dst_next_seq=100, src2dst_ack=200,
                dst2src_next_seq=200, trigger_time=time.time())
    base.update(kw)
    return Verdict(**base)


def _run(b: Blocker, *verdicts: Verdict) -> list:
    async def go():
        for v in verdicts:
            await b.on_verdict(v)
    asyncio.run(go())
    return list(b.recent_actions)


def test_quic_cannot_be_reset_and_says_so():
    b = _blocker()
    v = _verdict("", transport="UDP", app="QUIC", quic=QuicInfo(sni="www.video.test"))
    [a] = _run(b, v)
    assert (a.action, a.outcome, a.rule_id) == ("reset", "not_possible", "r-quic")
    assert "dns_block rule r-dnsq" in a.message
    assert b.recent_alerts and b.recent_alerts[0].rule_id == "r-quic"


def test_drop_is_inline_only_and_alert_only_alerts():
    b = _blocker()
    acts = _run(b, _verdict("drop.test"), _verdict("watch.test"))
    assert [(a.action, a.outcome) for a in acts] == [("drop", "not_possible"), ("alert", "unknown")]
    assert "inline" in acts[0].message
    assert [al.message for al in b.recent_alerts] == ["someone watches"]


def test_no_interface_reports_dry_run_once_per_flow():
    b = _blocker()
    v = _verdict("bad.test")
    acts = _run(b, v, v, _verdict("good.test"))
    assert [(a.rule_id, a.outcome) for a in acts] == [("r-reset", "dry_run")]


def test_allowlist_and_the_probe_itself_are_never_targets():
    b = _blocker(allowlist=["10.1.0.0/24"])
    [a] = _run(b, _verdict("bad.test"))
    assert a.outcome == "allowlisted"
    b = _blocker(allowlist=["*.bad.test", "bad.test"])
    [a] = _run(b, _verdict("bad.test"))
    assert a.outcome == "allowlisted"
    b = _blocker(probe_addresses=["10.1.0.3"])
    [a] = _run(b, _verdict("bad.test"))
    assert a.outcome == "not_possible" and "probe itself" in a.message
    b = _blocker()
    b.own_mac = "02:00:00:00:00:03"
    [a] = _run(b, _verdict("bad.test"))
    assert a.outcome == "not_possible"


def test_dns_query_events_drive_dns_block_and_dns_verdicts_do_not_reset():
    import dpkt

    b = _blocker()
    q = bytes(dpkt.dns.DNS(id=7, op=dpkt.dns.DNS_RD, qd=[dpkt.dns.DNS.Q(name="ads.test", type=1)]))
    ev = PacketEvent(timestamp=time.time(), probe="unit", flow_id="d1", transport="UDP", src_ip="10.1.0.2",
                     src_port=5353, dst_ip="10.1.0.3", dst_port=53, kind="dns", payload=q,
                     src_mac="02:00:00:00:00:02", dst_mac="02:00:00:00:00:03")

    async def go():
        await b.on_packet_event(ev)
        await b.on_packet_event(ev.model_copy(update={"payload": b"\x00junk"}))
        await b.on_verdict(_verdict("bad.test", transport="UDP", app="DNS", flow_id="dnsflow"))
    asyncio.run(go())
    acts = list(b.recent_actions)
    assert [(a.action, a.outcome, a.host) for a in acts] == [("dns_block", "dry_run", "ads.test")]


class _CountingInjector:
    """Stands in for the raw socket in this unit test of the judging rules: counts what would be sent."""

    def __init__(self) -> None:
        self.sent = 0

    def send(self, *frames: bytes) -> int:
        self.sent += len(frames)
        return len(frames)


def _page_watch(b: Blocker):
    from services.block import inject as inj
    from services.block.rules import MatchContext
    from services.block.service import FlowInfo, Watch

    flow = FlowInfo(flow_id="f1", transport="TCP", client=inj.Endpoint("10.1.0.2", 40000, "02:00:00:00:00:02"),
                    server=inj.Endpoint("10.1.0.3", 80, "02:00:00:00:00:03"), vlan_ids=[],
                    ctx=MatchContext(host="bad.test"), seen=time.time())
    rule = next(r for r in RULES if r.id == "r-reset")
    w = Watch(flow=flow, rule=rule, action="http_block", c_next=1000, s_next=5000, page_len=300, attempts=1,
              t_send=100.0, t_inj=100.001)
    b.watches.append(w)
    return w


def test_a_client_ack_of_real_data_before_the_injection_arrived_means_lost():
    """No-delay race: the real answer (120 bytes) reached the client and was acknowledged before our frames
    were all out; our longer page's tail is then accepted and the client's closing RST acknowledges the
    page's end, the same ack a won race gives.  The early ACK decides: lost (and reset again)."""
    from services.block.service import TH_ACK, TH_RST

    b = _blocker()
    b.injector = _CountingInjector()
    w = _page_watch(b)
    b._judge(w, True, 100.0005, 1000, 5000 + 120, TH_ACK, 0)           # ACK of the real answer, before t_inj
    assert w.lost and w.attempts == 2 and b.injector.sent > 0
    b._judge(w, True, 100.01, 1000, 5000 + 300 + 1, TH_RST | TH_ACK, 0)  # the closing RST
    assert w.lost and not w.done   # finished as lost at the race deadline, never as won


def test_an_ack_of_our_page_before_t_inj_is_not_evidence_of_loss_and_the_rst_then_wins():
    from services.block.service import TH_ACK, TH_RST

    b = _blocker()
    b.injector = _CountingInjector()
    w = _page_watch(b)
    b._judge(w, True, 100.0005, 1000, 5000 + 300 + 1, TH_ACK, 0)        # our page (and FIN) acknowledged
    b._judge(w, True, 100.0006, 1000, 5000, TH_ACK, 0)                  # an old ACK: no evidence either
    assert not w.lost and w.attempts == 1 and b.injector.sent == 0
    b._judge(w, True, 100.01, 1000, 5000 + 300 + 1, TH_RST | TH_ACK, 0)
    assert w.done and not w.lost
