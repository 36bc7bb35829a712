"""Fuzz the decoder and the meter: truncated, mutated and random frames never raise; bad counts are exact."""

from __future__ import annotations

import struct

import dpkt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.capture.decode import KIND_BAD, KIND_IP, _ip4_decode, decode
from services.capture.flows import FlowMeter, ListSink
from shared.settings import CaptureSettings

A = b"\x0a\x00\x00\x01"
B = b"\x0a\x00\x00\x02"
ETH = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01"


def _ip(l4: bytes, proto: int, src: bytes = A, dst: bytes = B) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0, src, dst) + l4


def _tcp(payload: bytes = b"hello world") -> bytes:
    return struct.pack("!HHIIBBHHH", 1234, 443, 1, 0, 0x50, 0x18, 1000, 0, 0) + payload


def _udp(payload: bytes = b"\x00" * 12, sport: int = 5353, dport: int = 53) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


INNER = _ip(_tcp(), 6, b"\xc0\xa8\x00\x01", b"\xc0\xa8\x00\x02")
TEMPLATES = [
    ETH + b"\x08\x00" + _ip(_tcp(), 6),
    ETH + b"\x08\x00" + _ip(_udp(), 17),
    ETH + b"\x81\x00\x00\x05\x08\x00" + _ip(_udp(), 17),
    ETH + b"\x88\xa8\x00\x05\x81\x00\x00\x06\x08\x00" + _ip(_tcp(), 6),
    ETH + b"\x86\xdd" + bytes(dpkt.ip6.IP6(src=b"\x20" + b"\x00" * 15, dst=b"\x20" + b"\x01" * 15, nxt=17, hlim=1,
                                              plen=20, data=dpkt.udp.UDP(sport=1, dport=2, ulen=20, data=b"x" * 12))),
    ETH + b"\x08\x00" + _ip(struct.pack("!HH", 0, 0x0800) + INNER, 47),
    ETH + b"\x08\x00" + _ip(_udp(struct.pack("!II", 0x08000000, 0x100) + ETH + b"\x08\x00" + INNER, 5555, 4789), 17),
    ETH + b"\x08\x00" + _ip(_udp(struct.pack("!BBHI", 0x30, 0xFF, len(INNER), 7) + INNER, 2152, 2152), 17),
    ETH + b"\x88\x47" + struct.pack("!I", (100 << 12) | 0x100 | 64) + _ip(_udp(), 17),
    ETH + b"\x88\x64" + struct.pack("!BBHHH", 0x11, 0, 1, 42, 0x0021) + _ip(_udp(), 17),
    ETH + b"\x08\x06" + bytes(dpkt.arp.ARP(sha=b"\x02" * 6, spa=A, tha=b"\x00" * 6, tpa=B)),
]
DLTS = [0, 1, 9, 12, 14, 101, 104, 105, 108, 113, 127, 163, 192, 228, 229, 276, 147, 65535]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), st.sampled_from(DLTS))
def test_random_bytes_never_raise(data, dlt):
    r = decode(data, dlt)
    assert isinstance(r, tuple) and r[0] in (0, 1, 2, 3, 4)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(TEMPLATES), st.data())
def test_truncated_and_mutated_frames_never_raise(frame, data):
    cut = data.draw(st.integers(0, len(frame)))
    r = decode(frame[:cut], 1)
    assert r[0] in (0, 1, 2, 3, 4)
    if r[0] == KIND_IP:
        poff, plen = r[8], r[9]
        assert 0 <= plen and poff + plen <= cut
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(frame) - 1), st.integers(0, 255)), max_size=6))
    b = bytearray(frame)
    for i, v in flips:
        b[i] = v
    m = bytes(b)
    r2 = decode(m, 1)
    assert r2[0] in (0, 1, 2, 3, 4)
    if m[12:14] == b"\x08\x00":
        # the Ethernet/IPv4 fast path and the general decoder agree
        assert r2 == _ip4_decode(m, 14, 0, (), 0, "", 0)


# radiotap (version 0, length 12, present: TSFT) + an 802.11 QoS data frame to the AP + LLC/SNAP
WIFI = (struct.pack("<BBHIQ", 0, 0, 16, 1, 7)[:16]
        + b"\x88\x01\x00\x00" + b"\x02" * 18 + b"\x10\x00" + b"\x00\x00"
        + b"\xaa\xaa\x03\x00\x00\x00\x08\x00" + _ip(_udp(), 17))


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_truncated_and_mutated_80211_frames_never_raise(data):
    assert decode(WIFI, 127)[0] == KIND_IP
    cut = data.draw(st.integers(0, len(WIFI)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(WIFI) - 1), st.integers(0, 255)), max_size=6))
    b = bytearray(WIFI[:cut])
    for i, v in flips:
        if i < len(b):
            b[i] = v
    for dlt, frame in ((127, bytes(b)), (105, bytes(b[16:])), (192, struct.pack("<BBHI", 0, 0, 8, 127) + bytes(b))):
        r = decode(frame, dlt)
        assert r[0] in (0, 1, 2, 3, 4)
        if r[0] == KIND_IP:
            assert 0 <= r[9] and r[8] + r[9] <= len(frame)


def _category(cut: int, l4_hdr: int) -> str | None:
    """What a cut of the plain Ethernet/IPv4 template at ``cut`` bytes must be counted as."""
    if cut < 14:
        return "truncated_l2"
    if cut < 34:
        return "truncated_ip"
    if cut < 34 + l4_hdr:
        return "truncated_l4"
    return None


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 1]), st.integers(0, 80)), min_size=1, max_size=60))
def test_meter_bad_packet_counts_are_exact(cuts):
    templates = [(TEMPLATES[0], 20), (TEMPLATES[1], 8)]
    meter = FlowMeter(CaptureSettings(verdict_wait_s=0), ListSink(), probe="fuzz")
    want: dict[str, int] = {}
    good = 0
    for i, (which, cut) in enumerate(cuts):
        frame, l4 = templates[which]
        meter.process(1000.0 + i * 0.001, frame[:cut])
        cat = _category(min(cut, len(frame)), l4)
        if cat:
            want[cat] = want.get(cat, 0) + 1
        else:
            good += 1
    stats = meter.stats()
    assert stats["bad_packets"] == sum(want.values())
    for cat, n in want.items():
        assert stats["counters"][cat] == n
    assert stats["packets"] == len(cuts)
    meter.finish()
    metered = sum(r.src2dst_packets + r.dst2src_packets for r in meter.sink.flows if r.phase == "end")
    assert metered == good


def test_every_template_decodes():
    for t in TEMPLATES:
        assert decode(t, 1)[0] in (KIND_IP, 1), t.hex()
    assert decode(TEMPLATES[0][:20], 1)[0] == KIND_BAD


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(TEMPLATES + [b""]), st.binary(max_size=80),
                          st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=4),
                          st.sampled_from([1, 1, 1, 113, 101, 0])), min_size=1, max_size=40))
def test_meter_never_raises_on_mutated_traffic(items):
    """Mutated templates and random tails through the whole meter (samples, DNS/ARP events, evidence)."""
    meter = FlowMeter(CaptureSettings(verdict_wait_s=0, sample_max_packets=2), ListSink(), probe="fuzz")
    for i, (tmpl, tail, flips, dlt) in enumerate(items):
        b = bytearray(tmpl + tail)
        for pos, v in flips:
            if pos < len(b):
                b[pos] = v
        meter.process(1.0 + i * 0.01, bytes(b), dlt)
    meter.tick(10_000.0)
    meter.finish()
    st_ = meter.stats()
    assert st_["packets"] == len(items) and st_["flows_active"] == 0
    for ev in meter.sink.flows + meter.sink.samples + meter.sink.packets:
        type(ev).model_validate_json(ev.model_dump_json())  # every event it built is a valid event


# --- structured fuzz (issue 13): valid outer headers, hostile inner bytes, every path of the decoder

import contextlib  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402

SCALE = float(os.environ.get("FT_FUZZ_SCALE", "1"))   # more examples for a deeper local run (CI: 1)
ETHERTYPES = [0x0800, 0x86DD, 0x0806, 0x8100, 0x88A8, 0x9100, 0x8847, 0x8848, 0x8864, 0x8863, 0x88CC, 0x0000,
              0x05DC, 0x22F0, 0xFFFF]
IP_PROTOS = [0, 1, 2, 4, 6, 17, 41, 43, 44, 47, 50, 51, 58, 59, 60, 132, 135, 139, 255]
UDP_PORTS = [53, 67, 123, 2152, 4789, 5353, 6081, 8472, 4754, 37008, 5247, 1, 65535]


@contextlib.contextmanager
def _deadline(seconds: int = 5):
    def boom(*_a):
        raise TimeoutError(f"decode did not answer within {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _check(frame: bytes, dlt: int = 1) -> None:
    with _deadline():
        r = decode(frame, dlt)
    assert isinstance(r, tuple) and r[0] in (0, 1, 2, 3, 4)
    if r[0] == KIND_IP:
        poff, plen = r[8], r[9]
        assert 0 <= poff and 0 <= plen and poff + plen <= len(frame)


@settings(max_examples=int(400 * SCALE), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(ETHERTYPES), st.binary(max_size=1500))
def test_any_ethertype_with_hostile_rest(et, rest):
    _check(ETH + struct.pack("!H", et) + rest)


@settings(max_examples=int(400 * SCALE), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(IP_PROTOS), st.integers(0, 0xFFFF), st.integers(0x40, 0x4F), st.integers(0, 0xFFFF),
       st.binary(max_size=600))
def test_ipv4_with_hostile_header_fields_and_payload(proto, total_len, vihl, frag, l4):
    ip = struct.pack("!BBHHHBBH4s4s", vihl, 0, total_len, 1, frag, 64, proto, 0, A, B)
    _check(ETH + b"\x08\x00" + ip + l4)


@settings(max_examples=int(400 * SCALE), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(IP_PROTOS), st.integers(0, 0xFFFF), st.binary(max_size=600))
def test_ipv6_with_hostile_next_headers(nxt, plen, rest):
    ip6 = struct.pack("!IHBB16s16s", 0x60000000, plen, nxt, 64, b"\x20" + b"\x00" * 15, b"\x20" + b"\x01" * 15)
    _check(ETH + b"\x86\xdd" + ip6 + rest)


@settings(max_examples=int(400 * SCALE), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(UDP_PORTS), st.sampled_from(UDP_PORTS), st.binary(max_size=600), st.integers(0, 6))
def test_tunnels_with_hostile_inner_bytes(sport, dport, inner, nest):
    """UDP tunnels (VXLAN, GTP, Geneve, ...) and GRE nested with random inner bytes: no raise, no hang."""
    frame = inner
    for i in range(nest + 1):
        frame = _ip(_udp(frame, sport, dport), 17) if i % 2 == 0 else _ip(struct.pack("!HH", 0, 0x0800) + frame, 47)
    _check(ETH + b"\x08\x00" + frame)


@settings(max_examples=int(300 * SCALE), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(DLTS), st.binary(max_size=1500))
def test_long_random_frames_on_every_link_type(dlt, data):
    _check(data, dlt)
