"""Every dissector's entry point (``could_be`` then ``dissect``, as the engine calls them) takes hostile
samples without raising or hanging (issue 13: fuzzing).

The engine would catch and count a dissector's exception; here the dissectors are called directly so
that any exception fails the test.  Samples are biased towards what gets each dissector past its cheap
test (its ports, its magic prefixes, its transport), then random bytes.  A per-example alarm turns a
hang into a failure.
"""

from __future__ import annotations

import contextlib
import os
import signal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.classify.dissectors import REGISTRY
from services.classify.engine import Engine
from shared.models import FlowSample

ENGINE = Engine()
SCALE = float(os.environ.get("FT_FUZZ_SCALE", "1"))   # more examples for a deeper local run (CI: 1)
PREFIXES = sorted({m for d in REGISTRY for m in (getattr(d, "magic", None) or ()) if m}
                  | {b"\x16\x03\x01", b"\x16\x03\x03", b"\x16\xfe\xfd", b"GET / HTTP/1.1\r\n", b"HTTP/1.1 200 OK\r\n",
                     b"SSH-2.0-", b"\xc0\x00\x00\x00\x01", b"\x00\x00\x01\x00\x00\x01", b"\x00\x00\x81\x80"})


@contextlib.contextmanager
def deadline(seconds: int = 5):
    def boom(*_a):
        raise TimeoutError(f"no answer within {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def payload(prefixes: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=300),
                     st.builds(lambda p, t: p + t, st.sampled_from(prefixes), st.binary(max_size=300)),
                     # a prefix cut short, or with a byte flipped
                     st.builds(lambda p, n: p[:n], st.sampled_from(prefixes), st.integers(0, 12)))


@st.composite
def sample_for(draw, d) -> FlowSample:
    transports = sorted(d.transports)
    transport = draw(st.sampled_from(transports))
    ports = sorted(getattr(d, "ports", ()) or ()) or [0]
    port = st.one_of(st.sampled_from(ports), st.integers(0, 65535))
    own = [m for m in (getattr(d, "magic", None) or ()) if m] or PREFIXES
    pl = payload(own + PREFIXES[:20])
    src = draw(st.lists(pl, max_size=5))
    dst = draw(st.lists(pl, max_size=5))
    dirs = draw(st.one_of(st.just("s" * len(src) + "d" * len(dst)),
                          st.permutations("s" * len(src) + "d" * len(dst)).map("".join),
                          st.text(alphabet="sdx", max_size=12)))
    return FlowSample(timestamp=1.0, probe="fuzz", flow_id="f", transport=transport, src_ip="10.0.0.1",
                      src_port=draw(port), dst_ip="10.0.0.2", dst_port=draw(port), first_seen=1.0,
                      src_payloads=src, dst_payloads=dst, payload_dirs=dirs,
                      src2dst_packets=len(src), dst2src_packets=len(dst), final=draw(st.booleans()))


def run_one(d, s: FlowSample) -> None:
    v = ENGINE.new_verdict(s)
    with deadline():
        if d.could_be(s):
            d.dissect(s, v)


@settings(max_examples=int(800 * SCALE), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_each_dissector_takes_hostile_samples(data):
    d = data.draw(st.sampled_from(REGISTRY), label="dissector")
    s = data.draw(sample_for(d), label="sample")
    run_one(d, s)


@settings(max_examples=int(80 * SCALE), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(["TCP", "UDP"]), st.integers(0, 65535), st.integers(0, 65535),
       st.lists(payload(PREFIXES), max_size=4), st.lists(payload(PREFIXES), max_size=4))
def test_every_dissector_on_one_random_sample(transport, sport, dport, src, dst):
    s = FlowSample(timestamp=1.0, probe="fuzz", flow_id="f", transport=transport, src_ip="10.0.0.1", src_port=sport,
                   dst_ip="10.0.0.2", dst_port=dport, first_seen=1.0, src_payloads=src, dst_payloads=dst,
                   payload_dirs="s" * len(src) + "d" * len(dst))
    for d in REGISTRY:
        if transport in d.transports:
            run_one(d, s)
