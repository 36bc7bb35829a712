"""What the console costs ``flowtarget analyze``: the web process's CPU while a capture replays.

    python -m services.web.bench PCAP [PCAP ...] [--viewer]

Starts a nats-server and ``flowtarget web`` (nobody logged in), runs
``flowtarget analyze --nats URL PCAP...`` against the same server, and prints
the web process's CPU seconds (user+sys, from /proc) over the analyze run,
as a share of one core over the run's wall time and of analyze's own CPU
(its services are its children).  ``--viewer`` keeps one overview page's
event stream open meanwhile (the cost when someone watches).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from flowtarget.embedded import EmbeddedNats, free_port


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def viewer(url: str, token: str, stop: threading.Event) -> None:
    req = urllib.request.Request(url + "/events", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        while not stop.is_set():
            if not resp.readline():
                break


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m services.web.bench")
    ap.add_argument("pcaps", nargs="+")
    ap.add_argument("--viewer", action="store_true", help="keep one live overview stream open")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ft-webbench-") as tmp:
        nats = EmbeddedNats(store_dir=f"{tmp}/nats", log_file=f"{tmp}/nats.log").start()
        token = os.urandom(16).hex()
        port = free_port()
        env = dict(os.environ, FT_NATS_URL=nats.url, FT_PROBE="analyze", FT_WEB_TOKEN=token,
                   FT_WEB_PORT=str(port), FT_LOG_LEVEL="WARNING")
        web = subprocess.Popen([sys.executable, "-m", "flowtarget", "web"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        stop = threading.Event()
        try:
            for _ in range(100):
                try:
                    urllib.request.urlopen(url + "/healthz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.2)
            if args.viewer:
                threading.Thread(target=viewer, args=(url, token, stop), daemon=True).start()
                time.sleep(1)
            time.sleep(1)
            w0, t0 = cpu_s(web.pid), time.monotonic()
            c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            out = subprocess.run([sys.executable, "-m", "flowtarget", "analyze", "--nats", nats.url,
                                  "--no-progress", *args.pcaps], env=env, capture_output=True, text=True)
            wall = time.monotonic() - t0
            web_cpu = cpu_s(web.pid) - w0
            c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            analyze_cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
            head = re.search(r"FlowTarget analysis: .*", out.stdout)
            print(json.dumps({
                "viewer": args.viewer, "analyze_status": out.returncode,
                "analyze": head.group(0) if head else out.stderr[-300:],
                "wall_s": round(wall, 2), "analyze_cpu_s": round(analyze_cpu, 2),
                "web_cpu_s": round(web_cpu, 3),
                "web_cpu_pct_of_one_core": round(100 * web_cpu / wall, 2),
                "web_cpu_pct_of_analyze_cpu": round(100 * web_cpu / analyze_cpu, 2) if analyze_cpu else None,
            }))
        finally:
            stop.set()
            web.terminate()
            web.wait(20)
            nats.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
