"""``flowtarget bench capture|classify|store|block|live|pipeline``: benchmarks that print figures.

Figures are printed, never asserted: speed depends on the machine.  With
``--json`` the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    bp = sub.add_parser("bench", help="benchmarks that print figures")
    bsub = bp.add_subparsers(dest="target", required=True)
    cp = bsub.add_parser("capture", help="packets/s of (a) read+decode+meter and (b) the full capture service on NATS")
    cp.add_argument("pcap")
    cp.add_argument("--json", action="store_true")
    cp.add_argument("--nats", help="NATS URL for (b) (default: embedded nats-server)")
    cp.add_argument("--ndpi", nargs="?", const="ndpiReader", metavar="NDPIREADER",
                    help="also time nDPI's ndpiReader (C, with DPI) on the same file and print the ratio")
    cp.add_argument("--shards", type=int, default=0, metavar="N",
                    help="also (c): `flowtarget capture` replaying the file with N shard processes (FT_SHARDS) "
                         "and its detectors' process, by wall clock from start to exit")
    cp.add_argument("--repeat", type=int, default=1, metavar="K",
                    help="with --ndpi and K > 1: K more alternating pairs of ndpiReader and (c) (with --shards) "
                         "or (b), each pair's ratio by wall clock and their median (a noisy machine moves both)")
    cl = bsub.add_parser("classify", help="flow samples classified per second on one core")
    cl.add_argument("inputs", nargs="+", help="samples JSONL (bench/dump_samples.py) or capture files")
    cl.add_argument("--json", action="store_true")
    cl.add_argument("--repeat", type=int, default=3)
    st = bsub.add_parser("store", help="points/s from JetStream into the configured sink")
    st.add_argument("--points", type=int, default=200_000)
    st.add_argument("--events-per-msg", type=int, default=500)
    st.add_argument("--nats", help="NATS URL (default: FT_NATS_URL if set, else an embedded nats-server)")
    st.add_argument("--influx", help="InfluxDB URL (default FT_INFLUX_URL); 'vm' starts a temporary victoria-metrics")
    lv = bsub.add_parser("live", help="packets/s capture keeps up with on a real interface (root, a veth pair)")
    from services.capture.livebench import add_arguments as live_arguments

    live_arguments(lv)
    pp = bsub.add_parser("pipeline", help="CPU seconds per service and nats-server, messages and bytes per subject")
    from flowtarget.bench_pipeline import add_arguments as pipeline_arguments

    pipeline_arguments(pp)
    bl = bsub.add_parser("block", help="trigger-to-injection latency in a namespace lab (root)")
    from services.block.bench import add_arguments as block_arguments

    block_arguments(bl)
    return bp


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


async def _capture_service_run(pcap: str, nats_url: str, detect_inline: bool = False) -> dict[str, Any]:
    """The real capture service (services.capture.service.main) over one file, publishing to NATS.

    ``detect_inline=False``: as on a live interface, the alert detectors are another process's
    work (capture publishes their input; that process is not run here); True: inside capture,
    as a replay (analyze, run --pcap) runs them."""
    import shutil
    import tempfile

    from shared.settings import CaptureSettings

    kw: dict[str, Any] = {}
    record_dir = CaptureSettings().record_dir
    if record_dir is not None:     # FT_RECORD_DIR: each run its own store (the other's packets are the same)
        kw["record_dir"] = record_dir / ("detect-inline" if detect_inline else "detect-own")
    # the alerts' evidence pcaps are written as a replay writes them (part of the work measured), but into a
    # directory of their own, removed afterwards: not among the probe's evidence (FT_EVIDENCE_DIR)
    evidence_dir = Path(tempfile.mkdtemp(prefix="ft-bench-evidence-"))
    try:
        return await _capture_service_once(pcap, nats_url, detect_inline, evidence_dir, kw)
    finally:
        shutil.rmtree(evidence_dir, ignore_errors=True)


async def _capture_service_once(pcap: str, nats_url: str, detect_inline: bool, evidence_dir: Path,
                                kw: dict[str, Any]) -> dict[str, Any]:
    from shared.bus import Bus
    from shared.settings import CaptureSettings
    from services.capture import service

    settings = CaptureSettings(nats_url=nats_url, probe="bench", pcap=[Path(pcap)], verdict_wait_s=0,
                               replay_max_pending=0, stream_storage="memory", detect_inline=detect_inline,
                               evidence_dir=evidence_dir, **kw)
    stop = asyncio.Event()
    bus = await Bus.connect(settings, "bench-capture", stop)
    stats: list[dict[str, Any]] = []

    async def on_stats(msg: Any) -> None:
        stats.append(json.loads(msg.data))

    await bus.nc.subscribe("ft.stats.bench", cb=on_stats)
    from shared.runner import prepare_process

    prepare_process()  # as the runner does for every service
    t0, c0 = time.perf_counter(), time.process_time()
    await service.main(settings, bus, stop)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    await asyncio.sleep(0.2)
    await bus.close()
    done = [s for s in stats if s.get("finished")]
    packets = sum(int(s.get("packets", 0)) for s in done)
    nbytes = sum(int(s.get("bytes", 0)) for s in done)
    return {"packets": packets, "seconds": round(dt, 3), "pps": round(packets / dt) if dt else 0,
            "cpu_seconds": round(cpu, 3),
            "gbps": round(nbytes * 8 / dt / 1e9, 3) if dt else 0.0,
            "published": bus.published}


def _sharded_capture_run(pcap: str, nats_url: str, shards: int, detectors: bool = True) -> dict[str, Any]:
    """(c): ``flowtarget capture`` on the file with ``shards`` processes, as a user runs it.

    The wall clock runs from the start of the command to its exit (start-up included, as
    ndpiReader's); CPU seconds are its processes' (the shards and the detectors' process).
    ``detectors=False``: FT_DETECTORS empty, no detectors' process (what (b) measures)."""
    import subprocess
    import sys

    stats: list[dict[str, Any]] = []

    async def run() -> tuple[float, float]:
        from shared.bus import Bus
        from shared.settings import CommonSettings

        stop = asyncio.Event()
        bus = await Bus.connect(CommonSettings(nats_url=nats_url, probe="benchshard"), "bench-capture", stop)

        async def on_stats(msg: Any) -> None:
            stats.append(json.loads(msg.data))

        await bus.nc.subscribe("ft.stats.benchshard", cb=on_stats)
        await bus.nc.flush()
        env = dict(os.environ, FT_NATS_URL=nats_url, FT_PROBE="benchshard", FT_PCAP=pcap, FT_SHARDS=str(shards),
                   FT_VERDICT_WAIT_S="0", FT_REPLAY_MAX_PENDING="0", FT_STREAM_STORAGE="memory",
                   FT_METRICS_PORT="0", FT_LOG_LEVEL="WARNING")
        env.pop("FT_SHARD_INDEX", None)
        env.pop("FT_DETECT_INLINE", None)
        if not detectors:
            env["FT_DETECTORS"] = ""
        record_dir = os.environ.get("FT_RECORD_DIR", "").strip()
        if record_dir:      # a store of its own, as (b) and (b') have
            env["FT_RECORD_DIR"] = str(Path(record_dir) / ("sharded" if detectors else "sharded-nodetect"))
        c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "flowtarget", "capture", env=env)
        code = await proc.wait()
        dt = time.perf_counter() - t0
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        await asyncio.sleep(0.2)
        await bus.close()
        if code != 0:
            raise RuntimeError(f"flowtarget capture with {shards} shards exited {code}")
        return dt, (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)

    dt, cpu = asyncio.run(run())
    done = [s for s in stats if s.get("finished")]
    packets = sum(int(s.get("packets", 0)) for s in done)
    return {"packets": packets, "seconds": round(dt, 3), "pps": round(packets / dt) if dt else 0,
            "cpu_seconds": round(cpu, 3), "shards": shards}


def run_ndpi_reader(exe: str, pcap: str) -> dict[str, Any]:
    """Time ``ndpiReader -i PCAP`` (one thread): packets/s by its own processing time and by wall clock."""
    import re
    import shutil
    import subprocess

    path = shutil.which(exe)
    if path is None:
        return {"ndpi_error": f"{exe} not found (Debian: apt install libndpi-bin)"}
    t0 = time.perf_counter()
    proc = subprocess.run([path, "-i", pcap], capture_output=True, text=True, errors="replace", timeout=3600)
    wall = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    packets = re.search(r"IP packets:\s+(\d+)\s+of\s+(\d+) packets total", out)
    busy = re.search(r"Packet Processing Time:\s+([\d.]+)\s+msec", out)
    version = re.search(r"Using nDPI \(([^)]+)\)", out)
    if proc.returncode != 0 or packets is None:
        return {"ndpi_error": f"{exe} exited {proc.returncode}: {out.strip()[-200:]}"}
    total = int(packets.group(2))
    res: dict[str, Any] = {"ndpi_version": version.group(1) if version else "", "ndpi_packets": total,
                           "ndpi_pps_wall": round(total / wall) if wall > 0 else 0}
    if busy and float(busy.group(1)) > 0:
        res["ndpi_pps"] = round(total / (float(busy.group(1)) / 1000.0))
    return res


@contextlib.contextmanager
def _nats_url(args: argparse.Namespace) -> Iterator[str]:
    """``--nats`` when given, else an embedded nats-server's URL for the block's duration."""
    if args.nats:
        yield args.nats
        return
    from flowtarget.embedded import EmbeddedNats

    embedded = EmbeddedNats().start()
    try:
        yield embedded.url
    finally:
        embedded.close()


def bench_capture(args: argparse.Namespace) -> int:
    from services.capture.bench import run_meter_bench

    with _nats_url(args) as url:
        full = asyncio.run(_capture_service_run(args.pcap, url))
        inline = asyncio.run(_capture_service_run(args.pcap, url, detect_inline=True))
        sharded = bare = None
        if args.shards > 1:
            bare = _sharded_capture_run(args.pcap, url, args.shards, detectors=False)
            sharded = _sharded_capture_run(args.pcap, url, args.shards)
    rss_full = peak_rss_mb()
    meter = run_meter_bench(args.pcap)
    result = {
        "packets": meter["packets"],
        "pps_meter": meter["pps_meter"],
        "gbps_meter": meter.get("gbps_meter"),
        "pps": full["pps"],
        "gbps": full["gbps"],
        "cpu_seconds": full["cpu_seconds"],
        "pps_detect_inline": inline["pps"],
        "cpu_seconds_detect_inline": inline["cpu_seconds"],
        "peak_rss_mb": round(rss_full, 1),
        "bytes_per_flow": meter.get("bytes_per_flow"),
        "flows": meter.get("flows"),
        "samples": meter.get("samples"),
        "service_seconds": full["seconds"],
        "meter_seconds": meter["seconds"],
    }
    print(f"capture bench on {args.pcap}: {result['packets']:,} packets, {result['flows']:,} flows")
    print(f"  (a) read + decode + meter, no NATS : {result['pps_meter']:>10,} packets/s  {result['gbps_meter']} Gbit/s")
    print(f"  (b) full capture service on NATS   : {result['pps']:>10,} packets/s  {result['gbps']} Gbit/s, "
          f"{result['cpu_seconds']} CPU-s (as on a live interface: detectors in their own process)")
    print(f"  (b') with the detectors inline     : {result['pps_detect_inline']:>10,} packets/s  "
          f"{result['cpu_seconds_detect_inline']} CPU-s (as a replay runs them: analyze, run --pcap)")
    if sharded is not None and bare is not None:
        result.update({"pps_sharded": bare["pps"], "cpu_seconds_sharded": bare["cpu_seconds"],
                       "pps_sharded_detect": sharded["pps"], "cpu_seconds_sharded_detect": sharded["cpu_seconds"],
                       "shards": sharded["shards"], "packets_sharded": bare["packets"]})
        print(f"  (c) flowtarget capture, FT_SHARDS={bare['shards']}: {bare['pps']:>10,} packets/s  "
              f"{bare['cpu_seconds']} CPU-s (no detectors, as (b); wall clock from start to exit)")
        print(f"  (c') the same with its detectors' process: {sharded['pps']:>10,} packets/s  "
              f"{sharded['cpu_seconds']} CPU-s")
    print(f"  peak RSS {result['peak_rss_mb']} MB, {result['bytes_per_flow']} bytes per active flow")
    if args.ndpi:
        nd = run_ndpi_reader(args.ndpi, args.pcap)
        result.update(nd)
        if "ndpi_error" in nd:
            print(f"  ndpiReader: {nd['ndpi_error']}")
        else:
            if nd.get("ndpi_pps"):
                result["ratio_ndpi"] = round(result["pps"] / nd["ndpi_pps"], 3)
            result["ratio_ndpi_wall"] = round(result["pps"] / nd["ndpi_pps_wall"], 3) if nd["ndpi_pps_wall"] else 0
            print(f"  ndpiReader {nd['ndpi_version']} on the same file: {nd.get('ndpi_pps', 0):>10,} packets/s "
                  f"(its processing time), {nd['ndpi_pps_wall']:,} by wall clock")
            print(f"  (b) / ndpiReader: {result.get('ratio_ndpi', '-')} by processing time, "
                  f"{result['ratio_ndpi_wall']} by wall clock")
            if sharded is not None and bare is not None and nd["ndpi_pps_wall"]:
                result["ratio_ndpi_wall_sharded"] = round(bare["pps"] / nd["ndpi_pps_wall"], 3)
                result["ratio_ndpi_wall_sharded_detect"] = round(sharded["pps"] / nd["ndpi_pps_wall"], 3)
                print(f"  (c) / ndpiReader: {result['ratio_ndpi_wall_sharded']} by wall clock; (c') / ndpiReader: "
                      f"{result['ratio_ndpi_wall_sharded_detect']}")
    if args.ndpi and args.repeat > 1 and "ndpi_error" not in result:
        result["pairs"] = _alternating_pairs(args)
    if args.json:
        print(json.dumps(result))
    return 0


def _alternating_pairs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``--repeat K``: K pairs run back to back, ndpiReader then ours ((c) with ``--shards``, else (b)),
    so that both see the same moment of a shared machine; each pair's ratio by wall clock and the median."""
    import statistics

    ours = f"(c) FT_SHARDS={args.shards}" if args.shards > 1 else "(b)"
    pairs: list[dict[str, Any]] = []
    print(f"  {args.repeat} alternating pairs, ndpiReader then {ours}, by wall clock:")
    with _nats_url(args) as url:
        for k in range(args.repeat):
            nd = run_ndpi_reader(args.ndpi, args.pcap)
            if "ndpi_error" in nd:
                print(f"  ndpiReader: {nd['ndpi_error']}")
                break
            if args.shards > 1:
                run = _sharded_capture_run(args.pcap, url, args.shards, detectors=False)
            else:
                run = asyncio.run(_capture_service_run(args.pcap, url))
            pps = run["pps"]
            ratio = round(pps / nd["ndpi_pps_wall"], 3) if nd["ndpi_pps_wall"] else 0.0
            pairs.append({"ndpi_pps_wall": nd["ndpi_pps_wall"], "pps": pps, "packets": run["packets"],
                          "ratio_ndpi_wall": ratio})
            print(f"    {k + 1}: ndpiReader {nd['ndpi_pps_wall']:>9,} packets/s, {ours} {pps:>9,}: {ratio}")
    if pairs:
        ratios = [p["ratio_ndpi_wall"] for p in pairs]
        print(f"  {ours} / ndpiReader by wall clock: median {statistics.median(ratios):.3f}, "
              f"{min(ratios):.3f}-{max(ratios):.3f} over {len(ratios)} pairs")
    return pairs


def _samples_from_captures(paths: list[str]) -> list[Any]:
    from services.capture.flows import ListSink
    from services.capture.offline import replay

    sink = ListSink()
    replay(paths, sink, probe="bench")
    return list(sink.samples)


def bench_classify(args: argparse.Namespace) -> int:
    import tempfile

    from services.classify.bench import run_classify_bench

    inputs = args.inputs
    if len(inputs) == 1 and inputs[0].endswith(".jsonl"):
        path = inputs[0]
        tmp = None
    else:
        samples = _samples_from_captures(inputs)
        tmp = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False)
        with tmp:
            for s in samples:
                tmp.write(s.model_dump_json() + "\n")
        path = tmp.name
    try:
        result = run_classify_bench(path, repeat=args.repeat)
    finally:
        if tmp is not None:
            os.unlink(tmp.name)
    print(f"classify bench: {result['samples']:,} samples, {result['dissectors']} dissectors, "
          f"{result['dissector_errors']} dissector errors")
    print(f"  as the service runs (final verdicts remembered): {result['samples_per_s']:>10,} samples/s on one core")
    if "samples_per_s_full_dpi" in result:
        print(f"  full DPI on every sample                       : {result['samples_per_s_full_dpi']:>10,} samples/s on one core")
    if args.json:
        print(json.dumps(result))
    return 0


def bench_command(args: argparse.Namespace) -> int:
    if args.target == "capture":
        return bench_capture(args)
    if args.target == "classify":
        return bench_classify(args)
    if args.target == "store":
        from services.store.bench import main as store_main

        argv = ["--points", str(args.points), "--events-per-msg", str(args.events_per_msg)]
        argv += ["--nats", args.nats or os.environ.get("FT_NATS_URL") or "embedded"]
        argv += ["--influx", args.influx] if args.influx else []
        return int(store_main(argv) or 0)
    if args.target == "pipeline":
        from flowtarget.bench_pipeline import bench_pipeline

        return bench_pipeline(args)
    if args.target == "live":
        from services.capture.livebench import bench_command as live_bench

        return int(live_bench(args) or 0)
    if args.target == "block":
        from services.block.bench import bench_command as block_bench

        return int(block_bench(args) or 0)
    return 2
