"""The services survive a nats-server restart and rejoin after SIGKILL, with no manual step."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import SAMPLE_PCAP

pytestmark = pytest.mark.slow


class Services:
    def __init__(self, nats_url: str, out: Path, logs: Path):
        self.env = dict(os.environ, FT_NATS_URL=nats_url, FT_PROBE="res", FT_OUT_DIR=str(out),
                        FT_LOG_LEVEL="INFO", PYTHONUNBUFFERED="1")
        self.out, self.logs = out, logs
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, **env: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        p = subprocess.Popen([sys.executable, "-m", "flowtarget", name], env={**self.env, **env},
                             stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = p
        return p

    def capture_file(self, path: Path) -> int:
        from flowtarget.orchestrate import wait_ready

        assert asyncio.run(wait_ready(self.env["FT_NATS_URL"], "classify", timeout_s=60)), "classify not ready"
        p = self.start("capture", FT_PCAP=json.dumps([str(path)]), FT_VERDICT_WAIT_S="20")
        return p.wait(120)

    def stored_flows(self) -> list[dict]:
        f = self.out / "flows.jsonl"
        if not f.exists():
            return []
        return [json.loads(x) for x in f.read_text().splitlines() if x.strip()]

    def wait_flows(self, n: int, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            flows = self.stored_flows()
            if len(flows) >= n:
                return flows
            time.sleep(0.2)
        return self.stored_flows()

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def classified(flows: list[dict]) -> int:
    return sum(1 for f in flows if f.get("app_protocol") not in (None, "", "Unknown"))


@pytest.fixture
def services(nats_server, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    s = Services(nats_server.url, out, tmp_path)
    s.start("classify")
    s.start("store")
    try:
        yield s
    finally:
        s.stop()


def test_services_carry_on_after_nats_restart(nats_server, services):
    assert services.capture_file(SAMPLE_PCAP) == 0
    first = services.wait_flows(1)
    n = len(first)
    assert n >= 5 and classified(first) == n      # the access log: classified flows
    nats_server.kill()                             # SIGKILL the server mid-run
    time.sleep(1.0)
    nats_server.start()                            # same port, same JetStream store
    assert services.capture_file(SAMPLE_PCAP) == 0
    flows = services.wait_flows(2 * n)
    assert len(flows) == 2 * n, "store or classify did not carry on after the restart"
    assert classified(flows) == 2 * n
    assert all(p.poll() is None for name, p in services.procs.items() if name != "capture")


@pytest.mark.parametrize("victim", ["classify", "store"])
def test_service_killed_with_sigkill_rejoins(nats_server, services, victim):
    assert services.capture_file(SAMPLE_PCAP) == 0
    n = len(services.wait_flows(1))
    assert n >= 5
    services.procs[victim].send_signal(signal.SIGKILL)
    services.procs[victim].wait(10)
    services.start(victim)                         # restarted as compose would: same command, same env
    assert services.capture_file(SAMPLE_PCAP) == 0
    flows = services.wait_flows(2 * n)
    assert len(flows) == 2 * n and classified(flows) == 2 * n
