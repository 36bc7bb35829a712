"""flowtarget capture's own child processes (the detectors' process) never outlive it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import SAMPLE_PCAP
from tests.procs import alive, children_of


@pytest.mark.slow
def test_detectors_process_dies_with_a_killed_capture(nats_server, tmp_path):
    env = dict(os.environ, FT_NATS_URL=nats_server.url, FT_PROBE="kids", FT_PCAP=f'["{SAMPLE_PCAP}"]',
               FT_REPLAY_REALTIME="true", FT_EVIDENCE_DIR=str(tmp_path),
               FT_DETECT_INLINE="false")   # a file replay runs them inline unless told otherwise
    cap = subprocess.Popen([sys.executable, "-m", "flowtarget", "capture"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    kids: list[int] = []
    while time.monotonic() < deadline and not kids:
        kids = children_of(cap.pid)
        time.sleep(0.1)
    assert kids, "the detectors' process was not started"
    cap.send_signal(signal.SIGKILL)
    cap.wait(10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(alive(k) for k in kids):
        time.sleep(0.1)
    assert not any(alive(k) for k in kids), "the detectors' process outlived capture"
