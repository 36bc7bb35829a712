#!/usr/bin/env python3
"""``flowtarget bench store`` through a 3-node JetStream cluster (R3 stream) against one server.

    .venv/bin/python bench/cluster_store.py [--points 200000] [--influx vm] [--rounds 3]

Starts the nats-servers itself (flowtarget.embedded: one server, then a 3-node
cluster on loopback), runs ``flowtarget bench store --nats URL`` against each
(FT_STREAM_REPLICAS=1, then 3) and prints both figures and the nats-servers' CPU
seconds (user+sys, from /proc) spent during each run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowtarget.embedded import EmbeddedCluster, EmbeddedNats  # noqa: E402

FLOWTARGET = str(Path(sys.executable).parent / "flowtarget")


def cpu_s(pids: list[int]) -> float:
    tck = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tck
    return total


def run(url: str, replicas: int, pids: list[int], args) -> dict:
    env = dict(os.environ, FT_STREAM_REPLICAS=str(replicas))
    before = cpu_s(pids)
    cmd = [FLOWTARGET, "bench", "store", "--nats", url, "--points", str(args.points)]
    if args.influx:
        cmd += ["--influx", args.influx]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["nats_cpu_s"] = round(cpu_s(pids) - before, 2)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=200_000)
    ap.add_argument("--influx", default=None, help="'vm' for a temporary victoria-metrics (default: JSON lines only)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rows = []
    with EmbeddedNats() as one:
        for _ in range(args.rounds):
            rows.append(("R1, 1 server", run(one.url, 1, [one.proc.pid], args)))
    with EmbeddedCluster(3) as cluster:
        for _ in range(args.rounds):
            rows.append(("R3, 3-node cluster", run(cluster.url, 3, [n.proc.pid for n in cluster.nodes], args)))
    for name, r in rows:
        print(f"{name:20} {r['points_per_s']:>9} points/s stored, publish {r['publish_events_per_s']} events/s, "
              f"nats-server CPU {r['nats_cpu_s']} s, sinks {'+'.join(r['sinks'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
