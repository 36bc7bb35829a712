"""Bounded shutdown while NATS is down (issue 13 item 12), with real processes and a real nats-server.

``flowtarget capture`` replays a long capture file at its recorded pace; the
nats-server is killed; SIGTERM must end capture and its detectors' process
within docker compose's stop_grace_period (30 s), the flow records JetStream
had not acknowledged go to the spool, and the next start publishes them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import nats
from nats.js.errors import NotFoundError

from shared.models import event_dict, events_of, parse_event
from tests.procs import alive, children_of

GRACE_S = 30.0      # docker-compose.yml: stop_grace_period
FLOWS = 40


def write_long_pcap(path: Path, flows: int = FLOWS, seconds: float = 300.0, step: float = 0.1) -> None:
    """UDP packets of ``flows`` flows, one every ``step`` seconds for ``seconds`` (Ethernet, IPv4)."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    t0 = 1_700_000_000.0
    for k in range(int(seconds / step)):
        i = k % flows
        payload = b"hello %d" % k
        udp = struct.pack("!HHHH", 20000 + i, 9999, 8 + len(payload), 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), k & 0xFFFF, 0, 64, 17, 0,
                         bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) + udp
        frame = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + ip
        ts = t0 + k * step
        out.append(struct.pack("<IIII", int(ts), int((ts % 1) * 1e6), len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))


def flow_records(url: str, phase: str) -> list[dict]:
    """The flow records of one phase in the stream (none while it does not exist)."""
    async def read() -> list[dict]:
        nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=1)
        try:
            js = nc.jetstream()
            try:
                info = await js.stream_info("FLOWTARGET")
            except NotFoundError:
                return []
            if not info.state.messages:
                return []
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                m = await js.get_msg("FLOWTARGET", seq)
                if m.subject.startswith("ft.flow."):
                    out.extend(event_dict(e) for e in events_of(parse_event(m.data)))
            return out
        finally:
            await nc.close()

    return [e for e in asyncio.run(read()) if e.get("event_type") == "flow" and e.get("phase") == phase]


class LiveStarts(threading.Thread):
    """Counts the start records capture sends on ft.live.<probe> (core NATS: never in the stream)."""

    def __init__(self, url: str, probe: str) -> None:
        super().__init__(daemon=True)
        self.url, self.probe = url, probe
        self.count = 0
        self.ready = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        nc = await nats.connect(self.url, connect_timeout=2, max_reconnect_attempts=1)

        async def on_msg(msg) -> None:
            for e in events_of(parse_event(msg.data)):
                d = event_dict(e)
                if d.get("event_type") == "flow" and d.get("phase") == "start":
                    self.count += 1

        await nc.subscribe(f"ft.live.{self.probe}", cb=on_msg)
        await nc.flush()
        self.ready.set()
        while not self._halt.is_set():
            await asyncio.sleep(0.1)
        await nc.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def wait(cond, timeout_s: float, step: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


@pytest.mark.slow
def test_capture_exits_in_bounded_time_while_nats_is_down_and_spools(nats_server, tmp_path):
    pcap = tmp_path / "long.pcap"
    write_long_pcap(pcap)
    spool = tmp_path / "spool"
    env = dict(os.environ, FT_NATS_URL=nats_server.url, FT_PROBE="shut", FT_PCAP=json.dumps([str(pcap)]),
               FT_REPLAY_REALTIME="true", FT_EVIDENCE_DIR=str(tmp_path / "ev"), FT_SPOOL_DIR=str(spool),
               FT_LOG_LEVEL="INFO", FT_DETECT_INLINE="false")   # files run them inline unless told otherwise
    starts = LiveStarts(nats_server.url, "shut")
    starts.start()
    assert starts.ready.wait(10)
    log1 = open(tmp_path / "capture1.log", "wb")
    cap = subprocess.Popen([sys.executable, "-m", "flowtarget", "capture"], env=env, stdout=log1,
                           stderr=subprocess.STDOUT)
    try:
        # every flow has started (start records go to the detectors on ft.live, not into the stream)
        started = wait(lambda: starts.count >= FLOWS, 60)
        starts.stop()
        assert started, "capture did not start"
        kids = children_of(cap.pid)
        assert kids, "no detectors' process"
        nats_server.kill()
        cap.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        try:
            cap.wait(GRACE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"capture still running {GRACE_S:g} s after SIGTERM with NATS down")
        took = time.monotonic() - t0
        assert wait(lambda: not any(alive(k) for k in kids), GRACE_S - took), "the detectors' process lingers"
    finally:
        if cap.poll() is None:
            cap.kill()
            cap.wait()
        log1.close()
    spooled = list((spool / "capture-shut").glob("*.msg"))
    assert spooled, "nothing spooled: " + (tmp_path / "capture1.log").read_text()[-2000:]

    # the next start publishes the spooled end records (nothing of them was stored before)
    nats_server.start()
    assert flow_records(nats_server.url, "end") == []
    log2 = open(tmp_path / "capture2.log", "wb")
    cap2 = subprocess.Popen([sys.executable, "-m", "flowtarget", "capture"], env=env, stdout=log2,
                            stderr=subprocess.STDOUT)
    try:
        assert wait(lambda: len(flow_records(nats_server.url, "end")) >= FLOWS, 60), \
            "spooled records not published: " + (tmp_path / "capture2.log").read_text()[-2000:]
        ends = flow_records(nats_server.url, "end")
        assert len({e["flow_id"] for e in ends}) == FLOWS and len(ends) == FLOWS
        assert not list((spool / "capture-shut").glob("*.msg"))
    finally:
        cap2.send_signal(signal.SIGTERM)
        try:
            cap2.wait(GRACE_S)
        except subprocess.TimeoutExpired:
            cap2.kill()
            cap2.wait()
        log2.close()
