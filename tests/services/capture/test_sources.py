"""Capture file sources (pcap, pcapng, gzip, damage) and the corpus flow-key check."""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest

from services.capture.sources import CaptureFileError, FileSource

REPO = Path(__file__).resolve().parents[3]
CORPUS = (REPO / ".." / "shared" / "corpus" / "ndpi" / "dev").resolve()
SCORER = (REPO / ".." / "shared" / "tools" / "score_ndpi.py").resolve()

FRAMES = [(1700000000.25 + i, b"\x02" * 12 + b"\x08\x00" + bytes([i]) * (20 + i)) for i in range(5)]


def write_pcap(path: Path, frames=FRAMES, linktype=1, nano=False) -> Path:
    with open(path, "wb") as fh:
        w = dpkt.pcap.Writer(fh, linktype=linktype, nano=nano)
        for ts, fr in frames:
            w.writepkt(fr, ts=ts)
    return path


def test_pcap_roundtrip(tmp_path):
    src = FileSource(write_pcap(tmp_path / "a.cap"))
    assert src.datalink == 1 and src.format == "pcap"
    got = list(src)
    assert [f for _, f in got] == [f for _, f in FRAMES]
    assert all(abs(a[0] - b[0]) < 1e-6 for a, b in zip(got, FRAMES, strict=True))
    assert src.errors == 0 and src.packets == 5


def test_a_plain_file_is_mapped_and_gives_what_reading_gives(tmp_path, monkeypatch):
    """A plain pcap or pcapng file is parsed from a read-only map of it (no read() copy): the same records
    as read in chunks, progress in bytes parsed, pages given back as the replay goes, the map closed."""
    import mmap

    from services.capture import sources

    frames = [(1700000000.0 + i / 7, bytes([i % 256]) * 12 + b"\x08\x00" + bytes([i % 251]) * (40 + i % 900))
              for i in range(6000)]
    pcap = write_pcap(tmp_path / "big.pcap", frames)
    monkeypatch.setattr(sources, "MAP_RELEASE", 64 * 1024)

    def records(path):
        src = FileSource(path)
        got = [r for _dlt, batch in src.batches(512) for r in batch]
        return src, got

    src, mapped = records(pcap)
    assert src._mm is not None and src.progress() == (pcap.stat().st_size, pcap.stat().st_size)
    assert src._released > 0 and src._released % mmap.PAGESIZE == 0   # pages given back on the way
    src.close()
    assert src._mm.closed

    real_mmap = mmap.mmap
    monkeypatch.setattr(sources.mmap, "mmap", lambda *a, **k: (_ for _ in ()).throw(OSError("no map here")))
    src2, read = records(pcap)
    assert src2._mm is None and read == mapped and len(mapped) == 6000
    assert [f for _, f in mapped] == [f for _, f in frames]
    monkeypatch.setattr(sources.mmap, "mmap", real_mmap)

    # the same for pcapng (blocks parsed from the map), and a truncated file still says where it stops
    ng = tmp_path / "big.pcapng"
    with open(ng, "wb") as fh:
        w = dpkt.pcapng.Writer(fh)
        for ts, fr in frames[:2000]:
            w.writepkt(fr, ts=ts)
    src3 = FileSource(ng)
    assert src3._mm is not None and [f for _, f in src3] == [f for _, f in frames[:2000]]
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(pcap.read_bytes()[:-30])
    src4, got = records(cut)
    assert src4._mm is not None and len(got) == 6000 and src4.errors == 1 and "truncated" in src4.error


def test_nanosecond_pcap_and_other_linktype(tmp_path):
    src = FileSource(write_pcap(tmp_path / "n.pcap", nano=True, linktype=113))
    assert src.datalink == 113
    assert abs(next(iter(src))[0] - FRAMES[0][0]) < 1e-6


def test_pcapng_and_gzip_detected_by_magic(tmp_path):
    p = tmp_path / "capture.pcap"  # a pcapng file with a misleading name
    with open(p, "wb") as fh:
        w = dpkt.pcapng.Writer(fh, linktype=1)
        for ts, fr in FRAMES:
            w.writepkt(fr, ts=ts)
    src = FileSource(p)
    assert src.format == "pcapng" and src.datalink == 1
    got = list(src.iter_dlt())
    assert [f for _, f, _ in got] == [f for _, f in FRAMES] and {d for *_, d in got} == {1}
    assert abs(got[2][0] - FRAMES[2][0]) < 1e-5
    gz = tmp_path / "x.bin"
    gz.write_bytes(gzip.compress(write_pcap(tmp_path / "b.pcap").read_bytes()))
    assert [f for _, f in FileSource(gz)] == [f for _, f in FRAMES]


def test_truncated_file_yields_what_it_can_and_reports(tmp_path):
    data = write_pcap(tmp_path / "t.pcap").read_bytes()
    for cut, n_full in ((len(data) - 10, 4), (24 + 16 + len(FRAMES[0][1]) + 7, 1)):
        p = tmp_path / f"cut{cut}.pcap"
        p.write_bytes(data[:cut])
        src = FileSource(p)
        got = list(src)
        assert [f for _, f in got[:n_full]] == [f for _, f in FRAMES[:n_full]]
        assert src.errors == 1 and "truncated" in src.error


def test_corrupt_record_length_stops_with_error(tmp_path):
    data = bytearray(write_pcap(tmp_path / "c.pcap").read_bytes())
    off = 24 + 16 + len(FRAMES[0][1])
    struct.pack_into("<I", data, off + 8, 0x7FFFFFFF)
    p = tmp_path / "corrupt.pcap"
    p.write_bytes(bytes(data))
    src = FileSource(p)
    assert len(list(src)) == 1 and src.errors == 1 and "corrupt" in src.error
    # where: the damaged record's first byte, so that it can be found (dd, editcap) or cut off
    assert src.error.endswith(f"corrupt record length {0x7FFFFFFF} after 1 packets, at byte {off}")


def test_a_damaged_file_says_at_which_byte(tmp_path):
    """Far into a file (past the reader's buffer refills) and in a sharded replay, whose packet count is
    the shard's own: the message says so, and gives the damaged record's offset in the file."""
    from services.capture.sources import CHUNK

    frame = FRAMES[0][1]
    n = 3 * CHUNK // (16 + len(frame)) + 5
    data = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for i in range(n):
        data += struct.pack("<IIII", 1000 + i, 0, len(frame), len(frame)) + frame
    bad = len(data)
    data += struct.pack("<IIII", 2000, 0, 0x7FFFFFFF, 60) + frame
    p = tmp_path / "long.pcap"
    p.write_bytes(bytes(data))
    src = FileSource(p)
    assert len(list(src)) == n and src.error.endswith(f"after {n} packets, at byte {bad}")
    src = FileSource(p, shard=1, shards=2)
    got = len(list(src))
    assert got in (0, n) and src.error.endswith(f"after {got} of this shard's packets, at byte {bad}")
    p.write_bytes(bytes(data[:bad - 10]))           # the file ends inside the last whole record
    src = FileSource(p)
    assert len(list(src)) == n and src.error.endswith(f"truncated packet data after {n - 1} packets, at byte "
                                                      f"{bad - 16 - len(frame)}")


def test_not_a_capture_raises_clear_error(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello world, not a pcap\n")
    with pytest.raises(CaptureFileError, match=r"notes.txt: not a pcap/pcapng file"):
        FileSource(p)
    with pytest.raises(CaptureFileError, match="missing.pcap"):
        FileSource(tmp_path / "missing.pcap")
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    with pytest.raises(CaptureFileError, match="not a pcap/pcapng file"):
        FileSource(empty)


@pytest.mark.corpus
@pytest.mark.slow
def test_corpus_flow_keys_match_ndpi(tmp_path):
    """bench/dump_samples.py over the whole corpus: >= 99% of nDPI's flows matched."""
    if not CORPUS.is_dir() or not SCORER.is_file():
        pytest.skip(f"nDPI corpus/scorer not found beside the repo ({CORPUS})")
    flows = tmp_path / "flows.jsonl"
    pcaps = sorted(str(p) for p in CORPUS.iterdir() if not p.name.endswith(".out"))
    subprocess.run([sys.executable, str(REPO / "bench" / "dump_samples.py"), *pcaps, "--flows", str(flows)],
                   check=True, capture_output=True, timeout=300)
    out = subprocess.run([sys.executable, str(SCORER), "--expected", str(CORPUS), "--flows", str(flows), "--json"],
                         check=True, capture_output=True, text=True, timeout=300).stdout
    res = json.loads(out.splitlines()[0])
    assert res["matched_pct"] >= 99.0, res
    assert res["bad_json_lines"] == 0
