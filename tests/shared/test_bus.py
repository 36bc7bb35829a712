"""The NATS bus against a real nats-server: validation, handler safety, reconnects, JetStream."""

from __future__ import annotations

import asyncio


from shared.bus import Bus
from shared.models import EventBatch, FlowRecord
from shared.settings import CommonSettings


def rec(i: int) -> FlowRecord:
    return FlowRecord(timestamp=float(i), probe="t", flow_id=f"f{i}", phase="end", first_seen=float(i),
                      last_seen=float(i) + 1, src2dst_packets=i)


async def wait_for(cond, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def test_malformed_counted_and_skipped(nats_server):
    async def main():
        bus = await Bus.connect(CommonSettings(nats_url=nats_server.url, probe="t"), "test")
        got = []

        async def handler(ev):
            if ev.flow_id == "f2":
                raise RuntimeError("handler bug")   # must not kill the subscription
            got.append(ev.flow_id)

        await bus.subscribe("ft.flow.t", handler)
        await bus.publish("ft.flow.t", rec(1))
        for bad in (b"garbage", b"{}", b'{"event_type":"flow","probe":"t"}', b"\xff\xfe", b"\n"):
            await bus.nc.publish("ft.flow.t", bad)
        await bus.publish("ft.flow.t", rec(2))
        await bus.publish("ft.flow.t", EventBatch(events=[rec(3), rec(4)]))
        assert await wait_for(lambda: len(got) >= 3)
        await bus.close()
        return got, bus.malformed, bus.handler_errors

    got, malformed, handler_errors = asyncio.run(main())
    assert got == ["f1", "f3", "f4"]
    assert malformed == 5
    assert handler_errors == 1


def test_when_gate_drops_messages_unparsed_while_false(nats_server):
    """A subscriber with nothing to do (block without rules) does not parse: even garbage is not counted
    as malformed while the gate is closed; once it opens, events arrive again."""
    async def main():
        bus = await Bus.connect(CommonSettings(nats_url=nats_server.url, probe="t"), "test")
        got = []
        gate = {"open": False}

        async def handler(ev):
            got.append(ev.flow_id)

        await bus.subscribe("ft.flow.t", handler, when=lambda: gate["open"])
        await bus.publish("ft.flow.t", rec(1))
        await bus.nc.publish("ft.flow.t", b"garbage")
        assert await wait_for(lambda: bus.skipped == 2)
        gate["open"] = True
        await bus.publish("ft.flow.t", rec(2))
        assert await wait_for(lambda: got == ["f2"])
        await bus.close()
        return bus.malformed, bus.skipped

    malformed, skipped = asyncio.run(main())
    assert malformed == 0 and skipped == 2


def test_reconnects_and_jetstream_survives_server_restart(nats_server):
    async def main():
        bus = await Bus.connect(CommonSettings(nats_url=nats_server.url, probe="t", stream_name="T1"), "test")
        await bus.ensure_stream()
        for i in range(10):
            await bus.js_publish("ft.flow.t", rec(i))
        nats_server.stop()
        await asyncio.sleep(0.5)
        # publishing while the server is down retries until it is back
        task = asyncio.create_task(bus.js_publish("ft.flow.t", rec(99), msg_id="m99"))
        await asyncio.sleep(0.5)
        assert not task.done()
        nats_server.start()
        await asyncio.wait_for(task, 30)
        await bus.js_publish("ft.flow.t", rec(99), msg_id="m99")   # a retry with the same id is not stored twice
        info = await bus.js.stream_info("T1")
        await bus.close()
        return info.state.messages, bus.reconnects

    messages, reconnects = asyncio.run(main())
    assert messages == 11
    assert reconnects >= 1


def test_connect_waits_for_a_server_that_is_down_at_start(nats_server):
    nats_server.stop()

    async def main():
        stop = asyncio.Event()
        connect = asyncio.create_task(Bus.connect(CommonSettings(nats_url=nats_server.url), "late", stop))
        await asyncio.sleep(1.0)
        assert not connect.done()
        nats_server.start()
        bus = await asyncio.wait_for(connect, 20)
        ok = bus.connected
        await bus.close()
        return ok

    assert asyncio.run(main())


def test_subscribe_in_order_keeps_the_delivery_order_across_subjects(nats_server):
    """Several subjects, one callback, in the order one publisher sent them (the detectors' input),
    while what matches none of them (samples, verdicts) never arrives."""
    import random

    import nats

    wanted = ["ft.flow.t", "ft.live.t", "ft.packet.t", "ft.stats.t"]
    rnd = random.Random(12)
    sent = []
    for i in range(3000):
        subj = rnd.choice(wanted + ["ft.sample.t", "ft.verdict.t"])
        # sizes from a few bytes to beyond one socket read, so messages share and span reads
        sent.append((subj, f"{i}:".encode() + b"x" * rnd.choice([1, 50, 3000, 70_000])))

    async def main():
        bus = await Bus.connect(CommonSettings(nats_url=nats_server.url, probe="t"), "test")
        got = []

        async def cb(msg):
            got.append((msg.subject, msg.data.split(b":", 1)[0]))
            if len(got) % 7 == 0:
                await asyncio.sleep(0)     # a handler that lets the loop read on now and then

        subs = await bus.subscribe_in_order(wanted, cb)
        assert len(subs) == len(wanted)
        pub = await nats.connect(nats_server.url)
        for subj, data in sent:
            await pub.publish(subj, data)
        await pub.flush()
        want = [(s, d.split(b":", 1)[0]) for s, d in sent if s in wanted]
        assert await wait_for(lambda: len(got) >= len(want), 30)
        await asyncio.sleep(0.2)
        await pub.close()
        pending = sum(s.pending_bytes for s in subs)
        await bus.close()
        return got, want, pending

    got, want, pending = asyncio.run(main())
    assert got == want
    assert pending == 0


def test_subscribe_in_order_falls_back_to_the_wildcard_without_nats_py_internals(nats_server):
    """A nats-py whose subscriptions have no queue to share: the fallback wildcard, in order."""
    import nats

    class Bare:   # what such a nats-py's subscription offers
        def __init__(self, sub):
            self._sub = sub

        async def unsubscribe(self):
            await self._sub.unsubscribe()

    async def main():
        bus = await Bus.connect(CommonSettings(nats_url=nats_server.url, probe="t"), "test")
        real = bus.nc.subscribe

        async def subscribe(subj, **kw):
            sub = await real(subj, **kw)
            return sub if kw.get("cb") else Bare(sub)

        bus.nc.subscribe = subscribe
        got = []

        async def cb(msg):
            got.append((msg.subject, msg.data))

        subs = await bus.subscribe_in_order(["ft.flow.t", "ft.live.t"], cb, fallback="ft.*.t")
        assert len(subs) == 1 and not isinstance(subs[0], Bare)
        pub = await nats.connect(nats_server.url)
        sent = [("ft.flow.t", b"1"), ("ft.sample.t", b"2"), ("ft.live.t", b"3"), ("ft.flow.t", b"4")]
        for subj, data in sent:
            await pub.publish(subj, data)
        await pub.flush()
        assert await wait_for(lambda: len(got) >= 4, 10)
        await pub.close()
        await bus.close()
        return got, sent

    got, sent = asyncio.run(main())
    assert got == sent      # everything the wildcard matches, in order: the callback filters


def test_kv_keys_lists_every_key_just_written_and_nothing_of_an_empty_bucket(nats_server):
    """kv_keys reads the bucket's stream state: each key shows at once after its put (nats-py's key watcher
    could end its listing before it), a deleted key is listed but kv.get refuses it, an empty bucket is []."""
    import nats
    from nats.js.api import KeyValueConfig

    from shared.bus import kv_keys

    async def go():
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        kv = await js.create_key_value(KeyValueConfig(bucket="kvk", history=1))
        assert kv._stream == "KV_kvk" and kv._pre == "$KV.kvk."   # what kv_keys reads (else the watcher's listing)
        assert await kv_keys(kv) == []
        want = []
        for i in range(40):
            await kv.put(f"k{i:02d}", b"v")
            want.append(f"k{i:02d}")
            assert await kv_keys(kv) == want
        await kv.delete("k05")
        listed = await kv_keys(kv)
        gone = 0
        for k in listed:
            try:
                await kv.get(k)
            except Exception:  # KeyDeletedError
                gone += 1
        await nc.close()
        return listed, gone

    listed, gone = asyncio.run(go())
    assert listed == [f"k{i:02d}" for i in range(40)] and gone == 1


def test_publish_commands_are_nats_py_s_bytes_with_one_copy(nats_server):
    """shared.bus replaces nats-py's PUB command builder (line + payload + CRLF, two copies of the payload) with one
    that copies once: the same bytes for any subject, reply and payload; messages arrive whole over a real server;
    a builder that gives other bytes is left in place."""
    import random
    import types

    from nats.protocol import command

    from shared.bus import _one_copy_pub_cmd

    assert getattr(command.pub_cmd, "_ft_one_copy", False)
    orig = command.pub_cmd._ft_orig
    rnd = random.Random(7)
    for n in (0, 1, 2, 100, 70000):
        payload = bytes(rnd.randrange(256) for _ in range(n))
        for subj, reply in (("ft.sample.p1", ""), ("a.\u00e9", "_INBOX.x.1")):
            assert command.pub_cmd(subj, reply, payload) == orig(subj, reply, payload)
    other = types.SimpleNamespace(pub_cmd=lambda s, r, p: b"PUB " + s.encode() + b" " + p)
    assert _one_copy_pub_cmd(other) is False and other.pub_cmd.__name__ == "<lambda>"

    async def main():
        bus = await Bus.connect(CommonSettings(nats_url=nats_server.url, probe="t"), "test")
        got = []

        async def cb(msg):
            got.append(msg.data)

        await bus.nc.subscribe("ft.raw.t", cb=cb)
        sent = [bytes(rnd.randrange(256) for _ in range(n)) for n in (0, 5, 300000)]
        for p in sent:
            await bus.nc.publish("ft.raw.t", p)
        await bus.nc.flush()
        assert await wait_for(lambda: len(got) == 3)
        assert got == sent
        await bus.close()

    asyncio.run(main())
