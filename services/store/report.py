"""The events ``flowtarget analyze`` reports, written by the store that already decoded them (issue 12).

``flowtarget analyze`` (and ``run --pcap``, ``bench pipeline``) print a report
and write ``--jsonl`` from the stored flow end records, DNS records and alerts.
They used to read the whole stream a second time and validate every record
again (3.7 CPU-s of 30 on the 1 M-packet file, plus nats-server's second
delivery of every message).  The store has just decoded those events through
``shared.codec`` (size, depth, schema version, probe checked); with
``FT_REPORT_FILE`` set it appends them to that file, one line per stream
message:

    [<stream sequence>, [<event>, ...]]

each event as ``shared.models.event_dict`` gives it (what the reader built).
The store flushes the file before it acknowledges a batch; a message taken
twice (a redelivery after a nak) appears twice, with the same sequence:
``read_report`` keeps the first and orders lines by sequence, i.e. in stream
order, as the reader had them.  One store replica per file (analyze runs one).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import orjson

from shared.models import Alert, DnsRecord, Event, FlowRecord, event_dict
from shared.runner import gc_paused

log = logging.getLogger("flowtarget.store.report")


def reported(ev: Event) -> bool:
    """The events analyze reports: flow end records, DNS records and alerts (``flowtarget.cli.reported_event``
    on the model instead of its dict)."""
    t = type(ev)
    return (t is FlowRecord and ev.phase == "end") or t is DnsRecord or t is Alert


def _line(seq: int, events: list[dict[str, Any]]) -> bytes:
    try:
        return orjson.dumps([seq, events]) + b"\n"
    except (TypeError, orjson.JSONEncodeError):   # e.g. a lone surrogate in a string: json writes it escaped
        return (json.dumps([seq, events]) + "\n").encode("ascii")


class ReportFile:
    """Appends the reported events of each message the store took (see the module's docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fh: Any = open(self.path, "ab")
        self._nonjs = 0        # messages without a stream sequence (not from JetStream): after the others, in order
        self.lines = 0

    def add(self, seq: int | None, events: list[Event]) -> None:
        if self._fh is None:
            return
        # a flow record's __dict__ is event_dict's document: written at once, so not copied
        rep = [ev.__dict__ if type(ev) is FlowRecord else event_dict(ev) for ev in events if reported(ev)]
        if not rep:
            return
        if seq is None:
            self._nonjs += 1
            seq = -self._nonjs
        self._fh.write(_line(seq, rep))
        self.lines += 1

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError as exc:
                log.warning("closing the report file: %s", exc)
            self._fh = None


def read_report(path: str | Path) -> list[dict[str, Any]]:
    """The events of a report file in stream order, each message once (its first copy).

    The file is the store's own output in a directory of the caller's (not bus input): lines are
    parsed as JSON, not validated again; a line that does not parse (a store killed mid-write) is
    skipped.
    """
    by_seq: dict[int, list[dict[str, Any]]] = {}
    with open(path, "rb") as fh, gc_paused():     # ~10^6 fresh dicts: no collector passes over them
        for raw in fh:
            try:
                seq, events = orjson.loads(raw)
            except (orjson.JSONDecodeError, ValueError, TypeError):
                try:   # json writes what orjson refuses to (a lone surrogate); orjson reads it back, json too
                    seq, events = json.loads(raw)
                except (ValueError, TypeError):
                    continue
            if isinstance(seq, int) and isinstance(events, list) and seq not in by_seq:
                by_seq[seq] = events
    out: list[dict[str, Any]] = []
    js = sorted(s for s in by_seq if s >= 0)
    for s in js:
        out.extend(by_seq[s])
    for s in sorted((s for s in by_seq if s < 0), reverse=True):
        out.extend(by_seq[s])
    return out
