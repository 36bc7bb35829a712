"""The breadth dissectors on nDPI's regression captures: capture's FlowMeter makes the samples, the
engine classifies them, nDPI's expected results (NAME.out) say what is right (protocols other than
the core ones, DPI-confidence flows only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.classify.engine import Engine

from tests.conftest import CORPUS, SCORER, load_scorer

pytestmark = [
    pytest.mark.corpus,
    pytest.mark.skipif(not CORPUS.is_dir() or not SCORER.is_file(), reason="../shared corpus and scorer not present"),
]

CORE = {"TLS", "QUIC", "HTTP", "DNS", "SSH", "DTLS", "MDNS", "LLMNR", "Unknown"}
CAPTURES = [
    "netbios.pcap", "smb_deletefile.pcap", "stun_classic.pcap", "wireguard.pcap", "kerberos-login.pcap",
    "telnet.pcap", "ftp.pcap", "pop3_stls.pcap", "mongodb.pcap", "bacnet.pcap",
    "dnp3.pcap", "s7comm-plus.pcap", "zabbix.pcap", "tftp.pcap", "rtsp.pcap", "ipsec_isakmp_esp.pcap",
]


def _samples(path: Path):
    from services.capture.offline import last_samples

    return last_samples(path, probe="test")


@pytest.mark.parametrize("name", CAPTURES)
def test_breadth_protocols_match_ndpi(name):
    S = load_scorer()
    engine = Engine(port_guess=False, final_memo=0)      # the dissectors alone: no port guesses
    flows = []
    for s in _samples(CORPUS / name):
        v = engine.classify(s)
        flows.append(dict(pcap=name, transport=s.transport, src_ip=s.src_ip, src_port=s.src_port, dst_ip=s.dst_ip,
                          dst_port=s.dst_port, app_protocol=v.app_protocol, host=v.host,
                          _key=S.flow_key(s.transport, s.src_ip, s.src_port, s.dst_ip, s.dst_port)))
    expected = S.parse_out_file(str(CORPUS / (name + ".out")))
    checked = agree = hosts = hosts_ok = 0
    for e, got in S.match_pcap(expected, flows):
        if e["master"] in CORE or not S.is_dpi_confidence(e["confidence"]):
            continue
        checked += 1
        agree += got is not None and got["app_protocol"] == e["master"]
        if e["host"]:
            hosts += 1
            hosts_ok += got is not None and S.norm_host(got["host"]) == S.norm_host(e["host"])
    assert checked > 0
    assert agree == checked, f"{agree}/{checked} flows agree with nDPI"
    assert hosts_ok == hosts, f"{hosts_ok}/{hosts} hosts agree with nDPI"
    assert not engine.errors
