"""A stop takes effect while the store waits on an empty stream, and loses nothing."""

from __future__ import annotations

import asyncio
import json

from shared.bus import Bus
from services.store.service import Store
from tests.services.store.conftest import InProcessStore, publish_flows, store_settings, wait_until


class HangingPull:
    """A pull subscription whose requests never bring anything (an empty stream, a pull that never expires)."""

    def __init__(self) -> None:
        self.requests = 0
        self.cancelled = 0

    async def fetch(self, batch: int, timeout: float | None = None) -> list:
        self.requests += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return []


def test_a_stop_gives_up_the_pull_it_is_waiting_on():
    """Store.run waited for its pending pull request to expire (a second on an empty stream) before it
    saw a stop: analyze's end and every `docker stop` paid that second.  With a pull that never expires the
    loop would never end."""

    async def go():
        store = Store(store_settings("nats://127.0.0.1:1"), bus=None, sinks=[])
        pull = HangingPull()
        store._psub = pull
        stop = asyncio.Event()
        task = asyncio.create_task(store.run(stop))
        assert await wait_until(lambda: pull.requests >= 1, 10, 0.01)
        stop.set()
        await asyncio.wait_for(task, 10)     # a hang guard, not a timing: without the change it never ends
        return pull

    pull = asyncio.run(go())
    assert pull.cancelled == pull.requests == 1


def test_flows_published_after_a_stop_are_stored_by_the_next_store(nats_server, tmp_path):
    """The given-up pull request takes nothing with it: flows published after the first store stopped (idle,
    its pull cancelled) are all stored by the next one, none twice."""
    out_dir = tmp_path / "out"
    settings = store_settings(nats_server.url, out_dir=out_dir)

    def stored() -> list[int]:
        path = out_dir / "flows.jsonl"
        if not path.exists():
            return []
        return [json.loads(x)["src2dst_bytes"] for x in path.read_text().splitlines() if x.strip()]

    async def go():
        bus = await Bus.connect(settings, "stop-test")
        first = await InProcessStore(settings).start()
        await publish_flows(bus, range(0, 200))
        assert await wait_until(lambda: len(stored()) >= 200, 30)
        await asyncio.sleep(0.3)              # idle now: its next pull waits on the empty stream
        await first.close()
        await publish_flows(bus, range(200, 400))
        second = await InProcessStore(settings).start()
        ok = await wait_until(lambda: len(stored()) >= 400, 60)
        await asyncio.sleep(0.5)
        await second.close()
        await bus.close()
        return ok

    assert asyncio.run(go())
    ids = stored()
    assert sorted(ids) == list(range(400))
