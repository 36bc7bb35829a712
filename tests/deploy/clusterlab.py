"""Helpers of the JetStream cluster and leaf-node tests: the replayed capture, the
flow-id count of store's JSON-lines output, the stream leader, a run in the background."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import CORPUS, REPO

FLOWTARGET = str(Path(sys.executable).parent / "flowtarget")
# the replayed capture: PACKETS frames replayed at their recorded pace over REPLAY_S seconds
# (FT_REPLAY_REALTIME), so node kills and outages fall inside the replay on a fast or a busy machine.
# The cluster test's kills take 12-20 s after the first flows are stored (each waits for a new stream
# leader), the leaf test's outage 12 s: 20 s of replay left too little room on a loaded CI machine.
PACKETS = int(os.environ.get("FT_TEST_CLUSTER_PACKETS", "120000"))
REPLAY_S = float(os.environ.get("FT_TEST_REPLAY_S", "45"))
REALTIME = {"FT_REPLAY_REALTIME": "true"}


def build_replay(path: Path, packets: int = PACKETS, duration_s: float = REPLAY_S) -> Path:
    """A capture of ``packets`` frames made by bench/make_big_pcap.py from the dev corpus
    (from samples/ where the corpus is absent; every replica's flows are new flows), its
    timeline scaled to last ``duration_s``."""
    import dpkt

    corpus = CORPUS if CORPUS.is_dir() else REPO / "samples"
    raw = path.with_suffix(".raw.pcap")
    subprocess.run([sys.executable, str(REPO / "bench" / "make_big_pcap.py"), "--out", str(raw),
                    "--packets", str(packets), "--corpus", str(corpus)], check=True, capture_output=True)
    with open(raw, "rb") as fh:
        frames = list(dpkt.pcap.Reader(fh))
    t0, t1 = frames[0][0], frames[-1][0]
    scale = duration_s / max(t1 - t0, 1e-6)
    with open(path, "wb") as fh:
        w = dpkt.pcap.Writer(fh, snaplen=65535, linktype=1)
        for ts, frame in frames:
            w.writepkt(frame, ts=t0 + (ts - t0) * scale)
    raw.unlink()
    return path


def flow_ids(out_dir: Path) -> collections.Counter[str]:
    """How many times each flow id is in store's access log (flows.jsonl)."""
    counts: collections.Counter[str] = collections.Counter()
    path = Path(out_dir) / "flows.jsonl"
    if path.exists():
        with open(path) as fh:
            for line in fh:
                counts[json.loads(line)["flow_id"]] += 1
    return counts


def flow_keys(out_dir: Path) -> collections.Counter[tuple]:
    """The flows of store's access log by what identifies them across runs (flow ids carry a
    per-run prefix, the point timestamp derives from it): transport, addresses, ports, last packet time, counters."""
    counts: collections.Counter[tuple] = collections.Counter()
    path = Path(out_dir) / "flows.jsonl"
    if path.exists():
        with open(path) as fh:
            for line in fh:
                r = json.loads(line)
                counts[(r.get("transport"), r.get("src_ip"), r.get("src_port"), r.get("dst_ip"), r.get("dst_port"),
                        r.get("last_seen"), r.get("duration_ms"), r.get("src2dst_packets"), r.get("dst2src_packets"),
                        r.get("src2dst_bytes"), r.get("dst2src_bytes"))] += 1
    return counts


def lines(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(1 for _ in fh)
    except FileNotFoundError:
        return 0


def stream_info(url: str, stream: str = "FLOWTARGET", domain: str | None = None):
    import nats

    async def go():
        async def quiet(exc):   # a node that is down: nats-py would print each refused connect
            pass

        nc = await nats.connect(url.split(","), connect_timeout=2, max_reconnect_attempts=3, error_cb=quiet)
        try:
            return await nc.jetstream(domain=domain, timeout=5).stream_info(stream)
        finally:
            await nc.close()

    return asyncio.run(go())


def stream_leader(url: str, stream: str = "FLOWTARGET", timeout_s: float = 30.0) -> str:
    """Server name of the stream's current Raft leader (waits for one)."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            si = stream_info(url, stream)
            if si.cluster is not None and si.cluster.leader:
                return si.cluster.leader
        except Exception as exc:  # noqa: BLE001 - no leader yet, node down: ask again
            last = exc
        time.sleep(0.3)
    raise AssertionError(f"stream {stream} has no leader after {timeout_s}s ({last})")


def start_run(pcap: Path, nats_url: str, out_dir: Path, log: Path, env: dict[str, str] | None = None,
              probe: str = "probe1") -> subprocess.Popen[bytes]:
    """``flowtarget run --pcap PCAP --nats URLS --out DIR`` in the background (every flow logged,
    the capture replayed at its recorded pace)."""
    full = dict(os.environ, FT_LOG_ALL_FLOWS="true", **REALTIME, **(env or {}))
    return subprocess.Popen([FLOWTARGET, "run", "--pcap", str(pcap), "--nats", nats_url, "--out", str(out_dir),
                             "--probe", probe], env=full, stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def wait_until(cond, timeout_s: float, what: str, step_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(step_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
