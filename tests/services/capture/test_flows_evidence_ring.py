"""Evidence rings (flows.ring_add and its compiled twin): a flow's last packets, bounded in packets and bytes.

A ring holds its flow's last 32-64 frames; without a bound in bytes, 10,000 flows of full-size frames
held about 1 GB (100 KB per flow).  Each ring's frames now stay within an equal share of
``evidence_memory_mb``.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.capture import flows
from services.capture.flows import EV_HEAD, HOT_RINGS, FlowMeter, ListSink, ring_add, ring_packets
from shared.settings import CaptureSettings

_meter = pytest.importorskip("services.capture._meter")


def frame(i: int, k: int, size: int) -> bytes:
    """Flow i's k-th TCP frame (Ethernet, IPv4) with a payload of ``size`` bytes."""
    payload = bytes([k & 0xFF]) * size
    tcp = struct.pack("!HHIIBBHHH", 20000 + i % 40000, 443, 1000 + k * size, 0, 5 << 4, 0x10, 65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, struct.pack("!I", 0x0A000000 + i),
                     b"\xc0\xa8\x00\x01")
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp


packets = st.lists(st.tuples(st.floats(0, 2e9, allow_nan=False), st.binary(max_size=700)), min_size=1, max_size=60)


def ring_of(f: flows.Flow) -> list[tuple[float, bytes]]:
    return ring_packets(f.ev)


@settings(max_examples=200, deadline=None)
@given(packets, st.integers(1, 8), st.integers(0, 8), st.integers(1, 3000))
def test_compiled_ring_is_the_python_one_and_holds_the_last_packets(pk, keep, extra, cap):
    trim = keep + extra
    a, b = flows.Flow(), flows.Flow()
    a.ev, b.ev = bytearray(), bytearray()
    for n, (ts, fr) in enumerate(pk, 1):
        ring_add(a, ts, fr, trim, keep, cap)
        _meter.ring_add(b, ts, fr, trim, keep, cap)
        assert a.ev == b.ev and a.ev_size == b.ev_size
        got = ring_of(a)
        assert a.ev_size == len(got)
        assert len(a.ev) == sum(EV_HEAD + len(f) for _t, f in got)
        # a suffix of what went in, each frame cut to cap
        assert got == [(t, f[:cap]) for t, f in pk[n - len(got):n]]
        assert 1 <= len(got) <= trim
        # the last keep packets stay while their frames take at most half of cap
        last = pk[max(0, n - keep):n]
        assert len(got) >= len(last) or sum(len(f[:cap]) for _t, f in last) > cap // 2
        assert len(got) == 1 or sum(len(f) for _t, f in got) <= cap
        assert ring_packets(a.ev, 2) == got[-2:]


def test_a_ring_keeps_its_flow_s_last_packets_when_they_are_small():
    """32 small packets fit a ring's default share: evidence is still the flow's last 32 packets."""
    m = FlowMeter(CaptureSettings(verdict_wait_s=0), ListSink(), source="t")
    m.set_source("t", 1)
    frames = [(1.7e9 + k, frame(1, k, 100)) for k in range(100)]
    m.process_batch(frames, 1)
    (f, _fwd), = {id(v[0]): v for v in m.table.values()}.values()
    assert m.evidence(f.flow_id) == frames[-32:]


@pytest.mark.parametrize("compiled", [True, False])
def test_the_rings_of_many_bulk_flows_stay_within_their_shares(compiled, monkeypatch):
    """3,000 flows of 40 full-size frames: every ring within its share of evidence_memory_mb (12 KB of the
    default 128 MB), holding its flow's newest packets whole and in order (the old lists held 32-64 frame
    objects per flow: about 200 MB here)."""
    if not compiled:
        monkeypatch.setattr(flows, "_run", None)
    m = FlowMeter(CaptureSettings(verdict_wait_s=0), ListSink(), source="t")
    m.set_source("t", 1)
    share = 128 * 2**20 // (m.evidence_max_flows + HOT_RINGS + m.recent_evidence_max)
    assert m._ev_cap == share
    nflows, npk, size = 3000, 40, 1454
    for k in range(npk):
        m.process_batch([(1.7e9 + k + i * 1e-6, frame(i, k, 1400)) for i in range(nflows)], 1)
        m.flush_samples()
    rings = {id(f): f for f, _fwd in m.table.values()}
    assert len(rings) == nflows
    assert all(len(f.ev) - EV_HEAD * f.ev_size <= share for f in rings.values())
    for f in list(rings.values())[::500]:
        got = m.evidence(f.flow_id)
        assert (share // 2) // size <= len(got) <= share // size
        assert [fr[-1] for _ts, fr in got] == list(range(npk - len(got), npk))   # the newest, in order
        assert all(len(fr) == size for _ts, fr in got)                           # whole


def test_the_least_evidence_memory_cuts_frames_to_each_ring_s_share():
    m = FlowMeter(CaptureSettings(verdict_wait_s=0, evidence_memory_mb=1), ListSink(), source="t")
    m.set_source("t", 1)
    assert m._ev_cap == flows.RING_MIN_BYTES
    m.process_batch([(1.7e9 + k, frame(1, k, 1400)) for k in range(5)], 1)
    (f, _fwd), = {id(v[0]): v for v in m.table.values()}.values()
    got = m.evidence(f.flow_id)
    assert got == [(1.7e9 + 4, frame(1, 4, 1400)[:flows.RING_MIN_BYTES])]
