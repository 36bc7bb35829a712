"""What keep-alive HTTP sampling costs: capture's meter and classify's engine in one loop.

Replays capture files through FlowMeter; every sample is classified by the built-in
engine and its verdict fed back to the meter at once (as the pipeline does, without
NATS), so a final verdict stops sampling exactly as in production.  Prints samples,
sample payload bytes, HTTP request/response pairs found and CPU seconds::

    .venv/bin/python bench/http_sampling.py ../shared/corpus/ndpi/dev ../shared/corpus/zeek/dev
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from services.capture.flows import FlowMeter
from services.capture.sources import CaptureFileError, FileSource
from services.classify.engine import Engine
from shared.settings import CaptureSettings


class Loop:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.meter: FlowMeter | None = None
        self.samples = 0
        self.sample_bytes = 0
        self.best: dict[str, object] = {}
        self.queue: list = []

    def sample(self, s) -> None:
        self.samples += 1
        self.sample_bytes += sum(map(len, s.src_payloads)) + sum(map(len, s.dst_payloads))
        self.queue.append(s)

    def flow(self, rec) -> None:
        pass

    def packet(self, p) -> None:
        pass

    def drain(self) -> None:
        while self.queue:
            v = self.engine.classify(self.queue.pop(0))
            b = self.best.get(v.flow_id)
            if b is None or v.sample_seq_no >= b.sample_seq_no:
                self.best[v.flow_id] = v
            self.meter.on_verdict(v)


def main(dirs: list[str]) -> None:
    files = sorted(p for d in dirs for p in Path(d).iterdir() if p.suffix in (".pcap", ".pcapng", ".cap"))
    loop = Loop(Engine())
    t0 = time.process_time()
    for path in files:
        meter = FlowMeter(CaptureSettings(verdict_wait_s=0), loop, probe="bench")
        loop.meter = meter
        try:
            src = FileSource(str(path))
        except (CaptureFileError, OSError):
            continue
        meter.set_source(path.name, src.datalink)
        for dlt, recs in src.batches():
            meter.process_batch(recs, dlt)
            loop.drain()
        meter.finish("eof")
        loop.drain()
    cpu = time.process_time() - t0
    http = [v for v in loop.best.values() if v.http is not None]
    pairs = sum(max(1, len(v.http_transactions)) for v in http)
    import os

    if os.environ.get("FT_BENCH_DUMP"):
        with open(os.environ["FT_BENCH_DUMP"], "w") as fh:
            for v in sorted(loop.best.values(), key=lambda v: v.flow_id):
                fh.write(f"{v.src_ip} {v.src_port} {v.dst_ip} {v.dst_port} {v.transport} {v.flow_id.split('-')[-1]} {v.app_protocol} {v.application} {v.host!r} {v.http is not None}\n")
    print(f"files={len(files)} samples={loop.samples} sample_payload_bytes={loop.sample_bytes} "
          f"http_flows={len(http)} http_pairs={pairs} cpu_s={cpu:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["../shared/corpus/ndpi/dev"])
