"""Event models: every event round-trips through JSON and malformed input is rejected."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.models import (Alert, ArpInfo, BlockAction, CaptureStats, DnsAnswer, DnsRecord, EventBatch,
                           FlowRecord, FlowSample, HttpInfo, PacketEvent, TlsInfo, Verdict, events_of, parse_event)

ENV = dict(timestamp=1700000000.25, probe="p1", flow_id="abc1", transport="TCP", src_ip="10.0.0.1",
           src_port=40000, dst_ip="2001:db8::1", dst_port=443)

EXAMPLES = [
    FlowRecord(**ENV, phase="end", end_reason="fin", first_seen=1.0, last_seen=2.5, src2dst_packets=3,
               src2dst_bytes=180, dst2src_packets=2, dst2src_bytes=120, app_protocol="TLS", host="a.example"),
    FlowSample(**ENV, first_seen=1.0, src_payloads=[b"\x16\x03\x01\x00\xff\x00", b"\xff" * 10],
               dst_payloads=[b""], payload_dirs="ssd", vlan_ids=[10, 20]),
    PacketEvent(**ENV, kind="dns", payload=bytes(range(256))),
    PacketEvent(timestamp=1.0, probe="p1", kind="arp",
                arp=ArpInfo(operation=2, sender_mac="aa:bb:cc:dd:ee:ff", sender_ip="10.0.0.1",
                            target_mac="00:00:00:00:00:00", target_ip="10.0.0.2")),
    Verdict(**ENV, app_protocol="HTTP", confidence="dpi", http=HttpInfo(method="GET", host="x", url="/"),
            tls=TlsInfo(sni="x", alpn=["h2"])),
    DnsRecord(**ENV, transaction_id=4660, is_response=True, query_name="a.example", query_type="A",
              rcode="NOERROR", answers=[DnsAnswer(name="a.example", rtype="A", ttl_s=60, data="1.2.3.4")]),
    Alert(**ENV, alert_id="x1", alert_type="port_scan", first_seen=1.0, last_seen=2.0, count=1000),
    BlockAction(**ENV, rule_id="r1", action="reset", outcome="won", latency_ms=0.4, attempts=1),
    CaptureStats(timestamp=1.0, probe="p1", packets=10, counters={"vlan": 3}),
    FlowRecord(**dict(ENV, transport="ICMP", src_port=0, dst_port=0, dst_ip="10.0.0.2"), phase="end", first_seen=1.0,
               last_seen=2.5, icmp_type=8, icmp_code=0),
]


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.event_type)
def test_round_trip(event):
    data = event.model_dump_json()
    back = parse_event(data)
    assert type(back) is type(event)
    assert back == event


def test_bytes_are_base64_and_survive_non_utf8():
    s = EXAMPLES[1]
    doc = json.loads(s.model_dump_json())
    assert doc["src_payloads"][0] == "FgMBAP8A"
    assert parse_event(s.model_dump_json()).src_payloads == s.src_payloads


def test_batch_round_trip():
    batch = EventBatch(events=EXAMPLES[:3])
    back = parse_event(batch.model_dump_json())
    assert isinstance(back, EventBatch)
    assert [type(e) for e in events_of(back)] == [FlowRecord, FlowSample, PacketEvent]


@pytest.mark.parametrize("data", [
    b"", b"not json", b"[]", b"{}", b'{"event_type": "nope"}',
    b'{"event_type": "flow", "timestamp": 1, "probe": "p"}',                       # missing phase/first_seen
    b'{"event_type": "flow", "timestamp": "x", "probe": "p", "phase": "end", "first_seen": 1, "last_seen": 1}',
    b'{"event_type": "flow", "timestamp": 1, "probe": "p", "phase": "sideways", "first_seen": 1, "last_seen": 1}',
    b'{"event_type": "flow", "timestamp": 1, "probe": "p", "phase": "end", "first_seen": 1, "last_seen": 1, "src_port": 70000}',
    b'{"event_type": "flow", "timestamp": 1, "probe": "a.b", "phase": "end", "first_seen": 1, "last_seen": 1}',  # not a token
    b'{"event_type": "sample", "timestamp": 1, "probe": "p", "first_seen": 1, "src_payloads": ["%%%"]}',
    b'{"event_type": "batch", "events": [{"event_type": "flow"}]}',
    b'\xff\xfe\x00',
])
def test_malformed_rejected(data):
    with pytest.raises(ValidationError):
        parse_event(data)


def test_every_field_is_documented_or_self_explanatory():
    """Envelope and counters carry descriptions: the schema is the documentation."""
    for model in (FlowRecord, FlowSample, Verdict, Alert, BlockAction):
        schema = model.model_json_schema()
        undocumented = [k for k, v in schema["properties"].items()
                        if "description" not in v and k not in ("event_type",)]
        # the envelope and counters must all be documented
        for key in ("timestamp", "probe", "flow_id", "transport", "src_ip", "dst_ip"):
            assert key not in undocumented, (model.__name__, key)


def test_batch_json_is_an_event_batch():
    from shared.models import batch_json

    doc = batch_json(EXAMPLES)
    back = parse_event(doc)
    assert isinstance(back, EventBatch) and list(back.events) == EXAMPLES
    assert parse_event(batch_json([])).events == []


def _lean_doc(e) -> dict:
    """The document the bus carries (schema 1.3): pydantic's without default-valued fields, with event_type."""
    d = json.loads(e.model_dump_json(exclude_defaults=True))
    d["event_type"] = e.event_type
    return d


def test_flow_records_are_written_flat_and_give_pydantic_s_document():
    """FlowRecord (all fields str/int/float) goes through orjson from its __dict__: the same JSON document."""
    from shared.models import _FLAT_TYPES, event_json

    assert FlowRecord in _FLAT_TYPES
    assert FlowSample not in _FLAT_TYPES and Verdict not in _FLAT_TYPES   # bytes / nested models: pydantic
    for e in EXAMPLES:
        assert json.loads(event_json(e)) == _lean_doc(e)


def test_the_wire_leaves_out_defaults_and_parses_to_the_same_models():
    """Schema 1.3: every event of a batch without its default-valued fields, event_type always there; the
    reader's defaults fill them back in, so the models are those of the full document."""
    import services.capture.flows  # noqa: F401 - registers the compiled lean()
    from shared import models
    from shared.models import batch_json

    for lean in (models._lean, models._lean_py):
        old = models._lean
        models.set_lean(lean)
        try:
            for events in (EXAMPLES, EXAMPLES[::-1], [e for e in EXAMPLES if type(e) is FlowRecord]):
                doc = json.loads(batch_json(events))
                for got, e in zip(doc["events"], events):
                    assert got == _lean_doc(e)
                    assert got["event_type"] == e.event_type
                    full = json.loads(e.model_dump_json())
                    assert all(getattr(e, k) == type(e).model_fields[k].get_default(call_default_factory=True)
                               for k in full if k not in got), type(e).__name__
                assert list(parse_event(batch_json(events)).events) == events
        finally:
            models.set_lean(old)
    start = FlowRecord(**ENV, phase="start", first_seen=1.0, last_seen=1.0)
    doc = json.loads(batch_json([start]))["events"][0]
    assert "tunnel" not in doc and "app_protocol" not in doc and doc["phase"] == "start"
    odd = FlowRecord.model_construct(**{**start.__dict__, "duration_ms": 0, "src2dst_packets": False})
    doc = json.loads(batch_json([odd]))["events"][0]   # a value of another type than its default is kept
    assert doc["duration_ms"] == 0 and doc["src2dst_packets"] is False


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(blacklist_categories=()), max_size=40) | st.sampled_from(["a\ud800b", "\x00\"\n"]),
       st.floats(allow_nan=True, allow_infinity=True), st.integers(0, 2**70),
       st.sampled_from(["start", "update", "end"]))
def test_flat_json_equals_pydantic_for_hostile_values(text, number, big, phase):
    """Hostile strings (quotes, control characters, lone surrogates), non-finite floats and ints beyond
    64 bits: the fast path writes what pydantic writes, or leaves the event to pydantic."""
    from shared.models import event_json

    rec = FlowRecord.model_construct(**ENV, phase=phase, first_seen=number, last_seen=1.0, host=text,
                                     src2dst_bytes=big, application=text[::-1])
    rec.__dict__["event_type"] = "flow"
    try:
        want = rec.model_dump_json()
    except Exception as exc:  # noqa: BLE001 - pydantic refuses (e.g. a lone surrogate): so must we
        with pytest.raises(type(exc)):
            event_json(rec)
        return
    assert json.loads(event_json(rec)) == _lean_doc(rec)


def test_batch_json_falls_back_to_pydantic_as_a_whole():
    """A flat event orjson refuses (an int beyond 64 bits) sends the whole batch through pydantic."""
    from shared.models import batch_json

    big = FlowRecord.model_construct(**EXAMPLES[0].__dict__)
    big.__dict__["src2dst_bytes"] = 2**70
    doc = json.loads(batch_json([EXAMPLES[1], big, EXAMPLES[0]]))
    assert [e["event_type"] for e in doc["events"]] == ["sample", "flow", "flow"]
    assert doc["events"][1]["src2dst_bytes"] == 2**70


def test_event_dict_is_model_dump_json_mode():
    from shared.models import event_dict

    for e in EXAMPLES:
        assert event_dict(e) == e.model_dump(mode="json")


def _pydantic_batch_or_its_error(events):
    """The batch document pydantic writes for ``events``; None after checking that batch_json raises
    pydantic's own error where pydantic refuses (e.g. a lone surrogate)."""
    from shared.models import batch_json

    try:
        return b'{"event_type":"batch","events":[' + b",".join(e.model_dump_json().encode() for e in events) + b"]}"
    except Exception as exc:  # noqa: BLE001
        with pytest.raises(type(exc)):
            batch_json(events)
        return None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=70), max_size=4), st.lists(st.binary(max_size=70), max_size=3),
       st.text(st.characters(blacklist_categories=()), max_size=20) | st.sampled_from(["a\ud800b", "\x00\"\n"]),
       st.floats(allow_nan=True, allow_infinity=True), st.binary(max_size=60))
def test_sample_and_packet_batches_give_pydantic_s_document(src, dst, text, number, payload):
    """Samples and DNS packet events go through orjson with their bytes as base64 text (_B64_MODELS): the
    document pydantic writes, or pydantic's own error where it refuses (a lone surrogate).  The payload
    lists as the compiled JSON arrays where capture's _meter is built (registered by its import)."""
    import services.capture.flows as flows_mod
    from shared import models
    from shared.models import ArpInfo, PacketEvent, batch_json

    if flows_mod._METER is not None:
        assert models._b64_json is flows_mod._METER.b64_json

    s = FlowSample(**ENV, first_seen=1.0, src_payloads=src, dst_payloads=dst, payload_dirs="sd", vlan_ids=[7])
    s.__dict__["source"] = text
    s.__dict__["trigger_time"] = number
    p = PacketEvent(**ENV, kind="dns", payload=payload, vlan_ids=[1, 2])
    p.__dict__["src_mac"] = text
    arp = PacketEvent(**ENV, kind="arp", arp=ArpInfo(operation=1, sender_mac="a", sender_ip="b", target_mac="c",
                                                     target_ip="d"))
    for events in ([s, p], [p, s, arp], [s]):
        want = _pydantic_batch_or_its_error(events)
        if want is None:
            continue
        got = json.loads(batch_json(events))
        # samples and packet events whole (few defaults: dropping them costs more than it saves), an ARP
        # packet's fields too (they went through pydantic, without defaults: 3 % of a replay)
        assert got["events"] == [json.loads(e.model_dump_json()) for e in events]
    # a packet event whose ARP fields carry what the model does not know: pydantic's document, lean
    odd = PacketEvent.model_validate_json(arp.model_dump_json().replace('"operation":1', '"operation":1,"x":2'))
    assert odd.arp is not None and odd.arp.__pydantic_extra__ == {"x": 2}
    assert json.loads(batch_json([odd]))["events"] == [_lean_doc(odd)]


def test_sample_batches_are_the_same_with_and_without_the_compiled_arrays(monkeypatch):
    """batch_json's samples: the compiled JSON arrays of base64 texts (_meter.b64_json) and the texts one by
    one (_b64_texts_py, where it is not built) write the same document, every payload length and byte."""
    import random

    import services.capture.flows as flows_mod
    from shared import models
    from shared.models import batch_json

    if flows_mod._METER is None:
        pytest.skip("capture's _meter is not built here (no C compiler): only the texts one by one exist")
    rnd = random.Random(5)
    samples = [FlowSample(**ENV, first_seen=1.0, src_payloads=[rnd.randbytes(rnd.randrange(0, 300)) for _ in range(k)],
                          dst_payloads=[bytes(range(256))] * (k % 3)) for k in range(12)]
    compiled = batch_json(samples)
    monkeypatch.setattr(models, "_b64_json", None)
    assert batch_json(samples) == compiled
    assert [FlowSample.model_validate(e) for e in json.loads(compiled)["events"]] == samples


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(blacklist_categories=()), max_size=20) | st.sampled_from(["a\ud800b", "\x00\"\n/\x7f"]),
       st.floats(allow_nan=True, allow_infinity=True), st.integers(0, 2**70),
       st.lists(st.text(max_size=8), max_size=3), st.booleans())
def test_verdict_and_dns_batches_give_pydantic_s_document(text, number, big, names, nested):
    """Verdicts and DNS records (classify's answers) go through orjson from their __dict__ without its
    default-valued fields (the compiled lean), nested models whole from theirs (_DOC_TYPES): pydantic's
    document once the reader fills in the defaults, or pydantic's own error where it refuses (a lone
    surrogate); an int beyond 64 bits or a nested model with unknown fields falls back."""
    import services.classify.service  # noqa: F401 - registers the compiled lean, as the classify process does
    from shared import models
    from shared.models import _DOC_TYPES, DnsQuestion, QuicInfo, SshInfo, batch_json

    assert models._lean is not models._lean_py

    assert Verdict in _DOC_TYPES and DnsRecord in _DOC_TYPES
    def hostile(m, **fields):      # values set past validation, as a dissector could
        m.__dict__.update(fields)
        return m

    http = hostile(HttpInfo(method="GET", status_code=200), host=text, url="/" + text)
    v = Verdict(**ENV, app_protocol="HTTP", confidence="dpi", http=http if nested else None,
                http_transactions=[http, HttpInfo(trans_depth=2)] if nested else [],
                tls=hostile(TlsInfo(alpn=names, server_names=names[::-1], cert_not_after=2.5), sni=text) if nested else None,
                quic=QuicInfo(sni="q") if nested else None, ssh=SshInfo(client_banner="SSH-2.0-x"),
                vlan_ids=[1, 4095])
    v.__dict__["extra"] = {"k": text, text[:5]: "v"}
    v.__dict__["host"] = text
    v.__dict__["trigger_time"] = number
    v.__dict__["dst2src_ack"] = big
    w = Verdict(**ENV)
    if not nested:
        w.__dict__["tls"] = TlsInfo.model_construct(sni="x", alpn=["h2"], unknown_field=text)
    d = DnsRecord(**ENV, transaction_id=7, is_response=True, flags=["rd", "ra"],
                  questions=[hostile(DnsQuestion(name="q", rtype="A"), name=text)], rtt_ms=None if nested else 1.5,
                  answers=[hostile(DnsAnswer(name=n or "x", rtype="A", ttl_s=60), data=text) for n in names])
    d.__dict__["query_name"] = text
    d.__dict__["query_time"] = number
    for events in ([v], [v, w], [w, v], [d, d], [d, v, EXAMPLES[0]], [v, EXAMPLES[1]]):
        want = _pydantic_batch_or_its_error(events)
        if want is None:
            continue
        got = json.loads(batch_json(events))["events"]
        full = json.loads(want)["events"]
        for g, f, e in zip(got, full, events):
            # a missing field is at its default, a written one as pydantic writes it, nested models alike
            assert g["event_type"] == f["event_type"] and _same_but_defaults(g, f, e), type(e).__name__


def _same_but_defaults(got, full, obj) -> bool:
    """``got`` is ``full`` (pydantic's document of ``obj``) where nested models may leave out fields at
    their defaults."""
    from pydantic import BaseModel

    if isinstance(obj, BaseModel) and isinstance(got, dict) and isinstance(full, dict):
        fields = type(obj).model_fields
        return set(got) <= set(full) and all(
            _same_but_defaults(got[k], v, getattr(obj, k, None)) if k in got
            else k in fields and v == json.loads(json.dumps(fields[k].get_default(call_default_factory=True)))
            for k, v in full.items())
    if isinstance(full, list) and isinstance(got, list) and isinstance(obj, list):
        return len(got) == len(full) and all(_same_but_defaults(a, b, o) for a, b, o in zip(got, full, obj))
    return got == full


def _orjson_path(events: list) -> bytes:
    """batch_json's document by its orjson path (capture's one-pass writers switched off)."""
    from shared import models

    flat, b64 = models._flat_batch, models._b64_batch
    models.set_flat_batch(None)
    models.set_b64_batch(None)
    try:
        return models.batch_json(events)
    finally:
        models.set_flat_batch(flat)
        models.set_b64_batch(b64)


@pytest.mark.filterwarnings("ignore::UserWarning")   # pydantic's, on the odd types of the declined batches
@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12), st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-2**70, max_value=2**70),
       st.sampled_from([0.0, 1e-05, 2.5e-7, 1e16, 1700000000.123456, 0.1, -0.0, 123456789.0]),
       st.booleans(), st.booleans(), st.integers(min_value=-2**33 * 10**6, max_value=2**33 * 10**6))
def test_flow_record_batches_written_in_one_pass_are_the_orjson_path_s_bytes(text, x, n, fx, verdict, odd, us):
    """capture's compiled flat_batch writes a batch of flow records (a verdict among them) byte for byte as
    the orjson path does: string escapes, floats (repr, exponents as orjson writes them), ints up to 64 bits,
    defaults left out; where orjson refuses (a lone surrogate, an int beyond 64 bits) it declines and the
    general path decides, so batch_json's bytes are the same either way."""
    import services.capture.flows  # noqa: F401 - registers the compiled writer
    from shared import models

    if models._flat_batch is None:
        pytest.skip("the compiled meter module is not built")
    r = FlowRecord(**{**ENV, "host": "a.example"}, phase="end", end_reason="idle", first_seen=1.0, last_seen=fx,
                   duration_ms=fx, src2dst_packets=3)
    h = FlowRecord.model_construct(**{**r.__dict__, "host": text, "application": text + '"\\\n\x01\x7f',
                                      "duration_ms": x, "src2dst_bytes": n, "first_seen": us / 1e6, "last_seen": us / 1e5, "tunnel": odd, "icmp_type": None if odd else 3})
    events = [r, h] + ([Verdict(**ENV, app_protocol="HTTP", confidence="dpi", http=HttpInfo(host=text))] if verdict else [])
    want = _orjson_path(events)
    one = models._flat_batch(events, {FlowRecord: models._defaults(FlowRecord)}, models._pyd_lean, models._float_json)
    if one is not None:
        assert one == want
    else:   # declined: only where orjson's path cannot write it either
        assert abs(n) >= 2**63 or any(0xD800 <= ord(c) <= 0xDFFF for c in text)
    assert models.batch_json(events) == want


def test_floats_of_every_magnitude_are_written_as_orjson_writes_them():
    """The one-pass writer's float text (whole microseconds by its own digits, the usual range by Python's
    repr, the rest by orjson) is orjson's, byte for byte: random floats of every magnitude and sign,
    rounded ones, and the edges of each range."""
    import random

    import orjson

    import services.capture.flows  # noqa: F401 - registers the compiled writer
    from shared import models

    if models._flat_batch is None:
        pytest.skip("the compiled meter module is not built")
    rnd = random.Random(12)
    xs = [1e-4, -1e-4, 9.999999999999999e-05, 1e15, 1e15 - 0.125, 999999999999999.9, 4294967296.0, 4294967295.999999,
          1e16, 1e-5, 5e-324, 1.7976931348623157e308, 0.1, 2.5, 1e-7, 123456789012.345]
    for _ in range(20000):
        x = 10 ** rnd.uniform(-8, 18) * rnd.choice((1, -1))
        xs += [x, round(x, rnd.randint(0, 9)), float(int(x)) if abs(x) < 1e18 else x]
    base = FlowRecord(**ENV, phase="end", first_seen=1.0, last_seen=2.0).__dict__
    recs = [FlowRecord.model_construct(**{**base, "duration_ms": x}) for x in xs]
    spec = {FlowRecord: models._defaults(FlowRecord)}
    for i in range(0, len(recs), 500):
        part = recs[i:i + 500]
        one = models._flat_batch(part, spec, models._pyd_lean, models._float_json)
        assert one is not None
        docs = orjson.loads(one)["events"]
        assert [d.get("duration_ms", 0.0) for d in docs] == [r.duration_ms for r in part]   # a default is left out
        assert one == _orjson_path(part)


def test_flow_record_batches_of_the_dev_corpora_are_written_the_same():
    """Every flow record of the sample capture, through the one-pass writer and through the orjson path."""
    from services.capture.flows import FlowMeter, ListSink
    from services.capture.sources import FileSource
    from shared import models
    from shared.settings import CaptureSettings
    from tests.conftest import SAMPLE_PCAP

    if models._flat_batch is None:
        pytest.skip("the compiled meter module is not built")
    sink = ListSink()
    m = FlowMeter(CaptureSettings(verdict_wait_s=0), sink, source="s")
    for dlt, recs in FileSource(SAMPLE_PCAP).batches(256):
        m.process_batch(list(recs), dlt)
    m.finish()
    assert len(sink.flows) > 20
    for i in range(0, len(sink.flows), 7):
        part = sink.flows[i:i + 7]
        one = models._flat_batch(part, {FlowRecord: models._defaults(FlowRecord)}, models._pyd_lean, models._float_json)
        assert one is not None and one == _orjson_path(part)


@pytest.mark.filterwarnings("ignore::UserWarning")   # pydantic's, on the odd types of the declined batches
@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=4), st.lists(st.binary(max_size=40), max_size=3), st.text(max_size=10),
       st.lists(st.integers(min_value=0, max_value=4095), max_size=3), st.floats(allow_nan=False, allow_infinity=False),
       st.booleans(),
       st.sampled_from(["none", "extra", "odd list", "packet", "big int"]))
def test_sample_batches_written_in_one_pass_are_the_orjson_path_s_bytes(src, dst, text, vlans, x, final, odd):
    """capture's compiled b64_batch writes a batch of samples (a packet event among them) byte for byte as the
    orjson path does (payloads as base64 arrays, empty lists, VLAN ids, hostile text); where that path would
    hand an event to pydantic (unknown fields, a list of something else) it declines, and batch_json's bytes
    are the same either way."""
    import services.capture.flows  # noqa: F401 - registers the compiled writer
    from shared import models

    if models._b64_batch is None:
        pytest.skip("the compiled meter module is not built")
    s = FlowSample(**ENV, first_seen=1.0, src_payloads=src, dst_payloads=dst, payload_dirs=text[:5], vlan_ids=vlans,
                   final=final, trigger_time=x)
    s.__dict__["src_mac"] = text   # past validation, as a dissector could
    events = [s, FlowSample(**ENV, first_seen=2.0)]
    if odd == "extra":
        events[1] = FlowSample.model_validate_json(events[1].model_dump_json()[:-1] + ',"zz":1}')
    elif odd == "odd list":
        events[1].__dict__["src_payloads"] = [b"x", "not bytes"]
    elif odd == "packet":
        events.append(PacketEvent(**ENV, kind="dns", payload=b"\x00\xff" + text.encode("utf-8", "replace")))
    elif odd == "big int":
        events[1].__dict__["seq_no"] = 2**70
    want = _orjson_path(events)
    specs = {FlowSample: (("src_payloads", "dst_payloads"), tuple(FlowSample.model_fields))}
    one = models._b64_batch(events, specs, models._b64_other, models._float_json)
    if one is not None:
        assert one == want
    else:
        assert odd in ("extra", "odd list", "big int") or any(0xD800 <= ord(c) <= 0xDFFF for c in text)
    assert models.batch_json(events) == want
    if odd in ("none", "packet", "extra"):
        assert list(parse_event(want).events)[0].src_payloads == src


def test_sample_batches_of_a_capture_are_written_the_same():
    """Every sample of the sample capture, through the one-pass writer and through the orjson path."""
    from services.capture.flows import FlowMeter, ListSink
    from services.capture.sources import FileSource
    from shared import models
    from shared.settings import CaptureSettings
    from tests.conftest import SAMPLE_PCAP

    if models._b64_batch is None:
        pytest.skip("the compiled meter module is not built")
    sink = ListSink()
    m = FlowMeter(CaptureSettings(verdict_wait_s=0), sink, source="s")
    m.defer_samples = True
    for dlt, recs in FileSource(SAMPLE_PCAP).batches(256):
        m.process_batch(list(recs), dlt)
        m.flush_samples()
    m.finish()
    assert len(sink.samples) >= 10
    for i in range(0, len(sink.samples), 3):
        part = sink.samples[i:i + 3]
        one = models._b64_batch(part, models._B64_SPECS or {FlowSample: (("src_payloads", "dst_payloads"),
                                tuple(FlowSample.model_fields))}, models._b64_other, models._float_json)
        assert one is not None and one == _orjson_path(part)
