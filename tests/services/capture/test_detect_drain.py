"""After a file replay capture asks its detectors' process to drain (``ft.ctl.<probe>.detect_drain``)
only when such a process runs: with the detectors inline (analyze's default) or none, a wildcard
subscriber (bench pipeline's subject counter, an operator's ``nats sub '>'``) would take the request
and leave it unanswered, and capture waited its 120 s timeout (bench pipeline: 130 s for a 10 s run)."""

from __future__ import annotations

import asyncio

import pytest

from services.capture import service
from shared.bus import Bus
from shared.settings import CaptureSettings, CommonSettings
from tests.conftest import SAMPLE_PCAP


def _replay(nats_url: str, probe: str, inline: bool) -> list[str]:
    async def main() -> list[str]:
        settings = CaptureSettings(nats_url=nats_url, probe=probe, pcap=[SAMPLE_PCAP], verdict_wait_s=0,
                                   replay_max_pending=0, stream_storage="memory", detect_inline=inline)
        watcher = await Bus.connect(CommonSettings(nats_url=nats_url, probe=probe), "watcher")
        seen: list[str] = []

        async def on_ctl(msg) -> None:   # a wildcard subscriber that never answers
            seen.append(msg.subject)

        await watcher.nc.subscribe("ft.ctl.>", cb=on_ctl)
        await watcher.nc.flush()
        stop = asyncio.Event()
        bus = await Bus.connect(settings, "capture", stop)
        # capture ends, or (a detectors' process expected, none here) waits for the drain's answer
        task = asyncio.create_task(service.main(settings, bus, stop))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while not task.done() and loop.time() < deadline and not any(x.endswith("detect_drain") for x in seen):
            await asyncio.sleep(0.05)
        finished = task.done()
        if not finished:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await bus.close()
        await watcher.close()
        return seen if finished else [*seen, "waiting"]

    return asyncio.run(main())


def test_inline_detectors_send_no_drain_request(nats_server, monkeypatch):
    monkeypatch.delenv("FT_DETECTORS", raising=False)
    seen = _replay(nats_server.url, "dr1", inline=True)
    assert seen == [], seen


@pytest.mark.parametrize("detectors", ["", "arp,scan"])
def test_the_drain_request_goes_out_only_to_a_detectors_process(nats_server, monkeypatch, detectors):
    monkeypatch.setenv("FT_DETECTORS", detectors)
    seen = _replay(nats_server.url, f"dr2{len(detectors)}", inline=False)
    if detectors:    # a process would answer; here nobody does: capture waits (ended by the test)
        assert seen == [f"ft.ctl.dr2{len(detectors)}.detect_drain", "waiting"], seen
    else:            # no detectors at all: no request
        assert seen == [], seen
