"""The compiled meter loop (services/capture/_meter.c) and the pure-Python meter give identical results.

The same captures go through FlowMeter twice in one process: once with the
compiled loop, once with it switched off (``flows._run = None``: every record
through ``_process_py``, the reference).  Flow records, samples, packet
events, the meter's counters and the evidence rings must be equal, with
verdicts fed back (a final verdict for a third of the sampled flows) so that
stopped sampling is exercised too.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from services.capture import flows
from services.capture.flows import FlowMeter, ListSink
from services.capture.sources import CaptureFileError, FileSource
from shared.models import Verdict
from shared.settings import CaptureSettings
from tests.conftest import CORPUS, SAMPLE_PCAP, need_corpus

pytestmark = pytest.mark.skipif(flows._run is None, reason="the compiled meter loop is not built (or FT_PURE_PYTHON=1)")


def meter(batches: list[tuple[int, list]], compiled: bool, monkeypatch: pytest.MonkeyPatch) -> list:
    with monkeypatch.context() as mp:
        if not compiled:
            mp.setattr(flows, "_run", None)
        sink = ListSink()
        m = FlowMeter(CaptureSettings(verdict_wait_s=0, evidence_packets=4), sink, source="twin")
        m._prefix = "twin"
        m.defer_samples = True
        seen = 0
        for source, dlt, recs in batches:
            if source is not None:
                if m.table:
                    m.finish()
                m.set_source(source, dlt)
            m.process_batch(list(recs), dlt)
            m.flush_samples()
            for s in sink.samples[seen:]:
                if s.seq_no == 0 and zlib.crc32(s.flow_id.encode()) % 3 == 0:
                    m.on_verdict(Verdict(timestamp=s.timestamp, probe=s.probe, flow_id=s.flow_id, sample_seq_no=0,
                                         final=True, app_protocol="TLS", confidence="dpi"))
            seen = len(sink.samples)
        m.finish()
        m.flush_closing()
        rings = {fid: m.evidence(fid) for fid in list(m._recent_ev)}
        return [
            [r.model_dump() for r in sink.flows],
            [s.model_dump() for s in sink.samples],
            [p.model_dump() for p in sink.packets],
            m.stats(),
            rings,
        ]


def batches_of(paths: list[Path], chunk: int = 256) -> list[tuple]:
    out: list[tuple] = []
    for p in paths:
        try:
            src = FileSource(p)
        except CaptureFileError:
            continue
        first = True
        for dlt, recs in src.batches(chunk):
            out.append((src.name if first else None, dlt, recs))
            if first:
                first = False
    return out


def assert_twins(batches: list, monkeypatch: pytest.MonkeyPatch) -> None:
    a = meter(batches, True, monkeypatch)
    b = meter(batches, False, monkeypatch)
    names = ("flow records", "samples", "packet events", "stats", "evidence rings")
    for name, x, y in zip(names, a, b):
        if isinstance(x, list):
            assert len(x) == len(y), name
            for i, (u, v) in enumerate(zip(x, y)):
                assert u == v, f"{name}[{i}] differs"
        else:
            assert x == y, name
    assert a[0] and a[3]["packets"] > 0


def test_sample_capture_meters_the_same(monkeypatch):
    assert_twins(batches_of([SAMPLE_PCAP]), monkeypatch)


def frame(src: int, dst: int, sp: int, dp: int, flags: int, seq: int, payload: bytes = b"", proto: int = 6) -> bytes:
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", sp, dp, seq, 0, 0x50, flags, 65535, 0, 0) + payload
    else:
        l4 = struct.pack("!HHHH", sp, dp, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0, 64, proto, 0, struct.pack("!I", src),
                     struct.pack("!I", dst)) + l4
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip


def test_timeouts_closes_reopens_and_dns_meter_the_same(monkeypatch):
    """Long flows (update records, active timeout), FIN/RST closes, a SYN on a closed key, DNS, duplicates."""
    recs = []
    t = 1000.0
    for i in range(400):
        c = 0x0A000001 + i % 7
        sp = 40000 + i % 5
        recs.append((t, frame(c, 0xC0A80001, sp, 443, 0x02, 1000)))
        recs.append((t + 0.001, frame(0xC0A80001, c, 443, sp, 0x12, 5000)))
        recs.append((t + 0.002, frame(c, 0xC0A80001, sp, 443, 0x18, 1001, b"x" * (i % 40))))
        recs.append((t + 0.002, recs[-1][1]))   # a duplicate frame
        if i % 3 == 0:
            recs.append((t + 0.003, frame(c, 0xC0A80001, sp, 443, 0x11, 1001 + i % 40)))
            recs.append((t + 0.004, frame(0xC0A80001, c, 443, sp, 0x11, 5001)))
        elif i % 3 == 1:
            recs.append((t + 0.003, frame(c, 0xC0A80001, sp, 443, 0x04, 1001 + i % 40)))
            recs.append((t + 0.0035, frame(c, 0xC0A80001, sp, 443, 0x02, 9000)))   # a SYN on the closed key
        recs.append((t + 0.005, frame(c, 0x08080808, 30000 + i % 3, 53, 0, 0, b"\x12\x34" + b"\x01\x00" + b"\x00" * 20, 17)))
        recs.append((t + 0.006, frame(0x0A0A0A0A, 0xC0A80002, 5555, 6666, 0, 0, b"k", 17)))   # one long flow
        t += 7.3   # ~49 minutes in all: update records and an active timeout with the defaults
    batches = [("synthetic", 1, recs[i:i + 100]) if i == 0 else (None, 1, recs[i:i + 100])
               for i in range(0, len(recs), 100)]
    settings_like = CaptureSettings(update_interval_s=60, active_timeout_s=1800)
    assert settings_like.update_interval_s < t - 1000.0
    assert_twins(batches, monkeypatch)
    sink = ListSink()
    m = FlowMeter(CaptureSettings(verdict_wait_s=0), sink, source="twin")
    m.process_batch([r for b in batches for r in b[2]], 1)
    m.finish()
    reasons = {r.end_reason for r in sink.flows if r.phase == "end"}
    assert {"rst", "fin", "idle"} <= reasons or {"rst", "fin", "eof"} <= reasons, reasons
    assert any(r.phase == "update" for r in sink.flows) and "active" in reasons


@pytest.mark.corpus
@pytest.mark.parametrize("corpus", ["ndpi", "zeek"])
def test_dev_corpora_meter_the_same(corpus, monkeypatch):
    need_corpus()
    d = CORPUS.parents[1] / corpus / "dev"
    if not d.is_dir():
        pytest.skip(f"{d} not found")
    paths = sorted(p for p in d.iterdir() if p.is_file() and not p.name.endswith(".out"))
    assert_twins(batches_of(paths), monkeypatch)
