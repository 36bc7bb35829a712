"""SIEM output: Suricata eve.json-compatible lines, validated against Suricata's own eve schema
(an excerpt of OISF/suricata etc/schema.json, vendored in eve/ with its license)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from services.store.eve import EveWriter, eve_flow_id, iso_time
from services.store.schema import Schema
from services.store.sinks import EveSink, sinks_from_settings
from shared.community_id import community_id
from shared.models import (Alert, BlockAction, DnsAnswer, DnsQuestion, DnsRecord, HttpInfo, SshInfo, TlsInfo,
                           Verdict)
from shared.settings import StoreSettings
from tests.services.store.conftest import BASE_TS, flow

SCHEMA = json.loads((Path(__file__).parent / "eve" / "eve-schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
ENV = dict(timestamp=BASE_TS, probe="p1", flow_id="f-1", transport="TCP", src_ip="10.0.0.2", src_port=40000,
           dst_ip="10.0.0.80", dst_port=80)


def eve_lines(events) -> list[dict]:
    sc = Schema()
    sc.rule.log_all = True
    pts = []
    for e in events:
        sc.points(e, pts)
    w = EveWriter()
    return [json.loads(x) for x in map(w.line, pts) if x is not None]


def valid(rec: dict) -> None:
    errors = sorted(VALIDATOR.iter_errors(rec), key=str)
    assert not errors, (rec, [e.message for e in errors])


def every_kind():
    dns_env = dict(ENV, transport="UDP", dst_port=53, flow_id="d-1")
    return [
        flow(1, transport="TCP", app_protocol="HTTP", src_ip="10.0.0.2", src_port=40000, dst_ip="10.0.0.80", dst_port=80, src_mac="02:00:00:00:00:01", dst_mac="02:00:00:00:00:02",
             vlan_id=12, end_reason="fin", tunnel="VXLAN"),
        DnsRecord(**dns_env, transaction_id=7, is_response=False, query_name="www.example.com", query_type="A",
                  flags=["rd"], questions=[DnsQuestion(name="www.example.com", rtype="A", rclass="IN")]),
        DnsRecord(**dns_env, transaction_id=7, is_response=True, query_name="www.example.com", query_type="A",
                  rcode="NXDOMAIN", flags=["aa", "rd", "ra"], from_src=False, rtt_ms=2.5, query_time=BASE_TS - 0.0025,
                  answers=[DnsAnswer(name='q"\\x0a.example', rtype="A", rclass="IN", ttl_s=60, data="192.0.2.7")],
                  authorities=[DnsAnswer(name="example", rtype="SOA", ttl_s=3600, data="ns. host. 1 2 3 4 5")],
                  additionals=[DnsAnswer(name=".", rtype="OPT", rclass="1232")]),
        Verdict(**ENV, app_protocol="HTTP", http=HttpInfo(method="GET", url="/one"),
                http_transactions=[HttpInfo(method="GET", host="h.example", url="/one", version="1.1", status_code=200,
                                            user_agent="curl/8", referer="http://r/", content_type="text/html",
                                            response_body_len=3),
                                   HttpInfo(method="POST", host="h.example", url="/two", status_code=201, trans_depth=2)]),
        Verdict(**dict(ENV, dst_port=443), app_protocol="TLS",
                tls=TlsInfo(sni="s.example", version="TLSv1.2", ja3="a" * 32, ja3s="b" * 32,
                            cert_subject="CN=s.example,O=Org", cert_issuer="CN=CA", cert_serial="0A1B",
                            cert_not_before=1767225600.0, cert_not_after=1798761600.0)),
        Verdict(**dict(ENV, dst_port=22), app_protocol="SSH",
                ssh=SshInfo(client_banner="SSH-2.0-OpenSSH_9.2p1 Debian-2", server_banner="SSH-2.0-OpenSSH_9.2p1",
                            hassh_client="c" * 32, hassh_server="d" * 32)),
        Alert(**ENV, alert_id="a1", alert_type="port_scan", severity="high", first_seen=BASE_TS, last_seen=BASE_TS,
              message="port scan from 10.0.0.2", rule_id="r7"),
        Alert(timestamp=BASE_TS, probe="p1", alert_id="a2", alert_type="arp_spoof", first_seen=BASE_TS,
              last_seen=BASE_TS),
        BlockAction(**ENV, rule_id="no-evil", action="reset", outcome="won", host="evil.example"),
        BlockAction(**ENV, rule_id="dry", action="reset", outcome="dry_run"),
    ]


def test_every_kind_validates_against_suricatas_schema():
    recs = eve_lines(every_kind())
    assert [r["event_type"] for r in recs] == ["flow", "dns", "dns", "http", "http", "tls", "ssh", "alert", "alert",
                                              "alert", "alert"]
    for r in recs:
        valid(r)
    fl, q, a, h1, h2, tls, ssh, al, al2, blk, dry = recs
    cid = community_id("10.0.0.2", "10.0.0.80", 6, 40000, 80)
    assert fl["community_id"] == cid == h1["community_id"] == al["community_id"] == blk["community_id"]
    assert fl["flow_id"] > 0 and isinstance(fl["flow_id"], int)
    assert h1["flow_id"] == h2["flow_id"] == eve_flow_id("f-1") and h1["tx_id"] == 0 and h2["tx_id"] == 1
    assert fl["flow"]["state"] == "closed" and fl["vlan"] == [12] and fl["ether"]["dest_mac"] == "02:00:00:00:00:02"
    assert fl["tunnel"]["proto"] == "VXLAN"
    assert q["dns"] == {"version": 2, "type": "query", "id": 7, "tx_id": 0, "rrname": "www.example.com", "rrtype": "A"}
    assert a["dns"]["type"] == "answer" and a["dns"]["flags"] == "8583" and a["dns"]["rcode"] == "NXDOMAIN"
    assert a["dns"]["answers"] == [{"rrname": 'q"\\x0a.example', "rrtype": "A", "ttl": 60, "rdata": "192.0.2.7"}]
    assert a["dns"]["authorities"][0]["rrtype"] == "SOA"
    assert h1["http"] == {"hostname": "h.example", "url": "/one", "http_user_agent": "curl/8",
                          "http_content_type": "text/html", "http_refer": "http://r/", "http_method": "GET",
                          "protocol": "HTTP/1.1", "status": 200, "length": 3, "http_port": 80}
    assert tls["tls"]["serial"] == "0A:1B" and tls["tls"]["notbefore"] == "2026-01-01T00:00:00"
    assert tls["tls"]["version"] == "TLS 1.2" and tls["tls"]["ja3"] == {"hash": "a" * 32}
    assert ssh["ssh"]["client"] == {"proto_version": "2.0", "software_version": "OpenSSH_9.2p1 Debian-2",
                                    "hassh": {"hash": "c" * 32}}
    assert al["alert"]["severity"] == 1 and al["alert"]["action"] == "allowed" and "community_id" not in al2
    assert blk["alert"]["action"] == "blocked" and dry["alert"]["action"] == "allowed"
    assert recs[0]["timestamp"].endswith("+0000") and iso_time(0.5) == "1970-01-01T00:00:00.500000+0000"


def test_schema_rejects_what_eve_does_not_define():
    """The validation is not vacuous: a key eve does not know, a wrong type or a bad timestamp fail."""
    rec = eve_lines(every_kind()[:1])[0]
    for bad in ({**rec, "flowtarget_host": "x"}, {**rec, "flow_id": "f-1"}, {**rec, "timestamp": "2026-12-04 10:00"},
                {**rec, "flow": {**rec["flow"], "pkts": 1}}):
        assert list(VALIDATOR.iter_errors(bad))


def test_eve_sink_writes_eve_json(tmp_path):
    sinks = sinks_from_settings(StoreSettings(out_dir=tmp_path, out_format="eve"))
    assert [type(s) for s in sinks] == [EveSink]
    sc = Schema()
    pts = []
    for e in every_kind():
        sc.points(e, pts)

    async def go():
        await sinks[0].start()
        await sinks[0].write(pts)
        await sinks[0].close()

    asyncio.run(go())
    lines = (tmp_path / "eve.json").read_text().splitlines()
    assert len(lines) == 11
    for ln in lines:
        valid(json.loads(ln))


def test_bad_out_format_is_a_configuration_error():
    proc = subprocess.run([sys.executable, "-c", "from shared.settings import StoreSettings; StoreSettings()"],
                          env={"FT_OUT_FORMAT": "csv", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert proc.returncode != 0 and "out_format" in proc.stderr


def test_analyze_pings_eve_has_community_ids(tmp_path):
    """`flowtarget analyze --format eve` on a capture with pings: the ICMP/ICMPv6 flows have the spec's Community ID
    (baseline/README.md vectors; the one-way unreachable by the spec's algorithm written out in the capture test)."""
    from tests.services.capture.test_icmp_community_id import eth4, eth6, spec_cid
    from tests.services.capture.test_sources import write_pcap

    v6a, v6b = "3ffe:507:0:1:200:86ff:fe05:80da", "3ffe:501:0:1001::2"
    frames = []
    for i in range(3):
        body = bytes((0, 7, 0, i)) + b"x" * 32
        frames += [eth4("192.168.0.89", "192.168.0.1", 8, 0, body), eth4("192.168.0.1", "192.168.0.89", 0, 0, body),
                   eth6(v6a, v6b, 128, 0, body), eth6(v6b, v6a, 129, 0, body)]
    frames.append(eth4("10.0.0.9", "10.0.0.3", 3, 3, b"\0\0\0\0" + b"E" * 28))
    pcap = write_pcap(tmp_path / "pings.pcap", [(BASE_TS + i * 0.3, fr) for i, fr in enumerate(frames)])
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "flowtarget", "analyze", "--out", str(out), "--format", "eve",
                           "--no-progress", str(pcap)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = [json.loads(ln) for ln in (out / "eve.json").read_text().splitlines()]
    for r in recs:
        valid(r)
    flows = {r["src_ip"]: r for r in recs if r["event_type"] == "flow"}
    assert {k: (v["proto"], v.get("community_id"), v.get("icmp_type"), v.get("icmp_code")) for k, v in flows.items()} == {
        "192.168.0.89": ("ICMP", "1:X0snYXpgwiv9TZtqg64sgzUn6Dk=", 8, 0),
        v6a: ("IPv6-ICMP", "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg=", 128, 0),
        "10.0.0.9": ("ICMP", spec_cid("10.0.0.9", "10.0.0.3", 1, 3, 3, one_way=True), 3, 3),
    }
    assert flows["192.168.0.89"]["flow"]["pkts_toclient"] == 3


@pytest.mark.slow
@pytest.mark.corpus
def test_analyze_dev_corpora_eve_validates(tmp_path):
    """Every record `flowtarget analyze --format eve` writes for the dev corpora validates against eve's schema."""
    from tests.conftest import need_corpus

    ndpi = need_corpus()
    zeek = ndpi.parent.parent / "zeek" / "dev"
    files = sorted(str(p) for d in (ndpi, zeek) if d.is_dir() for p in d.iterdir()
                   if p.suffix in (".pcap", ".pcapng", ".cap"))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "flowtarget", "analyze", "--out", str(out), "--format", "eve",
                           "--no-progress", *files], capture_output=True, text=True, timeout=1500,
                          env={**__import__("os").environ, "FT_USE_NDPI": "false"})
    assert proc.returncode in (0, 1), proc.stderr[-3000:]    # 1: some corpus files are deliberately broken
    lines = (out / "eve.json").read_text().splitlines()
    kinds: dict[str, int] = {}
    for ln in lines:
        rec = json.loads(ln)
        valid(rec)
        kinds[rec["event_type"]] = kinds.get(rec["event_type"], 0) + 1
    print(kinds)
    assert {"flow", "dns", "http", "tls", "ssh"} <= set(kinds), kinds
    assert all(r.get("community_id") for r in map(json.loads, lines[:2000])
               if r["event_type"] == "flow" and r.get("proto") in ("TCP", "UDP"))
    icmp = [r for r in map(json.loads, lines) if r["event_type"] == "flow" and r.get("proto") in ("ICMP", "IPv6-ICMP")]
    assert icmp and all(r.get("community_id") and "icmp_type" in r for r in icmp)
