"""The stream collector analyze uses, against a real nats-server with JetStream."""

from __future__ import annotations

import asyncio

from flowtarget.orchestrate import StreamCollector
from shared.bus import Bus
from shared.models import EventBatch, FlowRecord
from shared.settings import CommonSettings


def rec(i: int) -> FlowRecord:
    return FlowRecord(timestamp=float(i), probe="t", flow_id=f"f{i}", phase="end", first_seen=float(i),
                      last_seen=float(i) + 1, src2dst_packets=i)


def test_collector_started_before_the_stream_reads_everything_in_order_and_skips_garbage(nats_server):
    async def main():
        settings = CommonSettings(nats_url=nats_server.url, probe="t")
        collector = await StreamCollector(settings).start()   # the stream does not exist yet
        await asyncio.sleep(0.3)
        bus = await Bus.connect(settings, "test")
        await bus.ensure_stream()
        await bus.js_publish("ft.flow.t", EventBatch(events=[rec(1), rec(2)]).model_dump_json().encode())
        await bus.js.publish("ft.flow.t", b"not an event")
        await asyncio.sleep(0.5)   # read while the "run" goes on
        for i in range(3, 203):
            await bus.js_publish("ft.flow.t", rec(i).model_dump_json().encode())
        events = await collector.finish(timeout_s=30)
        await bus.close()
        return events, collector.skipped

    events, skipped = asyncio.run(main())
    assert [e["flow_id"] for e in events] == [f"f{i}" for i in range(1, 203)]
    assert events[0]["src2dst_packets"] == 1 and events[0]["phase"] == "end"
    assert skipped == 1
