"""Throughput of the built-in engine: flow samples classified per CPU second (one core).

``run_classify_bench(samples_jsonl)`` reads every FlowSample of a JSONL file
(as bench/dump_samples.py writes them; parsing is not timed), classifies them
all in file order with one Engine in this process (one core) and returns the
figures.  Speed is printed by the bench command, never asserted in tests.
"""

from __future__ import annotations

import gc
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


def _best_pass(eng, samples, repeat: int) -> float:
    best = float("inf")
    for _ in range(max(1, repeat)):
        eng.clear_caches()          # every pass starts cold
        t0 = time.process_time()          # CPU seconds of this process: one core, whatever else runs
        for s in samples:
            eng.classify(s)
        best = min(best, time.process_time() - t0)
    return best


def run_classify_bench(samples_jsonl: str | Path, repeat: int = 3, engine=None) -> dict:
    """Classify every sample ``repeat`` times; report the best pass (samples/s on one core).

    ``samples_per_s`` is the engine as the service runs it (a flow that already got a FINAL
    verdict is answered from memory: bench/dump_samples.py keeps sampling such flows, a live
    capture stops once the verdict arrives).  ``samples_per_s_full_dpi`` runs full DPI on
    every sample (memo off), the worst case.
    """
    from services.classify.engine import Engine

    samples = load_samples(samples_jsonl)
    eng = engine or Engine()
    # the loaded samples (tens of MB of small objects) would make every cyclic-GC pass walk them all:
    # a live classify process holds a handful of samples at a time, so keep them out of the GC's view
    gc.collect()
    gc.freeze()
    best = _best_pass(eng, samples, repeat)
    memo_hits = eng.counters["memo"] // max(1, repeat)
    full = Engine(registry=eng.registry, apps=eng.apps, second=eng.second, port_guess=eng.port_guess, final_memo=0)
    best_full = _best_pass(full, samples, repeat)
    gc.unfreeze()
    n = len(samples)
    return {
        "samples": n,
        "seconds": round(best, 4),
        "samples_per_s": round(n / best, 1) if best > 0 else 0.0,
        "answered_from_final_memo": memo_hits,
        "samples_per_s_full_dpi": round(n / best_full, 1) if best_full > 0 else 0.0,
        "dissector_errors": sum(eng.errors.values()),
        "dissectors": len(eng.registry),
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run_classify_bench(sys.argv[1])))
