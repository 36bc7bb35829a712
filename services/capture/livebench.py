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
    p.add_argument("--shards", type=int, default=1,
                   help="capture processes sharing the interface by flow hash (FT_SHARDS; AF_PACKET fanout): "
                        "the figures are the shards' sums")
    p.add_argument("--no-fragments", action="store_true",
                   help="leave IP fragments out of the frames sent (always with --shards > 1, whose AF_PACKET "
                        "fanout reassembles them into one packet; for comparisons with one shard)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=20)


def _is_fragment(frame: bytes) -> bool:
    """An IPv4 fragment or an IPv6 packet with a fragment header (directly after the fixed header)."""
    off = 14
    et = (frame[12] << 8) | frame[13]
    while et in (0x8100, 0x88A8) and len(frame) >= off + 4:
        et = (frame[off + 2] << 8) | frame[off + 3]
        off += 4
    if et == 0x0800 and len(frame) >= off + 8:
        return bool(((frame[off + 6] << 8) | frame[off + 7]) & 0x3FFF)
    return et == 0x86DD and len(frame) >= off + 7 and frame[off + 6] == 44


def _load_frames(path: str, limit: int, skip_fragments: bool = False) -> tuple[list[bytes], int]:
    """Up to ``limit`` frames of the file (and how many IP fragments were left out with ``skip_fragments``)."""
    src = FileSource(path)
    if src.datalink != 1:
        raise SystemExit(f"flowtarget bench live: {path} is not an Ethernet capture (link type {src.datalink})")
    frames: list[bytes] = []
    skipped = 0
    for _ts, frame in src:
        if 14 <= len(frame) <= 9000:
            if skip_fragments and _is_fragment(frame):
                skipped += 1
                continue
            frames.append(frame)
            if len(frames) >= limit:
                break
    return frames, skipped


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


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its children (the shards of a sharded capture)."""
    total = _cpu_s(pid)
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        kids = []
    return total + sum(_tree_cpu_s(int(k)) for k in kids)


async def _one_rate(url: str, probe: str, env: dict[str, str], cwd: Path, sock: socket.socket, frames: list[bytes],
                    rate: float, seconds: float, shards: int = 1) -> dict[str, Any]:
    """Start capture, wait until its handles are open, send, stop it; its final reports (summed over
    ``shards``) and our counts."""
    import nats

    nc = await nats.connect(url)
    started = asyncio.Event()
    nstarted = 0
    final: list[dict[str, Any]] = []

    async def on_stats(msg: Any) -> None:
        nonlocal nstarted
        counters = json.loads(msg.data).get("counters") or {}
        if counters.get("capture_started"):
            nstarted += 1
            if nstarted >= shards:
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
        cpu0 = _tree_cpu_s(proc.pid)
        sent, elapsed = _send(sock, frames, rate, seconds)   # blocking: NATS messages wait in the socket
        await asyncio.sleep(1.0)   # let capture drain its buffer
        cpu = _tree_cpu_s(proc.pid) - cpu0
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while len(final) < shards and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stats: dict[str, Any] = {}
        for st in final:   # one final report per shard
            for k in ("packets", "dropped_kernel", "dropped_interface"):
                stats[k] = int(stats.get(k, 0)) + int(st.get(k, 0))
        return {"stats": stats, "sent": sent, "elapsed": elapsed, "cpu": cpu, "reports": len(final)}
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
    # AF_PACKET fanout (--shards) defragments IP fragments before hashing: a datagram's fragments arrive
    # as one packet, which would count as loss; so they are not sent then (nor with --no-fragments)
    no_frag = args.no_fragments or args.shards > 1
    frames, skipped = _load_frames(args.pcap, args.frames, skip_fragments=no_frag)
    if skipped:
        print(f"  {skipped:,} IP fragments of the file left out (sharded capture's fanout reassembles them)")
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
                   "FT_BUFFER_MB": str(args.buffer_mb), "FT_SHARDS": str(max(1, args.shards)),
                   "FT_EVIDENCE_DIR": os.path.join(tmp.name, "evidence"), "FT_LOG_LEVEL": "WARNING"}
            res = asyncio.run(_one_rate(nats_server.url, probe, env, repo, sock, frames, rate, args.seconds,
                                        max(1, args.shards)))
            if "error" in res:
                print(f"flowtarget bench live: {res['error']}", file=sys.stderr)
                return 1
            if res["reports"] < max(1, args.shards):
                print(f"flowtarget bench live: {res['reports']} of {args.shards} final reports arrived; "
                      "the figures are incomplete", file=sys.stderr)
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
               "buffer_mb": args.buffer_mb, "seconds": args.seconds, "shards": max(1, args.shards),
               "fragments_left_out": skipped}
    print(f"live capture on a veth pair ({args.buffer_mb} MB kernel buffer, {max(1, args.shards)} shard(s)): "
          f"highest rate metered without loss "
          f"(< 0.1 %): {summary['max_lossless_pps']:,} packets/s")
    if args.json:
        print(json.dumps(summary))
    return 0
