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


# --------------------------------------------------------------------------- whole corpora, scored

ZEEK = CORPUS.parent.parent / "zeek" / "dev"

# Issue 18's floors are proto_dpi >= 99.0 %, host >= 99.0 % on both dev corpora and a per-capture
# mean proto_dpi >= 97 % on nDPI's; all met.  Where the engine is above them (nDPI's host, Zeek's
# proto_dpi and host) the floors are set about one flow under what it reaches today (nDPI host 99.53,
# Zeek proto_dpi 99.60, host 99.18, per-capture 99.18) so that they can only go up.  2 of Zeek's 243 host names still differ: an SSDP host without its port, as nDPI 5.0
# gives it where the nDPI captures' older results keep it, and an FTP greeting's name that only the
# twelfth server packet carries, past what capture samples.
FLOORS = {
    "ndpi": {"proto_dpi": 99.0, "host": 99.4, "proto_dpi_macro": 97.0, "matched_pct": 99.0},
    "zeek": {"proto_dpi": 99.5, "host": 99.0, "proto_dpi_macro": 99.0, "matched_pct": 99.0},
}


def score_corpus(corpus: Path) -> dict:
    """The built-in engine alone over a whole labelled corpus, scored by score_ndpi.py."""
    from collections import defaultdict

    from tests.services.classify.corpus_eval import classify_corpus

    S = load_scorer()
    system: dict[str, list] = defaultdict(list)
    for f in classify_corpus(corpus, Engine()):
        f["_key"] = S.flow_key(f["transport"], f["src_ip"], f["src_port"], f["dst_ip"], f["dst_port"])
        system[f["pcap"]].append(f)
    res = S.score(S.load_expected(str(corpus)), system)
    print(S.score_line(res))
    return res


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FLOORS))
def test_whole_corpus_meets_floors(name):
    corpus = CORPUS if name == "ndpi" else ZEEK
    if not corpus.is_dir():
        pytest.skip(f"{corpus} not present")
    res = score_corpus(corpus)
    for metric, floor in FLOORS[name].items():
        assert res[metric] >= floor, (name, metric, res[metric], floor)


def _corpus_addresses() -> set[str]:
    import ipaddress
    import re

    pat = re.compile(r"^\s+\d+\s+\S+ (\[?[0-9A-Fa-f:.]+\]?):\d+ <?-> (\[?[0-9A-Fa-f:.]+\]?):\d+", re.M)
    out: set[str] = set()
    for d in (CORPUS, ZEEK):
        if not d.is_dir():
            continue
        for f in d.glob("*.out"):
            for m in pat.finditer(f.read_text(errors="replace")):
                for a in m.groups():
                    try:
                        ip = ipaddress.ip_address(a.strip("[]"))
                    except ValueError:
                        continue
                    # well-known protocol addresses (multicast, broadcast, loopback) are the protocol's
                    if not (ip.is_multicast or ip.is_loopback or ip.is_unspecified or str(ip) == "255.255.255.255"):
                        out.add(str(ip))
    return out


def test_no_corpus_address_in_classify_data_or_code():
    """No rule keyed on corpus addresses: no endpoint address of a labelled corpus flow appears in
    classify's data files or dissector code (address lists hold networks of the applications' owners)."""
    import ipaddress
    import re

    addrs = _corpus_addresses()
    assert len(addrs) > 1000          # both corpora read
    root = Path(__file__).resolve().parents[3] / "services" / "classify"
    files = [p for p in root.rglob("*") if p.suffix in (".json", ".py", ".txt", ".csv") and p.is_file()]
    assert any(p.name == "apps.json" for p in files)
    token = re.compile(r"[0-9A-Fa-f:.]{7,}")
    found = []
    for p in files:
        for t in set(token.findall(p.read_text(errors="replace"))):
            try:
                ip = str(ipaddress.ip_address(t.strip(".:")))
            except ValueError:
                continue
            if ip in addrs:
                found.append(f"{p.name}: {ip}")
    assert not found, found


def test_capture_names_not_in_classify_code():
    """No rule keyed on capture names either."""
    root = Path(__file__).resolve().parents[3] / "services" / "classify"
    names = {p.name for d in (CORPUS, ZEEK) if d.is_dir() for p in d.iterdir() if not p.name.endswith(".out")}
    names = {n for n in names if len(n) > 8 and not n.startswith(("README", "NOTICE", "COPYING"))}
    assert len(names) > 300
    text = "\n".join(p.read_text(errors="replace") for p in root.rglob("*") if p.suffix in (".json", ".py") and p.is_file())
    assert not [n for n in names if n in text]
