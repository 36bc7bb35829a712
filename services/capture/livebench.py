"""``flowtarget bench live``: packets/s the capture service keeps up with on a real interface (root).

A veth pair is made in the root namespace.  The capture service runs as its
own process (``python -m flowtarget capture``, as compose runs it, without
the detectors' process) on one end, publishing to an embedded nats-server;
this process sends frames of a capture file into the other end through an
AF_PACKET socket at each offered rate for a few seconds.  For each rate it
prints what was sent, what capture metered, and the kernel's drops, from
capture's final stats report.  Use a file of many distinct flows (the 1 M-packet
file of ``bench/make_big_pcap.py``): frames are sent in a loop, and a second
pass over the same flows costs capture less than new flows do.

The sender is Python too, and on a 2-core machine it shares the cores with
capture and nats-server: the top offered rate is what the sender reaches.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .sources import FileSource

__all__ = ["add_arguments", "bench_command"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pcap", help="Ethernet capture whose frames are sent (e.g. bench/make_big_pcap.py output)")
    p.add_argument("--rates", default="50000,100000,150000,200000,0",
                   help="offered packets/s, comma-separated; 0 = as fast as the sender can")
    p.add_argument("--seconds", type=float, default=3.0, help="sending time per rate")
    p.add_argument("--frames", type=int, default=1_000_000,
                   help="frames loaded from the file and sent in a loop (enough that a run does not repeat flows)")
    p.add_argument("--buffer-mb", type=int, default=64,
                   help="capture's kernel buffer (FT_BUFFER_MB, default as the service's).  A large buffer "
                        "hides a short overload as a backlog worked off after the sending stops: use a "
                        "small one (e.g. 4) or a longer --seconds to see the sustained rate")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=20)


def _load_frames(path: str, limit: int) -> list[bytes]:
    src = FileSource(path)
    if src.datalink != 1:
        raise SystemExit(f"flowtarget bench live: {path} is not an Ethernet capture (link type {src.datalink})")
    frames: list[bytes] = []
    for _ts, frame in src:
        if 14 <= len(frame) <= 9000:
            frames.append(frame)
            if len(frames) >= limit:
                break
    return frames


def _send(sock: socket.socket, frames: list[bytes], rate: float, seconds: float) -> tuple[int, float]:
    """Send for ``seconds`` at ``rate`` packets/s (0: flat out); returns (sent, elapsed)."""
    send = sock.send
    n = len(frames)
    i = sent = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    step = 64
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        if rate > 0:
            due = t0 + sent / rate
            if due > now:
                time.sleep(min(due - now, 0.001))
                continue
        for _ in range(step):
            try:
                send(frames[i])
            except OSError:   # ENOBUFS under load: the frame is not sent
                pass
            else:
                sent += 1
            i += 1
            if i == n:
                i = 0
    return sent, time.perf_counter() - t0


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


async def _one_rate(url: str, probe: str, env: dict[str, str], cwd: Path, sock: socket.socket, frames: list[bytes],
                    rate: float, seconds: float) -> dict[str, Any]:
    """Start capture, wait until its handle is open, send, stop it; its final report and our counts."""
    import nats

    nc = await nats.connect(url)
    started = asyncio.Event()
    final: list[dict[str, Any]] = []

    async def on_stats(msg: Any) -> None:
        counters = json.loads(msg.data).get("counters") or {}
        if counters.get("capture_started"):
            started.set()
        if counters.get("end_of_capture"):
            final.append(json.loads(msg.data))

    await nc.subscribe(f"ft.stats.{probe}", cb=on_stats)   # before capture starts: its first report counts
    await nc.flush()
    proc = subprocess.Popen([sys.executable, "-m", "flowtarget", "capture"], env=env, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not started.is_set() and proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if not started.is_set():
            err = proc.stderr.read().decode(errors="replace")[-500:] if proc.poll() is not None else ""
            return {"error": f"capture did not start {err}"}
        cpu0 = _cpu_s(proc.pid)
        sent, elapsed = _send(sock, frames, rate, seconds)   # blocking: NATS messages wait in the socket
        await asyncio.sleep(1.0)   # let capture drain its buffer
        cpu = _cpu_s(proc.pid) - cpu0
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while not final and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return {"stats": final[0] if final else {}, "sent": sent, "elapsed": elapsed, "cpu": cpu}
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        await nc.close()


def bench_command(args: argparse.Namespace) -> int:
    from flowtarget.embedded import EmbeddedNats

    if os.geteuid() != 0:
        print("flowtarget bench live: needs root (a veth pair, a raw socket)", file=sys.stderr)
        return 2
    rates = [float(r) for r in str(args.rates).split(",") if r.strip()]
    frames = _load_frames(args.pcap, args.frames)
    if not frames:
        print(f"flowtarget bench live: no frames in {args.pcap}", file=sys.stderr)
        return 2
    tag = f"{os.getpid() % 100000}"
    tx, rx = f"ftlv{tag}a", f"ftlv{tag}b"
    _sh("ip", "link", "add", tx, "type", "veth", "peer", "name", rx)
    results: list[dict[str, Any]] = []
    nats_server = None
    tmp = tempfile.TemporaryDirectory(prefix="ft-livebench-")
    try:
        for dev in (tx, rx):
            _sh("ip", "link", "set", dev, "mtu", "9000", "up")
            subprocess.run(["ethtool", "-K", dev, "tx", "off", "rx", "off", "tso", "off", "gso", "off", "gro", "off"],
                           capture_output=True, timeout=20)
            subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1"], capture_output=True, timeout=20)
        nats_server = EmbeddedNats(store_dir=os.path.join(tmp.name, "nats")).start()
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        sock.bind((tx, 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        repo = Path(__file__).resolve().parents[2]
        for i, rate in enumerate(rates):
            probe = f"livebench{i}"
            env = {**os.environ, "FT_IFACE": rx, "FT_NATS_URL": nats_server.url, "FT_PROBE": probe,
                   "FT_DETECTORS": "", "FT_METRICS_PORT": "0", "FT_STREAM_STORAGE": "memory",
                   "FT_BUFFER_MB": str(args.buffer_mb),
                   "FT_EVIDENCE_DIR": os.path.join(tmp.name, "evidence"), "FT_LOG_LEVEL": "WARNING"}
            res = asyncio.run(_one_rate(nats_server.url, probe, env, repo, sock, frames, rate, args.seconds))
            if "error" in res:
                print(f"flowtarget bench live: {res['error']}", file=sys.stderr)
                return 1
            st, sent, elapsed, cpu = res["stats"], res["sent"], res["elapsed"], res["cpu"]
            metered = int(st.get("packets", 0))
            drops = int(st.get("dropped_kernel", 0)) + int(st.get("dropped_interface", 0))
            row = {"offered_pps": round(rate) if rate else "max", "sent": sent, "sent_pps": round(sent / elapsed),
                   "metered": metered, "dropped_kernel": drops,
                   "loss_pct": round(100.0 * max(0, sent - metered) / sent, 3) if sent else 0.0,
                   "repeats_flows": sent > len(frames),
                   "capture_cpu_pct": round(100.0 * cpu / (elapsed + 1.0), 1)}
            results.append(row)
            print(f"  offered {row['offered_pps']!s:>7} pps: sent {sent:>9,} ({row['sent_pps']:,}/s), "
                  f"metered {metered:>9,}, kernel drops {drops:,}, loss {row['loss_pct']} %, "
                  f"capture {row['capture_cpu_pct']} % of a core", flush=True)
    finally:
        if nats_server is not None:
            nats_server.close()
        subprocess.run(["ip", "link", "del", tx], capture_output=True, timeout=20)
        tmp.cleanup()
    lossless = [r["sent_pps"] for r in results if r["loss_pct"] < 0.1]
    summary = {"rates": results, "max_lossless_pps": max(lossless) if lossless else 0, "frames": len(frames),
               "buffer_mb": args.buffer_mb, "seconds": args.seconds}
    print(f"live capture on a veth pair ({args.buffer_mb} MB kernel buffer): highest rate metered without loss "
          f"(< 0.1 %): {summary['max_lossless_pps']:,} packets/s")
    if args.json:
        print(json.dumps(summary))
    return 0
