#!/usr/bin/env python3
"""Run FlowMeter over capture files without NATS and dump what it emits.

    python bench/dump_samples.py PCAP... [--out samples.jsonl] [--flows flows.jsonl]
                                 [--packets packets.jsonl] [--stats]

--out     every FlowSample, one JSON object per line (FlowSample.model_dump_json)
--flows   every flow's end record in the scorer's format (pcap, transport, src_ip,
          src_port, dst_ip, dst_port, app_protocol=Unknown, counters, ...)
--packets every PacketEvent (DNS and ARP packets)
Each file is metered on its own (all flows end at the end of each file).
A file that is not a capture is reported on stderr and skipped (exit status 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.capture.flows import FlowMeter  # noqa: E402
from services.capture.sources import CaptureFileError, FileSource  # noqa: E402
from shared.settings import CaptureSettings  # noqa: E402


class _DumpSink:
    def __init__(self, samples, flows, packets) -> None:
        self.samples_fh = samples
        self.flows_fh = flows
        self.packets_fh = packets
        self.pcap = ""
        self.n_samples = self.n_flows = self.n_packets = 0

    def flow(self, rec) -> None:
        if rec.phase != "end":
            return
        self.n_flows += 1
        if self.flows_fh is None:
            return
        obj = {
            "pcap": self.pcap,
            "flow_id": rec.flow_id,
            "transport": rec.transport,
            "src_ip": rec.src_ip,
            "src_port": rec.src_port,
            "dst_ip": rec.dst_ip,
            "dst_port": rec.dst_port,
            "vlan_id": rec.vlan_id,
            "tunnel": rec.tunnel,
            "app_protocol": rec.app_protocol or "Unknown",
            "application": rec.application,
            "host": rec.host,
            "first_seen": rec.first_seen,
            "last_seen": rec.last_seen,
            "src2dst_packets": rec.src2dst_packets,
            "src2dst_bytes": rec.src2dst_bytes,
            "dst2src_packets": rec.dst2src_packets,
            "dst2src_bytes": rec.dst2src_bytes,
            "end_reason": rec.end_reason,
        }
        self.flows_fh.write(json.dumps(obj) + "\n")

    def sample(self, s) -> None:
        self.n_samples += 1
        if self.samples_fh is not None:
            self.samples_fh.write(s.model_dump_json() + "\n")

    def packet(self, p) -> None:
        self.n_packets += 1
        if self.packets_fh is not None:
            self.packets_fh.write(p.model_dump_json() + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pcaps", nargs="+")
    ap.add_argument("--out", help="samples JSONL")
    ap.add_argument("--flows", help="flow end records JSONL (scorer format)")
    ap.add_argument("--packets", help="packet events JSONL")
    ap.add_argument("--stats", action="store_true", help="print the meter's counters as JSON at the end")
    args = ap.parse_args(argv)
    opened = []

    def _open(p):
        if not p:
            return None
        fh = open(p, "w", encoding="utf-8")  # noqa: SIM115
        opened.append(fh)
        return fh

    sink = _DumpSink(_open(args.out), _open(args.flows), _open(args.packets))
    settings = CaptureSettings(verdict_wait_s=0)
    meter = FlowMeter(settings, sink, probe="dump")
    rc = 0
    t0 = time.perf_counter()
    for path in args.pcaps:
        if path.endswith(".out"):
            continue
        try:
            src = FileSource(path)
        except CaptureFileError as exc:
            print(f"error: {exc}", file=sys.stderr)
            rc = 1
            continue
        sink.pcap = os.path.basename(path)
        meter.set_source(sink.pcap, src.datalink)
        process = meter.process
        for ts, frame, dlt in src.iter_dlt():
            process(ts, frame, dlt)
        if src.errors:
            print(f"warning: {src.error}", file=sys.stderr)
        meter.finish("eof")
    dt = time.perf_counter() - t0
    for fh in opened:
        fh.close()
    st = meter.stats()
    print(f"{st['packets']} packets, {sink.n_flows} flows, {sink.n_samples} samples, "
          f"{sink.n_packets} packet events in {dt:.2f}s", file=sys.stderr)
    if args.stats:
        print(json.dumps(st, sort_keys=True))
    return rc


if __name__ == "__main__":
    sys.exit(main())
