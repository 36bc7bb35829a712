#!/usr/bin/env python3
"""How long JetStream publishes stall when a node or the stream leader of an R3 stream dies.

    .venv/bin/python bench/cluster_failover.py [--rounds 3]

A 3-node cluster on loopback (flowtarget.embedded.EmbeddedCluster), the FLOWTARGET
stream with FT_STREAM_REPLICAS=3, and one publisher doing what capture does
(``Bus.js_publish``: wait for the ack, retry with the same msg id) with 500-record-sized
messages back to back.  Each round SIGKILLs a follower, then the stream leader, and
reports the longest wait for one acknowledgement around each kill, the retries, and
that the stream holds each message once.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowtarget.embedded import EmbeddedCluster  # noqa: E402
from shared.bus import Bus  # noqa: E402
from shared.settings import CommonSettings  # noqa: E402

PAYLOAD = b"x" * 90_000   # about one capture batch of 500 flow records


async def round_(cluster: EmbeddedCluster, victim_is_leader: bool) -> dict:
    bus = await Bus.connect(CommonSettings(nats_url=cluster.url, stream_replicas=3), "failover")
    await bus.ensure_stream()
    await bus.js.purge_stream("FLOWTARGET")
    gaps: list[float] = []
    stop = asyncio.Event()
    sent = 0

    async def publisher() -> None:
        nonlocal sent
        while not stop.is_set():
            t = time.monotonic()
            await bus.js_publish("ft.flow.bench", PAYLOAD)
            gaps.append(time.monotonic() - t)
            sent += 1

    task = asyncio.create_task(publisher())
    await asyncio.sleep(2)
    si = await bus.js.stream_info("FLOWTARGET")
    leader = cluster.index_of(si.cluster.leader)
    victim = leader if victim_is_leader else (leader + 1) % 3
    n_before = len(gaps)
    cluster.nodes[victim].kill()
    await asyncio.sleep(8)
    stop.set()
    await task
    around = gaps[n_before:]
    si = await bus.js.stream_info("FLOWTARGET")
    retries = bus.publish_retries
    await bus.close()
    cluster.nodes[victim].start()
    await asyncio.to_thread(cluster.wait_jetstream, 60)
    return {"victim": "leader" if victim_is_leader else "follower", "max_ack_wait_s": round(max(around), 2),
            "median_ack_ms": round(statistics.median(gaps[:n_before]) * 1000, 2), "retries": retries,
            "sent": sent, "stored": si.state.messages, "new_leader": si.cluster.leader}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with EmbeddedCluster(3) as cluster:
        for _ in range(args.rounds):
            for leader in (False, True):
                r = asyncio.run(round_(cluster, leader))
                print(f"kill {r['victim']:8}: longest wait for an ack {r['max_ack_wait_s']} s (median before "
                      f"{r['median_ack_ms']} ms), {r['retries']} retries, {r['sent']} sent, {r['stored']} stored")
    return 0


if __name__ == "__main__":
    sys.exit(main())
