"""TCP segments held for reordering while a flow is sampled: no more bytes than the sample still takes.

Before, each direction held up to 7 out-of-order segments whole: 4,000 flows sent 8 segments of 7,000
bytes ahead of a gap held 52 KB per flow (200 MB), whatever the sample's 4 KB budget; a lossy mirror
port or a sender that never fills its gaps made the probe hold what it was sent until the flow's idle
timeout.
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.capture import flows
from services.capture.flows import FlowMeter, ListSink, _Dir, _seq_payload_cut
from shared.settings import CaptureSettings


def frame(i: int, seq: int, flags: int, payload: bytes = b"") -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 20000 + i % 40000, 80, seq & 0xFFFFFFFF, 0, 5 << 4, flags, 65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, struct.pack("!I", 0x0A000000 + i),
                     b"\xc0\xa8\x00\x01")
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp


def held(d: _Dir) -> int:
    return sum(map(len, d.ooo.values())) if d.ooo else 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 70_000), st.integers(1, 9000)), min_size=1, max_size=30),
       st.integers(1, 8192))
def test_a_direction_never_holds_more_than_its_room(segs, room):
    d = _Dir()
    d.nxt = 0
    for off, n in segs:
        _seq_payload_cut(d, off, bytes(n), room)
        assert held(d) <= room


@pytest.mark.parametrize("compiled", [True, False])
def test_flows_sent_segments_ahead_of_a_gap_hold_no_more_than_their_sample(compiled, monkeypatch):
    if not compiled:
        monkeypatch.setattr(flows, "_run", None)
    s = CaptureSettings(verdict_wait_s=0, evidence_packets=0)
    m = FlowMeter(s, ListSink(), source="t")
    m.set_source("t", 1)
    m.defer_samples = True
    n, size = 500, 7000
    ts = 1.7e9
    for k in range(9):
        recs = []
        for i in range(n):
            ts += 1e-6
            # a SYN, then segments one segment ahead of what is expected: none ever fills the gap
            recs.append((ts, frame(i, 1000, 0x02) if k == 0 else frame(i, 1001 + size * (k + 1), 0x18, bytes([k]) * size)))
        m.process_batch(recs, 1)
        m.flush_samples()
    dirs = [f.sd for f, fwd in m.table.values() if fwd and f.sd is not None]
    assert len(dirs) == n
    assert all(held(d) <= s.sample_max_bytes - d.nbytes for d in dirs)
    assert all(d.nbytes <= s.sample_max_bytes for d in dirs)
    # the gap was given up: the sample holds the data after it, from the earliest held segment on
    samples = {x.flow_id: x for x in m.sink.samples}
    assert len(samples) == n
    assert all(b"".join(x.src_payloads)[:1] == b"\x01" for x in samples.values())


def test_reordered_segments_still_give_the_stream_s_start():
    """Segments swapped in pairs (a common reordering) and one held back by three: the sample is the
    stream's first sample_max_bytes, as before the bound."""
    s = CaptureSettings(verdict_wait_s=0, evidence_packets=0)
    m = FlowMeter(s, ListSink(), source="t")
    m.set_source("t", 1)
    rnd = random.Random(7)
    stream = bytes(rnd.randrange(256) for _ in range(6000))
    segs = [(1001 + o, stream[o:o + 600]) for o in range(0, len(stream), 600)]
    order = [1, 0, 3, 2, 5, 4, 7, 6, 9, 8]
    late = order.pop(0)
    order.insert(3, late)
    recs = [(1.7e9, frame(1, 1000, 0x02))]
    recs += [(1.7e9 + 0.001 * (j + 1), frame(1, segs[k][0], 0x18, segs[k][1])) for j, k in enumerate(order)]
    m.process_batch(recs, 1)
    m.flush_samples()
    got = b"".join(m.sink.samples[-1].src_payloads)
    assert got == stream[:s.sample_max_bytes]
