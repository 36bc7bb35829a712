"""store against hostile and broken messages, with a real nats-server and the JSON-lines sink.

Each test publishes through JetStream what a broken or hostile peer could
publish, then valid records, and checks that the valid ones are stored and
the others are in the dead-letter stream (``ft.dlq.<probe>``) with the reason.
"""

from __future__ import annotations

import asyncio
import json
import logging

from nats.js.api import ConsumerConfig

from shared.bus import Bus
from shared.codec import SCHEMA_HEADER
from shared.models import Alert, EventBatch, batch_json
from shared.settings import StoreSettings
from tests.services.store.conftest import BASE_TS, InProcessStore, flow, publish_flows, store_settings, wait_until

POISON_WIDE = b"[" * 100000 + b"]" * 100000        # the message: 200 KB
POISON_DEEP = b"[" * 1000 + b"]" * 1000            # json.loads's RecursionError starts near here: 2 KB


def jsonl(out_dir, name: str) -> list[dict]:
    path = out_dir / f"{name}.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


async def dead_letters(bus: Bus, settings: StoreSettings) -> list:
    """Every message of the dead-letter stream: (subject, headers, data)."""
    js = bus.js
    try:
        info = await js.stream_info(settings.dlq_stream_name)
    except Exception:  # noqa: BLE001 - no stream yet: no dead letters
        return []
    if not info.state.messages:
        return []
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        m = await js.get_msg(settings.dlq_stream_name, seq)
        out.append((m.subject, dict(m.headers or {}), m.data))
    return out


async def stored_ids(out_dir) -> set[int]:
    return {r["src2dst_bytes"] for r in jsonl(out_dir, "flows")}


def run(coro):
    return asyncio.run(coro)


def test_poison_message_never_stops_storage(nats_server, tmp_path):
    """Severe item 1: a deeply nested message on ft.flow.<probe> made store die in json.loads (RecursionError),
    and, redelivered after every restart, stopped storage for good."""
    out_dir = tmp_path / "out"
    settings = store_settings(nats_server.url, out_dir=out_dir)

    async def main():
        bus = await Bus.connect(settings, "pub")
        await bus.ensure_stream()
        await bus.js.publish("ft.flow.p1", POISON_WIDE)
        await bus.js.publish("ft.flow.p1", POISON_DEEP)
        await bus.js.publish("ft.flow.p1", b'{"event_type":"batch","events":[' + POISON_DEEP + b"]}")
        await publish_flows(bus, range(1, 301), per_msg=100)
        store = await InProcessStore(settings).start()
        try:
            ok = await wait_until(lambda: len(jsonl(out_dir, "flows")) >= 300, 30)
            assert ok, f"valid records not stored: {len(jsonl(out_dir, 'flows'))} of 300"
            assert not store.task.done(), "store stopped"
            dlq = []
            assert await wait_until(lambda: store.metrics.dead_lettered >= 3, 10)
            dlq = await dead_letters(bus, settings)
        finally:
            await store.close()
        await bus.close()
        return dlq, store.metrics

    dlq, metrics = run(main())
    assert {r["src2dst_bytes"] for r in jsonl(out_dir, "flows")} == set(range(1, 301))
    assert len(dlq) == 3, [(s, h) for s, h, _ in dlq]
    assert {s for s, _, _ in dlq} == {"ft.dlq.p1"}
    assert [d for _, _, d in dlq] == [POISON_WIDE, POISON_DEEP, b'{"event_type":"batch","events":[' + POISON_DEEP + b"]}"]
    for _, headers, _ in dlq:
        assert headers["Ft-Dlq-Reason"] == "too_deep"
        assert headers["Ft-Dlq-Subject"] == "ft.flow.p1"
    assert metrics.malformed_messages == 3


def test_poison_is_acked_and_not_redelivered_after_restart(nats_server, tmp_path):
    """Once dead-lettered, a poison message is acknowledged: a restarted store does not see it again."""
    out_dir = tmp_path / "out"
    settings = store_settings(nats_server.url, out_dir=out_dir)

    async def main():
        bus = await Bus.connect(settings, "pub")
        await bus.ensure_stream()
        await bus.js.publish("ft.flow.p1", POISON_DEEP)
        await publish_flows(bus, range(1, 11), per_msg=10)
        store = await InProcessStore(settings).start()
        assert await wait_until(lambda: len(jsonl(out_dir, "flows")) >= 10 and store.metrics.dead_lettered == 1, 30)
        await store.close()
        await publish_flows(bus, range(11, 21), per_msg=10)
        store2 = await InProcessStore(settings).start()
        assert await wait_until(lambda: len(jsonl(out_dir, "flows")) >= 20, 30)
        await asyncio.sleep(0.5)
        await store2.close()
        dlq = await dead_letters(bus, settings)
        await bus.close()
        return store2.metrics, dlq

    m2, dlq = run(main())
    assert m2.malformed_messages == 0 and m2.dead_lettered == 0
    assert len(dlq) == 1
    assert sorted(r["src2dst_bytes"] for r in jsonl(out_dir, "flows")) == list(range(1, 21))


def test_one_invalid_event_does_not_lose_its_batch(nats_server, tmp_path, caplog):
    """Item 6 at the store: an event with probe "a.b" beside valid ones: the valid ones are stored, the bad one
    counted, logged without a traceback, and the message copied to the dead-letter stream."""
    out_dir = tmp_path / "out"
    settings = store_settings(nats_server.url, out_dir=out_dir)
    good = [flow(i) for i in range(1, 6)]
    docs = [json.loads(f.model_dump_json()) for f in good]
    docs.insert(2, {**docs[0], "probe": "a.b", "src2dst_bytes": 999})
    data = json.dumps({"event_type": "batch", "events": docs}).encode()

    async def main():
        bus = await Bus.connect(settings, "pub")
        await bus.ensure_stream()
        await bus.js.publish("ft.flow.p1", data)
        store = await InProcessStore(settings).start()
        assert await wait_until(lambda: len(jsonl(out_dir, "flows")) >= 5, 30)
        assert await wait_until(lambda: store.metrics.dead_lettered >= 1, 10)
        await store.close()
        dlq = await dead_letters(bus, settings)
        await bus.close()
        return store.metrics, dlq

    with caplog.at_level(logging.WARNING):
        m, dlq = run(main())
    assert sorted(r["src2dst_bytes"] for r in jsonl(out_dir, "flows")) == [1, 2, 3, 4, 5]
    assert m.malformed_events == 1 and m.malformed_messages == 0
    assert len(dlq) == 1 and dlq[0][1]["Ft-Dlq-Reason"] == "rejected_events"
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert any("rejected" in r.getMessage() for r in caplog.records)


def test_probe_of_the_subject_must_match(nats_server, tmp_path):
    """Item 8: a record for probe "evil" published on ft.flow.p1 is not stored under that probe."""
    out_dir = tmp_path / "out"
    settings = store_settings(nats_server.url, out_dir=out_dir)

    async def main():
        bus = await Bus.connect(settings, "pub")
        await bus.ensure_stream()
        await bus.js_publish("ft.flow.p1", EventBatch(events=[flow(1, probe="evil")]))
        await bus.js_publish("ft.flow.p1", EventBatch(events=[flow(2), flow(3, probe="evil"), flow(4)]))
        store = await InProcessStore(settings).start()
        assert await wait_until(lambda: len(jsonl(out_dir, "flows")) >= 2 and store.metrics.dead_lettered >= 2, 30)
        await asyncio.sleep(0.3)
        await store.close()
        dlq = await dead_letters(bus, settings)
        await bus.close()
        return store.metrics, dlq

    m, dlq = run(main())
    stored = jsonl(out_dir, "flows")
    assert sorted(r["src2dst_bytes"] for r in stored) == [2, 4]
    assert {r["probe"] for r in stored} == {"p1"}
    assert [h["Ft-Dlq-Reason"] for _, h, _ in dlq] == ["probe_mismatch", "rejected_events"]
    assert m.decode["probe_mismatch"] == 2


def test_alert_details_are_bounded(nats_server, tmp_path):
    """Item 8: an alert's details have a size bound (FT_ALERT_DETAILS_MAX_BYTES), counted when exceeded."""
    out_dir = tmp_path / "out"
    settings = store_settings(nats_server.url, out_dir=out_dir, alert_details_max_bytes=4096)
    big = {f"k{i}": "x" * 1000 for i in range(5700)}        # 5.7 MB, as in the issue
    a = Alert(timestamp=BASE_TS, probe="p1", alert_id="a1", alert_type="port_scan", first_seen=BASE_TS,
              last_seen=BASE_TS, details=big)

    async def main():
        bus = await Bus.connect(settings, "pub")
        await bus.ensure_stream()
        await bus.js_publish("ft.alert.port_scan.p1", batch_json([a]))
        store = await InProcessStore(settings).start()
        assert await wait_until(lambda: len(jsonl(out_dir, "alerts")) >= 1, 30)
        await store.close()
        await bus.close()
        return store.metrics

    m = run(main())
    (stored,) = jsonl(out_dir, "alerts")
    text = json.dumps(stored)
    assert len(text) < 4096 + 2048, len(text)
    assert m.decode["details_truncated"] == 1


def test_newer_minor_is_read_older_major_rejected(nats_server, tmp_path, caplog):
    """Item 7: a record from a newer minor version with a field this consumer does not know is stored (the
    unknown field counted); a message of an older major version is rejected with a clear log line."""
    out_dir = tmp_path / "out"
    settings = store_settings(nats_server.url, out_dir=out_dir)
    newer = json.loads(flow(1).model_dump_json())
    newer["carbon_grams"] = 1.5                      # a field a future minor version adds
    newer_msg = json.dumps({"event_type": "batch", "events": [newer]}).encode()
    old_msg = batch_json([flow(2)])

    async def main():
        bus = await Bus.connect(settings, "pub")
        await bus.ensure_stream()
        await bus.js.publish("ft.flow.p1", newer_msg, headers={SCHEMA_HEADER: "1.99"})
        await bus.js.publish("ft.flow.p1", old_msg, headers={SCHEMA_HEADER: "0.3"})
        await publish_flows(bus, range(3, 5), per_msg=2)
        store = await InProcessStore(settings).start()
        assert await wait_until(lambda: len(jsonl(out_dir, "flows")) >= 3 and store.metrics.dead_lettered >= 1, 30)
        await store.close()
        dlq = await dead_letters(bus, settings)
        await bus.close()
        return store.metrics, dlq

    with caplog.at_level(logging.WARNING):
        m, dlq = run(main())
    stored = jsonl(out_dir, "flows")
    assert sorted(r["src2dst_bytes"] for r in stored) == [1, 3, 4]
    assert all("carbon_grams" not in r for r in stored)
    assert m.decode["unknown_fields"] == 1 and m.decode["newer_minor_messages"] == 1
    assert [h["Ft-Dlq-Reason"] for _, h, _ in dlq] == ["old_major"]
    lines = [r.getMessage() for r in caplog.records if "old_major" in r.getMessage()]
    assert lines and "0.3" in lines[0] and "older producer" in lines[0]


def test_message_that_keeps_failing_is_dead_lettered(nats_server, tmp_path):
    """A message delivered FT_DLQ_MAX_DELIVER times without being stored (it kept killing or failing the store)
    is dead-lettered unread; the next ones are stored."""
    out_dir = tmp_path / "out"
    settings = store_settings(nats_server.url, out_dir=out_dir, dlq_max_deliver=3)

    async def main():
        bus = await Bus.connect(settings, "pub")
        await bus.ensure_stream()
        await publish_flows(bus, range(1, 2), per_msg=1)
        # a store that took the message twice and died before acknowledging it
        from services.store.service import Store

        cfg: ConsumerConfig = Store(settings, bus, sinks=[]).consumer_config()
        cfg.ack_wait = 0.5
        await bus.js.add_consumer(settings.stream_name, cfg)
        psub = await bus.js.pull_subscribe_bind(durable=settings.durable, stream=settings.stream_name)
        for _ in range(2):
            (msg,) = await psub.fetch(1, timeout=5)
            await msg.nak()
        await psub.unsubscribe()
        await publish_flows(bus, range(2, 4), per_msg=2)
        store = await InProcessStore(settings).start()
        assert await wait_until(lambda: len(jsonl(out_dir, "flows")) >= 2 and store.metrics.dead_lettered >= 1, 30)
        await store.close()
        dlq = await dead_letters(bus, settings)
        await bus.close()
        return store.metrics, dlq

    m, dlq = run(main())
    assert sorted(r["src2dst_bytes"] for r in jsonl(out_dir, "flows")) == [2, 3]
    assert m.max_delivered == 1
    assert [h["Ft-Dlq-Reason"] for _, h, _ in dlq] == ["max_deliver"]
    assert dlq[0][1]["Ft-Dlq-Delivered"] == "3"
