#!/usr/bin/env python3
"""Capture memory per active flow: meter N single-packet flows and print the process's peak RSS.

    /usr/bin/time -v python bench/flow_memory.py 200000      # "Maximum resident set size"
    /usr/bin/time -v python bench/flow_memory.py 0           # the same process without flows

(RSS(200000) - RSS(0)) / 200000 is the memory per active flow, everything a
flow holds included: the flow, its two table entries, its sampling state (a
32-byte UDP payload each, as a sample waits for its verdict) and its evidence
ring (the first ``evidence_max_flows`` flows).  The frames are built before
metering and kept for both runs alike; the sink counts and keeps nothing.
The script also prints its own figure from ``resource.getrusage``.

    /usr/bin/time -v python bench/flow_memory.py 10000 --packets 70 --payload 1400

meters 10,000 TCP flows of 70 full-size frames each, interleaved (each round one
fresh frame per flow, as a capture source hands them over): the evidence rings
then hold full-size frames, within their share of ``FT_EVIDENCE_MEMORY_MB``
each (``FT_EVIDENCE_PACKETS=0``: no rings, for the difference).  With ``--gap`` every
segment comes one segment ahead of what its flow expects (after a SYN): what the flows hold for
reordering while they are sampled.
"""

from __future__ import annotations

import gc
import resource
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.capture.bench import CountingSink  # noqa: E402
from services.capture.flows import FlowMeter  # noqa: E402
from shared.settings import CaptureSettings  # noqa: E402


def frames(n: int, total: int) -> list[tuple[float, bytes]]:
    out = []
    for i in range(total):
        src = struct.pack("!I", 0x0A000000 + i)
        dst = struct.pack("!I", 0xC0A80000 + (i % 250))
        udp = struct.pack("!HHHH", 1024 + i % 60000, 443, 8 + 32, 0) + b"\x16" * 32
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0, src, dst) + udp
        out.append((1000.0 + i * 1e-5, b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip))
    return out[:n] if n < total else out


def bulk_round(n: int, k: int, payload: int, gap: bool = False) -> list[tuple[float, bytes]]:
    """Round ``k`` of ``n`` TCP flows: each flow's k-th frame with ``payload`` bytes, a fresh object each.
    ``gap``: round 0 is a SYN, then every segment is one segment ahead of what the flow expects (a gap
    that never fills: segments held for reordering)."""
    out = []
    data = b"\x17" * payload
    for i in range(n):
        if gap:
            seq, flags, body = (0, 0x02, b"") if k == 0 else (1 + payload * (k + 1), 0x18, data)
        else:
            seq, flags, body = 1 + k * payload, 0x10, data
        tcp = struct.pack("!HHIIBBHHH", 20000 + i % 40000, 443, seq, 1, 5 << 4, flags, 65535, 0, 0) + body
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), k & 0xFFFF, 0, 64, 6, 0,
                         struct.pack("!I", 0x0A000000 + i), b"\xc0\xa8\x00\x01") + tcp
        out.append((1000.0 + k + i * 1e-6, b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip))
    return out


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("flows", type=int, nargs="?", default=200_000)
    ap.add_argument("total", type=int, nargs="?", default=0, help="single-packet frames built (default max(flows, 200000))")
    ap.add_argument("--packets", type=int, default=1, help="packets per flow (> 1: bulk flows, frames made per round)")
    ap.add_argument("--payload", type=int, default=1400, help="TCP payload bytes per packet of a bulk flow")
    ap.add_argument("--gap", action="store_true", help="bulk flows whose segments all come after a gap that "
                                                      "never fills (out-of-order data held for reordering)")
    a = ap.parse_args()
    n = a.flows
    total = a.total or max(n, 200_000)
    bulk = a.packets > 1
    recs = [] if bulk else frames(total, total)          # the same frames in memory for every n
    meter = FlowMeter(CaptureSettings(verdict_wait_s=0, max_flows=max(16, total * 2)), CountingSink(), source="mem")
    meter.defer_samples = True
    if bulk:
        bulk_round(n, 1, a.payload, a.gap)     # one round's frames, made and freed in both runs alike
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if bulk:
        for k in range(a.packets):
            rnd = bulk_round(n, k, a.payload, a.gap)
            for i in range(0, n, 2048):
                meter.process_batch(rnd[i:i + 2048])
                meter.flush_samples()
            del rnd
    for i in range(0, n if not bulk else 0, 2048):
        meter.process_batch(recs[i:min(n, i + 2048)])
        meter.flush_samples()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    active = meter.stats()["flows_active"]
    per = (after - before) * 1024 / active if active else 0.0
    print(f"{active} active flows; peak RSS {after / 1024:.1f} MB; {per:.0f} bytes per flow (RSS growth while metering)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
