"""Progress within a file on long replays: bytes read of the total, packets/s, ETA (analyze / run --pcap)."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys

import dpkt

from flowtarget.cli import ProgressLine

FT = [sys.executable, "-m", "flowtarget"]


def test_progress_line_counts_finished_files_and_the_current_one(tmp_path):
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
    a.write_bytes(b"x" * 1_000_000)
    b.write_bytes(b"x" * 3_000_000)
    line = ProgressLine([str(a), str(b)])
    line.started -= 10.0                       # 10 s into the run
    line.file_done(1, 50_000)                  # a.pcap finished with 50,000 packets
    text = line.text({"source": "b.pcap", "file": 2, "files": 2, "bytes_read": 1_000_000,
                      "bytes_total": 3_000_000, "packets": 50_000}, line.started + 10.0)
    assert text.startswith("[2/2] b.pcap: 2 of 4 MB (50 %)"), text
    assert "10,000 packets/s" in text and "ETA 10 s" in text


def test_progress_line_sums_the_shards_of_a_sharded_replay(tmp_path):
    a = tmp_path / "a.pcap"
    a.write_bytes(b"x" * 2_000_000)
    line = ProgressLine([str(a)])
    line.started -= 10.0
    for shard, n in ((0, 30_000), (1, 20_000), (0, 40_000)):    # each shard reports its own packets
        text = line.text({"source": "a.pcap", "file": 1, "files": 1, "bytes_read": 1_000_000,
                          "bytes_total": 2_000_000, "packets": n, "shard": shard}, line.started + 10.0)
    assert "6,000 packets/s" in text, text     # 40,000 + 20,000 in 10 s
    line.file_done(1, 60_000)
    assert line.in_file == {}


def big_pcap(path, packets: int) -> None:
    with open(path, "wb") as fh:
        w = dpkt.pcap.Writer(fh, linktype=1)
        for i in range(packets):
            # a few long flows: the meter's cheapest case, so the replay is long in packets, short in time
            udp = struct.pack("!HHHH", 40000 + i % 8, 5000, 8 + 16, 0) + b"q" * 16
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                             b"\x0a\x00\x00\x01", b"\xc0\xa8\x00\x01") + udp
            w.writepkt(b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip, ts=1000.0 + i * 0.001)


def test_analyze_shows_progress_within_a_file(tmp_path):
    pcap = tmp_path / "long.pcap"
    big_pcap(pcap, 300_000)
    proc = subprocess.run([*FT, "analyze", str(pcap), "--progress"], capture_output=True, text=True, timeout=600,
                          env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = re.findall(r"\[1/1\] long\.pcap: ([\d,]+) of ([\d,]+) MB \((\d+) %\), ([\d,]+) packets/s, ETA (\d+) s",
                       proc.stderr)
    assert lines, proc.stderr[-2000:]          # at least one update before the file ended
    pct = [int(m[2]) for m in lines]
    assert pct == sorted(pct) and pct[0] < 100
    assert all(int(m[3].replace(",", "")) > 0 for m in lines)
