"""block reads samples, verdicts and DNS packet events only while its rules need them (issue 12).

With no rules, none of them reaches block (on a busy probe they were most of its
CPU); a rule added later to the KV bucket subscribes what it needs, and it blocks:
a real nats-server, block's own ``main``, rules written to the bucket as
``flowtarget rules add`` writes them, subscriptions read from the server's
monitoring endpoint.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import dpkt
import nats

from flowtarget.embedded import EmbeddedNats, free_port
from services.block import service
from services.block.rules import Rule, open_bucket, put_rules
from shared.bus import Bus
from shared.models import FlowSample, PacketEvent, Verdict, batch_json
from shared.settings import BlockSettings

PROBE = "late"
MACS = dict(src_mac="02:00:00:00:0a:01", dst_mac="02:00:00:00:0a:02")


def _server_subjects(http_port: int) -> set[str]:
    """Every subject some client of the server subscribes to."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/connz?subs=1", timeout=2) as r:
        conns = json.load(r).get("connections") or []
    return {s for c in conns for s in (c.get("subscriptions_list") or [])}


def _verdict(flow_id: str, host: str, sport: int) -> Verdict:
    return Verdict(timestamp=time.time(), probe=PROBE, flow_id=flow_id, transport="TCP", src_ip="10.9.0.2",
                   src_port=sport, dst_ip="10.9.0.3", dst_port=80, app_protocol="HTTP", host=host, final=True,
                   src2dst_next_seq=100, src2dst_ack=200, dst2src_next_seq=200, **MACS)


def _sample(flow_id: str, host: str, sport: int) -> FlowSample:
    return FlowSample(timestamp=time.time(), probe=PROBE, flow_id=flow_id, transport="TCP", src_ip="10.9.0.2",
                      src_port=sport, dst_ip="10.9.0.3", dst_port=80, first_seen=time.time(),
                      src_payloads=[f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()], payload_dirs="s",
                      src2dst_packets=3, src2dst_next_seq=1000, **MACS)


def _dns_query(name: str) -> PacketEvent:
    q = bytes(dpkt.dns.DNS(id=9, op=dpkt.dns.DNS_RD, qd=[dpkt.dns.DNS.Q(name=name, type=1)]))
    return PacketEvent(timestamp=time.time(), probe=PROBE, flow_id="dns-1", transport="UDP", src_ip="10.9.0.2",
                       src_port=5353, dst_ip="10.9.0.53", dst_port=53, kind="dns", payload=q, **MACS)


def test_block_subscribes_only_what_its_rules_need_and_a_rule_added_later_blocks(tmp_path):
    http_port = free_port()
    server = EmbeddedNats(store_dir=str(tmp_path / "js"), log_file=str(tmp_path / "nats.log"), http_port=http_port)
    server.start()
    inputs = {f"ft.{k}.{PROBE}" for k in ("sample", "verdict", "packet")}

    async def wait_subjects(want: set[str], timeout: float = 15.0) -> set[str]:
        deadline = time.monotonic() + timeout
        while True:
            got = _server_subjects(http_port) & inputs
            if got == want or time.monotonic() > deadline:
                return got
            await asyncio.sleep(0.1)

    async def main() -> None:
        settings = BlockSettings(nats_url=server.url, probe=PROBE)
        stop = asyncio.Event()
        bus = await Bus.connect(settings, "block", stop)
        await bus.ensure_stream()
        nc = await nats.connect(server.url)
        actions: list[dict] = []

        async def on_action(msg) -> None:
            actions.append(json.loads(msg.data))

        await nc.subscribe(f"ft.block.{PROBE}", cb=on_action)
        task = asyncio.create_task(service.main(settings, bus, stop))
        try:
            kv = await open_bucket(nc.jetstream(), settings.rules_bucket)
            # the rules watcher runs (it has read the empty bucket) and nothing else is subscribed
            deadline = time.monotonic() + 15
            while not any(s.startswith("$KV") or "KV_" in s or s.startswith("_INBOX") for s in _server_subjects(http_port)):
                assert time.monotonic() < deadline, "block did not start"
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            assert _server_subjects(http_port) & inputs == set()
            assert not task.done()

            # a rule appears: block subscribes verdicts and samples (a name rule takes the fast path), not DNS
            await put_rules(kv, [Rule(id="r-late", action="reset", host=["late.block.test"])])
            assert await wait_subjects({f"ft.verdict.{PROBE}", f"ft.sample.{PROBE}"}) == \
                {f"ft.verdict.{PROBE}", f"ft.sample.{PROBE}"}
            await nc.publish(f"ft.verdict.{PROBE}", batch_json([_verdict("f-ok", "ok.block.test", 40001)]))
            await nc.publish(f"ft.verdict.{PROBE}", batch_json([_verdict("f-late", "late.block.test", 40002)]))
            await nc.publish(f"ft.sample.{PROBE}", batch_json([_sample("f-fast", "late.block.test", 40003)]))
            deadline = time.monotonic() + 15
            while len(actions) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            by_flow = {a["flow_id"]: a for a in actions}
            assert set(by_flow) == {"f-late", "f-fast"}, actions
            for a in by_flow.values():
                # no FT_IFACE: reported, not injected
                assert (a["rule_id"], a["action"], a["outcome"]) == ("r-late", "reset", "dry_run"), a

            # a dns_block rule: DNS packet events too, and a query for the name is answered (reported)
            await put_rules(kv, [Rule(id="r-dns", action="dns_block", host=["*.ads.block.test"])])
            assert await wait_subjects(inputs) == inputs
            await nc.publish(f"ft.packet.{PROBE}", batch_json([_dns_query("x.ads.block.test")]))
            deadline = time.monotonic() + 15
            while not any(a["rule_id"] == "r-dns" for a in actions) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            dns = [a for a in actions if a["rule_id"] == "r-dns"]
            assert dns and dns[0]["action"] == "dns_block", actions

            # only the dns_block rule left: no samples, no verdicts; none at all once it goes too
            await kv.delete("r-late")
            assert await wait_subjects({f"ft.packet.{PROBE}"}) == {f"ft.packet.{PROBE}"}
            await kv.delete("r-dns")
            assert await wait_subjects(set()) == set()
            n = len(actions)
            await nc.publish(f"ft.verdict.{PROBE}", batch_json([_verdict("f-after", "late.block.test", 40004)]))
            await nc.flush()
            await asyncio.sleep(0.5)
            assert len(actions) == n
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
            await nc.close()
            await bus.close()

    try:
        asyncio.run(main())
    finally:
        server.close()
