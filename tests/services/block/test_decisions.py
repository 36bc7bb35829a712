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


def test_actions_and_alerts_about_an_icmp_flow_carry_its_type_and_code():
    """block copies the verdict's icmp_type/icmp_code onto its BlockAction and policy Alert, from which store
    computes the ICMP flow's Community ID (spec vector: 192.168.0.89 -> 192.168.0.1 echo request)."""
    from services.store.schema import community_id

    rules = parse_rules_text("""
rules:
  - {id: r-ping, cidr: 192.168.0.1/32, app_protocol: ICMP, action: drop}
  - {id: r-ping-seen, cidr: 192.168.0.1/32, app_protocol: ICMP, action: alert}
""")
    b = Blocker(BlockSettings(probe="unit"), bus=None)
    b.on_rules_changed(RuleSet(rules), [])
    v = _verdict("", transport="ICMP", app="ICMP", src_ip="192.168.0.89", src_port=0, dst_ip="192.168.0.1",
                 dst_port=0, icmp_type=8, icmp_code=0)
    [a] = _run(b, v)
    [al] = b.recent_alerts
    assert (a.action, a.rule_id, al.rule_id) == ("drop", "r-ping", "r-ping-seen")
    for ev in (a, al):
        assert (ev.icmp_type, ev.icmp_code) == (8, 0)
        assert community_id(ev) == "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="
