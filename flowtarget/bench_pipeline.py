"""``flowtarget bench pipeline FILE``: where the whole pipeline's time goes.

Runs exactly what ``flowtarget analyze FILE`` runs (embedded nats-server,
classify, store, block, capture with its detectors (inline, as in analyze), the report's
reader in this process; the store writes only the report file, as analyze
without ``--out`` does; ``--store-files``: also the JSON-lines files, as
``analyze --out DIR``) and prints:

- CPU seconds (user + system) per service process and for nats-server:
  direct children from ``wait4`` (exact; a child's figure includes the
  children it reaped), grandchildren (capture's detectors' process with FT_DETECT_INLINE=false) and
  nats-server read from ``/proc/PID/stat`` while they run (the last tenth of a
  second of a grandchild may be missed);
- messages and bytes per subject kind (``ft.sample``, ``ft.flow``,
  ``$JS.ACK`` ...) seen by a wildcard subscriber in this process; JetStream's
  deliveries to its consumers (store, the collector) apart as
  ``ft.flow (stream delivery)``
  (``--no-subjects`` leaves it out: it makes nats-server deliver everything
  once more);
- packets/s end to end (capture's packet count / wall time from the start of
  the services to the drained stream);
- with ``--nfstream``: NFStream (``NFStreamer(source=FILE,
  statistical_analysis=False, n_meters=1)``) on the same file in the same run,
  its CPU seconds and the ratio; skipped with a reason where it is not installed
  (``pip install '.[bench]'``).

Figures are printed, never asserted.  ``--json``: the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pcaps", nargs="+", metavar="PCAP")
    p.add_argument("--json", action="store_true")
    p.add_argument("--nfstream", action="store_true", help="also run NFStream 6.x (one meter) on the same files")
    p.add_argument("--no-subjects", action="store_true", help="no wildcard subscriber counting messages per subject")
    p.add_argument("--store-files", action="store_true",
                   help="the store also writes its JSON-lines files, as analyze --out does (default: as analyze without --out)")


def proc_cpu(pid: int) -> float | None:
    """utime + stime of a live (or zombie) process, seconds; None when gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def proc_children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out += [int(x) for x in fh.read().split()]
    except OSError:
        pass
    return out


def proc_role(pid: int) -> str:
    try:    # a service forked without exec (flowtarget/zygote.py) shows its parent's environment: its name says it
        with open(f"/proc/{pid}/comm", "rb") as fh:
            comm = fh.read().strip().decode(errors="replace")
        if comm.startswith("ft-"):
            return comm[3:]
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            env = dict(kv.split(b"=", 1) for kv in fh.read().split(b"\0") if b"=" in kv)
        role = env.get(b"FT_CAPTURE_ROLE", b"").decode(errors="replace")
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read().split(b"\0")
    except (OSError, ValueError):
        return "?"
    if role:
        return role
    return " ".join(c.decode(errors="replace") for c in cmd[-2:] if c)[:40]


class Watcher(threading.Thread):
    """Polls the CPU seconds of the grandchildren of the pipeline (capture's detectors' process)."""

    def __init__(self, children: dict[str, subprocess.Popen[bytes]]) -> None:
        super().__init__(daemon=True)
        self.children = children
        self.grand: dict[int, tuple[str, float]] = {}
        self.stop_ev = threading.Event()

    def poll_once(self) -> None:
        for name, p in list(self.children.items()):
            for gpid in proc_children(p.pid):
                cpu = proc_cpu(gpid)
                if cpu is None:
                    continue
                # read the role each time: right after fork, before exec, a child shows its parent's
                # environment and command line
                role = proc_role(gpid)
                label = f"{name}/{role}" if role != "?" else self.grand.get(gpid, (f"{name}/?", 0.0))[0]
                self.grand[gpid] = (label, cpu)

    def run(self) -> None:
        while not self.stop_ev.wait(0.1):
            self.poll_once()


def _kind(subj: str) -> str:
    parts = subj.split(".")
    if parts[0] == "ft" and len(parts) > 1:
        return "ft." + parts[1] + (".start" if len(parts) > 3 and parts[1] == "flow" and parts[3] == "start" else "")
    if parts[0] == "$JS" and len(parts) > 1:
        return "$JS." + parts[1] + ("." + parts[2] if parts[1] == "API" and len(parts) > 2 else "")
    return parts[0] if not parts[0].startswith("_INBOX") else "_INBOX"


async def _run(files: list[str], subjects: bool, store_files: bool = False) -> dict[str, Any]:
    import nats

    from flowtarget.cli import _pipeline_for_files
    from flowtarget.orchestrate import Orchestrator

    orch = Orchestrator(None, probe="bench", quiet=True, env={"FT_STREAM_STORAGE": "file"})
    nats_pid = orch.embedded.proc.pid if orch.embedded and orch.embedded.proc else 0
    nats0 = proc_cpu(nats_pid) or 0.0
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    nc = None
    if subjects:
        nc = await nats.connect(orch.nats_url)

        async def count(msg: Any) -> None:
            # a stream's delivery to a consumer (store, the collector) keeps the subject it was
            # published on and has a $JS.ACK reply: counted apart from the publication
            k = _kind(msg.subject)
            if msg.reply and msg.reply.startswith("$JS.ACK."):
                k += " (stream delivery)"
            c = counts[k]
            c[0] += 1
            c[1] += len(msg.data) + (sum(len(k) + len(v) for k, v in msg.headers.items()) if msg.headers else 0)

        await nc.subscribe(">", cb=count, pending_msgs_limit=10_000_000, pending_bytes_limit=4 * 1024**3)
    watcher = Watcher(orch.pipeline.procs)
    watcher.start()
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    out_dir = Path(tempfile.mkdtemp(prefix="ft-bench-pipeline-"))
    t0 = time.perf_counter()
    try:
        status, events, stats = await _pipeline_for_files(orch, files, out_dir, {}, progress=False,
                                                          store_files=store_files)
        wall = time.perf_counter() - t0
        if nc is not None:
            await nc.flush()
            await asyncio.sleep(0.3)
        nats_cpu = (proc_cpu(nats_pid) or 0.0) - nats0
        watcher.poll_once()
    finally:
        watcher.stop_ev.set()
        if nc is not None:
            await nc.close()
        orch.close()
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu: dict[str, float] = {}
    for name, p in orch.pipeline.procs.items():
        ru = getattr(p, "rusage", None)
        cpu[name] = round(ru.ru_utime + ru.ru_stime, 2) if ru is not None else 0.0
    for label, sec in watcher.grand.values():
        cpu[label] = round(cpu.get(label, 0.0) + sec, 2)
        parent = label.split("/", 1)[0]
        if parent in cpu:   # the parent's wait4 figure includes the children it reaped
            cpu[parent] = round(max(0.0, cpu[parent] - sec), 2)
    zyg = orch.pipeline.zygote
    if getattr(zyg, "rusage", None) is not None:    # the process the services are forked from (its imports)
        cpu["zygote (imports once, forks the services)"] = round(zyg.rusage.ru_utime + zyg.rusage.ru_stime, 2)
    cpu["nats-server"] = round(nats_cpu, 2)
    cpu["this process (stream collector" + (", subject counter)" if subjects else ")")] = round(
        self1.ru_utime + self1.ru_stime - self0.ru_utime - self0.ru_stime, 2)
    fin = [s for s in stats if s.get("finished")]
    packets = sum(int(s.get("packets", 0)) for s in fin)
    flows = sum(1 for e in events if e.get("event_type") == "flow" and e.get("phase") == "end")
    return {"status": status, "packets": packets, "flows": flows, "wall_s": round(wall, 2),
            "pps_end_to_end": round(packets / wall) if wall > 0 else 0, "cpu_s": cpu,
            "cpu_s_total": round(sum(cpu.values()), 2),
            "subjects": {k: {"messages": v[0], "bytes": v[1]} for k, v in sorted(counts.items())}}


NFSTREAM_SCRIPT = """
import sys, time
from nfstream import NFStreamer
n = 0
for path in sys.argv[1:]:
    for _flow in NFStreamer(source=path, statistical_analysis=False, n_meters=1):
        n += 1
print(n)
"""


def run_nfstream(files: list[str]) -> dict[str, Any]:
    """NFStream over the same files in a child process: flows, wall and CPU seconds (its reaped meters included)."""
    try:
        import nfstream  # noqa: F401
    except ImportError:
        return {"nfstream_skipped": "NFStream is not installed (pip install '.[bench]' or pip install nfstream)"}
    from importlib.metadata import version

    t0 = time.perf_counter()
    from flowtarget.orchestrate import RusagePopen

    p = RusagePopen([sys.executable, "-c", NFSTREAM_SCRIPT, *files], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate()
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        return {"nfstream_skipped": f"NFStream failed: {err.decode(errors='replace').strip()[-200:]}"}
    ru = p.rusage
    return {"nfstream_version": version("nfstream"), "nfstream_flows": int(out.split()[-1]),
            "nfstream_wall_s": round(wall, 2),
            "nfstream_cpu_s": round(ru.ru_utime + ru.ru_stime, 2) if ru is not None else 0.0}


def bench_pipeline(args: argparse.Namespace) -> int:
    from flowtarget.cli import check_capture_files

    files, errors = check_capture_files(args.pcaps)
    for e in errors:
        print(f"flowtarget bench pipeline: {e}", file=sys.stderr)
    if not files:
        return 1
    res = asyncio.run(_run(files, not args.no_subjects, args.store_files))
    print(f"pipeline bench on {len(files)} file(s): {res['packets']:,} packets, {res['flows']:,} flows, "
          f"{res['wall_s']} s wall, {res['pps_end_to_end']:,} packets/s end to end; the store writes "
          + ("its JSON-lines files and the report" if args.store_files else "the report only (as analyze without --out)"))
    print(f"  {'process':<44}{'CPU s':>10}")
    for name, sec in sorted(res["cpu_s"].items(), key=lambda kv: -kv[1]):
        print(f"  {name:<44}{sec:>10.2f}")
    print(f"  {'total':<44}{res['cpu_s_total']:>10.2f}")
    if res["subjects"]:
        print(f"  {'subject':<28}{'messages':>12}{'bytes':>16}{'bytes/packet':>14}")
        for k, v in sorted(res["subjects"].items(), key=lambda kv: -kv[1]["bytes"]):
            per = v["bytes"] / res["packets"] if res["packets"] else 0
            print(f"  {k:<28}{v['messages']:>12,}{v['bytes']:>16,}{per:>14.1f}")
        tot = sum(v["bytes"] for v in res["subjects"].values())
        print(f"  {'all':<28}{sum(v['messages'] for v in res['subjects'].values()):>12,}{tot:>16,}")
    if args.nfstream:
        nf = run_nfstream(files)
        res.update(nf)
        if "nfstream_skipped" in nf:
            print(f"  NFStream: skipped: {nf['nfstream_skipped']}")
        else:
            res["ratio_cpu_nfstream"] = round(res["cpu_s_total"] / nf["nfstream_cpu_s"], 2) if nf["nfstream_cpu_s"] else 0
            print(f"  NFStream {nf['nfstream_version']} (one meter, no statistics) on the same file(s): "
                  f"{nf['nfstream_flows']:,} flows, {nf['nfstream_cpu_s']} CPU s, {nf['nfstream_wall_s']} s wall")
            print(f"  FlowTarget CPU / NFStream CPU: {res['ratio_cpu_nfstream']}"
                  + (" (with the subject counter, which analyze does not run: its CPU here and nats-server's "
                     "deliveries to it count; --no-subjects gives analyze's own)" if res["subjects"] else ""))
    if args.json:
        print(json.dumps(res))
    return 0 if res["status"] == 0 else 1
