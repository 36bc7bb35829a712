"""Declared first-byte gates (``Dissector.first_bytes``): each declaration holds for its ``could_be``, and
the engine leaves the dissector out of a sample's candidates exactly when the gate says so."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.classify.dissectors import REGISTRY
from services.classify.engine import Engine
from shared.models import FlowSample

GATED = [(d, t) for d in REGISTRY for t in sorted(getattr(d, "first_bytes", {}) or {})]


def test_some_dissectors_declare_a_gate():
    assert len({d.name for d, _t in GATED}) >= 5


def _sample(transport: str, src: list[bytes], dst: list[bytes], sport: int, dport: int) -> FlowSample:
    return FlowSample(timestamp=1.0, probe="t", flow_id="f", transport=transport, src_ip="10.0.0.1", src_port=sport,
                      dst_ip="10.0.0.2", dst_port=dport, first_seen=1.0, src_payloads=src, dst_payloads=dst,
                      payload_dirs="s" * len(src) + "d" * len(dst))


def _payloads(outside: bytes):
    """Lists of payloads whose first payload (if any) starts with a byte outside the gate; its rest random or
    zeros (zeros pass most of the other tests a ``could_be`` makes: length fields, reserved bytes, so that
    the first byte is what decides and a gate that leaves out a byte ``could_be`` accepts is caught)."""
    rest = st.one_of(st.binary(max_size=80), st.integers(8, 200).map(bytes))
    first = st.builds(lambda b, r: bytes([b]) + r, st.sampled_from(sorted(outside)), rest)
    return st.one_of(st.just([]), st.builds(lambda f, more: [f] + more, first,
                                            st.lists(st.binary(min_size=1, max_size=80), max_size=3)))


@pytest.mark.parametrize("d,transport", GATED, ids=[f"{d.name}-{t}" for d, t in GATED])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_could_be_is_false_outside_the_declared_first_bytes(d, transport, data):
    gate = set(d.first_bytes[transport])
    outside = bytes(b for b in range(256) if b not in gate)
    ports = sorted(d.ports | {0, 53, 443, 40000})
    s = _sample(transport, data.draw(_payloads(outside)), data.draw(_payloads(outside)),
                data.draw(st.sampled_from(ports)), data.draw(st.sampled_from(ports)))
    assert not d.could_be(s)


@pytest.mark.parametrize("d,transport", GATED, ids=[f"{d.name}-{t}" for d, t in GATED])
def test_the_engine_drops_a_gated_dissector_only_outside_its_gate(d, transport):
    eng = Engine()
    gate = d.first_bytes[transport]
    inside, outside = gate[0], next(b for b in range(256) if b not in gate)

    def candidates(first: int) -> list:
        s = _sample(transport, [bytes([first]) + b"x" * 40], [], 40000, 40001)
        return [e[2] for e in eng._candidates(s, first, -1)]

    assert any(c is d for c in candidates(inside))
    assert not any(c is d for c in candidates(outside))
