#!/usr/bin/env python3
"""Capture's memory under a flood of ft.ctl pcap requests (issue 13 item 2).

    python bench/ctl_flood.py [--requests 2000] [--packets 20000] [--seconds 5]

Starts an embedded nats-server and the real ``flowtarget capture`` replaying a
synthetic file at its recorded pace (``--packets`` 1 kB UDP frames over
``--seconds``), sends ``--requests`` pcap requests (empty filter, an hour
each) as soon as capture answers, and reports capture's peak resident memory
(VmHWM), the answers and what landed in the evidence directory.  The bounds
are capture's settings (FT_RECORDING_MAX_ACTIVE, FT_RECORDING_MAX_MB, ...):
pass them in the environment to try others.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dpkt  # noqa: E402
import nats  # noqa: E402

from flowtarget.embedded import EmbeddedNats  # noqa: E402


def frame(i: int) -> bytes:
    udp = dpkt.udp.UDP(sport=5000 + i % 64, dport=9999, data=b"p" * 1000)
    udp.ulen = len(udp)
    ip = dpkt.ip.IP(src=b"\x0a\x00\x00\x01", dst=b"\x0a\x00\x00\x02", p=17, data=udp)
    ip.len = len(ip)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02\x00\x00\x00\x00\x01", dst=b"\x02\x00\x00\x00\x00\x02", data=ip))


def peak_rss_mb(pid: int) -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--packets", type=int, default=20000)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ctl-flood-"))
    pcap = tmp / "flood.pcap"
    with open(pcap, "wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for i in range(args.packets):
            w.writepkt(frame(i), ts=1000.0 + i * args.seconds / args.packets)
    server = EmbeddedNats(store_dir=str(tmp / "nats"), log_file=str(tmp / "nats.log"))
    server.start()
    env = dict(os.environ, FT_NATS_URL=server.url, FT_PROBE="flood", FT_PCAP=json.dumps([str(pcap)]),
               FT_REPLAY_REALTIME="1", FT_EVIDENCE_DIR=str(tmp / "evidence"), FT_DETECTORS="",
               FT_VERDICT_WAIT_S="0", FT_LOG_LEVEL="WARNING")
    env.setdefault("FT_CTL_REQUESTS_PER_S", "100000")    # measure the recording bounds, not the rate limit
    proc = subprocess.Popen([sys.executable, "-m", "flowtarget", "capture"], env=env)
    peak = 0.0

    async def flood() -> dict[str, int]:
        nonlocal peak
        nc = await nats.connect(server.url)
        counts: dict[str, int] = {}
        sent = 0
        while sent < args.requests and proc.poll() is None:
            try:
                msg = await nc.request("ft.ctl.flood.pcap", b'{"duration_s": 3600}', timeout=2)
            except Exception:
                await asyncio.sleep(0.05)
                continue
            status = json.loads(msg.data)["status"]
            counts[status] = counts.get(status, 0) + 1
            sent += 1
        while proc.poll() is None:
            peak = max(peak, peak_rss_mb(proc.pid))
            await asyncio.sleep(0.1)
        await nc.close()
        return counts

    try:
        counts = asyncio.run(flood())
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        server.close()
    files = list((tmp / "evidence").glob("*.pcap")) if (tmp / "evidence").exists() else []
    size = sum(f.stat().st_size for f in files)
    print(f"requests answered: {counts}; capture exit {proc.returncode}; peak RSS (VmHWM polled) {peak:.0f} MB; "
          f"evidence: {len(files)} files, {size / 1024**2:.1f} MB")
    subprocess.run(["rm", "-rf", str(tmp)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
