"""Classify a samples JSONL (from bench/dump_samples.py) without NATS, for the nDPI scorer.

    python bench/classify_corpus.py SAMPLES.jsonl FLOWS.jsonl [--no-port-guess] [--engine builtin|ndpi|both]

Keeps the last sample of each flow (later samples supersede earlier ones),
classifies it and writes one line per flow in score_ndpi.py's format:
pcap, transport, src_ip, src_port, dst_ip, dst_port, app_protocol,
application, host (plus category and confidence).  Prints samples/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from shared.models import FlowSample


def load_last_samples(path: str) -> list[FlowSample]:
    last: dict[tuple, FlowSample] = {}
    bad = 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                s = FlowSample.model_validate_json(line)
            except ValueError:
                bad += 1
                continue
            key = (s.source, s.flow_id, s.transport, s.src_ip, s.src_port, s.dst_ip, s.dst_port, s.vlan_id)
            old = last.get(key)
            if old is None or s.seq_no >= old.seq_no:
                last[key] = s
    if bad:
        print("skipped %d bad lines" % bad, file=sys.stderr)
    return list(last.values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("samples")
    ap.add_argument("flows")
    ap.add_argument("--no-port-guess", action="store_true")
    ap.add_argument("--engine", choices=("builtin", "ndpi", "both"), default="builtin")
    args = ap.parse_args(argv)

    from services.classify.engine import Engine

    second = None
    registry = None
    if args.engine in ("ndpi", "both"):
        from services.classify.ndpi_engine import load_ndpi

        second = load_ndpi()
        if second is None:
            print("libndpi engine not available", file=sys.stderr)
            return 2
        if args.engine == "ndpi":
            registry = []
    engine = Engine(registry=registry, second=second, port_guess=not args.no_port_guess)
    if args.engine == "ndpi":
        engine.apps.apply = lambda s, v: None   # nDPI alone: its own answer only
    samples = load_last_samples(args.samples)
    t0 = time.perf_counter()
    verdicts = [engine.classify(s) for s in samples]
    dt = time.perf_counter() - t0
    with open(args.flows, "w", encoding="utf-8") as fo:
        for s, v in zip(samples, verdicts):
            fo.write(json.dumps(dict(
                pcap=s.source, transport=s.transport, src_ip=s.src_ip, src_port=s.src_port,
                dst_ip=s.dst_ip, dst_port=s.dst_port, app_protocol=v.app_protocol,
                application=v.application, category=v.category, host=v.host, confidence=v.confidence,
            )) + "\n")
    print("classified %d samples in %.3f s: %.0f samples/s; errors %s" % (
        len(samples), dt, len(samples) / dt if dt else 0.0, dict(engine.errors)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
