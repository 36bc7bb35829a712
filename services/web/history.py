"""History for the console: read back what the JetStream stream keeps.

The stream (``FT_STREAM_NAME``) holds every flow record, DNS record, alert and
block action; it is the console's only database.  A search reads the newest
``FT_WEB_SCAN_MAX_MESSAGES`` messages of one kind (each message a batch) with
an ordered ephemeral consumer, validates them against shared/models.py
(a malformed message is counted and skipped), filters and returns the newest
matches first.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared.bus import RateLimitedLog, safe_text
from shared.models import event_dict, events_of, parse_event
from shared.subjects import all_of

log = logging.getLogger("flowtarget.web.history")
_rlog = RateLimitedLog(log)


@dataclass
class ScanResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    scanned_messages: int = 0
    scanned_events: int = 0
    matched: int = 0          # matches found in what was read (rows holds at most the limit)
    malformed: int = 0
    truncated: bool = False   # the scan stopped at the message limit or the time limit: older history was not searched
    more: bool = False        # the page filled up before the oldest message: older matches were not looked for
    stream_missing: bool = False
    seconds: float = 0.0


async def _read_window(js: Any, stream: str, filt: str, first: int, last: int, timeout_s: float) -> list[Any]:
    """The messages on ``filt`` with stream sequence in [first, last], oldest first."""
    from nats.js.api import ConsumerConfig, DeliverPolicy

    cfg = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=first)
    sub = await js.subscribe(filt, stream=stream, ordered_consumer=True, config=cfg)
    out: list[Any] = []
    try:
        info = await sub.consumer_info()
        # matching messages from ``first`` to the stream's end: those still pending plus those the
        # server has pushed to us already (this consumer's delivered sequence counts them)
        pending = int(info.num_pending or 0) + int((info.delivered.consumer_seq if info.delivered else 0) or 0)
        deadline = time.monotonic() + timeout_s
        while pending > 0 and time.monotonic() < deadline:
            try:
                msg = await sub.next_msg(timeout=2.0)
            except asyncio.TimeoutError:
                break
            pending -= 1
            try:
                seq = msg.metadata.sequence.stream
            except Exception:  # noqa: BLE001 - a message without metadata: not from the stream
                continue
            if seq > last:
                break
            out.append(msg)
    finally:
        try:
            await sub.unsubscribe()
        except Exception:  # noqa: BLE001 - the connection may be closing
            pass
    return out


async def scan(js: Any, stream: str, kind: str, keep: Callable[[dict[str, Any]], bool], limit: int,
               max_messages: int, timeout_s: float = 20.0, first_window: int = 256) -> ScanResult:
    """The newest ``limit`` events of ``kind`` (flow, dns, alert, block) for which ``keep`` is true.

    Reads backwards from the stream's end in windows of sequence numbers that
    double each time, so a search that finds its page among recent events
    stops early; at most ``max_messages`` messages of this kind are read.
    """
    from nats.js.errors import NotFoundError

    res = ScanResult()
    started = time.monotonic()
    filt = all_of(kind)
    try:
        info = await js.stream_info(stream, subjects_filter=filt)
    except NotFoundError:
        res.stream_missing = True
        return res
    state = info.state
    if not sum((state.subjects or {}).values()):   # None: no message on these subjects
        return res
    found: list[dict[str, Any]] = []                # newest first
    hi, span = state.last_seq, first_window
    deadline = time.monotonic() + timeout_s
    while hi >= state.first_seq and len(found) < limit:
        if res.scanned_messages >= max_messages or time.monotonic() > deadline:
            res.truncated = True
            break
        lo = max(state.first_seq, hi - span + 1)
        msgs = await _read_window(js, stream, filt, lo, hi, max(0.5, deadline - time.monotonic()))
        if len(msgs) > max_messages - res.scanned_messages:
            msgs = msgs[len(msgs) - (max_messages - res.scanned_messages):]   # keep the newest
            res.truncated = True
        res.scanned_messages += len(msgs)
        window: list[dict[str, Any]] = []
        for msg in msgs:
            try:
                parsed = parse_event(msg.data)
            except ValueError as exc:   # pydantic's ValidationError is one
                res.malformed += 1
                _rlog.warning("malformed", "malformed message in the stream skipped: %s", safe_text(str(exc), 200))
                continue
            for ev in events_of(parsed):
                if ev.event_type != kind:
                    continue
                res.scanned_events += 1
                d = event_dict(ev)
                if keep(d):
                    window.append(d)
        found.extend(reversed(window))
        hi, span = lo - 1, span * 2
    res.more = hi >= state.first_seq and len(found) >= limit
    res.matched = len(found)
    res.rows = found[:limit]
    res.seconds = time.monotonic() - started
    return res


# --------------------------------------------------------------------------- filters


def _num(text: str) -> float | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    import datetime as _dt

    try:
        d = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=_dt.timezone.utc)
    return d.timestamp()


class FilterError(ValueError):
    """A search field that cannot be understood (shown to the operator)."""


def _host_pred(host: str) -> Callable[[dict[str, Any]], bool] | None:
    host = host.strip().lower()
    if not host:
        return None
    try:
        net = ipaddress.ip_network(host, strict=False)
    except ValueError:
        net = None
    if net is not None and ("/" in host):
        def in_net(d: dict[str, Any]) -> bool:
            for k in ("src_ip", "dst_ip"):
                try:
                    if ipaddress.ip_address(d.get(k) or "") in net:
                        return True
                except ValueError:
                    pass
            return False
        return in_net

    def sub(d: dict[str, Any]) -> bool:
        return any(host in str(d.get(k) or "").lower() for k in ("src_ip", "dst_ip", "host", "query_name"))
    return sub


def flow_filter(q: dict[str, str]) -> Callable[[dict[str, Any]], bool]:
    """host (address, CIDR or name part), port, protocol (transport or L7), application, from/to (epoch or ISO)."""
    preds: list[Callable[[dict[str, Any]], bool]] = [lambda d: d.get("phase") == "end"]
    hp = _host_pred(q.get("host", ""))
    if hp:
        preds.append(hp)
    port = (q.get("port") or "").strip()
    if port:
        if not port.isdigit() or int(port) > 65535:
            raise FilterError("port must be a number 0-65535")
        p = int(port)
        preds.append(lambda d: d.get("src_port") == p or d.get("dst_port") == p)
    proto = (q.get("protocol") or "").strip().lower()
    if proto:
        preds.append(lambda d: proto in (str(d.get("transport", "")).lower(), str(d.get("app_protocol", "")).lower()))
    app = (q.get("application") or "").strip().lower()
    if app:
        preds.append(lambda d: app in str(d.get("application", "")).lower())
    preds += _time_preds(q, "first_seen", "last_seen")
    return lambda d: all(p(d) for p in preds)


def _time_preds(q: dict[str, str], start_key: str, end_key: str) -> list[Callable[[dict[str, Any]], bool]]:
    out: list[Callable[[dict[str, Any]], bool]] = []
    for name in ("from", "to"):
        raw = (q.get(name) or "").strip()
        if raw and _num(raw) is None:
            raise FilterError(f"{name!r} must be epoch seconds or an ISO 8601 time")
    t0, t1 = _num(q.get("from", "")), _num(q.get("to", ""))
    if t0 is not None:
        out.append(lambda d: float(d.get(end_key) or d.get("timestamp") or 0) >= t0)
    if t1 is not None:
        out.append(lambda d: float(d.get(start_key) or d.get("timestamp") or 0) <= t1)
    return out


def dns_filter(q: dict[str, str]) -> Callable[[dict[str, Any]], bool]:
    preds: list[Callable[[dict[str, Any]], bool]] = []
    name = (q.get("name") or "").strip().lower()
    if name:
        preds.append(lambda d: name in str(d.get("query_name", "")).lower())
    hp = _host_pred(q.get("host", ""))
    if hp:
        preds.append(hp)
    qt = (q.get("qtype") or "").strip().upper()
    if qt:
        preds.append(lambda d: str(d.get("query_type", "")).upper() == qt)
    if q.get("responses") == "1":
        preds.append(lambda d: bool(d.get("is_response")))
    preds += _time_preds(q, "timestamp", "timestamp")
    return lambda d: all(p(d) for p in preds)


def block_filter(q: dict[str, str]) -> Callable[[dict[str, Any]], bool]:
    preds: list[Callable[[dict[str, Any]], bool]] = []
    rule = (q.get("rule") or "").strip()
    if rule:
        preds.append(lambda d: d.get("rule_id") == rule)
    outcome = (q.get("outcome") or "").strip()
    if outcome:
        preds.append(lambda d: d.get("outcome") == outcome)
    hp = _host_pred(q.get("host", ""))
    if hp:
        preds.append(hp)
    return lambda d: all(p(d) for p in preds)


def fold_incidents(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per incident (alert_id): its latest update, newest incident first.

    ``alerts`` come newest first (as ``scan`` returns them).
    """
    seen: dict[str, dict[str, Any]] = {}
    for a in alerts:
        aid = a.get("alert_id", "")
        if aid not in seen:
            row = dict(a)
            row["updates"] = 1
            row["state"] = (a.get("details") or {}).get("state", "") or "open"
            seen[aid] = row
        else:
            seen[aid]["updates"] += 1
            if not seen[aid].get("evidence_pcap") and a.get("evidence_pcap"):
                seen[aid]["evidence_pcap"] = a["evidence_pcap"]
    return sorted(seen.values(), key=lambda r: -float(r.get("last_seen") or 0))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    v = sorted(values)
    k = min(len(v) - 1, max(0, int(round(q * (len(v) - 1)))))
    return v[k]
