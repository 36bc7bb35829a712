"""The compiled fast path (services/capture/_fastpath.c) and its pure-Python twins give the same results."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.capture import fastpath, flows
from services.capture.decode import KIND_IP, decode
from services.capture.flows import FlowMeter, ListSink
from services.capture.sources import MAX_RECORD, FileSource
from shared.settings import CaptureSettings

ROOT = Path(__file__).resolve().parents[3]
ETH = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"


def _ip(l4: bytes, proto: int, frag: int = 0) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, frag, 64, proto, 0,
                       b"\x0a\x00\x00\x01", b"\xc0\xa8\x01\x02") + l4


TEMPLATES = [
    ETH + _ip(struct.pack("!HHIIBBHHH", 40000, 443, 0xFFFFFFF0, 0x80000001, 0x50, 0x18, 1000, 0, 0) + b"\x16\x03" * 9, 6),
    ETH + _ip(struct.pack("!HHIIBBHHH", 40000, 80, 7, 0, 0x80, 0x02, 1000, 0, 0) + b"\x02\x04\x05\xb4" + b"\x00" * 8, 6),
    ETH + _ip(struct.pack("!HHHH", 5353, 53, 20, 0) + b"\x00" * 12, 17),
    ETH + _ip(struct.pack("!HHHH", 5555, 4789, 16, 0) + b"\x08" * 8, 17),
    ETH + _ip(struct.pack("!HHHH", 1, 2, 8, 0), 17, frag=0x2000),
    ETH + _ip(b"\x08\x00\x00\x00" * 3, 1),
]


def test_the_extension_is_built():
    """setup.py builds it wherever a C compiler is (scripts/setup.sh installs gcc); FT_PURE_PYTHON=1 opts out."""
    if os.environ.get("FT_PURE_PYTHON", "").lower() in ("1", "true", "yes"):
        assert not fastpath.COMPILED and fastpath.eth4 is fastpath.eth4_py
    else:
        assert fastpath.COMPILED, "services/capture/_fastpath.c was not built: pip install -e . with gcc"
        assert fastpath.eth4 is not fastpath.eth4_py


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(TEMPLATES), st.data())
def test_eth4_twins_agree_on_cut_and_mutated_frames(frame, data):
    cut = data.draw(st.integers(0, len(frame) + 8))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(frame) - 1), st.integers(0, 255)), max_size=5))
    b = bytearray(frame + b"\xaa" * 8)[:cut]
    for i, v in flips:
        if i < len(b):
            b[i] = v
    m = bytes(b)
    fast, slow = fastpath.eth4(m), fastpath.eth4_py(m)
    assert fast == slow
    if fast is not None:
        # it only takes what the general decoder decodes the same way
        r = decode(m, 1)
        assert r[0] == KIND_IP
        key, proto, nbytes, po, pl, flags, seq, ack, sp, dp = fast
        assert key == bytes((proto,)) + r[3] + r[4] + struct.pack("!HH", sp, dp)
        assert (r[2], r[5], r[6], r[7], r[10], r[11], r[12]) == (proto, sp, dp, nbytes, flags, seq, ack)
        if pl > 0:
            assert (po, pl) == (r[8], r[9])


def test_eth4_refuses_what_the_fast_path_must_not_take():
    assert fastpath.eth4(TEMPLATES[0]) is not None and fastpath.eth4(TEMPLATES[2]) is not None
    for frame in TEMPLATES[3:]:   # VXLAN port, fragment, ICMP
        assert fastpath.eth4(frame) is None and fastpath.eth4_py(frame) is None
    if fastpath.COMPILED:
        with pytest.raises(TypeError):
            fastpath.eth4(bytearray(TEMPLATES[0]))   # type: ignore[arg-type]


def _records(endian: str, items: list[tuple[int, int, bytes]]) -> bytes:
    return b"".join(struct.pack(endian + "IIII", sec, frac, len(p), len(p)) + p for sec, frac, p in items)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["<", ">"]), st.sampled_from([1e-6, 1e-9]),
       st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=40)), max_size=12),
       st.integers(0, 400), st.integers(0, 20), st.integers(0, 30), st.booleans())
def test_pcap_records_twins_agree(endian, unit, items, cut, pos, limit, corrupt):
    buf = _records(endian, items)
    if corrupt and len(buf) >= 16:
        buf = buf[:8] + struct.pack(endian + "I", 0xFFFFFFF0) + buf[12:]
    buf = buf[:cut] if cut < len(buf) else buf
    start = min(pos, len(buf))
    a = fastpath.pcap_records(buf, start, endian == ">", unit, limit, MAX_RECORD)
    b = fastpath.pcap_records_py(buf, start, endian == ">", unit, limit, MAX_RECORD)
    assert a == b
    recs, new_pos, bad, cut, _o, _s = a
    assert len(recs) <= limit and start <= new_pos <= len(buf)
    if corrupt and start == 0 and len(buf) >= 16 and limit:
        assert recs == [] and bad == 0xFFFFFFF0


def _meter_output(path: Path, eth4) -> tuple:
    old = flows._eth4
    flows._eth4 = eth4
    try:
        sink = ListSink()
        m = FlowMeter(CaptureSettings(verdict_wait_s=0), sink, probe="t")
        m._prefix = "fixed"
        src = FileSource(path)
        m.set_source(src.name, src.datalink)
        for ts, frame in src:
            m.process(ts, frame)
        m.finish()
    finally:
        flows._eth4 = old
    strip = {"timestamp"}
    return ([r.model_dump(exclude=strip) for r in sink.flows], [s.model_dump() for s in sink.samples],
            [p.model_dump() for p in sink.packets], m.stats())


def test_meter_gives_the_same_records_with_either_twin():
    sample = ROOT / "samples" / "sample.pcap"
    assert _meter_output(sample, fastpath.eth4) == _meter_output(sample, fastpath.eth4_py)


@pytest.mark.parametrize("cls", [fastpath.Collector, fastpath.CollectorPy])
def test_collector_gathers_what_pcap_dispatch_hands_it(cls):
    """pypcap's dispatch() over a real capture file, with the compiled callback and its twin."""
    import pcap

    c = cls()
    p = pcap.pcap(name=str(ROOT / "samples" / "sample.pcap"))
    got = []
    while p.dispatch(40, c) > 0:
        part = c.take()
        assert 0 < len(part) <= 40
        got += part
    want = list(FileSource(ROOT / "samples" / "sample.pcap"))
    assert [f for _, f in got] == [f for _, f in want]
    assert all(abs(a - b) < 1e-6 for (a, _), (b, _) in zip(got, want))
    assert c.take() == []
    c(1.5, bytearray(b"xy"), "user arg")      # pypcap may pass extra arguments; frames become bytes
    assert c.take() == [(1.5, b"xy")]
    with pytest.raises(TypeError):
        c(1.0)


def test_eth4_leaves_every_udp_tunnel_port_to_the_decoder():
    """The C file lists the tunnel ports decode() decapsulates: the same list, or inner flows go unseen."""
    from services.capture.decode import _UDP_TUNNEL_PORTS

    for port in sorted(_UDP_TUNNEL_PORTS):
        for sport, dport in ((port, 40000), (40000, port)):
            frame = ETH + _ip(struct.pack("!HHHH", sport, dport, 16, 0) + b"\x00" * 8, 17)
            assert fastpath.eth4(frame) is None and fastpath.eth4_py(frame) is None, port
    assert fastpath.eth4(ETH + _ip(struct.pack("!HHHH", 4788, 40000, 16, 0) + b"\x00" * 8, 17)) is not None
