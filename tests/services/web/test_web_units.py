"""The console's pieces one function at a time, and the service's refusals at start."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys

import pytest

from services.block import rules as R
from services.web import history
from services.web.app import EvidenceIndex, bpf_for_alert, rule_from_form
from services.web.auth import Auth
from services.web.live import parse_metrics
from shared.models import Evidence
from shared.settings import WebSettings


def flow(**kw):
    d = dict(phase="end", src_ip="10.0.0.5", dst_ip="93.184.216.34", src_port=40000, dst_port=443,
             transport="TCP", app_protocol="TLS", application="Google", host="www.google.com",
             first_seen=100.0, last_seen=110.0)
    d.update(kw)
    return d


def test_flow_filter_by_host_cidr_port_protocol_application_and_time():
    f = history.flow_filter
    assert f({"host": "10.0.0.5"})(flow()) and not f({"host": "10.0.0.6"})(flow())
    assert f({"host": "10.0.0.0/24"})(flow()) and not f({"host": "10.1.0.0/16"})(flow())
    assert f({"host": "google"})(flow())                     # a part of the host name
    assert f({"port": "443"})(flow()) and f({"port": "40000"})(flow()) and not f({"port": "80"})(flow())
    assert f({"protocol": "tls"})(flow()) and f({"protocol": "TCP"})(flow()) and not f({"protocol": "udp"})(flow())
    assert f({"application": "goo"})(flow()) and not f({"application": "netflix"})(flow())
    assert f({"from": "105", "to": "120"})(flow()) and not f({"from": "111"})(flow()) and not f({"to": "99"})(flow())
    assert f({"from": "1970-01-01T00:01:45Z"})(flow())      # ISO 8601 = 105 s
    assert not f({})(flow(phase="start"))                    # the access log: ended flows
    with pytest.raises(history.FilterError):
        f({"port": "http"})
    with pytest.raises(history.FilterError):
        f({"from": "yesterday"})


def test_incidents_fold_to_their_latest_update_and_keep_evidence():
    updates = [  # newest first, as scan returns them
        {"alert_id": "a", "last_seen": 30, "count": 9, "details": {"state": "closed"}, "evidence_pcap": ""},
        {"alert_id": "b", "last_seen": 20, "count": 1, "details": {"state": "open"}, "evidence_pcap": ""},
        {"alert_id": "a", "last_seen": 10, "count": 1, "details": {"state": "open"}, "evidence_pcap": "/e/a.pcap"},
    ]
    inc = history.fold_incidents(updates)
    assert [(i["alert_id"], i["state"], i["count"], i["updates"]) for i in inc] == [("a", "closed", 9, 2), ("b", "open", 1, 1)]
    assert inc[0]["evidence_pcap"] == "/e/a.pcap"


def test_bpf_for_an_alert_is_built_only_from_valid_addresses():
    assert bpf_for_alert({"alert_type": "arp_flood", "details": {"src_mac": "66:66:66:66:66:66"}}) == \
        "arp and ether src 66:66:66:66:66:66"
    assert bpf_for_alert({"alert_type": "arp_flood", "details": {"src_mac": "66:66 or tcp"}}) == "arp"
    assert bpf_for_alert({"alert_type": "port_scan", "src_ip": "10.0.0.1", "dst_ip": "2001:db8::1"}) == \
        "host 10.0.0.1 and host 2001:db8::1"
    assert bpf_for_alert({"alert_type": "port_scan", "src_ip": "10.0.0.1 or 1=1", "dst_ip": ""}) == ""


def test_evidence_files_are_served_only_from_inside_the_evidence_directory(tmp_path):
    from services.web.app import Console

    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "a.pcap").write_bytes(b"x")
    (tmp_path / "secret").write_text("no")
    (ev / "link.pcap").symlink_to(tmp_path / "secret")
    c = Console.__new__(Console)
    c.settings = WebSettings(evidence_dir=ev, web_token="t")
    assert c.evidence_file(str(ev / "a.pcap")) == (ev / "a.pcap").resolve()
    assert c.evidence_file("a.pcap") == (ev / "a.pcap").resolve()
    for bad in (str(tmp_path / "secret"), str(ev / ".." / "secret"), "../secret", str(ev / "link.pcap"), str(ev), "",
                "/etc/passwd", str(ev / "missing.pcap")):
        assert c.evidence_file(bad) is None, bad


def test_requested_recordings_are_matched_in_order_and_alert_evidence_by_ref():
    idx = EvidenceIndex()
    idx.pending += [("a1", 0.0), ("a2", 0.0)]
    mk = lambda path, reason, ref: Evidence(timestamp=1, probe="p", path=path, reason=reason, ref=ref)  # noqa: E731
    idx.add(mk("/e/1.pcap", "request", "ctl"))
    idx.add(mk("/e/x.pcap", "alert", "a3"))
    idx.add(mk("/e/2.pcap", "request", "ctl"))
    idx.add(mk("/e/3.pcap", "request", "ctl"))            # not ours: nothing pending
    assert idx.path_for("a1") == "/e/1.pcap" and idx.path_for("a2") == "/e/2.pcap"
    assert idx.path_for("a3") == "/e/x.pcap" and idx.path_for("a4", "/e/own.pcap") == "/e/own.pcap"


def test_the_rule_form_builds_what_rules_add_builds_and_the_same_validation_refuses_it():
    from services.block.rules import _rule_from_args

    form = {"id": "r1", "action": "dns_block", "host": "*.a.test, b.test", "port": "53", "dns_answer": "0.0.0.0",
            "message": "", "priority": "5", "transport": "", "cidr": ""}
    args = argparse.Namespace(id="r1", action="dns_block", host=["*.a.test", "b.test"], cidr=None, port=["53"],
                              transport=None, app_protocol=None, application=None, category=None, expires=None,
                              dns_answer="0.0.0.0", redirect=None, message=None, priority=5)
    assert R.parse_rule(rule_from_form(form)) == R.parse_rule(_rule_from_args(args))
    with pytest.raises(R.RuleError, match="port 70000 out of range"):
        R.parse_rule(rule_from_form({**form, "port": "70000"}), "rule")
    with pytest.raises(R.RuleError, match="needs at least one of"):
        R.parse_rule(rule_from_form({"id": "r2", "action": "reset"}), "rule")
    broad = {"id": "r3", "action": "alert", "host": "*"}
    with pytest.raises(R.RuleError, match="matches every flow"):
        R.parse_rule(rule_from_form(broad), "rule")
    assert R.parse_rule(rule_from_form({**broad, "force": "1"}), "rule").force


def test_metrics_text_is_summed_per_name():
    text = ('# HELP x\nflowtarget_ready{service="c",probe="p"} 1\nflowtarget_capture_packets_total{a="1"} 10\n'
            'flowtarget_capture_packets_total{a="2"} 5\ngarbage line\n')
    m = parse_metrics(text)
    assert m["flowtarget_ready"] == 1 and m["flowtarget_capture_packets_total"] == 15


def test_logins_compare_credentials_and_are_rate_limited():
    a = Auth(WebSettings(web_user="op", web_password="pw", web_token="tok"))
    assert a.check_login("op", "pw", "") == "op" and a.check_login("", "", "tok") == "token"
    assert a.check_login("op", "nope", "") is None and a.check_login("", "", "tok2") is None
    assert a.check_bearer("Bearer tok") and not a.check_bearer("Bearer to") and not a.check_bearer("tok")
    for _ in range(5):
        a.login_failed("1.2.3.4")
    assert a.login_blocked("1.2.3.4") and not a.login_blocked("1.2.3.5")
    s = a.new_session()
    assert a.csrf_ok(s, s.csrf) and not a.csrf_ok(s, "") and not a.csrf_ok(None, s.csrf)
    a.record("op<\n>", "stored rule x\ninjected line")
    assert "\n" not in a.audit[-1].what and "\n" not in a.audit[-1].who


def test_web_refuses_to_start_without_a_login_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FT_WEB_")}
    env["FT_NATS_URL"] = "nats://127.0.0.1:1"      # never reached: the check comes first
    out = subprocess.run([sys.executable, "-m", "flowtarget", "web"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "flowtarget web: configuration error: set FT_WEB_TOKEN, or FT_WEB_USER and FT_WEB_PASSWORD "
        "(the console ships no credentials)"]
    out = subprocess.run([sys.executable, "-m", "flowtarget", "web"], env={**env, "FT_WEB_TOKEN": "t", "FT_WEB_PORT": "x"},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.startswith("flowtarget web: configuration error: FT_WEB_PORT")


def test_web_serves_on_loopback_by_default_and_unsubscribes_when_nobody_watches(nats_server, tmp_path):
    """A real nats-server: the live subscription exists only while a viewer is connected."""
    from shared.bus import Bus
    from services.web import live

    async def main():
        s = WebSettings(nats_url=nats_server.url, web_token="t", probe="p")
        assert s.web_addr == "127.0.0.1"
        bus = await Bus.connect(s, "web-test")
        hub = live.LiveHub(s, bus)
        old = live.IDLE_UNSUBSCRIBE_S
        live.IDLE_UNSUBSCRIBE_S = 0.0
        try:
            assert not hub.subscribed
            await hub.join()
            assert hub.subscribed
            from shared.models import EventBatch, FlowRecord

            recs = [FlowRecord(timestamp=1, probe="p", flow_id=f"f{i}", phase=ph, first_seen=1, last_seen=2,
                               src_ip="10.0.0.1", dst_ip="10.0.0.2", src2dst_bytes=100, app_protocol="DNS")
                    for i in range(3) for ph in ("start", "end")]
            await bus.publish("ft.flow.p", EventBatch(events=recs))
            await bus.nc.flush()
            await asyncio.sleep(0.3)
            snap = hub.snapshot()
            assert snap["flows_total"] == 3 and snap["flows_per_s"] > 0
            assert snap["top_talkers"][0] == ["10.0.0.1", 300] and snap["top_protocols"] == [["DNS", 3]]
            await hub.leave()
            await hub.reap()
            assert not hub.subscribed
            await bus.publish("ft.flow.p", EventBatch(events=recs))   # nobody watches: not even received
            await bus.nc.flush()
            await asyncio.sleep(0.2)
            assert hub.flows_total == 3
        finally:
            live.IDLE_UNSUBSCRIBE_S = old
            await bus.close()

    asyncio.run(main())


def test_history_reads_the_stream_newest_first_and_stops_when_the_page_is_full(nats_server):
    """A real JetStream stream: flow batches interleaved with DNS records and a malformed message."""
    from shared.bus import Bus
    from shared.models import DnsRecord, EventBatch, FlowRecord

    async def main():
        s = WebSettings(nats_url=nats_server.url, web_token="t", probe="p")
        bus = await Bus.connect(s, "web-test")
        await bus.ensure_stream()
        n = 0
        for b in range(60):
            recs = [FlowRecord(timestamp=n + i, probe="p", flow_id=f"f{n + i}", phase="end", first_seen=n + i,
                               last_seen=n + i + 1, src_port=(n + i) % 7, transport="UDP") for i in range(10)]
            n += 10
            await bus.js_publish("ft.flow.p", EventBatch(events=recs))
            await bus.js_publish("ft.dns.p", DnsRecord(timestamp=b, probe="p", transaction_id=b, is_response=False,
                                                       query_name=f"q{b}.test"))
            if b == 30:
                await bus.js.publish("ft.flow.p", b'{"event_type": "flow", "oops": 1}')
        every = await history.scan(bus.js, s.stream_name, "flow", lambda d: True, 10_000, 10_000)
        # small windows (the default is 256 sequence numbers) so that this short stream takes several
        page = await history.scan(bus.js, s.stream_name, "flow", lambda d: True, 25, 10_000, first_window=4)
        port3 = await history.scan(bus.js, s.stream_name, "flow", lambda d: d["src_port"] == 3, 5, 10_000,
                                   first_window=4)
        capped = await history.scan(bus.js, s.stream_name, "flow", lambda d: True, 10_000, 7)
        dns = await history.scan(bus.js, s.stream_name, "dns", lambda d: True, 100, 10_000)
        none = await history.scan(bus.js, s.stream_name, "alert", lambda d: True, 100, 10_000)
        await bus.close()
        return every, page, port3, capped, dns, none

    every, page, port3, capped, dns, none = asyncio.run(main())
    assert [r["flow_id"] for r in every.rows] == [f"f{i}" for i in range(599, -1, -1)]   # all, newest first
    assert every.malformed == 1 and every.scanned_messages == 61 and not every.more and not every.truncated
    assert [r["flow_id"] for r in page.rows] == [f"f{i}" for i in range(599, 574, -1)]
    assert page.more and page.scanned_messages < 61            # stopped once the page was full
    assert [r["flow_id"] for r in port3.rows] == ["f598", "f591", "f584", "f577", "f570"]
    assert capped.truncated and capped.scanned_messages == 7 and capped.rows[0]["flow_id"] == "f599"
    assert [r["query_name"] for r in dns.rows[:2]] == ["q59.test", "q58.test"] and len(dns.rows) == 60
    assert none.rows == [] and none.scanned_messages == 0


def test_rules_are_read_with_any_statistics_stored_beside_them(nats_server):
    """A real KV bucket: block's validation for the rule, the entry's other fields shown as statistics."""
    import json

    from services.web.app import read_rules_with_stats

    async def main():
        import nats

        nc = await nats.connect(nats_server.url)
        kv = await R.open_bucket(nc.jetstream(), "ft_rules")
        await kv.put("plain", b'{"id": "plain", "action": "reset", "host": ["a.test"]}')
        await kv.put("counted", json.dumps({"id": "counted", "action": "alert", "port": [53], "hits": 7,
                                            "stats": {"won": 5, "lost": 2}}).encode())
        await kv.put("bad", b'{"id": "bad", "action": "explode", "host": ["b.test"]}')
        await kv.put("junk", b"not json")
        entries, errors = await read_rules_with_stats(kv)
        await nc.close()
        return entries, errors

    entries, errors = asyncio.run(main())
    by_id = {e["rule"].id: e for e in entries}
    assert set(by_id) == {"plain", "counted"}
    assert by_id["plain"]["stats"] == {} and by_id["counted"]["stats"] == {"hits": 7, "won": 5, "lost": 2}
    assert by_id["counted"]["match"] == {"port": [53]}
    assert len(errors) == 2 and any("field 'action'" in e for e in errors) and any("not JSON" in e for e in errors)
