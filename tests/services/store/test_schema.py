"""Schema: which events become which points, the ISMS access-log rule, timestamps, JSON-lines sink."""

from __future__ import annotations

import asyncio
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.community_id import community_id
from shared.models import (
    Alert,
    BlockAction,
    CaptureStats,
    DnsAnswer,
    DnsRecord,
    HttpInfo,
    SshInfo,
    TlsInfo,
    Verdict,
)
from services.store.lineproto import _format_fields, parse_lines, to_line, to_record
from services.store.schema import AccessLogRule, Schema, render_flow_fields, ts_ns
from services.store.sinks import JsonlSink
from tests.services.store.conftest import BASE_TS, flow

TAG_KEYS = {"probe", "transport", "app_protocol", "category", "kind", "query_type", "rcode", "alert_type", "severity",
            "action", "outcome"}


def points_of(events, **rule):
    sc = Schema(AccessLogRule(**rule))
    out = []
    for ev in events:
        sc.points(ev, out)
    return sc, out


def test_one_flows_point_per_flow_from_the_end_record():
    start = flow(1, phase="start")
    update = flow(1, phase="update", timestamp=BASE_TS + 60)
    end = flow(1)
    sc, pts = points_of([start, update, end])
    assert [p.measurement for p in pts] == ["flow_updates", "flows"]
    p = pts[1]
    assert dict(p.tags) == {"probe": "p1", "transport": "TCP", "app_protocol": "TLS", "category": "Web"}
    # timestamp = flow start to the microsecond, plus a 0-999 ns jitter from flow_id
    assert p.time_ns // 1000 == round(end.first_seen * 1e6)
    assert 0 <= p.time_ns % 1000 < 1000
    assert p.fields["src2dst_bytes"] == 1 and p.fields["dst_port"] == 443 and p.fields["host"] == "example.com"
    assert sc.ignored == 1  # the start record
    # addresses, ports, names are fields, never tags
    for q in pts:
        assert {k for k, _ in q.tags} <= TAG_KEYS


def test_timestamps_are_deterministic_and_distinct_per_flow():
    a, b = flow(1, flow_id="x1", first_seen=BASE_TS), flow(2, flow_id="x2", first_seen=BASE_TS)
    ta, tb = points_of([a])[1][0].time_ns, points_of([b])[1][0].time_ns
    assert ta == points_of([a])[1][0].time_ns  # a redelivery lands on the same point
    assert ta != tb  # same start, same tags: still two points
    assert ts_ns(1.5, "f") // 1000 == 1_500_000


def test_isms_rule_for_unknown_flows():
    short = flow(1, app="Unknown", duration_ms=5_000.0)  # 5 s: not logged
    slow = flow(2, app="Unknown", duration_ms=20_000.0, src2dst_packets=5, dst2src_packets=5)  # 0.5 pps
    long_busy = flow(3, app="Unknown", duration_ms=20_000.0, src2dst_packets=30, dst2src_packets=30)
    classified_short = flow(4, app="DNS", duration_ms=1.0)
    sc, pts = points_of([short, slow, long_busy, classified_short])
    assert sorted(p.fields["src2dst_bytes"] for p in pts) == [3, 4]
    assert sc.rule.skipped_flows == 2
    assert sc.rule.skipped_packets == 12 + 10
    assert sc.rule.skipped_bytes == (1 + 9000) + (2 + 9000)
    sc, pts = points_of([short, slow], log_all=True)
    assert len(pts) == 2
    sc, pts = points_of([short], min_duration_s=1.0, min_pps=0.5)
    assert len(pts) == 1


def test_other_measurements_and_their_tags():
    dns = DnsRecord(timestamp=BASE_TS, probe="p1", flow_id="d1", transport="UDP", src_ip="10.0.0.2", src_port=5353,
                    dst_ip="10.0.0.53", dst_port=53, transaction_id=77, is_response=True,
                    query_name="evil\n.example", query_type="A", rcode="NOERROR",
                    answers=[DnsAnswer(name="evil\n.example", rtype="A", ttl_s=60, data="192.0.2.7")])
    verdict = Verdict(timestamp=BASE_TS, probe="p1", flow_id="v1", transport="TCP", app_protocol="TLS",
                      http=HttpInfo(method="GET", host="h", url="/a b", status_code=200),
                      tls=TlsInfo(sni="s.example", ja3="abc", alpn=["h2"]))
    bare_verdict = Verdict(timestamp=BASE_TS, probe="p1", flow_id="v2", app_protocol="SSH")
    ssh = Verdict(timestamp=BASE_TS, probe="p1", flow_id="v3", transport="TCP", app_protocol="SSH",
                  src_ip="10.0.0.2", src_port=40000, dst_ip="10.0.0.22", dst_port=22,
                  ssh=SshInfo(client_banner="SSH-2.0-OpenSSH_9.2p1", server_banner="SSH-1.99-x",
                              hassh_client="a" * 32, hassh_server="b" * 32))
    alert = Alert(timestamp=BASE_TS, probe="p1", alert_id="a1", alert_type="port_scan", severity="high",
                  first_seen=BASE_TS, last_seen=BASE_TS + 1, count=42, details={"ports": "100"})
    block = BlockAction(timestamp=BASE_TS, probe="p1", flow_id="f9", rule_id="r1", action="reset", outcome="won",
                        latency_ms=0.4, attempts=1)
    stats = CaptureStats(timestamp=BASE_TS, probe="p1")
    sc, pts = points_of([dns, verdict, bare_verdict, ssh, alert, block, stats])
    by = {p.measurement: p for p in pts}
    assert sorted(by) == ["alerts", "blocks", "dns", "http", "ssh", "tls"]
    assert by["ssh"].fields["hassh"] == "a" * 32 and by["ssh"].fields["hassh_server"] == "b" * 32
    assert (by["ssh"].fields["client_version"], by["ssh"].fields["server_version"]) == ("2.0", "1.99")
    assert by["ssh"].fields["community_id"] == community_id("10.0.0.2", "10.0.0.22", 6, 40000, 22)
    assert by["dns"].fields["community_id"] == community_id("10.0.0.2", "10.0.0.53", 17, 5353, 53)
    assert by["alerts"].fields["community_id"] == ""       # an alert about no flow
    assert dict(by["dns"].tags) == {"probe": "p1", "transport": "UDP", "kind": "response", "query_type": "A",
                                    "rcode": "NOERROR"}
    assert by["dns"].fields["transaction_id"] == 77 and by["dns"].fields["answer_count"] == 1
    assert by["dns"].fields["answers"][0]["data"] == "192.0.2.7"
    assert json.loads(parse_lines(to_line(by["dns"]))[0].fields["answers"])[0]["name"] == "evil\\x0a.example"
    assert to_record(by["dns"])["answers"][0]["name"] == "evil\\x0a.example"
    assert by["http"].fields["status_code"] == 200 and by["tls"].fields["ja3"] == "abc"
    assert dict(by["alerts"].tags)["alert_type"] == "port_scan" and by["alerts"].fields["count"] == 42
    assert dict(by["blocks"].tags) == {"probe": "p1", "transport": "", "action": "reset", "outcome": "won"}
    assert sc.ignored == 2  # bare verdict, stats
    for p in pts:
        assert {k for k, _ in p.tags} <= TAG_KEYS
        assert "\n" not in to_line(p)


def test_bad_timestamps_are_counted_and_skipped():
    sc, pts = points_of([flow(1, first_seen=-5.0), flow(2, first_seen=1e12), flow(3)])
    assert len(pts) == 1 and sc.bad_timestamps == 2


_wire = st.text(max_size=40)


@given(host=_wire, app=_wire, src=_wire, fid=st.text(max_size=64), big=st.integers(min_value=0, max_value=2**70),
       vlan=st.integers(min_value=0, max_value=4095), transport=st.sampled_from(["TCP", "UDP"]),
       phase=st.sampled_from(["end", "update"]), dur=st.floats(min_value=0, max_value=1e12))
@settings(max_examples=300, deadline=None)
def test_fast_flow_renderer_equals_the_careful_one(host, app, src, fid, big, vlan, transport, phase, dur):
    f = flow(1, host=host, application=app, source=src[:40], flow_id=fid, src2dst_bytes=big, vlan_id=vlan,
             transport=transport, phase=phase, duration_ms=dur)
    _, pts = points_of([f], log_all=True)
    fast = render_flow_fields(pts[0].fields)
    slow, _ = _format_fields(pts[0].fields)
    assert fast is None or fast == slow
    if all(s.isalnum() or not s for s in (host, app, src[:40], fid)) and big < 2**63:
        assert fast is not None  # the common case takes the fast path


def test_icmp_flows_store_type_code_and_community_id_on_both_renderers():
    f = flow(1, transport="ICMP", src_ip="192.168.0.89", dst_ip="192.168.0.1", src_port=0, dst_port=0, vlan_id=7,
             icmp_type=8, icmp_code=0)
    _, pts = points_of([f], log_all=True)
    d = pts[0].fields
    assert (d["icmp_type"], d["icmp_code"], d["community_id"]) == (8, 0, "1:X0snYXpgwiv9TZtqg64sgzUn6Dk=")
    assert "src2dst_tcp_flags" not in d
    fast = render_flow_fields(d)
    assert fast is not None and fast == _format_fields(d)[0] and fast.endswith(",vlan_id=7i,icmp_type=8i,icmp_code=0i")
    # a TCP flow has neither field
    _, pts = points_of([flow(2)], log_all=True)
    assert "icmp_type" not in pts[0].fields and "icmp_code" not in pts[0].fields


def test_jsonl_sink_holds_exactly_the_influx_records(tmp_path):
    events = [flow(i, host=f"h{i},x y=\n") for i in range(5)] + [
        Alert(timestamp=BASE_TS, probe="p1", alert_id="a", alert_type="arp_spoof", first_seen=BASE_TS,
              last_seen=BASE_TS, message='quote" back\\')]
    _, pts = points_of(events)
    sink = JsonlSink(tmp_path / "out", line_protocol=True)

    async def go():
        await sink.start()
        await sink.write(pts)
        await sink.close()

    asyncio.run(go())
    out = tmp_path / "out"
    flows = [json.loads(line) for line in (out / "flows.jsonl").read_text().splitlines()]
    alerts = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    assert len(flows) == 5 and len(alerts) == 1
    assert (out / "dns.jsonl").exists() and (out / "dns.jsonl").read_text() == ""
    lp = parse_lines((out / "points.lp").read_text())
    assert len(lp) == 6
    for rec, p, parsed in zip(flows + alerts, pts, lp):
        assert rec == to_record(p)
        assert rec == {"time_ns": parsed.time_ns, **dict(parsed.tags), **parsed.fields}
    assert flows[0]["host"] == "h0,x y=\\x0a"


def test_non_finite_numbers_never_reach_the_line():
    f = flow(1, duration_ms=float("inf"))
    _, pts = points_of([f])
    line = to_line(pts[0])
    assert "inf" not in line.lower() and "nan" not in line.lower()
    assert "duration_ms" not in line and "src2dst_bytes=1i" in line
    assert "duration_ms" not in to_record(pts[0])
    sc, pts = points_of([flow(2, first_seen=float("nan")), flow(3, first_seen=float("inf"))])
    assert pts == [] and sc.bad_timestamps == 2


def test_remembered_community_ids_are_each_events_own(monkeypatch):
    """Community ids are remembered per endpoint tuple (issue 12): every point still gets the id of its
    own endpoints (ICMP type/code, IPv6, no addresses, unknown transport), also across a cache refill."""
    import services.store.schema as schema
    from shared.community_id import for_event

    monkeypatch.setattr(schema, "_CID_CACHE_MAX", 5)
    schema._cid_cache.clear()
    evs = []
    for i in range(12):
        evs.append(flow(i, src_port=1000 + i % 3))
        evs.append(flow(i, transport="ICMP", src_port=0, dst_port=0, icmp_type=i % 2 * 8, icmp_code=0))
        evs.append(flow(i, transport="ICMP", src_port=0, dst_port=0))             # no type: no id
        evs.append(flow(i, src_ip="2001:db8::1", dst_ip="2001:db8::2"))
        evs.append(flow(i, transport="UDP"))
        evs.append(flow(i, src_ip=""))
        evs.append(flow(i, transport="300"))
    for _ in range(2):
        for ev in evs:
            want = for_event(ev.transport, ev.src_ip, ev.src_port, ev.dst_ip, ev.dst_port, 0, ev.icmp_type,
                             ev.icmp_code)
            assert schema.community_id(ev) == want
            assert len(schema._cid_cache) <= 5
    _, pts = points_of(evs[:7], log_all=True)
    assert [p.fields["community_id"] for p in pts] == [schema.community_id(ev) for ev in evs[:7]]
    assert len({p.fields["community_id"] for p in pts}) == 5       # the three without an id share ""


def test_jsonl_sink_writes_the_records_bytes(tmp_path):
    """The JSON-lines files hold exactly the records as text (orjson's bytes written as they are; what orjson
    refuses, json writes, encoded as the text files were: UTF-8 with surrogatepass)."""
    from services.store.lineproto import Point
    from services.store.sinks import record_json

    pts = [Point("flows", (("probe", "p1"),), {"host": "münchen.example", "n": 1}, 1),
           Point("flows", (("probe", "p1"),), {"host": "evil\n", "n": 2**70}, 2),
           Point("dns", (("probe", "p1"),), {"answers": [{"name": "a\u2028b"}], "x": 0.5}, 3)]
    sink = JsonlSink(tmp_path, line_protocol=True, fsync=False)

    async def go():
        await sink.start()
        await sink.write(pts)
        await sink.write(pts[:1])
        await sink.close()

    asyncio.run(go())
    flows = (tmp_path / "flows.jsonl").read_bytes()
    want = [record_json(to_record(p)) for p in (pts[0], pts[1], pts[0])]
    assert flows == ("\n".join(want) + "\n").encode("utf-8", "surrogatepass")
    assert (tmp_path / "dns.jsonl").read_text().splitlines() == [record_json(to_record(pts[2]))]
    assert parse_lines((tmp_path / "points.lp").read_text()) == parse_lines(
        "\n".join(to_line(p) for p in (*pts, pts[0])))
