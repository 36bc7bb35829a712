"""Fuzz every service's message decoding: arbitrary bytes, arbitrary JSON and mutated valid messages never
raise anything but the decoder's own DecodeError, and never hang (bounded examples, seconds in all).

Covered: the one decoder (shared.codec) used by store, classify, block, capture's verdict/block subscriptions
and the detectors' process; store's message -> points step; the detectors' process's handler; the control
requests' decoder (capture's pcap/evidence requests, the detectors' evidence answers) and block's rules.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.bus import Bus
from shared.codec import SCHEMA_HEADER, DecodeError, Decoder, loads_small
from shared.models import Alert, DnsAnswer, DnsRecord, FlowRecord, FlowSample, HttpInfo, Verdict, batch_json
from shared.settings import CaptureSettings, CommonSettings, StoreSettings

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SUBJECTS = st.sampled_from(["ft.flow.p1", "ft.verdict.p1", "ft.sample.p1", "ft.packet.p1", "ft.alert.port_scan.p1",
                            "ft.dns.p1", "ft.block.p1", "ft.stats.p1", "ft.flow", "other", "ft.flow.a-b"])
HEADERS = st.one_of(st.none(), st.fixed_dictionaries({SCHEMA_HEADER: st.one_of(
    st.sampled_from(["1.0", "1.1", "1.9", "0.1", "2.0", "x", "", "1.", ".1", "-1.0", "99999999999"]),
    st.text(max_size=10))}))

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=30,
)

FIELDS = ["event_type", "probe", "timestamp", "phase", "first_seen", "last_seen", "flow_id", "src_port", "details",
          "events", "src_payloads", "payload", "answers", "http", "tls", "vlan_ids", "extra", "alert_type",
          "transaction_id", "is_response", "kind", "arp", "counters"]


def valid_messages() -> list[bytes]:
    f = FlowRecord(timestamp=1, probe="p1", flow_id="f", phase="end", first_seen=1, last_seen=2)
    s = FlowSample(timestamp=1, probe="p1", flow_id="s", first_seen=1, src_payloads=[b"GET /"], payload_dirs="s")
    v = Verdict(timestamp=1, probe="p1", flow_id="f", app_protocol="HTTP", http=HttpInfo(host="x"))
    d = DnsRecord(timestamp=1, probe="p1", transaction_id=1, is_response=True,
                  answers=[DnsAnswer(name="a", rtype="A", data="1.2.3.4")])
    a = Alert(timestamp=1, probe="p1", alert_id="a", alert_type="port_scan", first_seen=1, last_seen=1,
              details={"k": "v"})
    return [batch_json([f, v]), batch_json([s]), batch_json([d]), batch_json([a]), f.model_dump_json().encode()]


VALID = valid_messages()


@st.composite
def mutated(draw) -> bytes:
    """A valid message with one field, somewhere, replaced by arbitrary JSON (or removed)."""
    doc = json.loads(draw(st.sampled_from(VALID)))
    target = doc
    if doc.get("event_type") == "batch" and doc["events"] and draw(st.booleans()):
        target = doc["events"][draw(st.integers(0, len(doc["events"]) - 1))]
    key = draw(st.sampled_from(FIELDS))
    if draw(st.booleans()):
        target[key] = draw(JSON)
    else:
        target.pop(key, None)
    return json.dumps(doc).encode()


def nesting(depth: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * depth + closer * depth


HOSTILE = st.one_of(
    st.binary(max_size=2000),
    st.builds(lambda j: json.dumps(j).encode(), JSON),
    mutated(),
    st.builds(nesting, st.integers(1, 5000)),
    st.builds(lambda d: b'{"event_type":"batch","events":[' + nesting(d) + b"]}", st.integers(1, 3000)),
    st.builds(lambda d: b'{"a":' * d + b"1" + b"}" * d, st.integers(1, 3000)),
    st.sampled_from(VALID),
)


def check_decode(decoder: Decoder, data: bytes, subject: str, headers) -> None:
    try:
        out = decoder.decode(data, subject, headers)
    except DecodeError:
        return
    assert out.events, "a decoded message has events"
    for ev in out.events:
        assert not ev.__pydantic_extra__, "unknown fields reach a consumer"
        if subject.startswith("ft.") and subject.count(".") >= 2 and subject != "ft.flow":
            assert ev.probe == "p1" or subject.endswith("a-b")


@FUZZ
@given(HOSTILE, SUBJECTS, HEADERS)
def test_decoder_never_raises_but_decode_error(data, subject, headers):
    check_decode(Decoder(max_alert_details_bytes=100), data, subject, headers)


KINDS = st.sampled_from([("flow",), ("flow", "packet", "capture_stats"), ("verdict",), ("sample",), ("dns", "alert")])


@FUZZ
@given(HOSTILE, SUBJECTS, HEADERS, KINDS)
def test_decoder_with_kinds_never_raises_but_decode_error_and_gives_only_those(data, subject, headers, kinds):
    """The detectors' and analyze's reader's decoding: only the event types they use are built."""
    try:
        out = Decoder(max_alert_details_bytes=100).decode(data, subject, headers, kinds=kinds)
    except DecodeError:
        return
    for ev in out.events:
        assert ev.event_type in kinds
        assert not ev.__pydantic_extra__, "unknown fields reach a consumer"
    try:
        full = Decoder(max_alert_details_bytes=100).decode(data, subject, headers)
    except DecodeError:
        return
    # what the full decoding keeps of those types, the narrow one keeps too
    assert [e for e in full.events if e.event_type in kinds] == out.events


@FUZZ
@given(st.one_of(st.binary(max_size=500), st.builds(lambda j: json.dumps(j).encode(), JSON),
                 st.builds(nesting, st.integers(1, 5000)), st.builds(lambda d: b'{"a":' * d + b"1" + b"}" * d,
                                                                     st.integers(1, 3000))))
def test_control_request_decoding_never_raises(data):
    """capture's ft.ctl.<probe>.pcap / .evidence requests and the detectors' evidence answers."""
    try:
        req = loads_small(data, default={})
    except DecodeError:
        return
    # what the handlers do with a request; each failure here is one of the handlers' caught exceptions
    try:
        str(req.get("bpf", ""))[:1024]
        min(max(float(req.get("duration_s", 10.0)), 0.0), 3600.0)
        str(req["key"])[:128], str(req["flow_id"])[:64]
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
        pass


@FUZZ
@given(st.one_of(st.binary(max_size=500), st.builds(lambda j: json.dumps(j).encode(), JSON),
                 st.builds(nesting, st.integers(1, 5000))))
def test_block_rule_entries_never_raise(data):
    from services.block.rules import RULE_MAX_BYTES, RULE_MAX_DEPTH, RuleError, parse_rule

    try:
        parse_rule(loads_small(data, RULE_MAX_BYTES, RULE_MAX_DEPTH), "bucket key 'k'")
    except (RuleError, ValueError):
        pass


class _Msg(SimpleNamespace):
    """A message as nats-py hands it over (data, subject, headers, metadata); no ack machinery is needed here."""

    @property
    def metadata(self):
        raise ValueError("not a JetStream message")

    async def ack(self):
        self.acked = True


class _DeadLetters:
    """The one bus method store's conversion step calls for a bad message."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    async def dead_letter(self, msg, reason, detail="", max_wait_s=5.0):
        self.reasons.append(reason)
        return True


@FUZZ
@given(HOSTILE, SUBJECTS, HEADERS)
def test_store_message_to_points_never_raises(data, subject, headers):
    from services.store.service import Store

    bus = _DeadLetters()
    store = Store(StoreSettings(alert_details_max_bytes=100), bus, sinks=[])
    points: list = []
    ok = asyncio.run(store._take(_Msg(data=data, subject=subject, headers=headers), points))
    assert ok or bus.reasons, "a rejected message is dead-lettered"
    if not ok:
        assert points == []


@FUZZ
@given(HOSTILE, HEADERS)
def test_detectors_process_handler_never_raises(data, headers):
    from services.capture.detect import DetectorProcess

    async def run():
        bus = Bus(CommonSettings(probe="p1"), "detect")
        proc = DetectorProcess(CaptureSettings(probe="p1"), bus)
        for subject in ("ft.flow.p1", "ft.packet.p1", "ft.stats.p1"):
            await proc.on_message(_Msg(data=data, subject=subject, headers=headers))

    asyncio.run(run())


@FUZZ
@given(HOSTILE, SUBJECTS, HEADERS)
def test_subscriber_decoding_never_raises(data, subject, headers):
    """What every core subscription (classify, block, capture's verdicts and block actions) runs first."""
    bus = Bus(CommonSettings(probe="p1"), "sub")
    events = bus.decode(_Msg(data=data, subject=subject, headers=headers))
    assert events is None or events
