"""The SOC's records from real clients in the namespace lab: dig (UDP and +tcp), curl with keep-alive
and several URLs, ssh, openssl s_client over TLS 1.2.  The probe's capture goes through every service
(`flowtarget analyze`: capture, classify, store) into the JSON lines and the eve output, and every
field the records promise is checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from shared.community_id import community_id
from tests.lab import lab_fixture, servers
from tests.lab.tools import start_tcpdump, wait_pcap_settled

pytestmark = [pytest.mark.root, pytest.mark.slow]

lab = lab_fixture(scope="module", mode="hub", net=79)
HEX32 = set("0123456789abcdef")


def read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def records(lab, tmp_path_factory):
    work = tmp_path_factory.mktemp("labrec")
    srv = lab.server.ip
    servers.start_http(lab)
    servers.start_dnsmasq(lab, {"www.lab.test": [srv]})
    servers.start_sshd(lab, work)
    (work / "tls12").mkdir()
    cert, key = servers.make_cert(work / "tls12", ["legacy.lab.test"], [srv])
    lab.popen("server", "openssl", "s_server", "-quiet", "-tls1_2", "-accept", f"{srv}:8443", "-cert", str(cert),
              "-key", str(key), "-www", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.wait_listening("server", 8443)
    pcap = work / "lab.pcap"
    dump = start_tcpdump(lab, "probe", lab.probe_iface, pcap)
    lab.run("client", "dig", "+tcp", f"@{srv}", "www.lab.test", "A", check=True)
    lab.run("client", "dig", f"@{srv}", "www.lab.test", "A", check=True)
    lab.run("client", "curl", "-s", "-o", "/dev/null", "-A", "ft-lab/2", "-e", "http://ref.lab.test/",
            "-H", "Host: web.lab.test", f"http://{srv}/one", f"http://{srv}/two", f"http://{srv}/three", check=True)
    lab.run("client", "ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o",
            "UserKnownHostsFile=/dev/null", f"x@{srv}", "true")
    lab.run("client", "sh", "-c", f"openssl s_client -connect {srv}:8443 -servername legacy.lab.test -tls1_2 "
            "</dev/null >/dev/null 2>&1")
    wait_pcap_settled(pcap)
    dump.terminate()
    dump.wait(timeout=10)
    out = {}
    for fmt in ("jsonl", "eve"):
        d = work / fmt
        proc = subprocess.run([sys.executable, "-m", "flowtarget", "analyze", "--out", str(d), "--format", fmt,
                               "--no-progress", str(pcap)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[fmt] = d
    out["summary"] = proc.stdout
    out["srv"], out["cli"] = srv, lab.client.ip
    return out


def test_dns_over_udp_and_tcp_every_field(records):
    dns = read(records["jsonl"] / "dns.jsonl")
    srv = records["srv"]
    for transport in ("UDP", "TCP"):
        got = [d for d in dns if d["transport"] == transport and d.get("query_name") == "www.lab.test"]
        q = [d for d in got if d["kind"] == "query"]
        r = [d for d in got if d["kind"] == "response"]
        assert len(q) == 1 and len(r) == 1, (transport, got)
        q, r = q[0], r[0]
        assert q["flags"] == ["rd"] or "rd" in q["flags"]
        assert r["rcode"] == "NOERROR" and "ra" in r["flags"] and r["opcode"] == 0
        assert r["answers"] == [{"name": "www.lab.test", "rtype": "A", "rclass": "IN", "ttl_s": r["answers"][0]["ttl_s"],
                                 "data": srv}]
        assert any(a["rtype"] == "OPT" for a in q.get("additionals", []))        # dig sends EDNS
        assert q["query_class"] == "IN" and q["query_type"] == "A" and q["transaction_id"] == r["transaction_id"]
        assert r["rtt_ms"] > 0 and r["query_time"] > 0
        assert q["dst_ip"] == srv and q["dst_port"] == 53 and q["from_src"] and not r["from_src"]
        assert len(q["src_mac"]) == 17 and len(q["dst_mac"]) == 17 and q["src_mac"] != q["dst_mac"]
        assert q["community_id"] == community_id(q["src_ip"], srv, 6 if transport == "TCP" else 17, q["src_port"], 53)
    assert "over TCP: 2" in records["summary"] and "malformed (logged with the reason): 0" in records["summary"]


def test_http_keep_alive_every_request(records):
    http = read(records["jsonl"] / "http.jsonl")
    assert [h["url"] for h in http] == ["/one", "/two", "/three"], http
    assert [h["trans_depth"] for h in http] == [1, 2, 3]
    assert len({h["src_port"] for h in http}) == 1                 # one connection
    for h in http:
        assert (h["method"], h["host"], h["version"], h["status_code"], h["status_msg"]) == (
            "GET", "web.lab.test", "1.1", 200, "OK")
        assert h["user_agent"] == "ft-lab/2" and h["referer"] == "http://ref.lab.test/"
        assert h["content_type"] == "text/plain" and h["server"] == "ftlab/1.0"
        assert h["response_body_len"] == len(servers.BODY) and h.get("request_body_len", 0) == 0
        assert h["community_id"].startswith("1:")


def test_tls12_certificate_fields(records):
    tls = [t for t in read(records["jsonl"] / "tls.jsonl") if t["dst_port"] == 8443]
    assert len(tls) == 1, tls
    t = tls[0]
    assert t["version"] == "TLSv1.2" and t["sni"] == "legacy.lab.test" and len(t["ja3"]) == 32 and t["ja3s"]
    assert t["cert_subject"] == "CN=legacy.lab.test" and t["cert_issuer"] == "CN=legacy.lab.test"
    assert len(t["cert_serial"]) >= 2 and t["cert_not_before"] < t["cert_not_after"]
    assert "legacy.lab.test" in t["server_names"] and t["cipher"]


def test_ssh_versions_and_hassh(records):
    (s,) = read(records["jsonl"] / "ssh.jsonl")
    assert s["client_banner"].startswith("SSH-2.0-OpenSSH") and s["server_banner"].startswith("SSH-2.0-OpenSSH")
    assert s["client_version"] == s["server_version"] == "2.0"
    assert len(s["hassh"]) == 32 and set(s["hassh"]) <= HEX32 and len(s["hassh_server"]) == 32


def test_every_flow_has_a_community_id(records):
    flows = read(records["jsonl"] / "flows.jsonl")
    assert flows and all(f["community_id"].startswith("1:") for f in flows if f["transport"] in ("TCP", "UDP"))


def test_eve_output_validates_and_carries_every_kind(records):
    schema = json.loads((Path(__file__).parent / "eve" / "eve-schema.json").read_text())
    v = jsonschema.Draft202012Validator(schema)
    eve = read(records["eve"] / "eve.json")
    for rec in eve:
        assert not list(v.iter_errors(rec)), rec
    kinds = {r["event_type"] for r in eve}
    assert {"flow", "dns", "http", "tls", "ssh"} <= kinds, kinds
    http = [r for r in eve if r["event_type"] == "http"]
    assert [r["http"]["url"] for r in http] == ["/one", "/two", "/three"]
    assert len({r["flow_id"] for r in http}) == 1 and http[0]["community_id"] == http[2]["community_id"]
    tcp_dns = [r for r in eve if r["event_type"] == "dns" and r["proto"] == "TCP"]
    assert {r["dns"]["type"] for r in tcp_dns} == {"query", "answer"}
    (tls,) = [r for r in eve if r["event_type"] == "tls" and r["dest_port"] == 8443]
    assert tls["tls"]["subject"] == "CN=legacy.lab.test" and tls["tls"]["version"] == "TLS 1.2"
    (ssh,) = [r for r in eve if r["event_type"] == "ssh"]
    assert len(ssh["ssh"]["client"]["hassh"]["hash"]) == 32
