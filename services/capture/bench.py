"""Benchmark of read + decode + flow metering without NATS (``flowtarget bench capture``, part a).

    python -m services.capture.bench FILE [--immediate]


``run_meter_bench(pcap)`` returns a dict with ``packets``, ``pps_meter``,
``gbps_meter``, ``seconds``, ``flows``, ``samples``, ``packet_events``,
``peak_rss_mb`` and ``bytes_per_flow``.  The sink only counts (and keeps
nothing), so the figure is the meter's own cost; building the sample and
record objects is included.
"""

from __future__ import annotations

import gc
import resource
import struct
import time
import tracemalloc
from pathlib import Path
from typing import Any

from shared.settings import CaptureSettings

from .flows import FlowMeter
from .sources import FileSource

__all__ = ["run_meter_bench", "measure_bytes_per_flow", "CountingSink"]


class CountingSink:
    def __init__(self) -> None:
        self.flows = self.ends = self.samples = self.packets = self.hots = 0

    def flow(self, rec: Any) -> None:
        self.flows += 1
        if rec.phase == "end":
            self.ends += 1

    def hot(self, rec: Any) -> None:
        self.hots += 1

    def sample(self, s: Any) -> None:
        self.samples += 1

    def packet(self, p: Any) -> None:
        self.packets += 1


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure_bytes_per_flow(n: int = 20000, settings: CaptureSettings | None = None) -> float:
    """Memory held per active flow (traced Python allocations / flows), after its first packet."""
    settings = settings or CaptureSettings(verdict_wait_s=0, max_flows=max(16, n * 2))
    sink = CountingSink()
    meter = FlowMeter(settings, sink, source="bench")
    frames = []
    for i in range(n):
        src = struct.pack("!I", 0x0A000000 + i)
        dst = struct.pack("!I", 0xC0A80000 + (i % 250))
        udp = struct.pack("!HHHH", 1024 + i % 60000, 443, 8 + 32, 0) + b"\x16" * 32
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0, src, dst) + udp
        frames.append(b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i, fr in enumerate(frames):
        meter.process(1000.0 + i * 1e-5, fr)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / n


def run_meter_bench(pcap: str | Path, settings: CaptureSettings | None = None, bytes_per_flow: bool = True,
                    defer_samples: bool = True, chunk: int = 2048) -> dict[str, Any]:
    """Read + decode + meter every packet of ``pcap``; figures as a dict.

    ``defer_samples`` (default, as the capture service runs the meter):
    samples are coalesced per flow and flushed every ``chunk`` packets, the
    service's publishing turn (services.capture.service.CHUNK).  ``defer_samples=False``: one sample per new
    payload packet at once.
    """
    settings = settings or CaptureSettings(verdict_wait_s=0)
    sink = CountingSink()
    meter = FlowMeter(settings, sink, source=Path(pcap).name)
    meter.defer_samples = defer_samples
    src = FileSource(pcap)
    meter.set_source(src.name, src.datalink)
    process_batch = meter.process_batch
    gc.collect()
    c0 = time.process_time()
    t0 = time.perf_counter()
    for dlt, recs in src.batches(chunk):
        process_batch(recs, dlt)
        if defer_samples:
            meter.flush_samples()
    meter.finish("eof")
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    st = meter.stats()
    nbytes = st["bytes"]
    packets = st["packets"]
    out: dict[str, Any] = {
        "packets": packets,
        "seconds": round(dt, 3),
        "pps_meter": round(packets / dt) if dt > 0 else 0,
        "pps_meter_cpu": round(packets / cpu) if cpu > 0 else 0,
        "defer_samples": defer_samples,
        "gbps_meter": round(nbytes * 8 / dt / 1e9, 3) if dt > 0 else 0.0,
        "flows": sink.ends,
        "samples": sink.samples,
        "packet_events": sink.packets,
        "hot_records": sink.hots,
        "bad_packets": st["bad_packets"],
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "file_errors": src.errors,
    }
    if bytes_per_flow:
        out["bytes_per_flow"] = round(measure_bytes_per_flow())
    return out


if __name__ == "__main__":  # python -m services.capture.bench FILE
    import json
    import sys

    print(json.dumps(run_meter_bench(sys.argv[1], defer_samples="--immediate" not in sys.argv)))
