"""A real victoria-metrics (Debian's /usr/bin/victoria-metrics) for store tests.

``flowtarget.embedded.VictoriaMetrics`` runs it (free port, temporary data,
restart keeps port and data); this adds the queries tests check storage by.
Its ``-dedup.minScrapeInterval=1ms`` keeps one sample per series and
millisecond, which is how InfluxDB treats a point written twice (same
measurement, tags and timestamp: the second overwrites the first).  Tests rely
on that to check "stored exactly once" after redeliveries; their records are
at least 1 ms apart within a series.
"""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from flowtarget.embedded import VictoriaMetrics as EmbeddedVictoriaMetrics

VM_BINARY = os.environ.get("FT_TEST_VM_BINARY", "/usr/bin/victoria-metrics")


class VictoriaMetrics(EmbeddedVictoriaMetrics):
    """flowtarget's victoria-metrics runner with the queries the tests check storage by."""

    def __init__(self, data_dir: str | None = None, port: int | None = None, log_file: str | None = None) -> None:
        super().__init__(data_dir, port, log_file, binary=VM_BINARY)

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
