"""A replay through the real capture service (real nats-server) with FT_RECORD_DIR set, then
``flowtarget pcap --host`` / ``--flow-id`` give exactly the recorded packets (checked with dpkt)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from flowtarget.orchestrate import read_stream
from services.capture import export as export_mod
from services.capture import service
from services.capture.recorder import list_store
from shared.bus import Bus
from shared.settings import CaptureSettings, CommonSettings
from tests.services.capture.test_recorder import T0, addrs, dpkt_read, traffic, udp, write_pcap

ROOT = Path(__file__).resolve().parents[3]
T1 = T0 + 7200.0


def flowtarget(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowtarget", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def _children_named(name: str) -> list[int]:
    """Live child processes of this one with that kernel name (/proc/<pid>/comm)."""
    me, out = os.getpid(), []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            st = (d / "stat").read_text()
            ppid, state = int(st.rsplit(")", 1)[1].split()[1]), st.rsplit(")", 1)[1].split()[0]
            if ppid == me and state != "Z" and (d / "comm").read_text().strip() == name:
                out.append(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def test_replay_with_recording_then_flowtarget_pcap(nats_server, tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "STREAM_CHUNK_BYTES", 8192)    # a streamed export in many chunks
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
    ended = [e for e in events if e["event_type"] == "flow" and e["phase"] == "end"]
    assert len(ended) >= 300
    assert stats["packets_written"] == len(frames) and stats["rotations"] > 5 and stats["files_deleted"] == 0
    packets = dpkt_read(src)
    pcaps = list_store(store)
    assert len(pcaps) > 5 and all(stat.S_IMODE(p.stat().st_mode) == 0o640 for p in pcaps)

    out = tmp_path / "host.pcap"
    r = flowtarget("pcap", "--dir", str(store), "--host", "10.1.0.5", "-o", str(out))
    assert r.returncode == 0, r.stderr
    want_host = [(ts, f) for ts, f in packets if (a := addrs(f)) and "10.1.0.5" in a[:2]]
    assert want_host and dpkt_read(out) == want_host

    for e in [s for s in ended if s["transport"] == "TCP"][:3] + [s for s in ended if s["transport"] == "UDP"][:2]:
        out = tmp_path / f"{e['flow_id']}.pcap"
        r = flowtarget("pcap", "--dir", str(store), "--flow-id", e["flow_id"], "-o", str(out))
        assert r.returncode == 0, r.stderr
        ends = {(e["src_ip"], e["src_port"]), (e["dst_ip"], e["dst_port"])}
        want = [(ts, f) for ts, f in packets if (a := addrs(f)) and {(a[0], a[2]), (a[1], a[3])} == ends]
        assert want and dpkt_read(out) == want, e["flow_id"]

    from shared.community_id import for_event
    e = [s for s in ended if s["transport"] == "TCP"][5]
    out = tmp_path / "cid.pcap"
    r = flowtarget("pcap", "--dir", str(store), "--community-id",
                   for_event("TCP", e["src_ip"], e["src_port"], e["dst_ip"], e["dst_port"]), "-o", str(out))
    assert r.returncode == 0, r.stderr
    ends = {(e["src_ip"], e["src_port"]), (e["dst_ip"], e["dst_port"])}
    want = [(ts, f) for ts, f in packets if (a := addrs(f)) and {(a[0], a[2]), (a[1], a[3])} == ends]
    assert want and dpkt_read(out) == want

    r = flowtarget("pcap", "--dir", str(store), "--host", "10.1.0.5; rm -rf /", "-o", str(tmp_path / "x.pcap"))
    assert r.returncode == 2 and "bad host" in r.stderr

    # the same over NATS, while capture runs (a second, paced replay of other hosts into the same store)
    # (paced: 60 s of packet time, stopped once the requests are answered)
    slow = write_pcap(tmp_path / "slow.pcap", [(T1 + i * 0.1, udp("10.9.0.1", 5000, "10.9.0.2", 53, b"q%d" % i))
                                               for i in range(600)])

    async def over_nats():
        settings = CaptureSettings(nats_url=nats_server.url, probe="rec", pcap=[slow], verdict_wait_s=0,
                                   replay_max_pending=0, stream_storage="memory", record_dir=store,
                                   record_max_bytes=4 << 20, record_file_bytes=32 * 1024, replay_realtime=True,
                                   evidence_dir=tmp_path / "evidence")
        stop = asyncio.Event()
        bus = await Bus.connect(settings, "capture", stop)
        client = await Bus.connect(CommonSettings(nats_url=nats_server.url, probe="rec"), "test")
        task = asyncio.create_task(service.main(settings, bus, stop))
        answers = []
        for req in ({"host": "10.1.0.5"}, {"host": "../../etc/passwd"}, {"flow_id": "nope"},
                    {"host": "10.1.0.5", "format": "pcapng"}, {"host": "10.1.0.5", "format": "../x"}):
            for _ in range(100):
                try:
                    msg = await client.nc.request("ft.ctl.rec.export", json.dumps(req).encode(), timeout=5)
                    answers.append(json.loads(msg.data))
                    break
                except Exception:
                    await asyncio.sleep(0.05)
        # the exports ran in capture's ft-evidence child (not in a thread holding capture's interpreter)
        cutters = sorted(set(_children_named("ft-evidence")) - before)
        # streamed to a remote requester in chunks (small ones here: many chunks), checked complete
        streamed = await export_mod.fetch_remote(client.nc, "rec", {"host": "10.1.0.5"}, tmp_path / "streamed.pcap")
        # and by the command, as from another host
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "flowtarget", "pcap", "--probe", "rec", "--nats", nats_server.url,
            "--host", "10.1.0.5", "--port", "443", "-o", str(tmp_path / "cli-streamed.pcap"), cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        cli_out, cli_err = await asyncio.wait_for(cli.communicate(), 120)
        # a chunk of a stream that is done, or never was, is an error answer
        gone = json.loads((await client.nc.request("ft.ctl.rec.export", json.dumps(
            {"stream": streamed["stream"], "chunk": 0}).encode(), timeout=5)).data)
        left = sorted(p.name for p in (tmp_path / "evidence").iterdir() if p.name.startswith(".stream-"))
        stop.set()
        await asyncio.wait_for(task, 60)
        await bus.close()
        await client.close()
        return answers, streamed, (cli.returncode, cli_out.decode(), cli_err.decode()), gone, left, cutters

    before = set(_children_named("ft-evidence"))      # none of this test's (another test's may live on)
    (ok, bad_host, bad_flow, ng, bad_fmt), streamed, cli, gone, left, cutters = asyncio.run(over_nats())
    assert len(cutters) == 1, cutters
    assert cutters[0] not in _children_named("ft-evidence")      # capture ended it when it stopped
    assert ng["status"] == "ok" and ng["path"].endswith(".pcapng") and ng["packets"] == len(want_host), ng
    import dpkt
    with open(ng["path"], "rb") as fh:
        assert [(round(ts, 6), bytes(b)) for ts, b in dpkt.pcapng.Reader(fh)] == want_host
    assert bad_fmt["status"] == "error" and "format" in bad_fmt["error"]
    assert streamed["chunks"] > 3 and streamed["chunks_read"] == streamed["chunks"]
    assert dpkt_read(tmp_path / "streamed.pcap") == want_host
    assert stat.S_IMODE(os.stat(tmp_path / "streamed.pcap").st_mode) == 0o640
    assert cli[0] == 0, cli
    assert dpkt_read(tmp_path / "cli-streamed.pcap") == [(ts, f) for ts, f in want_host if 443 in addrs(f)[2:4]]
    assert gone["status"] == "error" and "no such stream" in gone["error"]
    assert left == []                       # read streams are deleted from the evidence directory
    assert ok["status"] == "ok", ok
    assert Path(ok["path"]).parent == tmp_path / "evidence" and ok["size"] == os.path.getsize(ok["path"])
    assert dpkt_read(ok["path"]) == want_host and ok["packets"] == len(want_host)
    assert stat.S_IMODE(os.stat(ok["path"]).st_mode) == 0o640
    assert bad_host["status"] == "error" and "bad host" in bad_host["error"]
    assert bad_flow["status"] == "error" and "not in the store" in bad_flow["error"]
