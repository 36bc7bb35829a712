"""The detectors' process builds flow records as views with only the fields the detectors read
(services/capture/detect.py FLOW_FIELDS, shared.codec.view_model): the alerts must be those the
detectors raise on full FlowRecords, with no detector error (a field missing from the view would
raise AttributeError inside a detector, counted as an error)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from services.capture.detect import FLOW_FIELDS, DetectorProcess
from services.capture.detectors import Detectors
from shared.bus import Bus
from shared.codec import DecodeError, Decoder, view_model
from shared.models import FlowRecord, batch_json
from shared.settings import CaptureSettings, CommonSettings, DetectSettings

P = "det"


def rec(i: int, phase: str, **kw) -> FlowRecord:
    t = 1000.0 + i * 0.002
    base = dict(timestamp=t, probe=P, flow_id=f"f{i}", transport="TCP", src_ip="10.1.1.66", src_port=40000 + i % 20000,
                dst_ip="10.1.1.1", dst_port=1 + i % 60000, phase=phase, source="eth1", first_seen=t,
                last_seen=t + 0.001, src_mac="02:00:00:00:00:01", dst_mac="02:00:00:00:00:02",
                host="h.example", category="Web", application="App", tunnel="", end_reason="rst" if phase == "end" else "")
    base.update(kw)
    return FlowRecord(**base)


def traffic() -> list[FlowRecord]:
    out: list[FlowRecord] = []
    i = 0
    for port in range(1, 1300):          # a TCP connect scan: answered by RST
        i += 1
        out.append(rec(i, "start", dst_port=port, src2dst_packets=1, src2dst_tcp_flags=0x02))
        out.append(rec(i, "end", dst_port=port, src2dst_packets=1, dst2src_packets=1, src2dst_tcp_flags=0x02,
                       dst2src_tcp_flags=0x14))
    for k in range(3000):                # half-open SYNs to one service: hot records
        i += 1
        out.append(rec(i, "update", src_ip=f"10.9.{k // 250}.{k % 250 + 1}", dst_ip="10.1.1.2", dst_port=80,
                       src2dst_packets=1, src2dst_tcp_flags=0x02))
    for k in range(600):                 # a UDP scan without answers
        i += 1
        out.append(rec(i, "end", transport="UDP", src_ip="10.1.1.77", dst_port=1 + k, src2dst_packets=1,
                       src2dst_tcp_flags=0, end_reason="idle"))
    for k in range(50):                  # an ICMP flood
        i += 1
        out.append(rec(i, "update", transport="ICMP", src_ip=f"10.8.0.{k + 1}", dst_ip="10.1.1.3", src_port=0,
                       dst_port=0, src2dst_packets=5000, first_seen=1000.0, last_seen=1001.0 + k * 0.01,
                       src2dst_tcp_flags=0, icmp_type=8, icmp_code=0))
    for k in range(500):                 # ordinary browsing
        i += 1
        out.append(rec(i, "end", src_ip="10.1.1.5", dst_ip=f"93.184.0.{k % 200 + 1}", dst_port=443, src_port=50000 + k,
                       src2dst_packets=12, dst2src_packets=15, src2dst_tcp_flags=0x1B, dst2src_tcp_flags=0x1B,
                       end_reason="fin"))
    out.sort(key=lambda r: r.timestamp)
    return out


def summary(alerts) -> list[tuple]:
    return [(a.alert_type, a.severity, a.count, a.src_ip, a.dst_ip, a.message, a.first_seen, a.last_seen)
            for a in alerts]


def test_view_builds_only_the_named_fields_validated_as_the_schema():
    view = view_model("flow", FLOW_FIELDS)
    r = rec(1, "end", src2dst_packets=3)
    v = Decoder().decode(batch_json([r]), f"ft.flow.{P}", kinds=("flow",), views={"flow": FLOW_FIELDS}).events[0]
    assert type(v) is view
    assert all(getattr(v, f) == getattr(r, f) for f in (*FLOW_FIELDS, "timestamp", "probe", "event_type"))
    with pytest.raises(AttributeError):
        v.host                            # noqa: B018 - not in the view
    # a kept field is validated as in FlowRecord (a negative counter rejected), a skipped one is not read
    bad = batch_json([r]).replace(b'"src2dst_packets":3', b'"src2dst_packets":-3')
    with pytest.raises(DecodeError):
        Decoder().decode(bad, f"ft.flow.{P}", kinds=("flow",), views={"flow": FLOW_FIELDS})
    long_host = batch_json([r]).replace(b'"host":"h.example"', b'"host":"' + b"x" * 600 + b'"')
    assert Decoder().decode(long_host, f"ft.flow.{P}", kinds=("flow",), views={"flow": FLOW_FIELDS}).events
    with pytest.raises(DecodeError):     # the full model still refuses it
        Decoder().decode(long_host, f"ft.flow.{P}", kinds=("flow",))
    # a batch with one bad event keeps its good views (the salvage path builds views too)
    two = batch_json([r, rec(2, "end")]).replace(b'"src2dst_packets":3', b'"src2dst_packets":-3')
    got = Decoder().decode(two, f"ft.flow.{P}", kinds=("flow",), views={"flow": FLOW_FIELDS})
    assert got.rejected == 1 and [type(e) for e in got.events] == [view] and got.events[0].flow_id == "f2"


def test_detectors_raise_the_same_alerts_from_views_as_from_full_records():
    flows = traffic()
    chunks = [flows[i:i + 200] for i in range(0, len(flows), 200)]
    direct = Detectors(DetectSettings(), P, live=False)
    want = []
    max_ts = next_tick = 0.0
    for part in chunks:                  # as DetectorProcess.on_message: a tick per second of packet time
        for r in part:
            want += direct.on_flow(r)
            max_ts = max(max_ts, r.timestamp)
        if max_ts >= next_tick:
            next_tick = max_ts + 1.0
            want += direct.tick(max_ts)
    want += direct.tick(max_ts) + direct.flush()
    assert direct.stats["errors"] == 0
    assert {a.alert_type for a in want} >= {"port_scan", "syn_flood", "icmp_flood"}

    async def run():
        bus = Bus(CommonSettings(probe=P), "detect")
        proc = DetectorProcess(CaptureSettings(probe=P, pcap='["x.pcap"]'), bus)
        got = []

        async def keep() -> None:
            got.extend(proc.alerts)
            proc.alerts = []

        proc.publish = keep
        for part in chunks:
            subj = f"ft.live.{P}" if part[0].phase == "start" else f"ft.flow.{P}"
            await proc.on_message(SimpleNamespace(data=batch_json(part), subject=subj, headers=None))
        got += proc.det.tick(proc.max_ts) + proc.det.flush() + proc.alerts
        return got, proc.det.stats["errors"]

    got, errors = asyncio.run(run())
    assert errors == 0
    assert summary(got) == summary(want)
