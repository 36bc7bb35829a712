"""The spool: JetStream publications not acknowledged at shutdown go to disk and are published on the next
start, with the same message id (no duplicates); bounded and counted.  Real nats-server."""

from __future__ import annotations

import asyncio
import time

from shared.bus import Bus
from shared.models import EventBatch, FlowRecord
from shared.settings import CommonSettings
from shared.spool import Spool


def rec(i: int) -> FlowRecord:
    return FlowRecord(timestamp=float(i), probe="t", flow_id=f"f{i}", phase="end", first_seen=float(i),
                      last_seen=float(i) + 1, src2dst_packets=i)


def settings(url: str, spool_dir, **kw) -> CommonSettings:
    return CommonSettings(nats_url=url, probe="t", stream_name="SPOOLT", spool_dir=str(spool_dir), **kw)


async def stream_msgs(bus: Bus, name: str) -> list:
    info = await bus.js.stream_info(name)
    return [await bus.js.get_msg(name, seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)] \
        if info.state.messages else []


def test_unacknowledged_publications_are_spooled_and_replayed_once(nats_server, tmp_path):
    spool_dir = tmp_path / "spool"

    async def first_run():
        bus = await Bus.connect(settings(nats_server.url, spool_dir), "svc")
        await bus.ensure_stream()
        await bus.js_publish("ft.flow.t", EventBatch(events=[rec(1)]), msg_id="m1")      # stored
        nats_server.stop()
        pubs = [asyncio.create_task(bus.js_publish("ft.flow.t", EventBatch(events=[rec(i)]), msg_id=f"m{i}"))
                for i in (2, 3, 4)]
        await asyncio.sleep(1.0)
        assert not any(p.done() for p in pubs), "publications returned while NATS was down"
        t0 = time.monotonic()
        await bus.abandon("test")
        await asyncio.wait_for(asyncio.gather(*pubs), 5)
        took = time.monotonic() - t0
        # one message that was stored but whose ack was lost: spooled too, must not be stored twice
        bus.spool.put("ft.flow.t", bus.encode(EventBatch(events=[rec(1)])), {"Nats-Msg-Id": "m1"})
        await bus.close()
        return took, bus.spool.stats()

    took, st = asyncio.run(first_run())
    assert took < 5
    assert st["spooled"] == 4 and st["spool_pending"] == 4      # 3 abandoned + the one put by hand
    nats_server.start()

    async def second_run():
        bus = await Bus.connect(settings(nats_server.url, spool_dir), "svc")
        await bus.ensure_stream()          # starts the replay
        deadline = time.monotonic() + 20
        while bus.spool.files() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        msgs = await stream_msgs(bus, "SPOOLT")
        await bus.close()
        return msgs, bus.spool.stats()

    msgs, st = asyncio.run(second_run())
    assert st["spool_pending"] == 0 and st["spool_replayed"] == 4
    ids = [m.headers["Nats-Msg-Id"] for m in msgs]
    assert sorted(ids) == ["m1", "m2", "m3", "m4"], ids          # m1 once: same message id
    assert all(m.headers["Ft-Schema"] for m in msgs)


def test_spool_is_bounded_and_counted(tmp_path):
    sp = Spool(tmp_path, "svc-t", max_bytes=1000)
    assert sp.put("ft.flow.t", b"x" * 400, {"Nats-Msg-Id": "a"})
    assert sp.put("ft.flow.t", b"x" * 400, {"Nats-Msg-Id": "b"})
    assert not sp.put("ft.flow.t", b"x" * 400, {"Nats-Msg-Id": "c"})
    assert sp.stats()["spooled"] == 2 and sp.stats()["spool_dropped"] == 1
    # a damaged file is removed and counted, the others still read
    files = sp.files()
    files[0].write_bytes(b"not a spool file")
    assert sp.load(files[0]) is None and sp.corrupt == 1
    assert sp.load(files[1])[0] == "ft.flow.t"
    # an unwritable directory: counted, never raised
    bad = Spool(tmp_path / "file-not-dir", "x", 10_000)
    (tmp_path / "file-not-dir").write_text("")
    assert not bad.put("ft.flow.t", b"x", {})
    assert bad.dropped == 1
