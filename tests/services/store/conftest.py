"""Store test helpers: victoria-metrics fixture, record factories, an in-process and a subprocess store."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.bus import Bus
from shared.models import EventBatch, FlowRecord
from shared.settings import StoreSettings

REPO = Path(__file__).resolve().parents[3]
BASE_TS = 1_600_000_000.0  # an old capture time: needs -retentionPeriod=100y


def flow(i: int, probe: str = "p1", app: str = "TLS", **kw) -> FlowRecord:
    """A flow-end record whose src2dst_bytes (= i) identifies it; first_seen 1 ms apart."""
    t = BASE_TS + i * 0.001
    d = dict(
        timestamp=t + 2.0, probe=probe, flow_id=f"{probe}-{i}", transport="TCP", src_ip="10.0.0.1",
        src_port=1024 + i % 50000, dst_ip="192.0.2.1", dst_port=443, phase="end", end_reason="fin",
        first_seen=t, last_seen=t + 2.0, duration_ms=2000.0, src2dst_packets=5, src2dst_bytes=i,
        dst2src_packets=7, dst2src_bytes=9000, app_protocol=app, host="example.com", application="Google",
        category="Web",
    )
    d.update(kw)
    return FlowRecord(**d)


def store_settings(nats_url: str, influx_url: str = "", **kw) -> StoreSettings:
    kw.setdefault("retry_max_s", 1.0)
    kw.setdefault("flush_interval_s", 0.2)
    kw.setdefault("batch_size", 2000)
    return StoreSettings(nats_url=nats_url, influx_url=influx_url, **kw)


async def publish_flows(bus: Bus, ids: range, per_msg: int = 100, pause_s: float = 0.0, probe: str = "p1") -> None:
    """Publish flows with the given ids through JetStream (acks awaited, retried until stored)."""
    await bus.ensure_stream()
    ids = list(ids)
    for k in range(0, len(ids), per_msg):
        batch = EventBatch(events=[flow(i, probe=probe) for i in ids[k:k + per_msg]])
        await bus.js_publish(f"ft.flow.{probe}", batch, msg_id=f"{probe}-{ids[k]}")
        if pause_s:
            await asyncio.sleep(pause_s)


async def wait_until(cond, timeout_s: float, interval_s: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(interval_s)
    return cond()


class InProcessStore:
    """services.store.service.main on the test's loop, with its own bus and stop event."""

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings
        self.stop = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.bus: Bus | None = None
        from services.store.service import StoreMetrics

        self.metrics = StoreMetrics()

    async def start(self) -> "InProcessStore":
        from services.store.service import main

        self.bus = await Bus.connect(self.settings, "store-test")
        self.task = asyncio.create_task(main(self.settings, self.bus, self.stop, metrics=self.metrics))
        return self

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 30)
        if self.bus is not None:
            await self.bus.close()


class StoreProcess:
    """``python -m services.store`` as a child process (killable with SIGKILL)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        logf = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "services.store"], env=self.env, cwd=str(REPO),
                                         stdout=logf, stderr=subprocess.STDOUT)
        finally:
            logf.close()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode if self.proc else None


@pytest.fixture
def store_process(tmp_path):
    procs: list[StoreProcess] = []

    def make(env: dict[str, str]) -> StoreProcess:
        p = StoreProcess(env, tmp_path / f"store{len(procs)}.log")
        procs.append(p)
        return p

    yield make
    for p in procs:
        p.terminate()
