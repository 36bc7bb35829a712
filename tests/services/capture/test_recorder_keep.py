"""The recorder's cutoff from the meter's keep marks (FlowMeter.record_cutoff / take_keep).

With a cutoff, the meter marks every record it meters (one comparison on its
flow's byte count, in the compiled loop where built) and Recorder.record takes
the marks of its batch instead of re-deriving each packet's flow key.  The
recorder's own key path stays as the fallback (no meter, or marks that do not
match the batch); on traffic whose flows each use their own 5-tuple both give
the same store.
"""

from __future__ import annotations

from pathlib import Path

import dpkt
import pytest

from services.capture.flows import FlowMeter, ListSink
from services.capture.recorder import Recorder, list_store
from shared.settings import CaptureSettings
from tests.services.capture.test_recorder import traffic


def stored(directory: Path) -> list[tuple[float, bytes]]:
    out = []
    for p in list_store(directory):
        with open(p, "rb") as fh:
            out += [(round(ts, 6), bytes(buf)) for ts, buf in dpkt.pcap.Reader(fh)]
    return out


def run(frames, directory: Path, cutoff: int, with_meter: bool, batch: int = 300) -> Recorder:
    meter = FlowMeter(CaptureSettings(verdict_wait_s=0), ListSink(), source="eth7")
    meter.set_source("eth7", 1)
    rec = Recorder(directory, meter=meter if with_meter else None, cutoff_bytes=cutoff)
    for i in range(0, len(frames), batch):
        part = frames[i:i + batch]
        meter.process_batch(part)
        rec.record(part, 1)
    rec.close()
    return rec


def test_meter_marks_and_own_keys_cut_the_same(tmp_path, monkeypatch):
    frames = traffic(n_flows=300, seed=11)
    calls = []
    own_cut = Recorder._cut

    def counting_cut(self, recs, dl):
        calls.append(len(recs))
        return own_cut(self, recs, dl)

    monkeypatch.setattr(Recorder, "_cut", counting_cut)
    a = run(frames, tmp_path / "marks", 1500, True)
    assert calls == []                   # every batch cut by the meter's marks
    b = run(frames, tmp_path / "keys", 1500, False)
    assert sum(calls) == len(frames)     # without a meter: the recorder's own keys
    assert a.packets_cut == b.packets_cut > 0
    assert stored(tmp_path / "marks") == stored(tmp_path / "keys")


def test_marks_that_do_not_match_the_batch_are_not_used(tmp_path):
    frames = traffic(n_flows=60, seed=12)
    meter = FlowMeter(CaptureSettings(verdict_wait_s=0), ListSink(), source="eth7")
    meter.set_source("eth7", 1)
    rec = Recorder(tmp_path, meter=meter, cutoff_bytes=1000)
    assert meter.record_cutoff == 1000
    meter.process_batch(frames[:100])
    rec.record(frames[:50], 1)           # not the batch the meter marked: the recorder's own keys
    assert meter.take_keep() == bytearray()   # the stale marks were taken (and dropped)
    meter.process_batch(frames[50:])
    rec.record(frames[50:], 1)
    rec.close()
    assert rec.packets_written + rec.packets_cut == len(frames)


@pytest.mark.parametrize("cutoff", [0, 1])
def test_no_marks_without_a_cutoff_and_everything_past_one_byte_cut(tmp_path, cutoff):
    frames = traffic(n_flows=40, seed=13)
    meter = FlowMeter(CaptureSettings(verdict_wait_s=0), ListSink(), source="eth7")
    meter.set_source("eth7", 1)
    rec = Recorder(tmp_path, meter=meter, cutoff_bytes=cutoff)
    meter.process_batch(frames)
    if not cutoff:
        assert meter.take_keep() == bytearray()
        return
    rec.record(frames, 1)
    rec.close()
    flows = {r.flow_id for r in meter.sink.flows if r.phase == "start"}
    # the first packet of every flow, and every packet of no flow (ARP)
    non_ip = sum(1 for _ts, fr in frames if fr[12:14] == b"\x08\x06")
    assert rec.packets_written == len(flows) + non_ip
