#!/usr/bin/env python3
"""The packet recorder's cost and output: CPU seconds of the meter and of the recorder, bytes written.

    python bench/recorder_bench.py FILE [--cutoff 0 10240] [--dir /tmp/store] [--max-bytes N]

For every cutoff, the file is read in capture's batches (2048 packets), each batch
metered (FlowMeter.process_batch) and then recorded (Recorder.record) as the
capture service does; CPU time (process_time) is summed separately around the
two calls, so the machine's load does not enter.  Prints one JSON line per cutoff:
packets, CPU seconds of meter and recorder, recorder ns/packet, bytes written
and bytes written per million packets, packets cut.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.capture.bench import CountingSink  # noqa: E402
from services.capture.flows import FlowMeter  # noqa: E402
from services.capture.recorder import Recorder  # noqa: E402
from services.capture.sources import FileSource  # noqa: E402
from shared.settings import CaptureSettings  # noqa: E402


def run(pcap: str, cutoff: int, directory: Path, max_bytes: int, record: bool = True) -> dict:
    shutil.rmtree(directory, ignore_errors=True)
    settings = CaptureSettings(verdict_wait_s=0)
    sink = CountingSink()
    meter = FlowMeter(settings, sink, source=Path(pcap).name)
    meter.defer_samples = True
    src = FileSource(pcap)
    meter.set_source(src.name, src.datalink)
    rec = Recorder(directory, meter=meter, max_bytes=max_bytes, cutoff_bytes=cutoff) if record else None
    c_flow = [0.0]
    if rec is not None:      # capture's Outbox hands every flow record to the recorder (its index)
        count_flow, on_flow = sink.flow, rec.on_flow

        def flow(r):
            count_flow(r)
            c = time.process_time()
            on_flow(r)
            c_flow[0] += time.process_time() - c

        sink.flow = flow
    gc.collect()
    pt = time.process_time
    c_meter = c_rec = 0.0
    for dlt, recs in src.batches(2048):
        c0 = pt()
        meter.process_batch(recs, dlt)
        meter.flush_samples()
        c1 = pt()
        if rec is not None:
            rec.record(recs, dlt)
        c_meter += c1 - c0
        c_rec += pt() - c1
    c0 = pt()
    if rec is not None:
        rec.close()
    c_rec += pt() - c0
    meter.finish("eof")
    c_meter -= c_flow[0]     # the recorder's share of the meter's time: its flow records
    c_rec += c_flow[0]
    n = meter.stats()["packets"]
    out = {"file": Path(pcap).name, "packets": n, "cutoff_bytes": cutoff, "cpu_meter_s": round(c_meter, 3),
           "cpu_recorder_s": round(c_rec, 3), "recorder_ns_per_packet": round(c_rec / n * 1e9) if n else 0,
           "input_bytes": meter.stats()["bytes"]}
    if rec is not None:
        st = rec.stats()
        out.update(bytes_written=st["bytes_written"], bytes_per_million_packets=round(st["bytes_written"] / n * 1e6),
                   packets_cut=st["packets_cut"], files=st["files_written"], stored_bytes=st["stored_bytes"],
                   index_bytes=st["stored_bytes"] - sum(p.stat().st_size for p in directory.glob("*.pcap")))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pcap")
    ap.add_argument("--cutoff", type=int, nargs="+", default=[0, 10240])
    ap.add_argument("--dir", default="/tmp/ft-recorder-bench")
    ap.add_argument("--max-bytes", type=int, default=4 << 30)
    ap.add_argument("--no-record", action="store_true", help="also a run without the recorder (meter only)")
    args = ap.parse_args()
    if args.no_record:
        print(json.dumps(run(args.pcap, 0, Path(args.dir), args.max_bytes, record=False)), flush=True)
    for c in args.cutoff:
        print(json.dumps(run(args.pcap, c, Path(args.dir), args.max_bytes)), flush=True)
    shutil.rmtree(args.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
