"""The one safe decoder for every message a service takes off the bus.

Whatever a peer sends, decoding returns events or raises ``DecodeError`` with a
short reason; it never raises anything else and never recurses without bound:

- **size**: a message over ``max_bytes`` is rejected before it is parsed;
- **depth**: pydantic's JSON parser stops at its own recursion limit (a
  ``ValidationError``, never Python's ``RecursionError``); the salvage path and
  ``loads_small`` (control requests) parse with orjson (depth limit 1024, no
  Python recursion) and then check the depth against their own, lower limit;
- **schema version**: the ``Ft-Schema`` header (``MAJOR.MINOR``, see
  ``shared.models``) of another major version is rejected; a newer minor is
  read, its unknown fields counted and dropped;
- **one bad event in a batch** costs that event only: the valid events beside
  it are kept (``Decoded.rejected`` says how many were not);
- **probe**: an event whose ``probe`` is not the probe of the subject it came
  on (``ft.<kind>.<probe>...``) is rejected;
- **alert details** beyond ``max_alert_details_bytes`` characters are cut (counted);
- **kinds**: a subscriber that uses only some event types (``decode(..., kinds=...)``)
  gets only those; the others in a batch are skipped by the JSON parser without being
  built or validated (a flow batch carries each flow's verdict for storage, which the
  detectors and analyze's reader never use).  Size, depth and version limits apply to
  the whole message as before.  ``views`` narrows an event type further to the fields the
  subscriber reads (``view_model``): those are validated as in the full model, the rest skipped.

``Decoder.counters`` counts each of these; services expose them as metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import typing
from collections.abc import Iterable
from typing import Annotated, Literal, Union

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from shared.models import (
    SCHEMA_MAJOR,
    SCHEMA_MINOR,
    SCHEMA_VERSION,
    Alert,
    AnyEvent,
    Event,
    EventBatch,
    parse_any,
    parse_one,
    strip_unknown_fields,
)

SCHEMA_HEADER = "Ft-Schema"
DEFAULT_MAX_BYTES = 8 * 1024 * 1024      # the nats-server's max_payload in flowtarget.embedded
DEFAULT_MAX_DEPTH = 32                   # our deepest document nests 6 levels
DEFAULT_ALERT_DETAILS_BYTES = 16 * 1024


class DecodeError(ValueError):
    """A message that cannot be used; ``reason`` is a short machine word, ``detail`` one safe line."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Decoded:
    """The usable events of one message and what was dropped from it."""

    events: list[Event]
    rejected: int = 0                       # events of a batch that were not usable
    reasons: list[str] = field(default_factory=list)   # the first few reasons for them


def safe_line(value: Any, limit: int = 200) -> str:
    """Text fit for one log line or header: printable ASCII only (escaped), truncated."""
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, (bytes, bytearray, memoryview)) \
        else str(value)
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit] + "..."


def subject_probe(subject: str | None) -> str | None:
    """The probe token of ``ft.<kind>.<probe>[.<qualifier>]`` (``ft.alert.<type>.<probe>``); None if none."""
    if not subject:
        return None
    parts = subject.split(".")
    if len(parts) < 3 or parts[0] != "ft":
        return None
    if parts[1] == "alert":
        return parts[3] if len(parts) >= 4 else None
    return parts[2]


def parse_version(value: str | bytes | None) -> tuple[int, int] | None:
    """``"1.2"`` -> (1, 2); a bare ``"1"`` is (1, 0); None when absent or unreadable."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    head, _, tail = str(value).strip().partition(".")
    try:
        major = int(head)
        minor = int(tail) if tail else 0
    except ValueError:
        return None
    if major < 0 or minor < 0 or major > 10_000 or minor > 10_000:
        return None
    return major, minor


def json_depth(obj: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value, iteratively; stops counting past ``limit`` (returns limit + 1)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            children = o.values()
        elif isinstance(o, list):
            children = o
        else:
            continue
        if d > deepest:
            deepest = d
            if deepest > limit:
                return deepest
        stack.extend((c, d + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def loads_small(data: bytes | str | None, max_bytes: int = 64 * 1024, max_depth: int = 4,
                default: Any = None) -> Any:
    """JSON of a small control message (``ft.ctl.*`` requests and answers), bounded; DecodeError otherwise.

    Empty data gives ``default`` (when it is not None).
    """
    if data is None or len(data) == 0:
        if default is not None:
            return default
        raise DecodeError("empty", "no data")
    if len(data) > max_bytes:
        raise DecodeError("too_large", f"{len(data)} bytes > {max_bytes}")
    try:
        obj = orjson.loads(data)
    except (orjson.JSONDecodeError, ValueError, TypeError, RecursionError) as exc:
        reason = "too_deep" if "depth" in str(exc) or "recursion" in str(exc) else "not_json"
        raise DecodeError(reason, safe_line(exc, 120)) from None
    if json_depth(obj, max_depth) > max_depth:
        raise DecodeError("too_deep", f"nesting over {max_depth}")
    return obj


def _first_error(exc: ValidationError) -> str:
    try:
        errs = exc.errors(include_url=False, include_input=False)
    except Exception:  # noqa: BLE001 - describing an error must not fail
        return "invalid"
    if not errs:
        return "invalid"
    e = errs[0]
    loc = ".".join(str(p) for p in e.get("loc", ()))
    return safe_line(f"{e.get('msg', 'invalid')} at {loc}" if loc else e.get("msg", "invalid"), 160)


#: event_type -> model, for every event of the schema
EVENT_MODELS: dict[str, type[Event]] = {
    m.model_fields["event_type"].default: m for m in typing.get_args(typing.get_args(AnyEvent)[0])
}


def kind_of(model: type) -> str:
    """The ``event_type`` of an event model (``FlowRecord`` -> ``"flow"``)."""
    return str(model.model_fields["event_type"].default)


class _Skipped(BaseModel):
    """Stands for an event of a type the subscriber does not use: parsed past, never built."""

    model_config = ConfigDict(extra="ignore")
    event_type: str


_KIND_ADAPTERS: dict[tuple[frozenset[str], Any], TypeAdapter] = {}
_VIEWS: dict[tuple[str, tuple[str, ...]], type[BaseModel]] = {}
#: the fields every view keeps: what the decoder itself reads (probe check) and what orders events
VIEW_ENVELOPE = ("event_type", "timestamp", "probe")


def view_model(kind: str, fields: Iterable[str]) -> type[BaseModel]:
    """A model of event type ``kind`` with only ``fields`` (plus ``VIEW_ENVELOPE``), for a subscriber that
    reads only those: each kept field has the schema's own type, default and constraints (the same
    ``FieldInfo``), so what it reads is validated as in the full model; the other fields are skipped by
    the JSON parser, neither built nor validated (the detectors read 18 of a flow record's 35 fields:
    a third less decoding, issue 12).  Reading a field the view lacks raises AttributeError.
    """
    names = tuple(dict.fromkeys((*VIEW_ENVELOPE, *fields)))
    key = (kind, names)
    view = _VIEWS.get(key)
    if view is not None:
        return view
    full = EVENT_MODELS[kind]
    missing = [n for n in names if n not in full.model_fields]
    if missing:
        raise ValueError(f"{full.__name__} has no field {missing[0]!r}")
    defs: dict[str, Any] = {n: (full.model_fields[n].annotation, full.model_fields[n]) for n in names}
    view = create_model(f"{full.__name__}View", __config__=ConfigDict(extra="ignore"), **defs)
    view.__doc__ = f"{full.__name__} with only {', '.join(names)} (shared.codec.view_model)."
    _VIEWS[key] = view
    return view


def kinds_adapter(kinds: frozenset[str], views: Mapping[str, Iterable[str]] | None = None) -> TypeAdapter:
    """A parser for any message that builds (and validates) only the events of ``kinds``.

    The events of other known types become ``_Skipped`` (a model with one field that ignores
    the rest, so the JSON parser skips their content); an unknown event_type is an error as
    with ``parse_any``.  ``views`` (event type -> field names) builds those types as
    ``view_model``s.
    """
    vkey = tuple(sorted((k, tuple(f)) for k, f in views.items())) if views else None
    ad = _KIND_ADAPTERS.get((kinds, vkey))
    if ad is not None:
        return ad
    fields_of = dict(vkey or ())
    wanted = [view_model(k, fields_of[k]) if k in fields_of else m for k, m in EVENT_MODELS.items() if k in kinds]
    others = tuple(k for k in EVENT_MODELS if k not in kinds)
    members: list[Any] = list(wanted)
    if others:
        skipped = type("_SkippedEvent", (_Skipped,), {"__annotations__": {"event_type": Literal[others]}})
        members.append(skipped)
    one: Any = Annotated[Union[tuple(members)], Field(discriminator="event_type")] if len(members) > 1 \
        else members[0]
    batch = type("_KindsBatch", (BaseModel,), {"__annotations__": {"event_type": Literal["batch"], "events": list[one]},
                                                "model_config": ConfigDict(extra="allow")})
    ad = TypeAdapter(Annotated[Union[tuple(members) + (batch,)], Field(discriminator="event_type")])
    _KIND_ADAPTERS[(kinds, vkey)] = ad
    return ad


COUNTER_NAMES = ("messages", "malformed", "too_large", "too_deep", "not_json", "invalid", "old_major",
                 "new_major", "bad_version", "probe_mismatch", "rejected_events", "unknown_fields",
                 "newer_minor_messages", "details_truncated")


class Decoder:
    """Decodes bus messages into events with the limits above; one per subscriber (it keeps counters)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, max_alert_details_bytes: int = DEFAULT_ALERT_DETAILS_BYTES,
                 max_depth: int = DEFAULT_MAX_DEPTH, check_probe: bool = True) -> None:
        self.max_bytes = max_bytes
        self.max_alert_details_bytes = max_alert_details_bytes
        self.max_depth = max_depth
        self.check_probe = check_probe
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)

    @classmethod
    def from_settings(cls, settings: Any) -> "Decoder":
        return cls(max_bytes=getattr(settings, "max_message_bytes", DEFAULT_MAX_BYTES),
                   max_alert_details_bytes=getattr(settings, "alert_details_max_bytes", DEFAULT_ALERT_DETAILS_BYTES))

    def _fail(self, reason: str, detail: str = "") -> DecodeError:
        self.counters["malformed"] += 1
        if reason in self.counters:
            self.counters[reason] += 1
        return DecodeError(reason, detail)

    def check_version(self, headers: Mapping[str, str] | None) -> tuple[int, int]:
        """The message's schema version from its ``Ft-Schema`` header (absent: ours); DecodeError if unreadable."""
        raw = headers.get(SCHEMA_HEADER) if headers else None
        if raw is None:
            return SCHEMA_MAJOR, SCHEMA_MINOR
        v = parse_version(raw)
        if v is None:
            raise self._fail("bad_version", f"unreadable {SCHEMA_HEADER} header {safe_line(raw, 40)!r}")
        if v[0] < SCHEMA_MAJOR:
            raise self._fail("old_major", f"schema {v[0]}.{v[1]} from an older producer: this consumer reads "
                                          f"major {SCHEMA_MAJOR} ({SCHEMA_VERSION}); upgrade the producer")
        if v[0] > SCHEMA_MAJOR:
            raise self._fail("new_major", f"schema {v[0]}.{v[1]} from a newer producer: this consumer reads "
                                          f"major {SCHEMA_MAJOR} ({SCHEMA_VERSION}); upgrade this consumer")
        if v[1] > SCHEMA_MINOR:
            self.counters["newer_minor_messages"] += 1
        return v

    def decode(self, data: bytes | str, subject: str | None = None,
               headers: Mapping[str, str] | None = None, kinds: Iterable[str] | None = None,
               views: Mapping[str, Iterable[str]] | None = None) -> Decoded:
        """The usable events of one message; DecodeError when none is.

        With ``kinds`` (event types, ``"flow"``, ``"verdict"`` ...) only events of those types are
        built and returned; a message with none of them gives no events (not an error).  With
        ``views`` (event type of ``kinds`` -> field names) those events are ``view_model``s.
        """
        self.counters["messages"] += 1
        if len(data) > self.max_bytes:
            raise self._fail("too_large", f"{len(data)} bytes > {self.max_bytes}")
        self.check_version(headers)
        rejected = 0
        reasons: list[str] = []
        only = frozenset(kinds) if kinds is not None else None
        if views and only is None:
            only = frozenset(EVENT_MODELS)    # views go through the kinds parser
        if only is not None and only.issuperset(EVENT_MODELS) and not views:
            only = None
        try:
            parsed = parse_any(data) if only is None else kinds_adapter(only, views).validate_json(data)
        except ValidationError as exc:
            events, rejected, reasons = self._salvage(data, exc, only, views)
        except (ValueError, TypeError, RecursionError, MemoryError) as exc:   # defensive: pydantic raises the first
            raise self._fail("invalid", safe_line(exc, 160)) from None
        else:
            if only is None:
                events = list(parsed.events) if isinstance(parsed, EventBatch) else [parsed]
                unknown = strip_unknown_fields(parsed)
            else:
                events = [ev for ev in (parsed.events if parsed.event_type == "batch" else [parsed])
                          if not isinstance(ev, _Skipped)]
                unknown = 0
                for ev in events:
                    unknown += strip_unknown_fields(ev)
            if unknown:
                self.counters["unknown_fields"] += unknown
        if only is not None and not events and not rejected:
            return Decoded([], 0, [])    # nothing of the wanted kinds in it
        probe = subject_probe(subject) if self.check_probe else None
        if probe is not None and probe not in ("*", ">"):
            kept = [ev for ev in events if ev.probe == probe]
            if len(kept) != len(events):
                n = len(events) - len(kept)
                self.counters["probe_mismatch"] += n
                bad = next(ev.probe for ev in events if ev.probe != probe)
                reasons.append(safe_line(f"probe {bad!r} on a subject of probe {probe!r}", 160))
                rejected += n
                events = kept
        if rejected:
            self.counters["rejected_events"] += rejected
        if not events:
            reason = "probe_mismatch" if reasons and reasons[-1].startswith("probe ") else "invalid"
            if reason == "probe_mismatch":
                self.counters["malformed"] += 1
                raise DecodeError(reason, reasons[-1])
            raise self._fail("invalid", "; ".join(reasons[:2]) or "no usable event")
        limit = self.max_alert_details_bytes
        for ev in events:
            if type(ev) is Alert and ev.details and self._cut_details(ev, limit):
                self.counters["details_truncated"] += 1
        return Decoded(events, rejected, reasons[:5])

    def _salvage(self, data: bytes | str, exc: ValidationError, only: frozenset[str] | None = None,
                 views: Mapping[str, Iterable[str]] | None = None) -> tuple[list[Event], int, list[str]]:
        """A message pydantic rejected: if it is a batch, keep its valid events (of ``only``'s types)."""
        first = _first_error(exc)
        if "recursion limit" in first:
            raise self._fail("too_deep", first)
        try:
            obj = orjson.loads(data)
        except (orjson.JSONDecodeError, ValueError, TypeError, RecursionError) as e:
            reason = "too_deep" if "depth" in str(e) or "recursion" in str(e) else "not_json"
            raise self._fail(reason, safe_line(e, 120)) from None
        if not (isinstance(obj, dict) and obj.get("event_type") == "batch" and isinstance(obj.get("events"), list)):
            raise self._fail("invalid", first)
        if json_depth(obj, self.max_depth) > self.max_depth:
            raise self._fail("too_deep", f"nesting over {self.max_depth}")
        events: list[Event] = []
        rejected = 0
        reasons: list[str] = []
        for i, item in enumerate(obj["events"]):
            et = item.get("event_type") if isinstance(item, dict) else None
            if only is not None and isinstance(et, str) and et in EVENT_MODELS and et not in only:
                continue     # a known type this subscriber does not use (a hostile tag may be any JSON value)
            try:
                ev = parse_one(orjson.dumps(item)) if not (views and isinstance(et, str) and et in views) \
                    else kinds_adapter(only or frozenset(EVENT_MODELS), views).validate_json(orjson.dumps(item))
            except ValidationError as e:
                rejected += 1
                if len(reasons) < 3:
                    reasons.append(f"event {i}: {_first_error(e)}")
                continue
            except (orjson.JSONEncodeError, ValueError, TypeError, RecursionError):
                rejected += 1
                if len(reasons) < 3:
                    reasons.append(f"event {i}: not encodable")
                continue
            unknown = strip_unknown_fields(ev)
            if unknown:
                self.counters["unknown_fields"] += unknown
            events.append(ev)
        return events, rejected, reasons

    @staticmethod
    def _cut_details(alert: Alert, limit: int) -> bool:
        """Keep an alert's details within ``limit`` characters (keys and values); True when cut."""
        size = 0
        for k, v in alert.details.items():
            size += len(k) + len(v)
        if size <= limit:
            return False
        kept: dict[str, str] = {}
        size = 0
        for k, v in alert.details.items():
            room = limit - size - len(k)
            if room <= 0:
                break
            kept[k] = v[:room]
            size += len(k) + len(kept[k])
        kept["_truncated"] = "1"
        alert.details = kept
        return True
