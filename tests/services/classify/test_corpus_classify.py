"""The core dissectors on nDPI's regression captures: capture's FlowMeter makes the samples,
the engine classifies them, nDPI's expected results (NAME.out) say what is right."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.classify.engine import Engine

from tests.conftest import CORPUS, SCORER, load_scorer

pytestmark = [
    pytest.mark.corpus,
    pytest.mark.skipif(not CORPUS.is_dir() or not SCORER.is_file(), reason="../shared corpus and scorer not present"),
]

MINE = {"TLS", "QUIC", "HTTP", "DNS", "SSH", "DTLS", "MDNS", "LLMNR", "HTTP_Connect", "HTTP_Proxy", "HTTP2", "SMTPS", "POPS", "IMAPS"}
CAPTURES = [
    "443-curl.pcap", "chrome.pcap", "quic_t51.pcap", "quic-v2.pcapng", "quic-29.pcap", "quic_q46.pcap",
    "quic_q50.pcap", "quic-mvfst-22.pcap", "quic_frags_ch_in_multiple_packets.pcapng", "youtube_quic.pcap",
    "dns.pcap", "http.pcapng", "http_connect.pcap", "http2.pcapng", "ssh_unidirectional.pcap", "dtls2.pcap",
    "tls_2_reasms.pcapng", "smtp-starttls.pcap",
]


def _samples(path: Path):
    from services.capture.offline import last_samples

    return last_samples(path, probe="test")


@pytest.mark.parametrize("name", CAPTURES)
def test_core_protocols_match_ndpi(name):
    S = load_scorer()
    engine = Engine()
    flows = []
    for s in _samples(CORPUS / name):
        v = engine.classify(s)
        obj = dict(pcap=name, transport=s.transport, src_ip=s.src_ip, src_port=s.src_port, dst_ip=s.dst_ip,
                   dst_port=s.dst_port, app_protocol=v.app_protocol, host=v.host)
        obj["_key"] = S.flow_key(s.transport, s.src_ip, s.src_port, s.dst_ip, s.dst_port)
        flows.append(obj)
    expected = [e for e in S.parse_out_file(str(CORPUS / (name + ".out")))]
    checked = 0
    for e, got in S.match_pcap(expected, flows):
        if e["master"] not in MINE or not S.is_dpi_confidence(e["confidence"]):
            continue
        checked += 1
        where = "%s %s:%s-%s:%s" % (e["transport"], e["src_ip"], e["src_port"], e["dst_ip"], e["dst_port"])
        assert got is not None, "no flow for " + where
        assert got["app_protocol"] == e["master"], where
        if e["host"]:
            assert S.norm_host(got["host"]) == S.norm_host(e["host"]), where
    assert checked > 0
    assert not engine.errors
