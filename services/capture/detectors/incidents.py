"""Incidents, sliding counters and bounded maps shared by the detectors.

An *incident* is one ongoing attack (one ARP flood, one scan, ...).  It gets a
stable ``alert_id`` when it opens and is published as an :class:`Alert`:

- at once when it opens (``details["state"] == "open"``);
- again, with the grown ``count``/``last_seen``, at most once per
  ``alert_update_interval_s`` while new evidence keeps arriving (``"update"``);
- a last time when no evidence came for ``alert_expire_s`` (``"closed"``).

One clock: an incident ages on the table's clock (``now``, set by the
detectors before each event: the latest packet time of a replay, the wall
clock live), not on the packet time of its evidence, so that evidence which
arrives late (a flow's end record after its idle timeout) extends an open
incident; evidence older than a closed incident's last packet never reopens it.

Everything here is bounded: incidents by ``alert_max_incidents``, maps by an
LRU cap, counters by a fixed number of time buckets.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from typing import Any, Callable, Iterator

from shared.models import Alert

__all__ = ["Incident", "IncidentTable", "SlidingCount", "LruDict", "clean"]

_UNSAFE = re.compile(r"[^\x21-\x7e]")


def clean(value: str, limit: int = 200) -> str:
    """Text from the wire made safe for messages and logs: printable ASCII, bounded."""
    if len(value) > limit:
        value = value[:limit] + "..."
    return _UNSAFE.sub(lambda m: "\\x%02x" % (ord(m.group()) & 0xFF) if ord(m.group()) < 256 else "?", value)


class LruDict(OrderedDict):
    """An ordered dict that forgets its least recently inserted or touched keys past ``cap``.

    ``touch(k)`` moves a key to the young end; ``put`` inserts and evicts.
    (OrderedDict: a plain dict's ``next(iter(d))`` slows down after many deletions.)
    """

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap
        self.evicted = 0

    def touch(self, key: Any) -> Any:
        self.move_to_end(key)
        return self[key]

    def put(self, key: Any, value: Any) -> Any:
        if key in self:
            self.move_to_end(key)
        elif len(self) >= self.cap:
            self.popitem(last=False)
            self.evicted += 1
        self[key] = value
        return value


class SlidingCount:
    """Events in the last ``window`` seconds (of packet time), in ``nb`` buckets.

    Tolerates events that arrive out of order inside the window; older ones
    are ignored.  Memory is at most ``nb`` + 1 buckets.
    """

    __slots__ = ("width", "nb", "buckets", "total", "latest", "since")

    def __init__(self, window: float, nb: int = 10) -> None:
        self.width = window / nb
        self.nb = nb
        self.buckets: dict[int, float] = {}
        self.total = 0.0
        self.latest = -1
        self.since = 0.0

    def rate(self, now: float) -> float:
        """Measured events/s: the window's events over the time they took (at most the window)."""
        span = min(max(now - self.since, self.width), self.width * self.nb)
        return self.total / span

    def _advance(self, b: int) -> None:
        self.latest = b
        low = b - self.nb
        if len(self.buckets) > self.nb or (self.buckets and min(self.buckets) < low):
            for k in [k for k in self.buckets if k < low]:
                self.total -= self.buckets.pop(k)

    def add(self, ts: float, n: float = 1.0) -> float:
        """Count ``n`` events at ``ts``; returns the events now in the window."""
        b = int(ts / self.width)
        if b > self.latest:
            self._advance(b)
        elif b < self.latest - self.nb:
            return self.total
        if self.total < 1e-9:
            self.since = ts  # the window was empty: a burst starts here
        self.buckets[b] = self.buckets.get(b, 0.0) + n
        self.total += n
        return self.total

    def add_span(self, t0: float, t1: float, n: float) -> float:
        """Count ``n`` events spread evenly over [t0, t1]."""
        if t1 - t0 <= self.width or n <= 0:
            return self.add(t1, n)
        window = self.width * self.nb
        if t1 - t0 > window:  # only the share that falls inside the window counts
            n = n * window / (t1 - t0)
            t0 = t1 - window
        b0, b1 = int(t0 / self.width), int(t1 / self.width)
        if b1 > self.latest:
            self._advance(b1)
        if self.total < 1e-9:
            self.since = t0
        per = n / (b1 - b0 + 1)
        for b in range(max(b0, self.latest - self.nb), b1 + 1):
            self.buckets[b] = self.buckets.get(b, 0.0) + per
            self.total += per
        return self.total

    def recent(self, now: float, span: float) -> float:
        """Events in the buckets that cover the last ``span`` seconds (at least one bucket)."""
        low = int((now - span) / self.width) + 1
        return sum(v for k, v in self.buckets.items() if k >= low)

    def count(self, now: float) -> float:
        """Events in the window ending at ``now`` (does not move the window)."""
        low = int(now / self.width) - self.nb
        return sum(v for k, v in self.buckets.items() if k >= low)


TOP_CAP = 4096
TOP_N = 5


def top(d: dict[str, int], n: int = TOP_N) -> list[str]:
    return [k for k, _v in sorted(d.items(), key=lambda kv: -kv[1])[:n]]


class Incident:
    __slots__ = (
        "alert_id", "alert_type", "key", "severity", "first_seen", "last_seen", "count", "message",
        "transport", "src_ip", "src_port", "dst_ip", "dst_port", "flow_id", "details",
        "published_at", "published_count", "published_last", "updates", "refresh",
        "touched", "started_at", "rate_unit", "sources", "targets", "notes",
    )

    def __init__(self, alert_id: str, alert_type: str, key: Any, ts: float) -> None:
        self.alert_id = alert_id
        self.alert_type = alert_type
        self.key = key
        self.severity = "medium"
        self.first_seen = ts
        self.last_seen = ts
        self.count = 0
        self.message = ""
        self.transport = ""
        self.src_ip = ""
        self.src_port = 0
        self.dst_ip = ""
        self.dst_port = 0
        self.flow_id = ""
        self.details: dict[str, str] = {}
        self.published_at = ts
        self.published_count = -1
        self.published_last = -1.0
        self.updates = 0
        # called before each publication to (re)build message/details lazily
        self.refresh: Callable[[], None] | None = None
        self.touched = ts          # the table's clock at the latest evidence (expiry is judged on it)
        self.started_at = ts       # packet time of the attack's first evidence
        self.rate_unit = ""
        self.sources: dict[str, int] = {}
        self.targets: dict[str, int] = {}
        self.notes: dict[str, str] = {}   # kept across refreshes of details (e.g. spoofing seen in a flood)

    def note(self, source: str = "", target: str = "", n: int = 1) -> None:
        """Count a source and/or a target of the attack (bounded: new keys stop at TOP_CAP)."""
        for d, k in ((self.sources, source), (self.targets, target)):
            if k:
                if k in d:
                    d[k] += n
                elif len(d) < TOP_CAP:
                    d[k] = n

    def rate(self) -> float:
        """count over the time the attack was seen; under 50 ms, the intervals between the events
        (a 2,000/s flood reaches a threshold of 100 in 50 ms); 0 when all came at one instant."""
        span = self.last_seen - self.started_at
        if span >= 0.05:
            return self.count / span
        return (self.count - 1) / span if span > 0 and self.count > 1 else 0.0


    @property
    def changed(self) -> bool:
        return self.count != self.published_count or self.last_seen != self.published_last


class IncidentTable:
    """Open incidents of every detector, keyed by (alert_type, key)."""

    def __init__(self, probe: str, update_interval_s: float, expire_s: float, max_open: int, salt: str = "") -> None:
        self.probe = probe
        self.salt = salt
        self.update_interval_s = update_interval_s
        self.expire_s = expire_s
        self.max_open = max_open
        self.now = 0.0   # the clock (set by the detectors: latest packet time, or wall time live)
        self.open: dict[tuple[str, Any], Incident] = {}
        # closed incidents that late evidence (in their own time line) may reopen under the same id
        self.recently_closed: LruDict = LruDict(max_open)
        self.stats: dict[str, int] = {"opened": 0, "updates": 0, "closed": 0, "suppressed": 0, "reopened": 0,
                                      "late": 0}

    def get(self, alert_type: str, key: Any) -> Incident | None:
        return self.open.get((alert_type, key))

    def hit(self, alert_type: str, key: Any, ts: float, add: int = 1) -> tuple[Incident | None, bool]:
        """Add evidence to the incident (alert_type, key), opening it if needed.

        Returns (incident, is_new); (None, False) when the table is full.
        """
        clock = self.now if self.now > ts else ts
        inc = self.open.get((alert_type, key))
        if inc is not None:
            inc.count += add
            if ts > inc.last_seen:
                inc.last_seen = ts
            if clock > inc.touched:
                inc.touched = clock
            return inc, False
        old = self.recently_closed.get((alert_type, key))
        if old is not None and ts < old.published_at:
            # late evidence: packets from before the incident closed (e.g. a flood flow's end record after
            # its idle timeout, carrying its last packets): they belong to it and do not reopen it
            self.stats["late"] += 1
            return None, False
        if len(self.open) >= self.max_open:
            self.stats["suppressed"] += 1
            return None, False
        if old is not None:
            self.recently_closed.pop((alert_type, key), None)
            if clock - old.touched < self.expire_s:
                old.count = max(old.count, add)
                old.last_seen = max(old.last_seen, ts)
                old.touched = clock
                self.open[(alert_type, key)] = old
                self.stats["reopened"] += 1
                return old, True
        raw = f"{self.probe}|{self.salt}|{alert_type}|{key!r}|{ts:.6f}".encode("utf-8", "replace")
        inc = Incident(hashlib.sha1(raw).hexdigest()[:24], alert_type, key, ts)
        inc.count = add
        inc.touched = clock
        self.open[(alert_type, key)] = inc
        self.stats["opened"] += 1
        return inc, True

    def close(self, alert_type: str, key: Any, why: str) -> Alert | None:
        """Close an open incident at once (e.g. the real owner reclaimed its address); its last Alert."""
        inc = self.open.pop((alert_type, key), None)
        if inc is None:
            return None
        inc.notes["closed_because"] = why
        self.recently_closed.put((alert_type, key), inc)
        self.stats["closed"] += 1
        return self.alert(inc, "closed", max(self.now, inc.touched))

    def alert(self, inc: Incident, state: str, ts: float | None = None) -> Alert:
        """The Alert for the incident's current state (marks it published)."""
        if inc.refresh is not None:
            inc.refresh()
        inc.published_at = max(self.now, inc.touched) if ts is None else ts
        inc.published_count = inc.count
        inc.published_last = inc.last_seen
        details = dict(inc.details)
        details.update(inc.notes)
        details["state"] = "reopened" if state == "open" and inc.updates else state
        details["update"] = str(inc.updates)
        inc.updates += 1
        return Alert(
            timestamp=inc.last_seen,
            probe=self.probe,
            flow_id=inc.flow_id[:64],
            transport=inc.transport,
            src_ip=inc.src_ip,
            src_port=inc.src_port,
            dst_ip=inc.dst_ip,
            dst_port=inc.dst_port,
            alert_id=inc.alert_id,
            alert_type=inc.alert_type,  # type: ignore[arg-type]
            severity=inc.severity,  # type: ignore[arg-type]
            first_seen=inc.first_seen,
            last_seen=inc.last_seen,
            count=inc.count,
            message=inc.message[:2048],
            details=details,
            started_at=inc.started_at,
            rate=round(inc.rate(), 1),
            rate_unit=inc.rate_unit,
            top_sources=top(inc.sources),
            top_targets=top(inc.targets),
        )

    def tick(self, now: float) -> list[Alert]:
        """Rate-limited updates of changed incidents; close the quiet ones."""
        out: list[Alert] = []
        closing = []
        for k, inc in self.open.items():
            if now - inc.touched >= self.expire_s:
                closing.append(k)
            elif inc.changed and now - inc.published_at >= self.update_interval_s:
                out.append(self.alert(inc, "update", now))
                self.stats["updates"] += 1
        for k in closing:
            inc = self.open.pop(k)
            out.append(self.alert(inc, "closed", now))
            self.recently_closed.put(k, inc)
            self.stats["closed"] += 1
        return out

    def flush(self) -> list[Alert]:
        """Close every open incident (end of a capture file, shutdown)."""
        out = [self.alert(inc, "closed", max(inc.touched, inc.published_at)) for inc in self.open.values()]
        self.stats["closed"] += len(out)
        for k, inc in self.open.items():
            self.recently_closed.put(k, inc)
        self.open.clear()
        return out

    def __iter__(self) -> Iterator[Incident]:
        return iter(self.open.values())
