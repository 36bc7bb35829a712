"""Evidence: per-flow rings of recent packets, pcap writing, timed filtered recordings."""

from __future__ import annotations

import struct

from services.capture.evidence import evidence_name
from services.capture.flows import FlowMeter, ListSink
from services.capture.sources import FileSource
from shared.settings import CaptureSettings

ETH = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"


def udp(src: bytes, sport: int, dst: bytes, dport: int, payload: bytes) -> bytes:
    u = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return ETH + struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(u), 1, 0, 64, 17, 0, src, dst) + u


A, B, C = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02", b"\x0a\x00\x00\x03"


def test_ring_keeps_recent_packets_and_writes_pcap(tmp_path):
    m = FlowMeter(CaptureSettings(verdict_wait_s=0, evidence_packets=4, evidence_dir=tmp_path), ListSink(), source="eth9")
    frames = [udp(A, 1000, B, 2000, b"p%02d" % i) for i in range(10)]
    for i, f in enumerate(frames):
        m.process(1_700_000_000.0 + i, f)
        m.process(1_700_000_000.5 + i, udp(A, 1001, C, 2001, b"other"))
    fid = m.sink.flows[0].flow_id
    ring = m.evidence(fid)
    assert [f for _, f in ring] == frames[-4:]
    assert [ts for ts, _ in ring] == [1_700_000_006.0, 1_700_000_007.0, 1_700_000_008.0, 1_700_000_009.0]
    path = m.write_evidence(fid)
    assert path is not None and path.startswith(str(tmp_path))
    assert "eth9_10.0.0.1_20231114-" in path and path.endswith(".pcap")
    assert [f for _, f in FileSource(path)] == frames[-4:]
    # still available just after the flow ended
    m.finish()
    assert m.write_evidence(fid) != path  # a second file, never overwritten
    assert m.write_evidence("no-such-flow") is None


def test_recording_with_filter_and_duration(tmp_path):
    m = FlowMeter(CaptureSettings(verdict_wait_s=0), ListSink(), source="eth9")
    rec = m.start_recording("udp port 2000", 5.0, str(tmp_path))
    for i in range(10):
        m.process(100.0 + i, udp(A, 1000, B, 2000, b"x"))
        m.process(100.0 + i, udp(A, 1000, C, 3000, b"y"))
    done = m.finished_recordings(110.0)
    assert done == [rec] and m.recorders == []
    got = list(FileSource(rec.path))
    assert len(got) == 6 and all(f.endswith(b"x") for _, f in got)  # 100..105 s, port 2000 only


def test_evidence_name_is_safe():
    n = evidence_name("eth0/../x", "2001:db8::1", 0.0, "flow-1")
    assert n == "eth0-..-x_2001-db8-1_19700101-000000_flow-1.pcap"
    assert "/" not in n


def test_recording_timestamps_round_into_the_next_second(tmp_path):
    """A timestamp whose fraction rounds up to a whole second is written as the next second, not as
    0 µs of the same one (a second early), as the packet store and evidence files write it."""
    m = FlowMeter(CaptureSettings(verdict_wait_s=0), ListSink(), source="eth9")
    rec = m.start_recording("", 5.0, str(tmp_path))
    stamps = [100.0, 100.9999996, 101.25, 101.9999994]
    for ts in stamps:
        m.process(ts, udp(A, 1000, B, 2000, b"x"))
    rec.close()
    raw = open(rec.path, "rb").read()[24:]
    got = []
    while raw:
        sec, usec, caplen, _olen = struct.unpack("<IIII", raw[:16])
        got.append((sec, usec))
        raw = raw[16 + caplen:]
    assert got == [(100, 0), (101, 0), (101, 250000), (101, 999999)]
