"""Core NATS subscribers against hostile messages (real nats-server, the real classify service in-process)."""

from __future__ import annotations

import asyncio
import json
import logging

from shared.bus import Bus
from shared.codec import SCHEMA_HEADER
from shared.models import FlowRecord, FlowSample, batch_json
from shared.settings import ClassifySettings, CommonSettings


def sample(i: int, probe: str = "p1") -> FlowSample:
    return FlowSample(timestamp=1.0 + i, probe=probe, flow_id=f"s{i}", transport="TCP", src_ip="10.0.0.1",
                      src_port=40000 + i, dst_ip="10.0.0.2", dst_port=80, first_seen=1.0 + i,
                      src_payloads=[b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"], payload_dirs="s")


async def wait_for(cond, timeout=10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def test_classify_answers_the_valid_samples_of_a_batch_with_an_invalid_one(nats_server, caplog):
    """Item 6: a batch of samples holding one with probe "a.b" lost every sample beside it (the handler raised
    building the verdict subject) and logged a full traceback each time."""
    from services.classify.service import main as classify_main

    settings = ClassifySettings(nats_url=nats_server.url, probe="p1", use_ndpi=False)
    docs = [json.loads(sample(i).model_dump_json()) for i in range(4)]
    docs[0]["probe"] = "a.b"          # first: today the whole batch was lost
    bad_batch = json.dumps({"event_type": "batch", "events": docs}).encode()

    async def main():
        stop = asyncio.Event()
        cbus = await Bus.connect(settings, "classify")
        task = asyncio.create_task(classify_main(settings, cbus, stop))
        bus = await Bus.connect(settings, "test")
        verdicts: list[str] = []

        async def on_verdicts(msg):
            verdicts.extend(e["flow_id"] for e in json.loads(msg.data)["events"])

        await bus.nc.subscribe("ft.verdict.>", cb=on_verdicts)
        ready = False
        for _ in range(100):
            try:
                await bus.nc.request("ft.ctl.x.classify_ready", b"", timeout=0.2)
                ready = True
                break
            except Exception:  # noqa: BLE001 - not subscribed yet
                await asyncio.sleep(0.1)
        assert ready
        for _ in range(3):
            await bus.nc.publish("ft.sample.p1", bad_batch)
        await bus.nc.flush()
        assert await wait_for(lambda: len(verdicts) >= 9)
        await asyncio.sleep(0.2)
        stop.set()
        await task
        counters = dict(cbus.decoder.counters)
        handler_errors = cbus.handler_errors
        await cbus.close()
        await bus.close()
        return verdicts, counters, handler_errors

    with caplog.at_level(logging.WARNING):
        verdicts, counters, handler_errors = asyncio.run(main())
    assert sorted(verdicts) == sorted(["s1", "s2", "s3"] * 3)
    assert counters["rejected_events"] == 3 and handler_errors == 0
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    rejected_lines = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejected_lines) == 1, "not rate-limited"


def test_core_subscriber_tolerates_newer_minor_rejects_other_major(nats_server, caplog):
    """Item 7 on core NATS: unknown fields of a newer minor version are counted and dropped, the event
    delivered; another major version is rejected with one clear line; no header = this version."""
    async def main():
        bus = await Bus.connect(CommonSettings(nats_url=nats_server.url, probe="p1"), "test")
        got = []

        async def handler(ev):
            got.append((ev.flow_id, ev.model_dump()))

        await bus.subscribe("ft.flow.p1", handler)
        rec = json.loads(FlowRecord(timestamp=1, probe="p1", flow_id="new", phase="end", first_seen=1,
                                    last_seen=1).model_dump_json())
        rec["future_counter"] = 7
        rec["future_obj"] = {"a": [1, 2]}
        await bus.nc.publish("ft.flow.p1", json.dumps(rec).encode(), headers={SCHEMA_HEADER: "1.7"})
        old = FlowRecord(timestamp=1, probe="p1", flow_id="old", phase="end", first_seen=1, last_seen=1)
        await bus.nc.publish("ft.flow.p1", batch_json([old]), headers={SCHEMA_HEADER: "0.9"})
        await bus.nc.publish("ft.flow.p1", batch_json([old.model_copy(update={"flow_id": "v2"})]),
                             headers={SCHEMA_HEADER: "2.0"})
        await bus.nc.publish("ft.flow.p1", batch_json([old.model_copy(update={"flow_id": "nohdr"})]))
        await bus.publish("ft.flow.p1", old.model_copy(update={"flow_id": "ours"}))
        assert await wait_for(lambda: len(got) >= 3)
        await asyncio.sleep(0.2)
        await bus.close()
        return got, dict(bus.decoder.counters)

    with caplog.at_level(logging.WARNING):
        got, c = asyncio.run(main())
    assert [g[0] for g in got] == ["new", "nohdr", "ours"]
    assert "future_counter" not in got[0][1]
    assert c["unknown_fields"] == 2 and c["newer_minor_messages"] == 1
    assert c["old_major"] == 1 and c["new_major"] == 1
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "schema 0.9 from an older producer" in text and "schema 2.0 from a newer producer" in text


def test_rate_limited_log_is_bounded():
    from shared.bus import RateLimitedLog

    rl = RateLimitedLog(logging.getLogger("t"), interval_s=60, max_keys=10)
    for i in range(1000):
        rl.warning(f"k{i}", "x")
    assert len(rl._last) <= 10 and len(rl._suppressed) <= 10


def test_subscription_buffer_is_bounded_and_drops_counted(nats_server):
    """A peer that publishes faster than a subscriber reads fills at most FT_SUB_PENDING_MB; the rest is
    dropped and counted, and the subscriber goes on."""
    async def main():
        bus = await Bus.connect(CommonSettings(nats_url=nats_server.url, probe="p1", sub_pending_mb=1), "slow")
        got = []

        async def handler(ev):
            got.append(ev.flow_id)
            await asyncio.sleep(0.01)

        await bus.subscribe("ft.flow.p1", handler)
        pub = await Bus.connect(CommonSettings(nats_url=nats_server.url, probe="p1"), "fast")
        big = FlowRecord(timestamp=1, probe="p1", flow_id="x", phase="end", first_seen=1, last_seen=1,
                         source="s" * 200)
        data = batch_json([big] * 200)         # ~100 KB
        for _ in range(60):
            await pub.nc.publish("ft.flow.p1", data)
        await pub.nc.flush()
        assert await wait_for(lambda: bus.slow_consumer_drops > 0, 10)
        await pub.close()
        await bus.close()
        return bus.slow_consumer_drops, len(got)

    drops, n = asyncio.run(main())
    assert drops > 0 and n > 0


def test_core_subscriber_dead_letters_what_it_cannot_use(nats_server):
    """Issue 13, poison messages on any subject: a core NATS subscriber's malformed message and a batch with a
    rejected event are copied to ft.dlq.<probe> with the reason (the valid events of the batch still reach the
    handler); the subscriber is never held up."""
    settings = CommonSettings(nats_url=nats_server.url, probe="p1")
    good = [json.loads(sample(i).model_dump_json()) for i in range(3)]
    bad_probe = dict(good[0], probe="a.b")
    batch_with_bad = json.dumps({"event_type": "batch", "events": [bad_probe, *good[1:]]}).encode()

    async def main():
        bus = await Bus.connect(settings, "test")
        await bus.ensure_stream()
        got: list[str] = []

        async def handler(ev):
            got.append(ev.flow_id)

        await bus.subscribe("ft.sample.>", handler, types=[FlowSample])
        pub = await Bus.connect(settings, "peer")
        await pub.nc.publish("ft.sample.p1", b"[" * 5000 + b"]" * 5000)
        await pub.nc.publish("ft.sample.p2", b"not json at all")
        await pub.nc.publish("ft.sample.p1", batch_with_bad)
        await pub.nc.flush()
        assert await wait_for(lambda: len(got) >= 2 and bus.dead_lettered >= 3)
        info = await bus.js.stream_info(settings.dlq_stream_name)
        letters = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            m = await bus.js.get_msg(settings.dlq_stream_name, seq)
            letters.append((m.subject, dict(m.headers or {}), m.data))
        stats = bus.stats()
        await pub.close()
        await bus.close()
        return got, letters, stats

    got, letters, stats = asyncio.run(main())
    assert sorted(got) == ["s1", "s2"]
    by_subject = sorted((s, h["Ft-Dlq-Reason"], h["Ft-Dlq-Subject"]) for s, h, _ in letters)
    assert len(letters) == 3, by_subject
    assert [s for s, _, _ in by_subject] == ["ft.dlq.p1", "ft.dlq.p1", "ft.dlq.p2"]
    assert {r for _, r, _ in by_subject} >= {"rejected_events"}
    assert all(r for _, r, _ in by_subject)
    assert any(d == batch_with_bad for _, _, d in letters)
    assert stats["dead_lettered"] == 3 and stats["dead_letter_dropped"] == 0
