"""capture service replaying a file: a classify that lags longer than verdict_wait_s loses no verdict.

verdict_wait_s is a wall-clock wait meant for live traffic.  A replay runs as
fast as the machine allows and back-pressure bounds how far classify lags, so
while classify answers, ended flows wait for their verdicts: the results of a
replay do not depend on the machine's load.  Here a stand-in classify on the
real nats-server answers one sample every 0.2 s, so the last answers come
seconds after the file ended, with verdict_wait_s 0.3.
"""

from __future__ import annotations

import asyncio

import pytest

from flowtarget.orchestrate import read_stream
from services.capture import service
from shared.bus import Bus
from shared.models import FlowSample, Verdict, batch_json
from shared.settings import CaptureSettings, CommonSettings
from tests.conftest import SAMPLE_PCAP

STEP_S = 0.2


async def run_replay(settings: CaptureSettings) -> list[dict]:
    """The capture service over settings.pcap on the test's nats-server, then what its stream holds."""
    stop = asyncio.Event()
    bus = await Bus.connect(settings, "capture", stop)
    await service.main(settings, bus, stop)
    await asyncio.sleep(0.3)
    events = await read_stream(settings)
    await bus.close()
    return events


def test_replay_waits_for_a_lagging_classify(nats_server):
    async def main():
        settings = CaptureSettings(nats_url=nats_server.url, probe="vw", pcap=[SAMPLE_PCAP], verdict_wait_s=0.3,
                                   replay_max_pending=4000, stream_storage="memory")
        classify = await Bus.connect(CommonSettings(nats_url=nats_server.url, probe="vw"), "slow-classify")
        sampled: set[str] = set()
        queue: asyncio.Queue[FlowSample] = asyncio.Queue()

        async def answer(batch: list[FlowSample]) -> None:
            for s in batch:
                sampled.add(s.flow_id)
                queue.put_nowait(s)

        async def worker() -> None:   # busy: one sample every STEP_S, in order, and once a longer stall
            n = 0
            while True:
                s = await queue.get()
                n += 1
                await asyncio.sleep(STEP_S if n != 3 else 3 * STEP_S)   # 0.6 s: longer than verdict_wait_s
                v = Verdict(timestamp=s.timestamp, probe="vw", flow_id=s.flow_id, sample_seq_no=s.seq_no,
                            final=True, app_protocol="Telnet", confidence="dpi")
                await classify.nc.publish("ft.verdict.vw", batch_json([v]))

        work = asyncio.create_task(worker())
        await classify.subscribe("ft.sample.vw", answer, types=(FlowSample,), batched=True)

        async def ready(msg) -> None:   # as classify does: it answers capture's readiness probe
            await msg.respond(b"")

        # a pause of over verdict_wait_s between two answers (the stall above, or a scheduling gap of 0.1 s
        # on a busy machine) is no reason to take a classify that answers this for gone
        await classify.nc.subscribe("ft.ctl.vw.classify_ready", cb=ready)
        stop = asyncio.Event()
        bus = await Bus.connect(settings, "capture", stop)
        stats: list[dict] = []

        async def on_stats(msg) -> None:
            import json

            stats.append(json.loads(msg.data))

        await classify.nc.subscribe("ft.stats.vw", cb=on_stats)
        t0 = asyncio.get_running_loop().time()
        await service.main(settings, bus, stop)
        took = asyncio.get_running_loop().time() - t0
        await asyncio.sleep(0.3)
        events = await read_stream(settings)
        work.cancel()
        await bus.close()
        await classify.close()
        return sampled, events, stats, took

    sampled, events, stats, took = asyncio.run(main())
    ends = {e["flow_id"]: e for e in events if e["event_type"] == "flow" and e["phase"] == "end"}
    assert sampled and sampled <= set(ends)
    assert len(sampled) >= 5 and took >= len(sampled) * STEP_S   # it did wait for the late answers
    unanswered = [fid for fid in sampled if ends[fid]["app_protocol"] != "Telnet"]
    assert not unanswered, f"{len(unanswered)} of {len(sampled)} sampled flows lost their verdict"
    counters: dict[str, int] = {}
    for s in stats:
        for k, v in (s.get("counters") or {}).items():
            counters[k] = counters.get(k, 0) + v
    assert counters.get("verdicts_waited_out", 0) == 0


def test_only_verdicts_with_metadata_are_stored_beside_their_end_record(nats_server):
    """A verdict goes into the stream beside its flow's end record only when it carries HTTP, TLS, QUIC or
    SSH metadata (store's http/tls/ssh points); the end record carries the protocol of every verdict."""
    from shared.models import TlsInfo

    async def main():
        settings = CaptureSettings(nats_url=nats_server.url, probe="vm", pcap=[SAMPLE_PCAP], verdict_wait_s=5.0,
                                   replay_max_pending=4000, stream_storage="memory")
        classify = await Bus.connect(CommonSettings(nats_url=nats_server.url, probe="vm"), "classify")
        with_tls: set[str] = set()
        answered: set[str] = set()

        async def answer(batch: list[FlowSample]) -> None:
            out = []
            for i, s in enumerate(batch):
                v = Verdict(timestamp=s.timestamp, probe="vm", flow_id=s.flow_id, sample_seq_no=s.seq_no,
                            final=True, app_protocol="TLS", confidence="dpi")
                if (len(answered) + i) % 2 == 0:
                    v.tls = TlsInfo(sni="example.org")
                    with_tls.add(s.flow_id)
                out.append(v)
            answered.update(s.flow_id for s in batch)
            await classify.nc.publish("ft.verdict.vm", batch_json(out))

        await classify.subscribe("ft.sample.vm", answer, types=(FlowSample,), batched=True)
        events = await run_replay(settings)
        await classify.close()
        return answered, with_tls, events

    answered, with_tls, events = asyncio.run(main())
    ends = {e["flow_id"]: e for e in events if e["event_type"] == "flow" and e["phase"] == "end"}
    stored = {e["flow_id"] for e in events if e["event_type"] == "verdict"}
    assert len(answered) >= 4 and with_tls and answered - with_tls
    assert stored == with_tls
    assert all(ends[f]["app_protocol"] == "TLS" for f in answered)


@pytest.mark.parametrize("max_pending", [4000, 16])
def test_samples_lost_on_the_bus_are_written_off_when_every_classify_is_idle(nats_server, monkeypatch, tmp_path,
                                                                              max_pending, caplog):
    """The real classify service shares its queue group with a member that takes samples and never answers
    (a replica killed with samples in hand, or samples lost with a NATS node): about half the samples get no
    verdict.  Once every classify replica says it is idle (twice, a second apart), the replay writes those
    verdicts off (verdicts_lost) and ends, instead of waiting REPLAY_STALL_MAX_S for nothing; the flows whose
    samples reached classify keep its labels.  With a small ``replay_max_pending`` the replay also stalls
    mid-file on the lost ones (back-pressure) and goes on after writing them off."""
    import json

    import nats

    from services.classify import service as classify_service
    from shared.settings import ClassifySettings

    import subprocess
    import sys

    from tests.conftest import REPO

    monkeypatch.setattr(service, "REPLAY_STALL_MAX_S", 120.0)
    # the sample capture's flows replicated (new addresses each time) over ~20 of capture's batches: some twenty
    # sample messages, shared at random between the two members of the queue group
    replay = tmp_path / "replay.pcap"
    subprocess.run([sys.executable, str(REPO / "bench" / "make_big_pcap.py"), "--out", str(replay), "--packets",
                    str(20 * service.CHUNK), "--corpus", str(REPO / "samples")], check=True, capture_output=True)

    async def main():
        settings = CaptureSettings(nats_url=nats_server.url, probe="lo", pcap=[replay], verdict_wait_s=1.0,
                                   replay_max_pending=max_pending, stream_storage="memory")
        cstop = asyncio.Event()
        csettings = ClassifySettings(nats_url=nats_server.url, probe="lo", use_ndpi=False, stream_storage="memory")
        cbus = await Bus.connect(csettings, "classify", cstop)
        ctask = asyncio.create_task(classify_service.main(csettings, cbus, cstop))
        lossy = await nats.connect(nats_server.url)
        dropped: list[int] = []

        async def drop(msg) -> None:   # takes its share of the queue group's samples and never answers
            dropped.append(len(msg.data))

        await lossy.subscribe("ft.sample.*", queue="classify", cb=drop)
        await lossy.flush()
        stats: list[dict] = []

        async def on_stats(msg) -> None:
            stats.append(json.loads(msg.data))

        await lossy.subscribe("ft.stats.lo", cb=on_stats)
        events = await run_replay(settings)
        await lossy.close()
        cstop.set()
        await ctask
        await cbus.close()
        return dropped, events, stats

    dropped, events, stats = asyncio.run(main())
    counters: dict[str, int] = {}
    for s in stats:
        for k, v in (s.get("counters") or {}).items():
            counters[k] = counters.get(k, 0) + v
    assert dropped, "the lossy member got no sample message (the queue group did not share them)"
    assert counters.get("verdicts_lost", 0) > 0, counters   # written off, not waited out (REPLAY_STALL_MAX_S)
    offs = [r for r in caplog.records if "written off" in r.getMessage()]
    assert len(offs) >= (2 if max_pending < 100 else 1)     # small back-pressure bound: mid-file too
    ends = [e for e in events if e["event_type"] == "flow" and e["phase"] == "end"]
    labelled = [e for e in ends if e.get("app_protocol") not in (None, "", "Unknown")]
    assert ends and labelled and len(labelled) < len(ends)
