"""`flowtarget bench ...` runs and prints its figures (figures are printed, never asserted as limits)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import SAMPLE_PCAP

FT = [sys.executable, "-m", "flowtarget"]


def bench(*args: str, timeout: int = 300) -> dict:
    proc = subprocess.run([*FT, "bench", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "FT_LOG_LEVEL": "WARNING"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_bench_capture_prints_both_figures_and_compares_with_ndpireader():
    r = bench("capture", str(SAMPLE_PCAP), "--json", "--ndpi")
    for key in ("packets", "pps_meter", "pps", "peak_rss_mb", "bytes_per_flow"):
        assert key in r, key
    assert r["packets"] == 97   # every frame of the sample, through (a) and through (b)
    assert r["pps"] > 0 and r["pps_meter"] > 0 and r["peak_rss_mb"] > 0 and 100 < r["bytes_per_flow"] < 20000
    assert r["flows"] >= 10
    # (b) as live capture runs (detectors in their own process) and (b') as a replay does (inline)
    assert r["pps_detect_inline"] > 0 and r["cpu_seconds"] > 0 and r["cpu_seconds_detect_inline"] > 0
    if shutil.which("ndpiReader"):   # scripts/setup.sh --test installs it (libndpi-bin)
        assert r["ndpi_packets"] == r["packets"], "ndpiReader read a different number of packets"
        assert r["ndpi_pps_wall"] > 0 and r["ratio_ndpi_wall"] > 0
    else:
        assert "not found" in r["ndpi_error"]


def test_bench_capture_keeps_its_evidence_out_of_the_probes(tmp_path):
    """(b'), the replay with its detectors inline, writes the alerts' evidence as a replay does, but into a
    directory of its own that it removes: nothing lands among the probe's evidence (FT_EVIDENCE_DIR)."""
    import dpkt

    from tests.services.capture.test_detectors_traffic import RST, SYN, T0, tcp

    pcap = tmp_path / "scan.pcap"
    with open(pcap, "wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for i in range(400):   # a vertical scan: a port scan alert with its evidence
            ts = T0 + i * 0.01
            w.writepkt(tcp("10.0.0.66", 40000 + i, "10.0.0.9", 1 + i, SYN, 7000), ts=ts)
            w.writepkt(tcp("10.0.0.9", 1 + i, "10.0.0.66", 40000 + i, RST | dpkt.tcp.TH_ACK, 0, 7001), ts=ts + 0.0002)
    probes = tmp_path / "evidence"
    probes.mkdir()
    proc = subprocess.run([*FT, "bench", "capture", str(pcap), "--json"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "FT_LOG_LEVEL": "WARNING", "FT_EVIDENCE_DIR": str(probes),
                                            "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["packets"] == 800 and r["cpu_seconds_detect_inline"] > 0
    assert list(probes.iterdir()) == []
    assert not list(tmp_path.glob("ft-bench-evidence-*"))   # its own directory removed


@pytest.mark.skipif(shutil.which("ndpiReader") is None, reason="ndpiReader not installed (scripts/setup.sh --test installs it)")
def test_bench_capture_repeat_alternates_ndpireader_and_the_sharded_replay():
    """--repeat K: K pairs of ndpiReader and (c), each with its ratio; both read every packet of the file."""
    r = bench("capture", str(SAMPLE_PCAP), "--json", "--ndpi", "--shards", "2", "--repeat", "2")
    assert r["packets_sharded"] == r["packets"] == 97
    pairs = r["pairs"]
    assert len(pairs) == 2
    for p in pairs:
        assert p["ndpi_pps_wall"] > 0 and p["pps"] > 0 and p["packets"] == 97
        assert p["ratio_ndpi_wall"] == round(p["pps"] / p["ndpi_pps_wall"], 3)


def test_bench_classify_on_a_capture():
    r = bench("classify", str(SAMPLE_PCAP), "--json", "--repeat", "1")
    assert r["samples"] > 0 and r["samples_per_s"] > 0 and r["dissector_errors"] == 0


def test_bench_store_stores_every_point():
    args = ["store", "--points", "3000", "--events-per-msg", "500"]
    if shutil.which("victoria-metrics"):
        args += ["--influx", "vm"]
    r = bench(*args)
    assert r["complete"] and r["points"] == 3000


@pytest.mark.root
def test_bench_live_meters_every_frame_sent_at_a_modest_rate():
    """A veth pair, the capture service as its own process, frames sent by a raw socket: at 2,000 packets/s
    every frame sent is metered and the kernel dropped none."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a veth pair and a raw socket (CI runs as root)")
    r = bench("live", str(SAMPLE_PCAP), "--rates", "2000", "--seconds", "1", "--json", timeout=120)
    (row,) = r["rates"]
    assert 1500 <= row["sent"] <= 2500
    assert row["metered"] == row["sent"] and row["dropped_kernel"] == 0 and row["loss_pct"] == 0
    assert r["max_lossless_pps"] >= 1500


def test_bench_pipeline_prints_cpu_per_process_and_bytes_per_subject():
    r = bench("pipeline", str(SAMPLE_PCAP), "--json", "--nfstream", timeout=300)
    assert r["status"] == 0 and r["packets"] == 97 and r["flows"] >= 10
    for name in ("capture", "classify", "store", "nats-server"):
        assert name in r["cpu_s"], r["cpu_s"]
    assert r["cpu_s"]["capture"] > 0 and r["cpu_s"]["classify"] > 0   # wait4 figures of real children
    subj = r["subjects"]
    assert subj["ft.sample"]["messages"] >= 1 and subj["ft.flow"]["bytes"] > 0
    assert subj["ft.live"]["messages"] >= 1                  # start records: core NATS only
    assert subj["ft.flow (stream delivery)"]["messages"] >= 1    # store (and analyze's reader) got them
    if "nfstream_skipped" in r:
        assert "not installed" in r["nfstream_skipped"] or "failed" in r["nfstream_skipped"]
    else:
        assert r["nfstream_flows"] > 0 and r["nfstream_cpu_s"] > 0 and r["ratio_cpu_nfstream"] > 0
