"""shared.codec's pieces, one function at a time (the services' use of it is tested against a real nats-server)."""

from __future__ import annotations

import pytest

from shared.codec import DecodeError, Decoder, json_depth, loads_small, parse_version, subject_probe
from shared.models import SCHEMA_MAJOR, SCHEMA_VERSION, Alert, batch_json
from shared.subjects import dlq_subject


def test_subject_probe():
    assert subject_probe("ft.flow.p1") == "p1"
    assert subject_probe("ft.ctl.p1.pcap") == "p1"
    assert subject_probe("ft.alert.port_scan.p1") == "p1"
    assert subject_probe("ft.alert.port_scan") is None
    assert subject_probe("other.flow.p1") is None
    assert subject_probe("") is None


def test_dlq_subject_never_builds_a_bad_subject():
    assert dlq_subject("p1") == "ft.dlq.p1"
    for bad in (None, "", "a.b", "evil.probe.>", "x y", "*"):
        assert dlq_subject(bad) == "ft.dlq._unknown"


def test_versions():
    assert SCHEMA_VERSION == f"{SCHEMA_MAJOR}.{SCHEMA_VERSION.split('.')[1]}"
    assert parse_version("1.2") == (1, 2) and parse_version("3") == (3, 0) and parse_version(b"1.0") == (1, 0)
    for bad in ("", "x", "1.x", "-1.0", None):
        assert parse_version(bad) is None
    d = Decoder()
    assert d.check_version(None) == d.check_version({}) == d.check_version({"Ft-Schema": SCHEMA_VERSION})
    for hdr, reason in (("0.5", "old_major"), (f"{SCHEMA_MAJOR + 1}.0", "new_major"), ("junk", "bad_version")):
        with pytest.raises(DecodeError) as e:
            d.check_version({"Ft-Schema": hdr})
        assert e.value.reason == reason


def test_loads_small_bounds():
    assert loads_small(b"", default={}) == {}
    assert loads_small(b'{"a": [1, {"b": 2}]}') == {"a": [1, {"b": 2}]}
    for data, reason in ((b"[" * 5000 + b"]" * 5000, "too_deep"), (b"[[[[[1]]]]]", "too_deep"),
                         (b"x" * 70000, "too_large"), (b"{", "not_json"), (b"", "empty")):
        with pytest.raises(DecodeError) as e:
            loads_small(data)
        assert e.value.reason == reason, data[:20]
    assert json_depth([[[]]], 10) == 3 and json_depth({"a": {"b": 1}}, 10) == 2 and json_depth(1, 10) == 0


def test_alert_details_cut_and_marked():
    a = Alert(timestamp=1, probe="p1", alert_id="a", alert_type="port_scan", first_seen=1, last_seen=1,
              details={f"k{i}": "v" * 100 for i in range(100)})
    d = Decoder(max_alert_details_bytes=1000)
    (got,) = d.decode(batch_json([a]), "ft.alert.port_scan.p1").events
    assert sum(len(k) + len(v) for k, v in got.details.items() if k != "_truncated") <= 1000
    assert got.details["_truncated"] == "1" and d.counters["details_truncated"] == 1
    small = a.model_copy(update={"details": {"k": "v"}})
    (got,) = d.decode(batch_json([small]), "ft.alert.port_scan.p1").events
    assert got.details == {"k": "v"}


def test_too_large_is_rejected_unparsed():
    d = Decoder(max_bytes=2048)
    with pytest.raises(DecodeError) as e:
        d.decode(b" " * 4096, "ft.flow.p1")
    assert e.value.reason == "too_large" and d.counters["too_large"] == 1


def _flow(i: int, **kw):
    from shared.models import FlowRecord

    base = dict(timestamp=1.0 + i, probe="p1", flow_id=f"f{i}", transport="TCP", src_ip="10.0.0.1", src_port=1000 + i,
                dst_ip="10.0.0.2", dst_port=80, phase="end", first_seen=1.0, last_seen=1.0 + i)
    base.update(kw)
    return FlowRecord(**base)


def _verdict(i: int):
    from shared.models import HttpInfo, Verdict

    return Verdict(timestamp=1.0 + i, probe="p1", flow_id=f"f{i}", transport="TCP", src_ip="10.0.0.1",
                   src_port=1000 + i, dst_ip="10.0.0.2", dst_port=80, app_protocol="HTTP",
                   http=HttpInfo(method="GET", host="a.test"))


def test_kinds_build_only_the_wanted_events_and_keep_every_limit():
    import orjson

    events = [e for i in range(4) for e in (_flow(i), _verdict(i))]
    msg = batch_json(events)
    full = Decoder().decode(msg, "ft.flow.p1")
    d = Decoder()
    only = d.decode(msg, "ft.flow.p1", kinds=("flow",))
    assert only.events == [e for e in full.events if e.event_type == "flow"] and len(only.events) == 4
    assert d.decode(msg, "ft.flow.p1", kinds=("verdict", "flow")).events == full.events
    # a message with none of the wanted kinds: no events, not an error
    assert d.decode(batch_json([_verdict(9)]), "ft.flow.p1", kinds=("flow",)).events == []
    assert d.counters["malformed"] == 0

    doc = orjson.loads(msg)
    bad_verdict = orjson.loads(orjson.dumps(doc))
    bad_verdict["events"][1]["src_port"] = 99999          # a verdict the subscriber does not use
    bad_flow = orjson.loads(orjson.dumps(doc))
    bad_flow["events"][2]["src_port"] = 99999             # a flow it does use: rejected alone
    unknown = orjson.loads(orjson.dumps(doc))
    unknown["events"][3]["event_type"] = "nonsense"
    foreign = orjson.loads(orjson.dumps(doc))
    foreign["events"][4]["probe"] = "other"
    d = Decoder()
    assert len(d.decode(orjson.dumps(bad_verdict), "ft.flow.p1", kinds=("flow",)).events) == 4
    got = d.decode(orjson.dumps(bad_flow), "ft.flow.p1", kinds=("flow",))
    assert len(got.events) == 3 and got.rejected == 1 and "src_port" in got.reasons[0]
    got = d.decode(orjson.dumps(unknown), "ft.flow.p1", kinds=("flow",))
    assert len(got.events) == 4 and got.rejected == 1
    got = d.decode(orjson.dumps(foreign), "ft.flow.p1", kinds=("flow",))
    assert len(got.events) == 3 and got.rejected == 1 and d.counters["probe_mismatch"] == 1
    # the whole message's limits hold, also inside events that are skipped
    deep = b'{"event_type":"batch","events":[{"event_type":"verdict","x":' + b"[" * 5000 + b"]" * 5000 + b"}]}"
    for data, reason in ((deep, "too_deep"), (b'{"event_type":"batch","events":[{"event_type":"verdict"', "not_json"),
                         (b"x" * 10, None)):
        with pytest.raises(DecodeError) as e:
            d.decode(data, "ft.flow.p1", kinds=("flow",))
        assert reason is None or e.value.reason == reason
    with pytest.raises(DecodeError) as e:
        Decoder(max_bytes=100).decode(msg, "ft.flow.p1", kinds=("flow",))
    assert e.value.reason == "too_large"
    with pytest.raises(DecodeError) as e:
        d.decode(msg, "ft.flow.p1", headers={"Ft-Schema": f"{SCHEMA_MAJOR + 1}.0"}, kinds=("flow",))
    assert e.value.reason == "new_major"
