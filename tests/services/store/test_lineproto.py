"""Line protocol: representation, escaping, rendering, parsing; hostile strings round-trip."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.text import needs_repr
from services.store.lineproto import (
    LineProtocolError,
    Point,
    _format_fields,
    parse_line,
    parse_lines,
    represent,
    store_text,
    to_line,
    to_lines,
    to_record,
    unrepresent,
)

HOSTILE = [
    "a\nb",  # newline: would start a new line
    "x\r\ny",
    "comma,here",
    "space here",
    "eq=sign",
    'dq"uote',
    "single'quote",
    "back\\slash",
    "trailing\\",
    "\\",
    '\\"',
    "tab\tand\x00nul\x7fdel",
    "nel\x85 ls\u2028 ps\u2029",
    "fake m,t=x f=1i 123\nm,t=inj f=99i 1",
    'x" ,evil=1i',
    "é ünïcødé 日本 🙂",
    "\\x0a literally",
    "A" * 10_240,
    ("\\\n,= \"" * 2048),
]
HOSTILE_BYTES = [b"\xff\xfe bad utf8 \x80", b"ok\xc3(", b"\xed\xa0\x80 surrogate-bytes", bytes(range(256))]


def _all_hostile() -> list[str]:
    return HOSTILE + [b.decode("utf-8", "surrogateescape") for b in HOSTILE_BYTES]


@pytest.mark.parametrize("value", _all_hostile(), ids=lambda v: repr(v[:20]))
def test_hostile_string_round_trips_in_fields_and_tags(value):
    wire = represent(value)   # what a producer (classify) puts into an event for this wire string
    p = Point("http", (("probe", "p1"), ("app_protocol", wire)), {"url": wire, "n": 1}, 1_600_000_000_000_000_000)
    line = to_line(p)
    # nothing can inject a line: only printable single-line text
    assert "\n" not in line and "\r" not in line and "\u2028" not in line and "\x85" not in line
    assert len(line.splitlines()) == 1
    back = parse_line(line)
    assert back.measurement == "http"
    assert dict(back.tags) == {"probe": "p1", "app_protocol": wire}
    assert back.fields == {"url": wire, "n": 1}
    assert back.time_ns == p.time_ns
    # the stored text gives the original back exactly
    assert unrepresent(back.fields["url"]) == value
    assert unrepresent(dict(back.tags)["app_protocol"]) == value
    assert to_record(p)["url"] == wire


@pytest.mark.parametrize("value", _all_hostile(), ids=lambda v: repr(v[:20]))
def test_raw_strings_from_a_careless_producer_are_represented(value):
    """A string that still holds raw control characters or surrogates is represented by the store."""
    p = Point("http", (("probe", "p1"), ("app_protocol", value)), {"url": value, "n": 1}, 1_600_000_000_000_000_000)
    line = to_line(p)
    assert len(line.splitlines()) == 1 and "\r" not in line and "\x85" not in line
    back = parse_line(line)
    expect = represent(value) if needs_repr(value) else value
    assert back.fields["url"] == expect == store_text(value) == to_record(p)["url"]
    assert dict(back.tags)["app_protocol"] == expect
    if needs_repr(value):
        assert unrepresent(back.fields["url"]) == value


def test_list_and_dict_fields_are_json_with_stored_text():
    answers = [{"name": 'q"uote\\back', "data": "1.2.3.4"}, {"name": "ctl\x00", "data": ""}]
    p = Point("dns", (("probe", "p1"),), {"answers": answers, "empty": []}, 1)
    back = parse_line(to_line(p))
    import json

    got = json.loads(back.fields["answers"])
    assert got == [{"name": 'q"uote\\back', "data": "1.2.3.4"}, {"name": "ctl\\x00", "data": ""}]
    assert "empty" not in back.fields
    rec = to_record(p)
    assert rec["answers"] == got and "empty" not in rec


@pytest.mark.parametrize("raw", HOSTILE_BYTES)
def test_invalid_utf8_is_represented_not_dropped(raw):
    text = represent(raw)
    assert text.isascii() or "\ufffd" not in text  # no replacement characters: nothing lost
    text.encode("utf-8")  # valid UTF-8 now
    assert unrepresent(text).encode("utf-8", "surrogateescape") == raw
    assert represent(b"\xff") == "\\xff"


def test_representation_examples():
    assert represent("plain host.example") == "plain host.example"
    assert represent("a\nb") == "a\\x0ab"
    assert represent("a\\b") == "a\\\\b"
    assert represent("\x85") == "\\u0085"
    assert represent("\ud800") == "\\ud800"
    # a literal "\x0a" and a real newline stay distinguishable
    assert represent("\\x0a") != represent("\n")


@given(st.text())
@settings(max_examples=300, deadline=None)
def test_represent_is_injective_and_safe(s):
    r = represent(s)
    assert unrepresent(r) == s
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" or 0xD800 <= ord(c) <= 0xDFFF
                   for c in r)
    r.encode("utf-8")  # always valid UTF-8


@given(st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_represent_bytes_round_trip(b):
    assert unrepresent(represent(b)).encode("utf-8", "surrogateescape") == b


_keys = st.text(min_size=1, max_size=20).filter(lambda k: not k.startswith("#"))
_field_value = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(min_size=1, max_size=50),
)


@given(
    meas=st.text(min_size=1, max_size=20).filter(lambda m: not m.startswith("#")),
    tags=st.dictionaries(_keys, st.text(min_size=1, max_size=30), max_size=4),
    fields=st.dictionaries(_keys, _field_value, min_size=1, max_size=6),
    ts=st.integers(min_value=0, max_value=2**63 - 1),
)
@settings(max_examples=300, deadline=None)
def test_any_point_round_trips(meas, tags, fields, ts):
    # keys and measurements are schema constants in practice; the escaping must still hold
    meas_r = represent(meas)
    tags_r = tuple((represent(k), v) for k, v in tags.items())
    fields_r = {represent(k): v for k, v in fields.items()}
    p = Point(meas_r, tags_r, fields_r, ts)
    line = to_line(p)
    assert "\n" not in line
    back = parse_line(line)
    assert back.measurement == meas_r
    assert back.tags == tuple((k, store_text(v)) for k, v in tags_r)
    expect = {}
    for k, v in fields_r.items():
        expect[k] = store_text(v) if isinstance(v, str) else v
    assert back.fields.keys() == expect.keys()
    for k, v in expect.items():
        if isinstance(v, float):
            assert back.fields[k] == v or (math.isclose(back.fields[k], v))
        else:
            assert back.fields[k] == v
    assert back.time_ns == ts


def test_escaping_per_spec():
    # the field holds represented text (a backslash is doubled there); the syntax doubles it again
    p = Point("my meas,x", (("tag key", "v,a=l ue"),), {"f=k": 'say "hi"\\\\'}, 5)
    assert to_line(p) == 'my\\ meas\\,x,tag\\ key=v\\,a\\=l\\ ue f\\=k="say \\"hi\\"\\\\\\\\" 5'


def test_numbers_booleans_and_unrepresentable_values():
    p = Point("m", (), {"i": 3, "neg": -4, "f": 1.5, "big": 2**64, "t": True, "nan": float("nan"),
                        "inf": float("inf"), "none": None, "empty": ""}, 7)
    line = to_line(p)
    assert line == "m i=3i,neg=-4i,f=1.5,big=1.8446744073709552e+19,t=true 7"
    fields, dropped = _format_fields(p.fields)
    assert dropped == 3
    rec = to_record(p)
    assert rec == {"time_ns": 7, "i": 3, "neg": -4, "f": 1.5, "big": 1.8446744073709552e19, "t": True}


def test_empty_tag_values_are_left_out():
    assert to_line(Point("m", (("a", ""), ("b", "x")), {"v": 1}, 1)) == "m,b=x v=1i 1"


def test_record_matches_line():
    p = Point("dns", (("probe", "p1"), ("rcode", "")), {"query_name": "a\nb.example", "n": 2, "x": 0.5}, 9)
    rec = to_record(p)
    back = parse_line(to_line(p))
    assert rec == {"time_ns": back.time_ns, **dict(back.tags), **back.fields}


def test_parser_rejects_broken_lines():
    for bad in ["", "m", "m f=", "m,t f=1i", 'm f="open', "m f=1i x", "m f=1i 12a", "m f=1i\nm f=2i"]:
        with pytest.raises(LineProtocolError):
            parse_line(bad)
    assert len(parse_lines(to_lines([Point("m", (), {"v": 1}, 1), Point("m", (), {"v": 2}, 2)]))) == 2


# --------------------------------------------------------------------------- the record's fast paths (issue 12)

def _stored_ref(v: str) -> str:
    """store_text by its definition: the raw-character pattern alone decides."""
    from shared.text import RAW_CHARS

    return represent(v) if RAW_CHARS.search(v) is not None else v


def _deep_ref(v):
    t = type(v)
    if t is str:
        return _stored_ref(v)
    if t is list or t is tuple:
        return [_deep_ref(x) for x in v]
    if t is dict:
        return {_stored_ref(str(k)): _deep_ref(x) for k, x in v.items()}
    if t is float and not math.isfinite(v):
        return None
    return v


def _record_ref(p: Point) -> dict:
    """The JSON-lines record by the rule the docstring states, one field at a time."""
    rec = {"time_ns": p.time_ns}
    for k, v in p.tags:
        if v:
            rec[k] = _stored_ref(v)
    for k, v in p.fields.items():
        t = type(v)
        if t is str:
            if v:
                rec[k] = _stored_ref(v)
        elif t is float:
            if math.isfinite(v):
                rec[k] = v
        elif t is int:
            rec[k] = v if -(2**63) <= v <= 2**63 - 1 else float(v)
        elif t is bool:
            rec[k] = v
        elif t in (list, dict, tuple):
            if v:
                rec[k] = _deep_ref(v)
        elif v is not None:
            rec[k] = _stored_ref(str(v))
    return rec


# any text, with the characters the shortcuts must not miss (controls, C1, separators, surrogates,
# and the printable-but-not-isprintable ones: no-break space, zero-width space, soft hyphen)
_text = st.text(alphabet=st.one_of(st.characters(), st.sampled_from(
    ["\x00", "\n", "\x1f", "\x7f", "\x85", "\x9f", "\xa0", "\xad", "\u200b", "\u2028", "\u2029", "\ud800",
     "\udfff", "\\", '"', ",", "=", " "])), max_size=20)
_scalar = st.one_of(_text, st.integers(min_value=-(2**70), max_value=2**70), st.floats(), st.booleans(), st.none())
_nested = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(_text, inner, max_size=4)), max_leaves=12)


@given(tags=st.lists(st.tuples(st.sampled_from(["probe", "kind", "a b"]), _text), max_size=3),
       fields=st.dictionaries(st.sampled_from(["host", "url", "n", "x", "answers", "flags", "details", "q"]),
                              _nested, max_size=8))
@settings(max_examples=400, deadline=None)
def test_record_fast_paths_follow_the_per_field_rule(tags, fields):
    """to_record (tag records cached, store_text inlined with str.isprintable first, nested values without a
    call per item) gives exactly the record of the plain rule; the tag cache does not leak between points."""
    p = Point("m", tuple(tags), fields, 1_700_000_000_000_000_000)
    assert to_record(p) == _record_ref(p)
    assert to_record(p) == _record_ref(p)       # again, from the tag cache


def test_isprintable_shortcut_never_hides_a_raw_character():
    """Every character the raw-character pattern matches is not printable for str.isprintable, so a
    printable string never needs representation (the shortcut store_text and the record take)."""
    from shared.text import RAW_CHARS

    raw = [chr(c) for c in range(0x110000) if RAW_CHARS.match(chr(c))]
    assert len(raw) == 32 + 33 + 2 + 2048
    assert not any(c.isprintable() for c in raw)
    assert all(store_text("ok " + c) == represent("ok " + c) for c in raw[:80])
    assert store_text("no-break\xa0space\u200b") == "no-break\xa0space\u200b"    # not raw: kept as it is
