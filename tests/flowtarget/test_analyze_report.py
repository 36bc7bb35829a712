"""analyze's events come from the store's report file (services/store/report.py), not a second reading
of the stream: the same events, in the same order, as the stream reader built them (issue 12)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from services.store.report import ReportFile, read_report
from shared.models import Alert, DnsRecord, EventBatch, FlowRecord, Verdict
from shared.settings import StoreSettings
from tests.conftest import SAMPLE_PCAP, need_corpus


def rec(i: int, phase: str = "end", probe: str = "p1") -> FlowRecord:
    return FlowRecord(timestamp=float(i), probe=probe, flow_id=f"f{i}", phase=phase, first_seen=float(i),
                      last_seen=float(i) + 1, src2dst_packets=i)


class _Msg(SimpleNamespace):
    """A JetStream message as the store takes it: data, subject, headers, its stream sequence."""

    @property
    def metadata(self):
        return SimpleNamespace(sequence=SimpleNamespace(stream=self.seq), num_pending=0, num_delivered=1)


class _Bus:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    async def dead_letter(self, msg, reason, detail="", max_wait_s=5.0):
        self.reasons.append(reason)
        return True


def test_store_writes_the_reported_events_of_what_it_decoded_and_read_report_orders_them(tmp_path):
    from services.store.service import Store

    path = tmp_path / "report.jsonl"
    bus = _Bus()
    store = Store(StoreSettings(probe="p1", report_file=str(path)), bus, sinks=[])
    dns = DnsRecord(timestamp=5.0, probe="p1", flow_id="f5", query_name="caf\u00e9.example", transaction_id=7,
                    is_response=False)
    alert = Alert(timestamp=6.0, probe="p1", alert_id="a1", alert_type="port_scan", severity="high", message="m",
                  first_seen=6.0, last_seen=6.0)
    verdict = Verdict(timestamp=1.0, probe="p1", flow_id="f1", app_protocol="HTTP")
    msgs = [
        _Msg(seq=2, subject="ft.flow.p1", headers=None,       # taken before seq 1: the report orders by sequence
             data=EventBatch(events=[rec(3), verdict, rec(4, "update")]).model_dump_json().encode()),
        _Msg(seq=1, subject="ft.flow.p1", headers=None,
             data=EventBatch(events=[rec(1), rec(2, "start")]).model_dump_json().encode()),
        _Msg(seq=3, subject="ft.dns.p1", headers=None, data=dns.model_dump_json().encode()),
        _Msg(seq=4, subject="ft.flow.p1", headers=None, data=b"not an event"),          # dead-lettered: nothing
        _Msg(seq=5, subject="ft.flow.p1", headers=None,                                 # wrong probe: rejected
             data=EventBatch(events=[rec(9, probe="other"), rec(10)]).model_dump_json().encode()),
        _Msg(seq=6, subject="ft.alert.port_scan.p1", headers=None, data=EventBatch(events=[alert]).model_dump_json().encode()),
        _Msg(seq=2, subject="ft.flow.p1", headers=None,       # a redelivery taken again after a nak: once
             data=EventBatch(events=[rec(3), verdict, rec(4, "update")]).model_dump_json().encode()),
    ]

    points: list = []

    async def take_all():
        for m in msgs:
            await store._take(m, points)
        await store.close()

    asyncio.run(take_all())
    assert points == []     # no sinks (analyze without --out): the report only, no points built
    assert bus.reasons == ["not_json", "rejected_events"]   # the garbage and the foreign event dead-lettered
    with open(path, "ab") as fh:      # a line cut short (a store killed mid-write) is skipped
        fh.write(b'[7, [{"event_type": "fl')
    events = read_report(path)
    assert [(e["event_type"], e.get("flow_id")) for e in events] == [
        ("flow", "f1"), ("flow", "f3"), ("dns", "f5"), ("flow", "f10"), ("alert", "")]
    assert events[2]["query_name"] == "caf\u00e9.example" and events[2]["transaction_id"] == 7
    assert events[0] == rec(1).model_dump(mode="json")       # the reader's dicts: every field, defaults included
    assert events[4]["alert_id"] == "a1"


def test_report_file_keeps_what_orjson_refuses():
    # a lone surrogate (orjson refuses to write it) is written by json and read back
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        rf = ReportFile(Path(d) / "r.jsonl")
        f = rec(1)
        f.host = "bad\udc80host"
        rf.add(1, [f])
        rf.add(None, [rec(2)])            # not from JetStream: after the stream's messages
        rf.add(0, [rec(0)])
        rf.close()
        events = read_report(Path(d) / "r.jsonl")
    assert [e["flow_id"] for e in events] == ["f0", "f1", "f2"]
    assert events[1]["host"] == "bad\udc80host"
    assert json.loads(orjson.dumps(events[0])) == events[0]


def test_read_report_pauses_the_collector_and_restores_it(tmp_path, monkeypatch):
    import gc

    import services.store.report as report

    rf = ReportFile(tmp_path / "r.jsonl")
    for i in range(1, 301):
        rf.add(i, [rec(i)])
    rf.close()
    with open(tmp_path / "r.jsonl", "ab") as fh:
        fh.write(b"[301, [{\"truncated\n")           # a store killed mid-write: skipped
    enabled_while_parsing: list[bool] = []

    def loads(raw):    # the collector's state while each line is parsed
        enabled_while_parsing.append(gc.isenabled())
        return orjson.loads(raw)

    monkeypatch.setattr(report, "orjson", SimpleNamespace(loads=loads, JSONDecodeError=orjson.JSONDecodeError))
    assert gc.isenabled()
    events = read_report(tmp_path / "r.jsonl")
    assert len(enabled_while_parsing) == 301 and not any(enabled_while_parsing)
    assert gc.isenabled()                               # restored
    assert [e["flow_id"] for e in events] == [f"f{i}" for i in range(1, 301)]
    gc.disable()
    try:
        read_report(tmp_path / "r.jsonl")
        assert not gc.isenabled()                       # a caller's disabled collector stays disabled
    finally:
        gc.enable()


@pytest.mark.parametrize("store_files", [True, False])
def test_pipeline_events_from_the_store_equal_the_stream_readers(tmp_path, store_files):
    """The whole pipeline on real captures: the report's events are exactly what the stream reader
    (the former source, still the fallback without a store) collects in the same run, in order;
    also when the store writes no files (analyze without --out)."""
    from flowtarget.cli import REPORTED_KINDS, _pipeline_for_files, reported_event
    from flowtarget.orchestrate import Orchestrator, StreamCollector

    corpus = need_corpus()
    files = [str(SAMPLE_PCAP)] + [str(corpus / n) for n in ("dns_long_domainname.pcap", "chrome.pcap",
                                                                 "quic-mvfst-27.pcapng", "http-proxy.pcapng")
                                  if (corpus / n).exists()]
    orch = Orchestrator(None, probe="analyze", quiet=True, env={"FT_STREAM_STORAGE": "file"})

    async def run():
        reader = await StreamCollector(orch.settings, keep=reported_event, kinds=REPORTED_KINDS).start()
        status, events, _stats = await _pipeline_for_files(orch, files, tmp_path / "out", {}, progress=False,
                                                           store_files=store_files)
        return status, events, await reader.finish()

    try:
        status, events, read = asyncio.run(run())
    finally:
        orch.close()
    assert status == 0
    assert events == read
    kinds = {e["event_type"] for e in events}
    assert {"flow", "dns"} <= kinds
    assert all(e["phase"] == "end" for e in events if e["event_type"] == "flow")
    flows_file = tmp_path / "out" / "flows.jsonl"
    if store_files:
        assert flows_file.read_text().count("\n") > 0
    else:
        assert not flows_file.exists()
