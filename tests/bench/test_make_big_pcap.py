"""bench/make_big_pcap.py: the capture the capture benchmark is measured on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from services.capture.flows import FlowMeter, ListSink
from services.capture.sources import FileSource
from shared.settings import CaptureSettings
from tests.conftest import REPO, SAMPLE_PCAP, need_corpus

SCRIPT = REPO / "bench" / "make_big_pcap.py"


def make(corpus: Path, out: Path, packets: int) -> str:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--corpus", str(corpus), "--out", str(out),
                           "--packets", str(packets)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def meter_ends(path: Path) -> list:
    sink = ListSink()
    m = FlowMeter(CaptureSettings(verdict_wait_s=0), sink, probe="t")
    src = FileSource(path)
    m.set_source(src.name, src.datalink)
    for dlt, recs in src.batches():
        m.process_batch(recs, dlt)
    m.finish()
    return [r for r in sink.flows if r.phase == "end"]


def test_replicas_are_new_flows_on_one_increasing_timeline(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(SAMPLE_PCAP, corpus / "sample.pcap")
    n_sample = sum(1 for _ in FileSource(SAMPLE_PCAP))
    out = tmp_path / "big.pcap"
    make(corpus, out, n_sample * 5)
    src = FileSource(out)
    recs = list(src)
    assert src.datalink == 1 and len(recs) == n_sample * 5
    times = [ts for ts, _ in recs]
    assert times == sorted(times)
    one = {(r.src_ip, r.dst_ip) for r in meter_ends(SAMPLE_PCAP) if r.ip_version == 4}
    five = {(r.src_ip, r.dst_ip) for r in meter_ends(out) if r.ip_version == 4}
    assert len(five) >= 4 * len(one)   # each replica's shifted addresses make its flows new ones


def test_builds_from_the_ndpi_corpus():
    corpus = need_corpus()
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "big.pcap"
        make(corpus, out, 30_000)
        src = FileSource(out)
        assert src.datalink == 1 and sum(1 for _ in src) == 30_000 and src.errors == 0


def test_issue12_profile_makes_every_third_tcp_flow_one_way(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(SAMPLE_PCAP, corpus / "sample.pcap")
    plain, prof = tmp_path / "plain.pcap", tmp_path / "profile.pcap"
    make(corpus, plain, 1000)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--corpus", str(corpus), "--out", str(prof),
                           "--packets", "1000", "--profile", "issue12"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "packets per flow" in proc.stdout
    a = [r for r in meter_ends(plain) if r.transport == "TCP"]
    b = [r for r in meter_ends(prof) if r.transport == "TCP"]
    one_way = lambda rs: sum(1 for r in rs if not r.src2dst_packets or not r.dst2src_packets)  # noqa: E731
    assert len(a) >= 6 and len(b) >= 6
    # about a third more of the TCP flows lost a direction (the meter may split or join a few differently)
    assert one_way(b) / len(b) >= one_way(a) / len(a) + 0.2, (one_way(a), len(a), one_way(b), len(b))


def _flow_key(r):
    return (r.transport, r.src_ip, r.src_port, r.dst_ip, r.dst_port, r.src2dst_packets, r.dst2src_packets)


def _plain_and_tunnelled(tmp_path, kinds):
    """The sample capture's 600 packets as they are and with each ``--tunnel`` kind: (the plain file's flow
    keys, {kind: the tunnelled file's end records})."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(SAMPLE_PCAP, corpus / "sample.pcap")
    plain = tmp_path / "plain.pcap"
    make(corpus, plain, 600)
    out = {}
    for kind in kinds:
        path = tmp_path / f"{kind}.pcap"
        proc = subprocess.run([sys.executable, str(SCRIPT), "--corpus", str(corpus), "--out", str(path),
                               "--packets", "600", "--tunnel", kind], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        out[kind] = meter_ends(path)
    return sorted(_flow_key(r) for r in meter_ends(plain)), out


def test_tunnel_options_wrap_every_ip_packet_and_keep_its_flows(tmp_path):
    """--tunnel gtp / ipip: the same inner flows (as the meter decapsulates them), each marked with its tunnel."""
    want, got = _plain_and_tunnelled(tmp_path, ("gtp", "ipip"))
    for kind, name in (("gtp", "GTP"), ("ipip", "IP-in-IP")):
        ends = got[kind]
        ip_ends = [r for r in ends if r.tunnel]
        assert ip_ends and all(r.tunnel == name and r.tunnel_src_ip == "10.254.0.1" for r in ip_ends)
        assert sorted(_flow_key(r) for r in ends) == want


def test_mirror_tunnel_options_wrap_every_frame_and_keep_its_flows(tmp_path):
    """--tunnel vxlan / erspan: every frame inside the mirror's tunnel; the meter finds the same inner flows, each
    marked with its tunnel and the tunnel id, beside the tunnel's own flows between the two endpoints."""
    want, got = _plain_and_tunnelled(tmp_path, ("vxlan", "erspan"))
    for kind, name, own, tid in (("vxlan", "VXLAN", "UDP", 16), ("erspan", "ERSPAN", "GRE", 0)):
        ends = got[kind]
        inner = [r for r in ends if r.tunnel]
        assert inner and all(r.tunnel == name and r.tunnel_id == tid and {r.tunnel_src_ip, r.tunnel_dst_ip}
                             == {"10.254.0.1", "10.254.0.2"} for r in inner)
        assert sorted(_flow_key(r) for r in inner) == want
        outer = [r for r in ends if not r.tunnel]
        assert outer and all(r.transport == own and {r.src_ip, r.dst_ip} == {"10.254.0.1", "10.254.0.2"} for r in outer)
        assert sum(r.src2dst_packets + r.dst2src_packets for r in outer) == 600
