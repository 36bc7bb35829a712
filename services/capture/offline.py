"""The flow meter without NATS: capture files through FlowMeter into a sink.

Benches, tools and tests use this to get what capture would publish (flow
records, samples, packet events) from a capture file, in one process.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from shared.models import FlowRecord, FlowSample, PacketEvent
from shared.settings import CaptureSettings

from .flows import FlowMeter, MeterSink
from .sources import FileSource

__all__ = ["replay", "LastSampleSink", "last_samples"]


def replay(paths: Iterable[str | Path], sink: MeterSink, settings: CaptureSettings | None = None,
           probe: str = "offline") -> FlowMeter:
    """Meter every packet of each file (one after the other, flows ended at each file's end).

    A file that is not a capture raises CaptureFileError; a damaged one gives
    what it can (see FileSource).  Returns the meter, for its counters.
    """
    meter = FlowMeter(settings or CaptureSettings(verdict_wait_s=0), sink, probe=probe)
    for path in paths:
        src = FileSource(str(path))
        meter.set_source(Path(path).name, src.datalink)
        for dlt, recs in src.batches():
            meter.process_batch(recs, dlt)
        meter.finish("eof")
    return meter


class LastSampleSink:
    """Keeps each flow's last (most complete) sample, its end record and every packet event."""

    def __init__(self) -> None:
        self.last: dict[str, FlowSample] = {}
        self.ends: list[FlowRecord] = []
        self.packets: list[PacketEvent] = []

    def sample(self, s: FlowSample) -> None:
        self.last[s.flow_id] = s

    def flow(self, rec: FlowRecord) -> None:
        if rec.phase == "end":
            self.ends.append(rec)

    def packet(self, p: PacketEvent) -> None:
        self.packets.append(p)


def last_samples(paths: Iterable[str | Path] | str | Path, **kw: Any) -> list[FlowSample]:
    """Each flow's last sample, for classifying a capture offline."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    sink = LastSampleSink()
    replay(paths, sink, **kw)
    return list(sink.last.values())
