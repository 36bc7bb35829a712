"""The service runner: SIGTERM drains and exits 0, also while NATS is still unreachable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from flowtarget.embedded import free_port


def start(service: str, nats_url: str) -> subprocess.Popen:
    env = dict(os.environ, FT_NATS_URL=nats_url, FT_PROBE="rt", FT_LOG_LEVEL="INFO")
    return subprocess.Popen([sys.executable, "-m", "flowtarget", service], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_line(proc: subprocess.Popen, needle: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"{needle!r} not seen in: {''.join(seen)[-2000:]}")


def test_sigterm_drains_and_exits_zero(nats_server):
    proc = start("classify", nats_server.url)
    wait_line(proc, "classify ready")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "classify stopped" in out


def test_sigterm_while_nats_is_unreachable_exits_zero():
    proc = start("classify", f"nats://127.0.0.1:{free_port()}")
    wait_line(proc, "NATS error")   # it keeps trying to connect
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "stopped before connecting" in out
    assert "Traceback" not in out
