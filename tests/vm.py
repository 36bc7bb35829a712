"""A real victoria-metrics (Debian's /usr/bin/victoria-metrics) for store tests.

It serves InfluxDB 2's ``/api/v2/write`` (numeric fields and tags kept, string
fields dropped).  Started on a free port with a temporary ``-storageDataPath``
and ``-retentionPeriod=100y`` (capture files carry old timestamps).

``-dedup.minScrapeInterval=1ms`` makes it keep one sample per series and
millisecond, which is how InfluxDB treats a point written twice (same
measurement, tags and timestamp: the second overwrites the first).  Tests rely
on that to check "stored exactly once" after redeliveries; their records are
at least 1 ms apart within a series.

``stop()``/``start()`` keep the port and the data directory, so a restart looks
like the same server coming back.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

VM_BINARY = os.environ.get("FT_TEST_VM_BINARY", "/usr/bin/victoria-metrics")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VictoriaMetrics:
    def __init__(self, data_dir: str | None = None, port: int | None = None, log_file: str | None = None) -> None:
        self.port = port or _free_port()
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="ft-vm-")
        self.log_file = log_file or str(Path(self.data_dir).with_suffix(".log"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> "VictoriaMetrics":
        if self.proc and self.proc.poll() is None:
            return self
        args = [
            VM_BINARY,
            f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={self.data_dir}",
            "-retentionPeriod=100y",
            "-dedup.minScrapeInterval=1ms",
            "-search.disableCache",
            "-loggerLevel=WARN",
        ]
        logf = open(self.log_file, "ab")
        try:
            self.proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            logf.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"victoria-metrics exited with {self.proc.returncode}; see {self.log_file}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=0.5) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"victoria-metrics not healthy after {timeout_s}s; see {self.log_file}")

    def stop(self) -> None:
        if not self.proc:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # ------------------------------------------------------------------ queries

    def _get(self, path: str, params: dict[str, str], timeout: float = 30.0) -> bytes:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read()

    def flush(self) -> None:
        """Make freshly written samples visible to queries."""
        self._get("/internal/force_flush", {})

    def export(self, match: str) -> list[dict]:
        """Every series matching ``match`` with its raw samples (metric, values, timestamps in ms)."""
        self.flush()
        raw = self._get("/api/v1/export", {"match[]": match, "start": "0"})
        return [json.loads(line) for line in raw.splitlines() if line.strip()]

    def values(self, match: str) -> list[float]:
        """All sample values of the matching series, one per stored sample."""
        out: list[float] = []
        for series in self.export(match):
            out.extend(series["values"])
        return out


@pytest.fixture
def vm_server(tmp_path):
    """A real victoria-metrics: .url, .stop(), .start(), .restart(), .export(match), .values(match)."""
    if not Path(VM_BINARY).is_file():
        pytest.skip(f"victoria-metrics not installed at {VM_BINARY} (apt-get install victoria-metrics)")
    server = VictoriaMetrics(data_dir=str(tmp_path / "vm-data"), log_file=str(tmp_path / "vm.log"))
    server.start()
    try:
        yield server
    finally:
        server.close()
