"""The engine on traffic generated here and now by real clients and servers in the namespace lab:
curl over HTTP/1.1, TLS 1.3 with SNI and TLS 1.2 (certificate visible), dig, ssh.  The probe's
capture (tcpdump) goes through capture's FlowMeter and the engine, as in production."""

from __future__ import annotations

import subprocess

import pytest

from tests.lab import lab_fixture, servers
from tests.conftest import classify_capture
from tests.lab.tools import start_tcpdump, wait_pcap_settled

pytestmark = [pytest.mark.root, pytest.mark.slow]

lab = lab_fixture(scope="module", mode="hub", net=74)


@pytest.fixture(scope="module")
def verdicts(lab, tmp_path_factory):
    work = tmp_path_factory.mktemp("labcls")
    srv = lab.server.ip
    servers.start_http(lab)
    servers.start_https(lab, work, names=["secure.lab.test"])
    servers.start_dnsmasq(lab, {"www.lab.test": [srv]})
    servers.start_sshd(lab, work)
    (work / "tls12").mkdir()
    cert, key = servers.make_cert(work / "tls12", ["legacy.lab.test", "alt.lab.test"], [srv])
    lab.popen("server", "openssl", "s_server", "-quiet", "-tls1_2", "-accept", f"{srv}:8443", "-cert", str(cert),
              "-key", str(key), "-www", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.wait_listening("server", 8443)
    pcap = work / "lab.pcap"
    dump = start_tcpdump(lab, "probe", lab.probe_iface, pcap)
    lab.run("client", "curl", "-s", "-A", "ft-lab-test/1", "-H", "Host: web.lab.test", f"http://{srv}/", check=True)
    lab.run("client", "curl", "-s", "-k", "--tlsv1.3", "--resolve", f"secure.lab.test:443:{srv}",
            "https://secure.lab.test/", check=True)
    lab.run("client", "curl", "-s", "-k", "--tls-max", "1.2", "--resolve", f"legacy.lab.test:8443:{srv}",
            "https://legacy.lab.test:8443/")
    lab.run("client", "dig", "+short", f"@{srv}", "www.lab.test", "A", check=True)
    lab.run("client", "ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o",
            "UserKnownHostsFile=/dev/null", f"x@{srv}", "true")
    wait_pcap_settled(pcap)
    dump.terminate()
    dump.wait(timeout=10)
    return classify_capture(pcap, probe="lab")


def _only(verdicts, **kw):
    got = [v for v in verdicts if all(getattr(v, k) == val for k, val in kw.items())]
    assert len(got) == 1, (kw, [(v.app_protocol, v.dst_port, v.host) for v in verdicts])
    return got[0]


def test_http(verdicts):
    v = _only(verdicts, app_protocol="HTTP")
    assert v.host == "web.lab.test" and v.http.user_agent == "ft-lab-test/1" and v.http.status_code == 200
    # a keep-alive connection: the verdict leaves sampling on for further request/response pairs
    assert v.http.server.startswith("ftlab") and not v.final and len(v.http_transactions) == 1


def test_tls13_sni(verdicts):
    v = _only(verdicts, app_protocol="TLS", dst_port=443)
    assert v.host == "secure.lab.test" and v.tls.version == "TLSv1.3" and v.tls.ja4.startswith("t13d")
    assert v.final and len(v.tls.ja3) == 32


def test_tls12_certificate_names(verdicts):
    v = _only(verdicts, app_protocol="TLS", dst_port=8443)
    assert v.host == "legacy.lab.test" and v.tls.version == "TLSv1.2"
    assert "legacy.lab.test" in v.tls.server_names and "alt.lab.test" in v.tls.server_names


def test_dns(verdicts):
    v = _only(verdicts, app_protocol="DNS")
    assert v.host == "www.lab.test" and v.extra["dns_rcode"] == "NOERROR" and v.extra["dns_answers"]


def test_ssh(verdicts):
    v = _only(verdicts, app_protocol="SSH")
    assert v.ssh.client_banner.startswith("SSH-2.0-OpenSSH") and len(v.ssh.hassh_client) == 32
    assert v.ssh.server_banner.startswith("SSH-2.0-OpenSSH") and len(v.ssh.hassh_server) == 32
