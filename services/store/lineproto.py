"""InfluxDB line protocol: text representation, escaping, rendering and parsing.

Two layers keep wire strings from injecting anything:

1. **Representation** (``shared.text``): every string from the wire (host, URL,
   user agent, DNS name, certificate name ...) is carried in events as
   *represented text*: printable, single-line, injective (``unrepresent`` gives
   the original back, ``shared.text.wire_bytes`` the original bytes; see
   ``shared/text.py`` for the table).  Classify produces it where it decodes
   the wire.  Store keeps represented text as it is and applies ``represent``
   to a string that still holds a raw control character, line separator or
   surrogate (``store_text``), so every stored string is represented text.
   List and dict fields (DNS answers, ALPN lists, alert details) are stored as
   JSON: a nested value in JSON lines, compact JSON text in line protocol,
   every string inside them stored text.

2. **Syntax** (``escape_*``): the line-protocol escaping of the InfluxDB 2
   spec.  Measurement: ``,`` and space.  Tag keys, tag values, field keys:
   ``,``, ``=`` and space.  String field values: ``"``.  Backslash is doubled
   everywhere (InfluxDB reads ``\\\\`` as one backslash).  After step 1 no
   value contains a newline, so no value can start a new line.

Floats that are not finite (InfluxDB rejects NaN and infinities) are left out
of the point and counted (``Point`` rendering reports them).
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

# --------------------------------------------------------------------------- representation

from shared.text import RAW_CHARS, represent, unrepresent  # noqa: E402  (re-exported)

_NEEDS_REPR = RAW_CHARS


def store_text(value: str) -> str:
    """A string as stored: represented text as is; a string that still holds a raw control
    character, separator or surrogate is represented (``shared.text``) first.

    ``str.isprintable`` first: a C scan, false for every raw character (control characters,
    separators, surrogates) and a few more (other spaces, format characters), which the
    pattern then decides.
    """
    if value.isprintable() or RAW_CHARS.search(value) is None:
        return value
    return represent(value)


def _deep(value: Any) -> Any:
    """A nested list/dict field with every string as stored text (JSON-ready).

    Ints, bools and None inside a list or dict are taken in place and strings go straight to
    ``store_text`` (no ``_deep`` call per item: DNS answers and alert details are lists and dicts
    of them)."""
    t = type(value)
    if t is str:
        return store_text(value)
    if t is list or t is tuple:
        out = []
        append = out.append
        for v in value:
            tv = type(v)
            if tv is str:
                append(store_text(v))
            elif tv is int or tv is bool or v is None:
                append(v)
            else:
                append(_deep(v))
        return out
    if t is dict:
        d = {}
        for k, v in value.items():
            k = store_text(k if type(k) is str else str(k))
            tv = type(v)
            if tv is str:
                d[k] = store_text(v)
            elif tv is int or tv is bool or v is None:
                d[k] = v
            else:
                d[k] = _deep(v)
        return d
    if t is float and not (value - value == 0.0):
        return None
    return value


def json_text(value: Any) -> str:
    """A list/dict field as line-protocol text: compact JSON of its stored text."""
    return json.dumps(_deep(value), ensure_ascii=False, separators=(",", ":"))


# --------------------------------------------------------------------------- syntax

_MEAS_SPECIAL = re.compile(r"[\\, ]")
_KEY_SPECIAL = re.compile(r"[\\,= ]")
_STR_SPECIAL = re.compile(r'[\\"]')


def escape_measurement(name: str) -> str:
    if _MEAS_SPECIAL.search(name) is None:
        return name
    return _MEAS_SPECIAL.sub(lambda m: "\\" + m.group(), name)


def escape_key(name: str) -> str:
    """Escape a tag key, tag value or field key."""
    if _KEY_SPECIAL.search(name) is None:
        return name
    return _KEY_SPECIAL.sub(lambda m: "\\" + m.group(), name)


def escape_string_field(value: str) -> str:
    """Escape a string field value (without the surrounding quotes)."""
    if _STR_SPECIAL.search(value) is None:
        return value
    return _STR_SPECIAL.sub(lambda m: "\\" + m.group(), value)


INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


class Point(NamedTuple):
    """One InfluxDB point, holding the original (raw) values.

    Renderers (``to_line`` here, the JSON-lines sink) apply ``represent`` to
    every tag value and string field, so both outputs hold the same text.

    ``tags`` is a tuple of (key, value) pairs in a fixed order (the schema's);
    empty tag values are left out when rendering (line protocol has none).
    ``fields`` maps field keys to int, float, bool or str.
    """

    measurement: str
    tags: tuple[tuple[str, str], ...]
    fields: dict[str, Any]
    time_ns: int


# escaped tag "k=v" fragments: tag values are low-cardinality by schema
_tag_cache: dict[tuple[str, str], str] = {}
_TAG_CACHE_MAX = 100_000


def _tag_fragment(key: str, value: str) -> str:
    kv = (key, value)
    frag = _tag_cache.get(kv)
    if frag is None:
        frag = f",{escape_key(key)}={escape_key(store_text(value))}"
        if len(_tag_cache) >= _TAG_CACHE_MAX:
            _tag_cache.clear()
        _tag_cache[kv] = frag
    return frag


_key_cache: dict[str, str] = {}


def _field_key(key: str) -> str:
    k = _key_cache.get(key)
    if k is None:
        k = escape_key(key)
        _key_cache[key] = k
    return k


def _esc_str_sub(m: re.Match[str]) -> str:
    return "\\" + m.group()


def _format_fields(fields: dict[str, Any]) -> tuple[str, int]:
    """Render the field set; returns (text, number of fields left out as not representable).

    Empty strings are left out (an absent field reads as empty); non-finite
    floats and None are left out and counted.
    """
    parts = []
    append = parts.append
    dropped = 0
    keys = _key_cache
    needs_repr = _NEEDS_REPR.search
    str_special = _STR_SPECIAL.search
    for key, v in fields.items():
        k = keys.get(key)
        if k is None:
            k = keys[key] = escape_key(key)
        t = type(v)
        if t is int:
            if INT64_MIN <= v <= INT64_MAX:
                append(f"{k}={v}i")
            else:
                append(f"{k}={float(v)!r}")
        elif t is str:
            if not v:
                continue
            if not v.isprintable() and needs_repr(v) is not None:
                v = represent(v)          # a raw string: represented text is stored as is
            if str_special(v) is not None:
                v = _STR_SPECIAL.sub(_esc_str_sub, v)
            append(f'{k}="{v}"')
        elif t is float:
            if v - v == 0.0:  # finite
                append(f"{k}={v!r}")
            else:
                dropped += 1
        elif t is bool:
            append(f"{k}=true" if v else f"{k}=false")
        elif v is None:
            dropped += 1
        elif t is list or t is dict or t is tuple:
            if not v:
                continue
            append(f'{k}="{escape_string_field(json_text(v))}"')
        else:  # anything else (an int/str subclass, ...) as represented text
            append(f'{k}="{escape_string_field(store_text(str(v)))}"')
    return ",".join(parts), dropped


_tagset_cache: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}


def _series_key(measurement: str, tags: tuple[tuple[str, str], ...]) -> str:
    """Escaped ``measurement,tag=value,...`` (cached: tags are low-cardinality by schema)."""
    key = (measurement, tags)
    s = _tagset_cache.get(key)
    if s is None:
        s = escape_measurement(measurement) + "".join(_tag_fragment(k, v) for k, v in tags if v)
        if len(_tagset_cache) >= _TAG_CACHE_MAX:
            _tagset_cache.clear()
        _tagset_cache[key] = s
    return s


# Any character that makes a string field need work (represent or escape).
STR_NEEDS_WORK = re.compile('[\\\\"\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]')

# Hand-written field renderers for hot measurements (registered by the schema).
# Each returns exactly what ``_format_fields`` would, or None to take the
# careful path; tests compare the two.
FAST_FIELDS: dict[str, Any] = {}


def to_line(point: Point) -> str:
    """One line of line protocol (no trailing newline).  A point needs at least one field."""
    fast = FAST_FIELDS.get(point.measurement)
    fields = fast(point.fields) if fast is not None else None
    if fields is None:
        fields, _ = _format_fields(point.fields)
    return f"{_series_key(point.measurement, point.tags)} {fields} {point.time_ns}"


def to_lines(points: list[Point]) -> str:
    """Line protocol for many points, newline-terminated."""
    if not points:
        return ""
    return "\n".join(map(to_line, points)) + "\n"


# --------------------------------------------------------------------------- parsing (tests, tools)


class LineProtocolError(ValueError):
    pass


def _scan_until(line: str, i: int, stops: str) -> tuple[str, int]:
    """Read an escaped token up to one of ``stops`` (unescaped); returns (raw token, index of stop)."""
    out = []
    n = len(line)
    while i < n:
        c = line[i]
        if c == "\\" and i + 1 < n:
            out.append(c)
            out.append(line[i + 1])
            i += 2
            continue
        if c in stops:
            break
        out.append(c)
        i += 1
    return "".join(out), i


_UNESC = re.compile(r"\\(.)", re.S)


def _unescape(token: str, specials: str) -> str:
    def sub(m: re.Match[str]) -> str:
        c = m.group(1)
        return c if (c in specials or c == "\\") else m.group()

    return _UNESC.sub(sub, token)


def _parse_field_value(line: str, i: int) -> tuple[Any, int]:
    n = len(line)
    if i < n and line[i] == '"':
        i += 1
        out = []
        while i < n:
            c = line[i]
            if c == "\\" and i + 1 < n and line[i + 1] in '"\\':
                out.append(line[i + 1])
                i += 2
                continue
            if c == '"':
                return "".join(out), i + 1
            out.append(c)
            i += 1
        raise LineProtocolError("unterminated string field")
    j = i
    while j < n and line[j] not in ", ":
        j += 1
    raw = line[i:j]
    if not raw:
        raise LineProtocolError("empty field value")
    if raw[-1] in "iu" and raw[:-1].lstrip("-").isdigit():
        return int(raw[:-1]), j
    if raw in ("t", "T", "true", "True", "TRUE"):
        return True, j
    if raw in ("f", "F", "false", "False", "FALSE"):
        return False, j
    try:
        return float(raw), j
    except ValueError:
        raise LineProtocolError(f"bad field value {raw[:40]!r}") from None


def parse_line(line: str) -> Point:
    """Parse one line of line protocol (escapes undone; string values stay represented text)."""
    if "\n" in line:
        raise LineProtocolError("newline inside a line")
    meas_raw, i = _scan_until(line, 0, ", ")
    if not meas_raw:
        raise LineProtocolError("missing measurement")
    tags: list[tuple[str, str]] = []
    while i < len(line) and line[i] == ",":
        k_raw, i = _scan_until(line, i + 1, ",= ")
        if i >= len(line) or line[i] != "=":
            raise LineProtocolError("tag without '='")
        v_raw, i = _scan_until(line, i + 1, ",= ")
        if i < len(line) and line[i] == "=":
            raise LineProtocolError("unescaped '=' in tag value")
        tags.append((_unescape(k_raw, ",= "), _unescape(v_raw, ",= ")))
    if i >= len(line) or line[i] != " ":
        raise LineProtocolError("missing field set")
    i += 1
    fields: dict[str, Any] = {}
    while True:
        k_raw, i = _scan_until(line, i, ",= ")
        if i >= len(line) or line[i] != "=":
            raise LineProtocolError("field without '='")
        value, i = _parse_field_value(line, i + 1)
        fields[_unescape(k_raw, ",= ")] = value
        if i < len(line) and line[i] == ",":
            i += 1
            continue
        break
    ts = 0
    if i < len(line):
        if line[i] != " ":
            raise LineProtocolError("garbage after field set")
        rest = line[i + 1:]
        if not rest.lstrip("-").isdigit():
            raise LineProtocolError("bad timestamp")
        ts = int(rest)
    return Point(_unescape(meas_raw, ", "), tuple(tags), fields, ts)


def parse_lines(text: str) -> list[Point]:
    """Parse newline-separated line protocol (only '\\n' separates lines)."""
    return [parse_line(line) for line in text.split("\n") if line and not line.startswith("#")]


# tags as they appear in a record (non-empty, stored text): tags are low-cardinality by schema
_tag_record_cache: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}


def _tag_record(tags: tuple[tuple[str, str], ...]) -> dict[str, str]:
    r = _tag_record_cache.get(tags)
    if r is None:
        r = {}
        for k, v in tags:
            if v:
                r[k] = store_text(v)
        if len(_tag_record_cache) >= _TAG_CACHE_MAX:
            _tag_record_cache.clear()
        _tag_record_cache[tags] = r
    return r


def to_record(point: Point) -> dict[str, Any]:
    """The same point as a JSON-ready dict (the JSON-lines sink's record).

    ``time_ns`` first, then the non-empty tags, then the fields exactly as
    ``to_line`` writes them: strings represented, empty strings, non-finite
    floats and None left out.
    """
    rec: dict[str, Any] = {"time_ns": point.time_ns}
    tags = point.tags
    if tags:
        rec.update(_tag_record(tags))
    raw = _NEEDS_REPR.search       # store_text inlined: this runs for every field of every stored point
    for k, v in point.fields.items():
        t = type(v)
        if t is str:
            if v:
                rec[k] = v if v.isprintable() or raw(v) is None else represent(v)
        elif t is int:
            rec[k] = v if INT64_MIN <= v <= INT64_MAX else float(v)
        elif t is float:
            if v - v == 0.0:
                rec[k] = v
        elif t is bool:
            rec[k] = v
        elif t is list or t is dict or t is tuple:
            if v:
                rec[k] = _deep(v)       # nested JSON, not JSON inside a string
        elif v is not None:
            rec[k] = store_text(str(v))
    return rec
