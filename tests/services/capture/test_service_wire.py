"""What the capture service puts on the bus: start records on core NATS only, the rest stored.

Start records are for the alert detectors, which read them on NATS; the store
ignores them, so they are not kept in the JetStream stream (``ft.live.<probe>``).
"""

from __future__ import annotations

import asyncio

from flowtarget.orchestrate import read_stream
from services.capture import service
from shared.bus import Bus
from shared.models import FlowRecord, events_of, parse_event
from shared.settings import CaptureSettings
from tests.conftest import SAMPLE_PCAP


def test_start_records_go_to_core_nats_and_not_into_the_stream(nats_server):
    async def main():
        settings = CaptureSettings(nats_url=nats_server.url, probe="wire", pcap=[SAMPLE_PCAP], verdict_wait_s=0,
                                   replay_max_pending=0, stream_storage="memory")
        stop = asyncio.Event()
        bus = await Bus.connect(settings, "capture", stop)
        live: list[FlowRecord] = []
        messages = []

        async def on_live(msg) -> None:
            messages.append(msg)
            live.extend(e for e in events_of(parse_event(msg.data)) if isinstance(e, FlowRecord))

        await bus.nc.subscribe("ft.live.wire", cb=on_live)
        await service.main(settings, bus, stop)
        await bus.nc.flush()
        await asyncio.sleep(0.2)
        events = await read_stream(settings)
        await bus.close()
        return live, messages, events

    live, messages, events = asyncio.run(main())
    stored = [e for e in events if e["event_type"] == "flow"]
    ends = {e["flow_id"] for e in stored if e["phase"] == "end"}
    assert ends and not [e for e in stored if e["phase"] == "start"]
    assert {r.phase for r in live} == {"start"}
    assert {r.flow_id for r in live} == ends          # one start record per flow, on core NATS
    assert len(messages) < len(live)                  # batched
    assert all(m.reply == "" or m.reply is None for m in messages)
