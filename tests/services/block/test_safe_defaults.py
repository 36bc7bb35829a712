"""Issue 17: one safe default everywhere — dry run unless enforcement is asked for explicitly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from shared.settings import BlockSettings

from flowtarget.cli import build_parser
from services.block.service import mode_line

REPO = Path(__file__).resolve().parents[3]


def test_dry_run_is_the_default_and_the_same_in_compose():
    assert BlockSettings().dry_run is True
    env = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["block"]["environment"]
    assert env["FT_DRY_RUN"].endswith(":-true}")
    assert "DRY-RUN" in mode_line(BlockSettings(iface="eth9"))
    assert "ENFORCING" in mode_line(BlockSettings(iface="eth9", dry_run=False))
    assert "REPORT-ONLY" in mode_line(BlockSettings(dry_run=False))


def test_run_has_enforce_and_defaults_to_dry_run():
    ap = build_parser()
    assert ap.parse_args(["run", "--iface", "eth9"]).enforce is False
    assert ap.parse_args(["run", "--iface", "eth9", "--enforce"]).enforce is True


def _startup_line(nats_url: str, **env: str) -> str:
    e = dict(os.environ, FT_NATS_URL=nats_url, FT_IFACE="lo", FT_PROBE="safe", **env)
    e.pop("FT_DRY_RUN", None)
    e.update(env)
    p = subprocess.Popen([sys.executable, "-m", "flowtarget", "block"], env=e, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    line = ""
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            out = p.stdout.readline()
            if not out:
                break
            if "block running" in out:
                line = out
                break
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return line


@pytest.mark.root
def test_block_states_its_mode_in_the_startup_line(nats_server):
    if os.geteuid() != 0:
        pytest.skip("block opens a capture handle on lo: root")
    line = _startup_line(nats_server.url)
    assert "mode=DRY-RUN" in line and "dry_run=True" in line, line
    line = _startup_line(nats_server.url, FT_DRY_RUN="false")
    assert "mode=ENFORCING" in line and "dry_run=False" in line, line
