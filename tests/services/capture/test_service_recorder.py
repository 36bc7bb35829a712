"""A replay through the real capture service (real nats-server) with FT_RECORD_DIR set, then
``flowtarget pcap --host`` / ``--flow-id`` give exactly the recorded packets (checked with dpkt)."""

from __future__ import annotations

import asyncio
import stat
import subprocess
import sys
from pathlib import Path

from flowtarget.orchestrate import read_stream
from services.capture import service
from services.capture.recorder import list_store
from shared.bus import Bus
from shared.settings import CaptureSettings
from tests.services.capture.test_recorder import addrs, dpkt_read, traffic, write_pcap

ROOT = Path(__file__).resolve().parents[3]


def flowtarget(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowtarget", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_replay_with_recording_then_flowtarget_pcap(nats_server, tmp_path):
    frames = traffic(n_flows=300, seed=11)
    src = write_pcap(tmp_path / "in.pcap", frames)
    store = tmp_path / "store"

    async def main():
        settings = CaptureSettings(nats_url=nats_server.url, probe="rec", pcap=[src], verdict_wait_s=0,
                                   replay_max_pending=0, stream_storage="memory", record_dir=store,
                                   record_max_bytes=4 << 20, record_file_bytes=32 * 1024, record_file_s=120.0)
        stop = asyncio.Event()
        bus = await Bus.connect(settings, "capture", stop)
        await service.main(settings, bus, stop)
        events = await read_stream(settings)
        from shared.metrics import STATE
        stats = STATE.stats["capture_recorder"][0]()
        await bus.close()
        return events, stats

    events, stats = asyncio.run(main())
    starts = [e for e in events if e["event_type"] == "flow" and e["phase"] == "start"]
    assert len(starts) >= 300
    assert stats["packets_written"] == len(frames) and stats["rotations"] > 5 and stats["files_deleted"] == 0
    packets = dpkt_read(src)
    pcaps = list_store(store)
    assert len(pcaps) > 5 and all(stat.S_IMODE(p.stat().st_mode) == 0o640 for p in pcaps)

    out = tmp_path / "host.pcap"
    r = flowtarget("pcap", "--dir", str(store), "--host", "10.1.0.5", "-o", str(out))
    assert r.returncode == 0, r.stderr
    want = [(ts, f) for ts, f in packets if (a := addrs(f)) and "10.1.0.5" in a[:2]]
    assert want and dpkt_read(out) == want

    for e in [s for s in starts if s["transport"] == "TCP"][:3] + [s for s in starts if s["transport"] == "UDP"][:2]:
        out = tmp_path / f"{e['flow_id']}.pcap"
        r = flowtarget("pcap", "--dir", str(store), "--flow-id", e["flow_id"], "-o", str(out))
        assert r.returncode == 0, r.stderr
        ends = {(e["src_ip"], e["src_port"]), (e["dst_ip"], e["dst_port"])}
        want = [(ts, f) for ts, f in packets if (a := addrs(f)) and {(a[0], a[2]), (a[1], a[3])} == ends]
        assert want and dpkt_read(out) == want, e["flow_id"]

    r = flowtarget("pcap", "--dir", str(store), "--host", "10.1.0.5; rm -rf /", "-o", str(tmp_path / "x.pcap"))
    assert r.returncode == 2 and "bad host" in r.stderr
