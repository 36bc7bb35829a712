"""Capture files with records that lie about their length, or that are no capture at all (issue 13 item 9).

- caplen above the record's original length: counted (``caplen_over_origlen``), the frame trimmed to
  the original length, the following records read as they are;
- caplen above the file's snaplen: counted (``caplen_over_snaplen``), the record kept;
- a pcapng whose section header has a bad byte-order magic: "not a capture file", not a truncation;
- a pcap cut inside a record: still reported as truncated.

Both record readers (the compiled one and its pure-Python twin) are checked, and the counters reach
the capture statistics that ``flowtarget analyze`` summarises.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest

from services.capture import fastpath, sources
from services.capture.sources import CaptureFileError, FileSource, open_source

from tests.services.capture.test_service_evidence import udp_frame

REPO = Path(__file__).resolve().parents[3]

GOOD = [udp_frame(1000 + i, 53, b"q%d" % i) for i in range(4)]


def pcap_bytes(records: list[tuple[int, int, bytes]], snaplen: int = 65535) -> bytes:
    """records: (caplen, origlen, data) — caplen as written in the header, data as stored."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, 1)]
    for i, (caplen, origlen, data) in enumerate(records):
        out.append(struct.pack("<IIII", 1700000000 + i, 0, caplen, origlen) + data)
    return b"".join(out)


@pytest.fixture(params=["compiled", "python"])
def reader(request, monkeypatch):
    if request.param == "compiled":
        if not fastpath.COMPILED:
            pytest.skip("C extension not built")
        monkeypatch.setattr(sources, "pcap_records", fastpath._c.pcap_records)
    else:
        monkeypatch.setattr(sources, "pcap_records", fastpath.pcap_records_py)
    return request.param


def test_caplen_above_origlen_is_counted_and_trimmed(tmp_path, reader):
    a, b, c, d = GOOD
    liar = b + b"JUNK" * 5                        # 20 bytes more stored than the packet had
    p = tmp_path / "liar.pcap"
    p.write_bytes(pcap_bytes([(len(a), len(a), a), (len(liar), len(b), liar), (len(c), len(c), c), (len(d), len(d), d)]))
    src = FileSource(p)
    got = [f for _, f in src]
    assert got == [a, b, c, d]
    assert src.counters == {"caplen_over_origlen": 1} and src.errors == 0


def test_caplen_above_snaplen_is_counted_and_kept(tmp_path, reader):
    p = tmp_path / "snap.pcap"
    p.write_bytes(pcap_bytes([(len(f), len(f), f) for f in GOOD], snaplen=40))
    src = FileSource(p)
    got = [f for _, f in src]
    assert got == GOOD
    assert all(len(f) > 40 for f in GOOD)
    assert src.counters == {"caplen_over_snaplen": len(GOOD)} and src.errors == 0


def test_a_file_whose_every_record_is_above_its_snaplen_is_read_in_whole_batches(tmp_path, reader):
    """A file that says a snaplen of 1500 and holds longer records (a tool's default header, jumbo frames): each
    record is counted and kept, in batches as long as any other file's; it used to come one record a batch
    (one publishing turn per packet in a replay), five times slower."""
    frames = [udp_frame(2000 + i % 50, 53, b"x" * (1500 + i % 7)) for i in range(5000)]
    p = tmp_path / "jumbo.pcap"
    p.write_bytes(pcap_bytes([(len(f), len(f), f) for f in frames], snaplen=1500))
    src = FileSource(p)
    batches = [b for _dlt, b in src.batches(2048)]
    assert [len(b) for b in batches] == [2048, 2048, 904]
    assert [f for b in batches for _, f in b] == frames
    assert src.counters == {"caplen_over_snaplen": 5000} and src.errors == 0


def test_anomalous_record_cut_by_the_end_of_file_is_truncation(tmp_path, reader):
    a, b = GOOD[:2]
    data = pcap_bytes([(len(a), len(a), a), (len(b) + 100, len(b), b)])
    (tmp_path / "cut.pcap").write_bytes(data)
    src = FileSource(tmp_path / "cut.pcap")
    got = [f for _, f in src]
    assert got[0] == a and src.errors == 1 and "truncated" in src.error


def test_pcap_cut_mid_record_is_truncated(tmp_path, reader):
    data = pcap_bytes([(len(f), len(f), f) for f in GOOD])
    (tmp_path / "cut.pcap").write_bytes(data[:-10])
    src = FileSource(tmp_path / "cut.pcap")
    assert len(list(src)) == 4 and src.errors == 1 and "truncated" in src.error


def _pcapng(path: Path) -> bytes:
    with open(path, "wb") as fh:
        w = dpkt.pcapng.Writer(fh, linktype=1)
        for i, fr in enumerate(GOOD):
            w.writepkt(fr, ts=1700000000 + i)
    return path.read_bytes()


def test_pcapng_with_bad_byte_order_magic_is_not_a_capture_file(tmp_path):
    data = bytearray(_pcapng(tmp_path / "ok.pcapng"))
    data[8:12] = b"\x00\x11\x22\x33"
    p = tmp_path / "badbom.pcapng"
    p.write_bytes(bytes(data))
    with pytest.raises(CaptureFileError, match="not a capture file"):
        open_source(p)


def test_pcapng_caplen_above_origlen_is_counted(tmp_path):
    data = bytearray(_pcapng(tmp_path / "ok.pcapng"))
    # the first enhanced packet block: shrink its original length below the captured one
    epb = data.find(struct.pack("<I", 6), 28)
    olen_at = epb + 8 + 16
    caplen = struct.unpack_from("<I", data, epb + 8 + 12)[0]
    struct.pack_into("<I", data, olen_at, caplen - 5)
    p = tmp_path / "liar.pcapng"
    p.write_bytes(bytes(data))
    src = FileSource(p)
    got = [f for _, f in src]
    assert got[0] == GOOD[0][:-5] and got[1:] == GOOD[1:]
    assert src.counters == {"caplen_over_origlen": 1}


def test_analyze_reports_the_anomalies_and_the_bad_file(tmp_path):
    a, b, c, d = GOOD
    liar = b + b"JUNK"
    good = tmp_path / "liar.pcap"
    good.write_bytes(pcap_bytes([(len(a), len(a), a), (len(liar), len(b), liar), (len(c), len(c), c)]))
    data = bytearray(_pcapng(tmp_path / "x.pcapng"))
    data[8:12] = b"\x00\x11\x22\x33"
    bad = tmp_path / "badbom.pcapng"
    bad.write_bytes(bytes(data))
    p = subprocess.run([sys.executable, "-m", "flowtarget", "analyze", "--no-progress", str(good), str(bad)],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert "caplen_over_origlen=1" in p.stdout, p.stdout + p.stderr[-2000:]
    assert "not a capture file" in p.stderr and "file_truncated" not in p.stdout, p.stdout + p.stderr
