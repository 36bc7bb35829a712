"""Throughput of the built-in engine: flow samples classified per second on one core.

``run_classify_bench(samples_jsonl)`` reads every FlowSample of a JSONL file
(as bench/dump_samples.py writes them; parsing is not timed), classifies them
all in file order with one Engine in this process (one core) and returns the
figures.  Speed is printed by the bench command, never asserted in tests.
"""

from __future__ import annotations

import time
from pathlib import Path

from shared.models import FlowSample


def load_samples(path: str | Path) -> list[FlowSample]:
    out: list[FlowSample] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                try:
                    out.append(FlowSample.model_validate_json(line))
                except ValueError:
                    continue
    return out


def run_classify_bench(samples_jsonl: str | Path, repeat: int = 3, engine=None) -> dict:
    """Classify every sample ``repeat`` times; report the best pass (samples/s on one core)."""
    from services.classify.engine import Engine

    samples = load_samples(samples_jsonl)
    eng = engine or Engine()
    best = float("inf")
    for _ in range(max(1, repeat)):
        eng.clear_caches()          # every pass starts cold
        t0 = time.perf_counter()
        for s in samples:
            eng.classify(s)
        best = min(best, time.perf_counter() - t0)
    n = len(samples)
    return {
        "samples": n,
        "seconds": round(best, 4),
        "samples_per_s": round(n / best, 1) if best > 0 else 0.0,
        "dissector_errors": sum(eng.errors.values()),
        "dissectors": len(eng.registry),
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run_classify_bench(sys.argv[1])))
