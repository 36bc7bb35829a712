"""The engine on samples/sample.pcap: real curl, dig, TLS 1.3 and ssh traffic recorded in the lab."""

from __future__ import annotations


import pytest

from tests.conftest import SAMPLE_PCAP as PCAP
from tests.conftest import classify_capture

pytestmark = pytest.mark.skipif(not PCAP.is_file(), reason="samples/sample.pcap not recorded")


@pytest.fixture(scope="module")
def verdicts():
    return classify_capture(PCAP)


def _one(verdicts, **kw):
    got = [v for v in verdicts if all(getattr(v, k) == val for k, val in kw.items())]
    assert got, kw
    return got


def test_dns_flows(verdicts):
    dns = _one(verdicts, app_protocol="DNS")
    assert len(dns) == 2 and {v.host for v in dns} == {"www.flowtarget.test"}
    assert all(v.extra.get("dns_rcode") == "NOERROR" for v in dns)


def test_http_flows_ipv4_and_ipv6(verdicts):
    http = _one(verdicts, app_protocol="HTTP")
    assert len(http) == 2
    assert {v.dst_port for v in http} == {80, 8080}
    for v in http:
        assert v.host == "web.flowtarget.test"
        assert v.http.method == "GET" and v.http.status_code == 200 and v.http.user_agent
    (v4,) = [v for v in http if v.dst_port == 80]
    assert v4.http.user_agent == "flowtarget-sample/1.0" and v4.http.url == "/index.html"


def test_tls13_with_sni_alpn_fingerprints(verdicts):
    (v,) = _one(verdicts, app_protocol="TLS")
    assert v.host == "secure.flowtarget.test" and v.final
    assert v.tls.version == "TLSv1.3" and v.tls.alpn[:2] == ["h2", "http/1.1"]
    assert len(v.tls.ja3) == 32 and v.tls.ja4.startswith("t13d") and len(v.tls.ja3s) == 32


def test_ssh_banners_and_hassh(verdicts):
    (v,) = _one(verdicts, app_protocol="SSH")
    assert v.ssh.client_banner.startswith("SSH-2.0-OpenSSH") and v.ssh.server_banner.startswith("SSH-2.0-OpenSSH")
    assert len(v.ssh.hassh_client) == 32 and len(v.ssh.hassh_server) == 32


def test_unknown_udp_stays_unknown(verdicts):
    (v,) = _one(verdicts, dst_port=40000)
    assert v.app_protocol == "Unknown" and v.confidence == "unknown"
