"""capture under a flood of legal ft.ctl requests: recordings, their bytes and evidence stay bounded.

The real ``flowtarget capture`` process replays a file at its recorded pace against a real nats-server
while a client sends many pcap requests; every request is answered, those beyond the bounds with an
error naming the setting, the refusals are counted in /metrics, and what lands on disk respects the
per-recording and per-directory bounds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dpkt
import nats
import pytest

from flowtarget.embedded import free_port
from services.capture.sources import open_source

from tests.services.capture.test_service_evidence import udp_frame, write_pcap


def metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, val = line.rpartition(" ")
            out[name.partition("{")[0].removesuffix("_total")] = float(val)
    return out


def test_flood_of_pcap_requests_is_bounded(nats_server, tmp_path):
    pcap = tmp_path / "steady.pcap"
    # 30 s of packet time (stopped by SIGTERM once measured), 400 packets/s of 1 kB: every recording
    # would grow all along
    write_pcap(pcap, [(1000.0 + i / 400, udp_frame(5000 + i % 50, 9999, b"p" * 1000)) for i in range(12000)])
    evdir = tmp_path / "evidence"
    port = free_port()
    env = dict(os.environ, FT_NATS_URL=nats_server.url, FT_PROBE="flood", FT_PCAP=json.dumps([str(pcap)]),
               FT_REPLAY_REALTIME="1", FT_EVIDENCE_DIR=str(evdir), FT_METRICS_PORT=str(port),
               FT_METRICS_ADDR="127.0.0.1", FT_DETECTORS="", FT_VERDICT_WAIT_S="0",
               FT_RECORDING_MAX_ACTIVE="3", FT_RECORDING_MAX_MB="0.5", FT_CTL_REQUESTS_PER_S="1000",
               FT_EVIDENCE_MAX_MB="1.2")
    proc = subprocess.Popen([sys.executable, "-m", "flowtarget", "capture"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    async def flood() -> list[dict]:
        nc = await nats.connect(nats_server.url)
        answers: list[dict] = []
        for _ in range(200):                      # until capture listens
            try:
                msg = await nc.request("ft.ctl.flood.pcap", b'{"duration_s": 3600}', timeout=0.2)
                answers.append(json.loads(msg.data))
                break
            except Exception:
                time.sleep(0.05)
        for _ in range(500):
            msg = await nc.request("ft.ctl.flood.pcap", b'{"duration_s": 3600}', timeout=5)
            answers.append(json.loads(msg.data))
        await nc.close()
        return answers

    import asyncio

    try:
        answers = asyncio.run(flood())
        time.sleep(1.0)
        m = metrics(port)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out[-3000:]
    ok = [a for a in answers if a["status"] == "recording"]
    refused = [a for a in answers if a["status"] == "error"]
    assert len(answers) == 501 and len(ok) + len(refused) == 501
    # recordings that reach their byte bound end and free their slot, until the directory is full:
    # only a handful are ever accepted, never more than 3 at once
    assert 3 <= len(ok) <= 10 and len(refused) >= 490, answers[:5]
    assert all("FT_RECORDING_MAX_ACTIVE=3" in a["error"] or "FT_EVIDENCE_MAX_MB=1.2" in a["error"] for a in refused)
    assert (m["flowtarget_capture_evidence_recordings_refused_active"]
            + m["flowtarget_capture_evidence_recordings_refused_disk"]) == len(refused)
    assert m["flowtarget_capture_evidence_recordings_started"] == len(ok)
    assert m["flowtarget_capture_evidence_recordings_active"] <= 3
    assert (m["flowtarget_capture_evidence_recordings_truncated_bytes"]
            + m["flowtarget_capture_evidence_recordings_truncated_disk"]) >= 1
    files = sorted(evdir.glob("*.pcap"))
    assert len(files) == len(ok), files
    assert not list(evdir.glob("*.part"))
    sizes = [f.stat().st_size for f in files]
    assert all(s <= 0.5 * 1024**2 for s in sizes), sizes
    assert sum(sizes) <= 1.2 * 1024**2 + 24 * len(files)
    for f in files:                               # each a readable pcap
        list(open_source(f))


def test_recorder_keeps_nothing_in_memory_and_stops_at_its_bounds(tmp_path):
    from services.capture.evidence import EvidenceLimits

    frame = udp_frame(1, 2, b"x" * 100)
    limits = EvidenceLimits(tmp_path, max_active=2, max_packets=50, max_bytes=10**9, dir_max_bytes=10**9)

    class Meter:
        source, datalink, recorders = "eth0", 1, []

    m = Meter()
    a = limits.start_recording(m, "", 3600)
    b = limits.start_recording(m, "", 3600)
    with pytest.raises(ValueError, match="FT_RECORDING_MAX_ACTIVE=2"):
        limits.start_recording(m, "", 3600)
    for i in range(200):
        a.offer(1.0 + i * 0.001, frame)
    assert a.done and a.truncated == "packets" and a.count == 50
    assert not hasattr(a, "packets")               # streamed to disk, not held
    a.close()
    assert limits.counters()["recordings_truncated_packets"] == 1
    assert len(list(open_source(a.path))) == 50
    # the directory budget ends b, and refuses the next recording
    limits.dir_max_bytes = limits.used + 3000
    for i in range(200):
        b.offer(1.0 + i * 0.001, frame)
    assert b.done and b.truncated == "disk"
    b.close()
    assert b.path.stat().st_size <= 3000 + 24
    limits.dir_max_bytes = limits.used + 1000     # no room for a recording worth starting
    with pytest.raises(ValueError, match="FT_EVIDENCE_MAX_MB"):
        limits.start_recording(m, "", 3600)
    assert limits.counters()["recordings_refused_disk"] == 1


def test_request_rate_is_bounded():
    from services.capture.evidence import EvidenceLimits

    t = [0.0]
    limits = EvidenceLimits("/nonexistent-dir", rate_per_s=5, clock=lambda: t[0])
    got = [limits.allow_request() for _ in range(30)]
    assert got.count("") == 10 and "FT_CTL_REQUESTS_PER_S=5" in got[-1]
    t[0] += 1.0
    assert [limits.allow_request() for _ in range(6)].count("") == 5
    assert limits.counters()["ctl_requests_refused_rate"] == 21


def test_a_full_disk_ends_the_recording_not_capture(tmp_path):
    from services.capture.evidence import EvidenceLimits

    class Meter:
        source, datalink, recorders = "eth0", 1, []

    limits = EvidenceLimits(tmp_path / "ev")
    rec = limits.start_recording(Meter(), "", 3600)
    frame = udp_frame(1, 2, b"x" * 100)
    rec.offer(1.0, frame)
    rec._fh.close()
    rec._fh = open("/dev/full", "wb", buffering=0)      # every write now fails with ENOSPC
    rec.offer(1.1, frame)
    assert rec.done and rec.truncated == "disk" and rec.write_error
    rec.close()                                           # still no exception
    assert limits.counters()["recordings_truncated_disk"] == 1


def test_unwritable_evidence_directory_is_refused_at_request_time(tmp_path):
    from services.capture.evidence import EvidenceLimits

    class Meter:
        source, datalink, recorders = "eth0", 1, []

    (tmp_path / "file").write_text("x")
    limits = EvidenceLimits(tmp_path / "file" / "ev")
    with pytest.raises(ValueError, match="evidence directory"):
        limits.start_recording(Meter(), "", 3600)
