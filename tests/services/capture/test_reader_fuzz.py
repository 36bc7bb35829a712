"""The capture file readers take arbitrary bytes without raising or hanging (issue 13: fuzzing).

Random bytes, and valid pcap / pcapng / gzip'd files with bytes flipped and cut, go through
``open_source``: it either refuses the file (``CaptureFileError``) or yields records and reports damage
in ``error``; the compiled record reader and its pure-Python twin give the same records, errors and
counters.  A per-example alarm turns a hang into a failure.
"""

from __future__ import annotations

import gzip
import os
import struct
import tempfile

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.capture import fastpath, sources
from services.capture.sources import MAX_RECORD, CaptureFileError, open_source

from tests.services.classify.test_dissectors_fuzz import deadline

SCALE = float(os.environ.get("FT_FUZZ_SCALE", "1"))
TWINS = {"python": fastpath.pcap_records_py}
if fastpath.COMPILED:
    TWINS["compiled"] = fastpath._c.pcap_records
FUZZ = settings(max_examples=int(150 * SCALE), deadline=None, suppress_health_check=list(HealthCheck))


def read_all(data: bytes, reader) -> tuple:
    """(refused?, records, errors, counters) of a file holding ``data`` read with ``reader``."""
    old = sources.pcap_records
    sources.pcap_records = reader
    fd, path = tempfile.mkstemp(suffix=".pcap")
    try:
        os.write(fd, data)
        os.close(fd)
        with deadline(10):
            try:
                src = open_source(path)
            except CaptureFileError as exc:
                assert str(exc).startswith(path)
                return ("refused",)
            recs = [(dlt, r) for dlt, batch in src.batches(7) for r in batch]
        assert src.packets == len(recs)
        assert (src.error is None) == (src.errors == 0)
        assert all(isinstance(f, bytes) and len(f) <= MAX_RECORD for _d, (_t, f) in recs)
        return ("read", recs, src.errors, (src.error or "").replace(path, "FILE"), dict(src.counters))
    finally:
        sources.pcap_records = old
        os.unlink(path)


def read_twins(data: bytes) -> tuple:
    results = {name: read_all(data, r) for name, r in TWINS.items()}
    first = next(iter(results.values()))
    assert all(r == first for r in results.values()), results
    return first


def mutate(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    b = bytearray(data)
    for pos, v in flips:
        if b:
            b[pos % len(b)] = v
    return bytes(b[:cut] if cut is not None else b)


records = st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 999_999), st.binary(max_size=80),
                             st.integers(-8, 8)), max_size=12)


def pcap_file(endian: str, snaplen: int, recs) -> bytes:
    out = [struct.pack(endian + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, 1)]
    for sec, usec, data, dorig in recs:
        out.append(struct.pack(endian + "IIII", sec, usec, len(data), max(0, len(data) + dorig)) + data)
    return b"".join(out)


@FUZZ
@given(st.binary(max_size=3000))
def test_random_bytes(data):
    read_twins(data)


@FUZZ
@given(st.sampled_from([b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\x0a\x0d\x0d\x0a",
                        b"\x1f\x8b"]), st.binary(max_size=2000))
def test_random_bytes_behind_a_magic(magic, data):
    read_twins(magic + data)


@FUZZ
@given(st.sampled_from(["<", ">"]), st.sampled_from([0, 40, 64, 65535, 2**32 - 1]), records,
       st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 255)), max_size=6),
       st.one_of(st.none(), st.integers(0, 3000)), st.booleans())
def test_mutated_pcap(endian, snaplen, recs, flips, cut, gz):
    data = mutate(pcap_file(endian, snaplen, recs), flips, cut)
    if gz:
        data = gzip.compress(data)[: None if cut is None else cut + 20]
    r = read_twins(data)
    if not flips and cut is None and not gz:       # intact: every record, the anomalies counted
        assert r[0] == "read" and len(r[1]) == len(recs) and r[2] == 0
        over = sum(1 for _s, _u, d, dorig in recs if len(d) > max(0, len(d) + dorig))
        assert r[4].get("caplen_over_origlen", 0) == over


@FUZZ
@given(st.lists(st.tuples(st.binary(max_size=80), st.integers(0, 2**31)), max_size=8),
       st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 255)), max_size=6),
       st.one_of(st.none(), st.integers(0, 2000)))
def test_mutated_pcapng(pkts, flips, cut):
    import io

    fh = io.BytesIO()
    w = dpkt.pcapng.Writer(fh, linktype=1)
    for frame, ts in pkts:
        w.writepkt(frame, ts=ts)
    read_twins(mutate(fh.getvalue(), flips, cut))


@settings(max_examples=int(300 * SCALE), deadline=None)
@given(st.sampled_from(["<", ">"]), records, st.integers(0, 2000), st.integers(0, 20), st.integers(0, 40),
       st.sampled_from([0, 16, 40, 65535]))
def test_record_reader_twins_agree_on_length_anomalies(endian, recs, cut, pos, snaplen, limit):
    if not fastpath.COMPILED:
        pytest.skip("C extension not built")
    buf = pcap_file(endian, 65535, recs)[24:][:cut]
    start = min(pos, len(buf))
    a = fastpath._c.pcap_records(buf, start, endian == ">", 1e-6, limit, MAX_RECORD, snaplen)
    b = fastpath.pcap_records_py(buf, start, endian == ">", 1e-6, limit, MAX_RECORD, snaplen)
    assert a == b
