"""``flowtarget run`` starts the console beside the pipeline and prints its URL (or why it did not)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import SAMPLE_PCAP

pytestmark = pytest.mark.slow


def start(tmp_path, **env) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FT_WEB_")}
    return subprocess.Popen([sys.executable, "-m", "flowtarget", "run", "--pcap", str(SAMPLE_PCAP), "--out",
                             str(tmp_path / "out")], env={**base, "FT_LOG_LEVEL": "WARNING", **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path)


def test_run_starts_the_console_and_prints_its_url(tmp_path):
    # replayed at its recorded pace (2.3 s) so the pipeline outlives the console's start-up on any machine
    proc = start(tmp_path, FT_WEB_TOKEN="t-" + os.urandom(8).hex(), FT_WEB_PORT="0", FT_REPLAY_REALTIME="1")
    try:
        first = proc.stderr.readline()
        m = re.fullmatch(r"flowtarget run: web console on (http://127\.0\.0\.1:\d+/)\n", first)
        assert m, first
        healthy = False
        deadline = time.monotonic() + 60
        while not healthy and proc.poll() is None and time.monotonic() < deadline:
            try:   # the console answers while the replay runs
                with urllib.request.urlopen(m.group(1) + "healthz", timeout=1) as r:
                    healthy = r.status == 200
            except OSError:
                time.sleep(0.1)
        rest = proc.stderr.read()
        assert proc.wait(120) == 0, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert healthy, rest
    assert "1 file(s) replayed, 13 flows" in rest


def test_run_without_a_login_says_why_there_is_no_console(tmp_path):
    proc = start(tmp_path)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert err.startswith("flowtarget run: web console not started: set FT_WEB_TOKEN, or FT_WEB_USER and "
                          "FT_WEB_PASSWORD"), err
