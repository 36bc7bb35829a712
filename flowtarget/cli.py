"""The ``flowtarget`` command.

    flowtarget capture|classify|store|block      one service, configured from FT_* variables
    flowtarget run [--iface IF | --pcap FILE...] [--nats URL] [--rules FILE] [--out DIR] [--format jsonl|eve]
    flowtarget analyze PCAP [PCAP ...] [--jsonl FILE|-] [--out DIR [--format jsonl|eve]]
    flowtarget bench capture|classify|store|block ...
    flowtarget rules add|list|remove|load ...
    flowtarget alerts [--follow] [--type T] [--json]
    flowtarget web                               the operator console (FT_WEB_* variables)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from flowtarget.embedded import die_with_parent

SERVICE_MODULES = {
    "capture": ("services.capture.service", "CaptureSettings"),
    "classify": ("services.classify.service", "ClassifySettings"),
    "store": ("services.store.service", "StoreSettings"),
    "block": ("services.block.service", "BlockSettings"),
    "web": ("services.web.service", "WebSettings"),
}


def service_available(name: str) -> bool:
    try:
        mod = importlib.import_module(SERVICE_MODULES[name][0])
    except ImportError:
        return False
    return hasattr(mod, "main")


# --------------------------------------------------------------------------- one service


def run_one_service(name: str, overrides: dict[str, Any] | None = None, on_stop: Any = ()) -> int:
    from shared import settings as settings_mod
    from shared.runner import run_service

    module_name, settings_name = SERVICE_MODULES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        print(f"flowtarget {name}: not available: {exc}", file=sys.stderr)
        return 1
    settings_cls = getattr(settings_mod, settings_name)
    return run_service(name, settings_cls, module.main, check=getattr(module, "check_settings", None),
                       on_stop=on_stop, **(overrides or {}))


def run_web() -> int:
    """web: refuses to start without login credentials (one line, exit 2), then runs like any service."""
    from shared.runner import ConfigError, load_settings
    from shared.settings import WebSettings

    try:
        settings = load_settings(WebSettings)
    except ConfigError as exc:
        print(f"flowtarget web: configuration error: {exc}", file=sys.stderr)
        return 2
    if not settings.login_configured():
        from services.web.service import LOGIN_MISSING

        print(f"flowtarget web: configuration error: {LOGIN_MISSING}", file=sys.stderr)
        return 2
    return run_one_service("web")


def run_capture(args: argparse.Namespace) -> int:
    """capture: its detectors' process, then the capture process (or N shard processes)."""
    from shared.runner import ConfigError, load_settings, run_service
    from shared.settings import CaptureSettings

    overrides: dict[str, Any] = {}
    if getattr(args, "shards", 0):
        overrides["shards"] = args.shards
    try:
        settings = load_settings(CaptureSettings, **overrides)
        if settings.capture_role != "detect":
            from services.capture.sources import check_settings
            from shared.settings import DetectSettings

            check_settings(settings)    # interface, files, filter: before any child starts
            load_settings(DetectSettings)   # the detectors' thresholds, read by its process
    except ConfigError as exc:
        print(f"flowtarget capture: configuration error: {exc}", file=sys.stderr)
        return 2
    if settings.capture_role == "detect":
        from services.capture import detect

        return run_service("detect", CaptureSettings, detect.main, **overrides)
    # FT_SHARDS > 1: N capture processes, on an interface by the kernel's flow hash, on files each
    # reading every file and keeping its share by a hash of the IP addresses (services/capture/shard.py)
    sharded_parent = settings.shards > 1 and settings.shard_index < 0
    detector = None
    if settings.shard_index < 0:      # shards: the parent started the one detectors' process
        detector = start_detectors(settings)
    try:
        if sharded_parent:
            return run_shards(settings, also=(detector,) if detector is not None else ())
        # SIGTERM reaches the detectors' process at once: both shut down side by side, within the grace period
        forward = (lambda: detector.poll() is None and detector.terminate(),) if detector is not None else ()
        return run_one_service("capture", overrides, on_stop=forward)
    finally:
        if detector is not None:
            stop_child(detector)


def start_detectors(settings: Any) -> Any:
    """The alert detectors' process (services.capture.detect); None when they run inline or none is enabled."""
    from flowtarget.orchestrate import wait_ready
    from services.capture.detect import own_process
    from shared.subjects import subject

    if not own_process(settings):
        return None
    env = dict(os.environ, FT_CAPTURE_ROLE="detect", FT_SHARDS=str(settings.shards),   # a replay's end: every shard's
               FT_METRICS_PORT=str(settings.metrics_port + 100) if settings.metrics_port else "0")
    proc: Any
    if threading.active_count() == 1:
        # forked, not exec'd: this process has imported what the detectors run (0.2-0.3 CPU-s saved)
        from services.capture import detect as _detect  # noqa: F401
        from flowtarget.zygote import fork_service

        proc = fork_service("capture", env, name="ft-detect")
    else:
        proc = subprocess.Popen([sys.executable, "-m", "flowtarget", "capture"], env=env, preexec_fn=die_with_parent)
    ready = asyncio.run(wait_ready(settings, "detect", alive=lambda: proc.poll() is None,
                                   subject=subject("ctl", settings.probe, "detect_ready")))
    if not ready:
        print("flowtarget capture: the detectors' process did not start; capturing without alerts", file=sys.stderr)
    return proc


def stop_child(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_shards(settings: Any, also: tuple[subprocess.Popen[bytes], ...] = ()) -> int:
    procs: list[Any] = []
    fork = threading.active_count() == 1
    if fork:
        # forked, not exec'd, as the detectors' process is: each shard saves the imports (0.3-0.5 CPU-s)
        # and classify's port table, which every shard's meter reads
        from services.capture import service as _service
        from flowtarget.zygote import fork_service

        _service.port_guesser()
    import secrets

    run = secrets.token_hex(6)     # this replay's shards pace each other, not another replay's
    for k in range(settings.shards):
        env = dict(os.environ, FT_SHARDS=str(settings.shards), FT_SHARD_INDEX=str(k), FT_SHARD_RUN=run)
        if fork:
            procs.append(fork_service("capture", env, name=f"ft-capture-s{k}"))
        else:
            procs.append(subprocess.Popen([sys.executable, "-m", "flowtarget", "capture"], env=env,
                                          preexec_fn=die_with_parent))
    def forward(signum: int, _frame: Any) -> None:
        # the shards (and the detectors' process) stop side by side, each in bounded time; this
        # process waits for them instead of dying at once (which would kill a container's rest)
        for p in (*procs, *also):
            if p.poll() is None:
                p.send_signal(signum)

    import signal as _signal

    old = {sig: _signal.signal(sig, forward) for sig in (_signal.SIGTERM, _signal.SIGINT)}
    code = 0
    try:
        for p in procs:
            code = max(code, p.wait())
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            stop_child(p)
        for sig, handler in old.items():
            _signal.signal(sig, handler)
    return code


# --------------------------------------------------------------------------- run / analyze


def check_capture_files(paths: list[str]) -> tuple[list[str], list[str]]:
    """Split into readable capture files and one-line errors for the others."""
    from services.capture.sources import CaptureFileError, open_source

    ok, errors = [], []
    for p in paths:
        try:
            open_source(p).close()
            ok.append(p)
        except (CaptureFileError, OSError) as exc:
            msg = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            errors.append(f"{p}: {msg}" if not str(msg).startswith(p) else str(msg))
    return ok, errors


class ProgressLine:
    """The terminal's progress line of a replay: file k of N, bytes read of the total, packets/s, ETA.

    Fed by capture's ``ft.stats.<probe>.progress`` messages (within a file, twice a second) and by
    its per-file final stats.  Sizes are bytes on disk, so the ETA holds for compressed files too.
    """

    def __init__(self, files: list[str]) -> None:
        self.sizes = []
        for f in files:
            try:
                self.sizes.append(os.path.getsize(f))
            except OSError:
                self.sizes.append(0)
        self.total = sum(self.sizes)
        self.started = time.monotonic()
        self.packets_before = 0     # packets of the files already finished
        self.in_file: dict[int, int] = {}   # packets of the current file, per shard (FT_SHARDS replays)

    def file_done(self, done: int, packets: int) -> None:
        self.packets_before = packets
        self.in_file.clear()

    def text(self, st: dict[str, Any], now: float) -> str:
        k = max(1, min(int(st.get("file", 1) or 1), len(self.sizes) or 1))
        read = sum(self.sizes[:k - 1]) + max(0, int(st.get("bytes_read", 0) or 0))
        try:
            self.in_file[int(st.get("shard", 0) or 0) % 64] = max(0, int(st.get("packets", 0) or 0))
        except (TypeError, ValueError):
            pass
        packets = self.packets_before + sum(self.in_file.values())
        el = max(now - self.started, 1e-6)
        pct = 100.0 * read / self.total if self.total else 0.0
        eta = (self.total - read) * el / read if read else 0.0
        return (f"[{k}/{len(self.sizes)}] {safe(st.get('source', ''), 30)}: {read / 1e6:,.0f} of "
                f"{self.total / 1e6:,.0f} MB ({pct:.0f} %), {packets / el:,.0f} packets/s, ETA {eta:.0f} s")

    def update(self, st: dict[str, Any]) -> None:
        print("\r" + self.text(st, time.monotonic()) + " " * 8, end="", file=sys.stderr, flush=True)


def _capture_shards(extra_env: dict[str, str] | None = None) -> int:
    """FT_SHARDS (FT_CAPTURE_SHARDS) as the capture child reads it from this environment and ``extra_env``;
    1 when unset or invalid (capture itself then stops with the reason)."""
    from pydantic import ValidationError

    from shared.settings import CaptureSettings

    try:
        if extra_env and extra_env.get("FT_SHARDS"):
            return CaptureSettings(shards=int(extra_env["FT_SHARDS"])).shards
        return CaptureSettings().shards
    except (ValidationError, ValueError):
        return 1


def _shard_env(args: argparse.Namespace) -> dict[str, str]:
    """``--shards N`` as the capture child's environment (nothing without it: FT_SHARDS, if set, applies)."""
    return {"FT_SHARDS": str(args.shards)} if getattr(args, "shards", 0) else {}


#: the event types reported_event can accept (the reader builds no others)
REPORTED_KINDS = ("flow", "dns", "alert")


def reported_event(ev: dict[str, Any]) -> bool:
    """The stored events that analyze, run --pcap and bench pipeline use: flow end records, DNS
    records and alerts (not verdicts nor update records, most of the stream)."""
    t = ev.get("event_type")
    return t == "dns" or t == "alert" or (t == "flow" and ev.get("phase") == "end")


async def _pipeline_for_files(orch: Any, files: list[str], out_dir: Path, extra_env: dict[str, str],
                              progress: bool, out_format: str = "jsonl", store_files: bool = True
                              ) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
    """Run all services over files, drain, return (status, stored events the report uses, capture stats)."""
    import nats

    from flowtarget.orchestrate import StreamCollector, pcap_env, stream_drained, wait_ready

    stats: list[dict[str, Any]] = []
    nc = await nats.connect(orch.settings.nats_servers, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    started = time.monotonic()
    total = len(files)
    line = ProgressLine(files)
    shards = _capture_shards(extra_env)

    async def on_stats(msg: Any) -> None:
        try:
            st = json.loads(msg.data)
        except ValueError:
            return
        if msg.subject.endswith(".progress"):    # capture inside a file: bytes read, packets
            if progress and isinstance(st, dict):
                line.update(st)
            return
        stats.append(st)
        if progress and st.get("finished"):
            # each shard of a sharded replay (FT_SHARDS) reports every file it finished
            done = min(total, sum(1 for s in stats if s.get("finished")) // shards)   # all shards finished it
            pk = sum(int(s.get("packets", 0)) for s in stats if s.get("finished"))
            line.file_done(done, pk)
            el = time.monotonic() - started
            print(f"\r[{done}/{total}] {pk:,} packets, {el:.0f} s  {safe(st.get('source', ''), 40):40}"
                  + " " * 30, end="", file=sys.stderr, flush=True)

    await nc.subscribe("ft.stats.>", cb=on_stats)
    p = orch.pipeline
    # store_files=False (analyze without --out): the store writes only the report file, no JSON lines that
    # nobody would read (it wrote them into a temporary directory, with an fsync per batch)
    env_store = {"FT_OUT_DIR": str(out_dir) if store_files else "", "FT_OUT_FORMAT": out_format}
    report_dir: tempfile.TemporaryDirectory[str] | None = None
    collector = None
    if service_available("store"):
        # the store, which decodes every stored event anyway, writes the ones the report uses
        # (services/store/report.py): no second reading and validation of the stream here
        report_dir = tempfile.TemporaryDirectory(prefix="flowtarget-report-")
        env_store["FT_REPORT_FILE"] = str(Path(report_dir.name) / "report.jsonl")
    else:
        # reads what is stored while the run goes on: only what the report and the callers use
        collector = await StreamCollector(orch.settings, keep=reported_event, kinds=REPORTED_KINDS).start()
    for name in ("classify", "store", "block"):
        if service_available(name):
            p.start(name, env_store if name == "store" else None)
    if "classify" in p.procs:
        # samples travel on core NATS: capture must not start before classify listens
        if not await wait_ready(orch.settings, "classify", alive=lambda: p.procs["classify"].poll() is None):
            print(f"flowtarget: classify did not start:\n{orch.log_tail('classify')}", file=sys.stderr)
    cap = p.start("capture", {**pcap_env(files), "FT_EVIDENCE_DIR": str(out_dir / "evidence"), **extra_env})
    while cap.poll() is None:
        await asyncio.sleep(0.1)
        bad = {n: c for n, c in p.failed().items() if n != "capture"}
        if bad:
            break
    if progress:
        print(file=sys.stderr)
    status = cap.returncode if cap.returncode is not None else 1
    failed = {n: c for n, c in p.failed().items()}
    if failed:
        for n, c in failed.items():
            print(f"flowtarget: service {n} exited with status {c}:\n{orch.log_tail(n)}", file=sys.stderr)
        status = status or 1
    if service_available("store") and "store" not in failed:
        await stream_drained(orch.settings, alive=lambda: p.procs["store"].poll() is None)
    events = await collector.finish() if collector is not None else []
    await nc.drain()
    p.stop()
    if report_dir is not None:
        from services.store.report import read_report

        try:
            events = read_report(env_store["FT_REPORT_FILE"])
        except OSError as exc:     # the store never started
            print(f"flowtarget: no events from the store: {exc}", file=sys.stderr)
            status = status or 1
        report_dir.cleanup()
    return status, events, stats


def flow_line(ev: dict[str, Any]) -> dict[str, Any]:
    """A flow end record as one --jsonl object (scorer fields first)."""
    out = {"pcap": ev.get("source", "")}
    for k in ("transport", "src_ip", "src_port", "dst_ip", "dst_port", "app_protocol", "application", "host",
              "category", "confidence", "first_seen", "last_seen", "duration_ms", "src2dst_packets",
              "src2dst_bytes", "dst2src_packets", "dst2src_bytes", "vlan_id", "tunnel", "tunnel_src_ip",
              "tunnel_dst_ip", "tunnel_id", "end_reason", "flow_id", "probe", "src_mac", "dst_mac",
              "src2dst_tcp_flags", "dst2src_tcp_flags", "ip_version"):
        out[k] = ev.get(k)
    return out


def split_reported(events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Flow end records, DNS records and alerts of ``events``, each in order, in one pass."""
    flows: list[dict[str, Any]] = []
    dns: list[dict[str, Any]] = []
    alerts: list[dict[str, Any]] = []
    fa, da, aa = flows.append, dns.append, alerts.append
    for e in events:
        t = e.get("event_type")
        if t == "flow":
            if e.get("phase") == "end":
                fa(e)
        elif t == "dns":
            da(e)
        elif t == "alert":
            aa(e)
    return flows, dns, alerts


def summarize(flows: list[dict[str, Any]], dns: list[dict[str, Any]], alerts: list[dict[str, Any]],
              stats: list[dict[str, Any]], files: int, elapsed_s: float) -> str:
    lines = []
    fin = [s for s in stats if s.get("finished")]
    packets = sum(int(s.get("packets", 0)) for s in fin)
    nbytes = sum(int(s.get("bytes", 0)) for s in fin)
    bad = sum(int(s.get("bad_packets", 0)) for s in fin)
    unsup = sum(int(s.get("unsupported_packets", 0)) for s in fin)
    oneway = sum(int(s.get("one_way_tcp_flows", 0)) for s in fin)
    dups = sum(int(s.get("duplicate_frames", 0)) for s in fin)
    counters: Counter[str] = Counter()
    for s in fin:
        counters.update({k: int(v) for k, v in (s.get("counters") or {}).items()})
    # a sharded replay: each capture process reports every file it finished
    procs = max(Counter(str(s.get("source", "")) for s in fin).values(), default=1)
    lines.append(f"FlowTarget analysis: {files} capture file(s), {packets:,} packets, {nbytes:,} bytes, "
                 f"{len(flows):,} flows in {elapsed_s:.1f} s" + (f" ({procs} capture processes)" if procs > 1 else ""))
    lines.append(f"  bad packets (counted, skipped): {bad:,}   unsupported: {unsup:,}   "
                 f"one-way TCP flows: {oneway:,}   duplicate frames: {dups:,}")
    extra = {k: v for k, v in counters.items() if v and k not in ("samples_sent", "packet_events_sent", "flow_records_sent")}
    if extra:
        lines.append("  counters: " + ", ".join(f"{k}={v:,}" for k, v in sorted(extra.items())[:30]))
    by_proto: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_app: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    tb: dict[str, int] = {}    # bytes per address (a plain dict: one pass over every flow end)
    tget = tb.get
    for f in flows:
        get = f.get
        b = int(get("src2dst_bytes") or 0) + int(get("dst2src_bytes") or 0)
        row = by_proto[get("app_protocol") or "Unknown"]
        row[0] += 1
        row[1] += b
        app = get("application")
        if app:
            row = by_app[app]
            row[0] += 1
            row[1] += b
        a = str(get("src_ip"))
        tb[a] = tget(a, 0) + b
        a = str(get("dst_ip"))
        tb[a] = tget(a, 0) + b
    talkers: Counter[str] = Counter(tb)

    def table(title: str, rows: dict[str, list[int]], n: int = 15) -> None:
        lines.append("")
        lines.append(f"{title:<28}{'flows':>10}{'bytes':>16}")
        for name, (cnt, b) in sorted(rows.items(), key=lambda kv: (-kv[1][0], kv[0]))[:n]:
            lines.append(f"  {safe(name, 26):<26}{cnt:>10,}{b:>16,}")
        if len(rows) > n:
            lines.append(f"  ... {len(rows) - n} more")

    table("Flows by protocol", by_proto)
    if by_app:
        table("Flows by application", by_app)
    lines.append("")
    lines.append("Top talkers (bytes)")
    for ip, b in talkers.most_common(10):
        lines.append(f"  {safe(ip, 40):<40}{b:>16,}")
    names: Counter[str] = Counter(d.get("query_name", "") for d in dns if not d.get("is_response") and d.get("query_name"))
    if not names:
        names = Counter(d.get("query_name", "") for d in dns if d.get("query_name"))
    lines.append("")
    lines.append(f"DNS: {len(dns):,} messages, {len(names):,} distinct names")
    bad = Counter(str(d.get("error")) for d in dns if d.get("error"))
    over_tcp = sum(1 for d in dns if d.get("transport") == "TCP")
    paired = sum(1 for d in dns if d.get("rtt_ms") is not None)
    lines.append(f"  over TCP: {over_tcp:,}   responses paired with their query: {paired:,}   "
                 f"malformed (logged with the reason): {sum(bad.values()):,}")
    for reason, cnt in bad.most_common(5):
        lines.append(f"    {safe(reason, 58):<58}{cnt:>8,}")
    for name, cnt in names.most_common(10):
        lines.append(f"  {safe(name, 60):<60}{cnt:>8,}")
    lines.append("")
    incidents: dict[str, dict[str, Any]] = {}
    for a in alerts:
        incidents[a.get("alert_id", "")] = a
    lines.append(f"Alerts: {len(incidents)}")
    for a in sorted(incidents.values(), key=lambda a: a.get("first_seen", 0))[:20]:
        lines.append(f"  [{a.get('severity', '')}] {a.get('alert_type', '')}: {safe(a.get('message', ''), 100)}")
    return "\n".join(lines)


def safe(text: Any, limit: int) -> str:
    from shared.bus import safe_text
    return safe_text(text, limit)


def preflight(cmd: str, args: argparse.Namespace, per_service: dict[str, dict[str, str]]) -> int:
    """Before anything starts: the NATS URL answers (when given) and every service would take its
    configuration.  Returns 0, or prints one line and returns the exit status (2: configuration)."""
    from flowtarget.orchestrate import base_env, check_nats, check_service_config
    from shared.runner import ConfigError

    nats_url = args.nats or "nats://127.0.0.1:4222"
    try:
        for name, extra in per_service.items():
            if service_available(name):
                check_service_config(name, base_env(nats_url, args.probe, extra))
    except ConfigError as exc:
        print(f"flowtarget {cmd}: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.nats:
        reason = asyncio.run(check_nats(args.nats))
        if reason:
            print(f"flowtarget {cmd}: --nats: {reason}", file=sys.stderr)
            return 1
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from flowtarget.orchestrate import Orchestrator, pcap_env

    files, errors = check_capture_files(args.pcaps)
    for e in errors:
        print(f"flowtarget analyze: {e}", file=sys.stderr)
    if not files:
        return 1
    shard_env = _shard_env(args)
    code = preflight("analyze", args, {"capture": {**pcap_env(files), **shard_env}, "classify": {}, "store": {},
                                       "block": {}})
    if code:
        return code
    started = time.monotonic()
    tmp = None
    if args.out:
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="flowtarget-out-")
        out_dir = Path(tmp.name)
    orch = Orchestrator(args.nats, probe=args.probe, quiet=not args.verbose,
                        env={"FT_STREAM_STORAGE": "file"})
    try:
        status, events, stats = asyncio.run(
            _pipeline_for_files(orch, files, out_dir, shard_env,
                                progress=not args.no_progress and sys.stderr.isatty() or args.progress,
                                out_format=args.format, store_files=bool(args.out)))
    finally:
        orch.close()
    flows, dns, alerts = split_reported(events)
    if args.jsonl:
        fh = sys.stdout if args.jsonl == "-" else open(args.jsonl, "w")
        try:
            for f in flows:
                fh.write(json.dumps(flow_line(f)) + "\n")
        finally:
            if fh is not sys.stdout:
                fh.close()
    report = summarize(flows, dns, alerts, stats, len(files), time.monotonic() - started)
    print(report, file=sys.stderr if args.jsonl == "-" else sys.stdout)
    if tmp is not None:
        tmp.cleanup()
    if errors:
        return 1
    return status


def cmd_run(args: argparse.Namespace) -> int:
    from flowtarget.orchestrate import Orchestrator

    if bool(args.iface) == bool(args.pcap):
        print("flowtarget run: give exactly one of --iface IF or --pcap FILE", file=sys.stderr)
        return 2
    if args.iface:
        import socket

        try:
            socket.if_nametoindex(args.iface)
        except OSError:
            print(f"flowtarget run: --iface {args.iface}: no such network interface", file=sys.stderr)
            return 2
    from flowtarget.orchestrate import pcap_env

    live = {"FT_IFACE": args.iface} if args.iface else {}
    checks = {"classify": {}, "store": {}, "block": live}
    readable = check_capture_files(args.pcap)[0] if args.pcap else []
    if args.iface or readable:        # (no readable file: reported below, one line per file)
        checks["capture"] = {**(live if args.iface else pcap_env(readable)), **_shard_env(args)}
    code = preflight("run", args, checks)
    if code:
        return code
    env: dict[str, str] = {}
    if args.out:
        env["FT_OUT_DIR"] = str(Path(args.out).resolve())
    env["FT_OUT_FORMAT"] = args.format
    orch = Orchestrator(args.nats, probe=args.probe, log_dir=None)
    orch.pipeline.env.update(env)
    try:
        from flowtarget.orchestrate import start_web

        web_url, web_note = start_web(orch, evidence_dir=(Path(args.out or "flowtarget-out").resolve() / "evidence")
                                      if args.pcap else None)
        print(f"flowtarget run: web console on {web_url}" if web_url else f"flowtarget run: {web_note}",
              file=sys.stderr)
        if args.rules:
            code = load_rules_file(orch.nats_url, args.probe, args.rules)
            if code:
                return code
        if args.pcap:
            files, errors = check_capture_files(args.pcap)
            for e in errors:
                print(f"flowtarget run: {e}", file=sys.stderr)
            if not files:
                return 1
            out_dir = Path(args.out) if args.out else Path("flowtarget-out")
            out_dir.mkdir(parents=True, exist_ok=True)
            status, events, stats = asyncio.run(_pipeline_for_files(orch, files, out_dir.resolve(), _shard_env(args),
                                                                    progress=True, out_format=args.format))
            flows = len(split_reported(events)[0])
            if args.format == "eve":
                logged = out_dir / "eve.json"
                n_log = sum(1 for x in open(logged) if '"event_type":"flow"' in x) if logged.exists() else 0
            else:
                logged = out_dir / "flows.jsonl"
                n_log = sum(1 for _ in open(logged)) if logged.exists() else 0
            print(f"flowtarget run: {len(files)} file(s) replayed, {flows} flows, {n_log} in the access log; "
                  f"output in {out_dir}", file=sys.stderr)
            return 1 if errors else status
        # live: run until stopped
        p = orch.pipeline
        for name in ("classify", "store"):
            if service_available(name):
                p.start(name)
        if service_available("block"):
            # dry run unless enforcement is asked for explicitly (--enforce, or FT_DRY_RUN=false)
            block_env = {"FT_IFACE": args.iface}
            if args.enforce:
                block_env["FT_DRY_RUN"] = "false"
            p.start("block", block_env)
            enforcing = args.enforce or os.environ.get("FT_DRY_RUN", "").strip().lower() in ("false", "0", "no", "off")
            print("flowtarget run: block " + ("ENFORCES rules (injects on " + args.iface + ")" if enforcing else
                                              "runs in DRY RUN (reports only; --enforce to inject)"), file=sys.stderr)
        p.start("capture", {"FT_IFACE": args.iface, **({"FT_SHARDS": str(args.shards)} if args.shards else {})})
        print(f"flowtarget run: capturing on {args.iface}, NATS {orch.nats_url}; Ctrl-C to stop", file=sys.stderr)
        try:
            while True:
                time.sleep(0.5)
                failed = p.failed()
                if failed:
                    for n, c in failed.items():
                        print(f"flowtarget run: service {n} exited with status {c}", file=sys.stderr)
                    return 1
        except KeyboardInterrupt:
            return 0
    finally:
        orch.close()


def load_rules_file(nats_url: str, probe: str, path: str) -> int:
    try:
        rules = importlib.import_module("services.block.rules")
    except ImportError:
        print("flowtarget: rules are not supported by this build", file=sys.stderr)
        return 1
    return int(rules.load_rules_file(nats_url, probe, path))


# --------------------------------------------------------------------------- bench


def cmd_bench(args: argparse.Namespace) -> int:
    from flowtarget.bench import bench_command

    return bench_command(args)


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="flowtarget", description="FlowTarget network traffic detection probe")
    sub = ap.add_subparsers(dest="command", required=True)

    for name in ("classify", "store", "block"):
        sub.add_parser(name, help=f"run the {name} service (configured from FT_* variables)")
    sub.add_parser("web", help="run the web console (configured from FT_* and FT_WEB_* variables)")
    cp = sub.add_parser("capture", help="run the capture service (configured from FT_* variables)")
    cp.add_argument("--shards", type=int, default=0,
                    help="capture processes sharing the interface (or FT_PCAP's files) by flow hash")

    rp = sub.add_parser("run", help="run all four services (embedded NATS unless --nats)")
    rp.add_argument("--iface", help="live interface (runs until stopped)")
    rp.add_argument("--pcap", nargs="+", help="capture file(s) to replay; drains and exits")
    rp.add_argument("--nats", help="NATS URL (default: start an embedded nats-server)")
    rp.add_argument("--rules", help="YAML rules file to load into the rules bucket")
    rp.add_argument("--out", help="directory for JSON-lines output (default ./flowtarget-out with --pcap)")
    rp.add_argument("--format", choices=("jsonl", "eve"), default="jsonl",
                    help="files in --out: jsonl (one per measurement) or eve (eve.json for SIEMs)")
    rp.add_argument("--probe", default=os.environ.get("FT_PROBE", "probe1"))
    rp.add_argument("--shards", type=int, default=0,
                    help="capture processes sharing the interface, or the replayed files, by flow hash "
                         "(default: FT_SHARDS, else 1)")
    rp.add_argument("--enforce", action="store_true",
                    help="let block inject (RST / block page / DNS answer); without it block only reports (dry run)")

    an = sub.add_parser("analyze", help="replay captures through the services and summarise")
    an.add_argument("pcaps", nargs="+", metavar="PCAP")
    an.add_argument("--jsonl", help="write one JSON object per flow to FILE (- for stdout)")
    an.add_argument("--out", help="directory for flows.jsonl, dns.jsonl, alerts.jsonl")
    an.add_argument("--format", choices=("jsonl", "eve"), default="jsonl",
                    help="files in --out: jsonl (one per measurement, as InfluxDB gets them) or eve "
                         "(eve.json, Suricata eve.json-compatible lines for SIEMs)")
    an.add_argument("--nats", help="NATS URL (default: embedded nats-server)")
    an.add_argument("--probe", default="analyze")
    an.add_argument("--shards", type=int, default=0,
                    help="capture processes sharing the replay by flow hash, each reading every file "
                         "(default: FT_SHARDS, else 1); the same flows on a host with cores to spare")
    an.add_argument("--verbose", action="store_true", help="services log at INFO")
    an.add_argument("--progress", action="store_true", help="show progress even when stderr is not a terminal")
    an.add_argument("--no-progress", action="store_true")

    from flowtarget.bench import add_parser as add_bench_parser

    add_bench_parser(sub)

    # commands that live with their feature: add_parser(subparsers) -> parser; run(args) -> int
    for plug in ("services.block.rules", "flowtarget.alerts_cmd", "services.capture.export"):
        try:
            mod = importlib.import_module(plug)
        except ImportError:
            continue
        if hasattr(mod, "add_parser"):
            parser = mod.add_parser(sub)
            if parser is not None and parser.get_default("func") is None and hasattr(mod, "run"):
                parser.set_defaults(func=mod.run)
    return ap


def main(argv: list[str] | None = None) -> None:
    try:
        _main(argv)
    except BrokenPipeError:   # output piped into head & co.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0)


def _main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    cmd = args.command
    if cmd == "capture":
        code = run_capture(args)
    elif cmd in ("classify", "store", "block"):
        code = run_one_service(cmd)
    elif cmd == "web":
        code = run_web()
    elif cmd == "run":
        code = cmd_run(args)
    elif cmd == "analyze":
        code = cmd_analyze(args)
    elif cmd == "bench":
        code = cmd_bench(args)
    else:
        # a client command: nats-py's own error log (a traceback per failed connection attempt)
        # says nothing the command's one-line error does not
        logging.getLogger("nats.aio.client").setLevel(logging.CRITICAL)
        logging.getLogger("flowtarget.bus").setLevel(logging.ERROR)   # per-attempt "NATS error" lines
        handler = getattr(args, "func", None)
        if handler is None:
            print(f"flowtarget: unknown command {cmd}", file=sys.stderr)
            code = 2
        else:
            result = handler(args)
            code = asyncio.run(result) if asyncio.iscoroutine(result) else int(result or 0)
    if argv is None and cmd in SERVICE_MODULES and threading.active_count() == 1:
        # the program `flowtarget <service>` (or its shards' parent) has stopped and its cleanup has
        # run in its finally blocks: skip the interpreter's teardown (0.08-0.1 s), as forked services do
        from flowtarget.zygote import exit_now

        exit_now(code)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
