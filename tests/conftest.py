"""Fixtures shared by the whole suite: a real nats-server on a free port, paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flowtarget.embedded import EmbeddedNats

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared").resolve()
CORPUS = SHARED / "corpus" / "ndpi" / "dev"
SCORER = SHARED / "tools" / "score_ndpi.py"
SAMPLE_PCAP = REPO / "samples" / "sample.pcap"


def need_corpus() -> Path:
    """The nDPI dev corpus, or skip (it lives beside the repo, not in a user's clone)."""
    if not CORPUS.is_dir():
        pytest.skip(f"nDPI corpus not found at {CORPUS} (it sits beside the repo in CI, not in a plain clone)")
    return CORPUS


def load_scorer():
    """../shared/tools/score_ndpi.py as a module (its parsing and matching, for tests on the corpus)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("score_ndpi", SCORER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def classify_capture(pcap, probe: str = "test") -> list:
    """Each flow's verdict for a capture file: capture's meter, then the built-in engine (no NATS).
    Fails the test if any dissector raised."""
    from services.capture.offline import last_samples
    from services.classify.engine import Engine

    engine = Engine()
    verdicts = [engine.classify(s) for s in last_samples(pcap, probe=probe)]
    assert not engine.errors, dict(engine.errors)
    return verdicts


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces (CI runs as root)")


@pytest.fixture(scope="session", autouse=True)
def _session_dirs(tmp_path_factory):
    """Services that module- or session-scoped fixtures start (the block labs') come up before any test's own
    directories below are set: theirs are the session's, never the machine's /var/lib/flowtarget."""
    saved = {k: os.environ.get(k) for k in ("FT_SPOOL_DIR", "FT_EVIDENCE_DIR")}
    os.environ["FT_SPOOL_DIR"] = str(tmp_path_factory.mktemp("ft-spool"))
    os.environ["FT_EVIDENCE_DIR"] = str(tmp_path_factory.mktemp("ft-evidence"))
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def _own_spool_dir(tmp_path, monkeypatch):
    """Each test spools (FT_SPOOL_DIR) into its own directory: nothing one test's services left unacknowledged
    is published into another test's nats-server.  Its services' evidence pcaps (FT_EVIDENCE_DIR) go to its
    own directory too, not the machine's /var/lib/flowtarget/evidence (12 k files there after a few runs)."""
    monkeypatch.setenv("FT_SPOOL_DIR", str(tmp_path / "ft-spool"))
    monkeypatch.setenv("FT_EVIDENCE_DIR", str(tmp_path / "ft-evidence"))


@pytest.fixture
def nats_server(tmp_path):
    """A real nats-server with JetStream: .url, .stop(), .start(), .restart(), .kill()."""
    server = EmbeddedNats(store_dir=str(tmp_path / "nats-store"), log_file=str(tmp_path / "nats.log"))
    server.start()
    try:
        yield server
    finally:
        server.close()


# a real InfluxDB v2 write endpoint (Debian's victoria-metrics) on a free port, for any test
from tests.vm import vm_server  # noqa: E402,F401
