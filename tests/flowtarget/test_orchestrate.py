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


def test_collector_with_keep_validates_only_what_it_keeps(nats_server):
    """analyze's reader (issue 12): only the accepted events are validated and returned, each as the
    unfiltered reader returns it; a bad one among them is skipped alone, a rejected one is not looked at."""
    import orjson

    from flowtarget.cli import REPORTED_KINDS, reported_event
    from shared.models import Verdict, batch_json

    def upd(i: int) -> FlowRecord:
        return FlowRecord(timestamp=float(i), probe="t", flow_id=f"u{i}", phase="update", first_seen=float(i),
                          last_seen=float(i) + 1)

    async def main():
        settings = CommonSettings(nats_url=nats_server.url, probe="t")
        bus = await Bus.connect(settings, "test")
        await bus.ensure_stream()
        plain = await StreamCollector(settings).start()
        kept = await StreamCollector(settings, keep=reported_event).start()
        typed = await StreamCollector(settings, keep=reported_event, kinds=REPORTED_KINDS).start()
        verdict = Verdict(timestamp=1.0, probe="t", flow_id="f1", app_protocol="TLS", host="example.org")
        await bus.js_publish("ft.flow.t", batch_json([verdict, rec(1), upd(2), rec(3)]))
        bad = orjson.loads(batch_json([rec(4), rec(5), upd(6)]))
        bad["events"][0]["src_port"] = 70000            # out of range: this end record alone is skipped
        bad["events"][2]["src_port"] = "not a port"      # an update: never validated, so not counted
        await bus.js.publish("ft.flow.t", orjson.dumps(bad))
        await bus.js.publish("ft.flow.t", b"not an event")
        got_plain = await plain.finish(timeout_s=30)
        got = await kept.finish(timeout_s=30)
        got_typed = await typed.finish(timeout_s=30)
        await bus.close()
        return got_plain, got, kept.skipped, got_typed, typed.skipped

    got_plain, got, skipped, got_typed, skipped_typed = asyncio.run(main())
    assert [e["flow_id"] for e in got] == ["f1", "f3", "f5"]
    assert got[0] == next(e for e in got_plain if e["flow_id"] == "f1" and e["event_type"] == "flow")
    assert skipped == 2      # the out-of-range end record and the message that is no JSON
    # with kinds (analyze's reader): the same events; the bad update record is a flow record, validated
    # as one (and counted), the verdict is never built
    assert got_typed == got
    assert skipped_typed == 3
