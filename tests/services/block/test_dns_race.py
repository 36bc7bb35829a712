"""The DNS race (services/block/dns_race.py): one outcome per query, whichever path sees it, and per retry."""

from __future__ import annotations

import asyncio
import time

import dpkt

from shared.models import PacketEvent

from services.block import encap as enc
from tests.services.block.test_tunnels import _blocker
from tests.services.block.tunnels import Tunnel, udp_packet


def _query(tid: int = 7, name: str = "ads.test") -> bytes:
    return bytes(dpkt.dns.DNS(id=tid, op=dpkt.dns.DNS_RD, qd=[dpkt.dns.DNS.Q(name=name, type=1)]))


def _event(q: bytes, ts: float, flow_id: str = "d1") -> PacketEvent:
    return PacketEvent(timestamp=ts, probe="unit", flow_id=flow_id, transport="UDP", src_ip="10.200.0.2",
                       src_port=5353, dst_ip="10.200.0.53", dst_port=53, kind="dns", payload=q,
                       src_mac="02:00:00:00:0c:01", dst_mac="02:00:00:00:0c:02")


def test_one_query_seen_by_both_paths_is_answered_once_and_named():
    b = _blocker()
    q = _query()
    t = time.time()
    b.on_packet(t, Tunnel("plain").wrap(udp_packet("10.200.0.2", "10.200.0.53", 5353, 53, q), True))
    asyncio.run(b.on_packet_event(_event(q, t)))   # capture's event for the same packet
    for d in list(b.dns_watches.values()):
        d.deadline = 0
    b.tick()
    acts = list(b.recent_actions)
    assert len(b.injector.frames) == 1 and [(a.outcome, a.flow_id) for a in acts] == [("won", "d1")]


def test_a_repeated_query_with_the_same_port_and_id_gets_its_own_answer_and_outcome():
    b = _blocker()
    q = _query()
    t = time.time()
    frame = Tunnel("vxlan").wrap(udp_packet("10.200.0.2", "10.200.0.53", 5353, 53, q), True)
    b.on_packet(t, frame)
    b.on_packet(t + 1.0, frame)          # dig's retry (same id), or the same query replayed
    asyncio.run(b.on_packet_event(_event(q, t + 1.0, "d2")))
    for d in list(b.dns_watches.values()):
        d.deadline = 0
    b.tick()
    acts = list(b.recent_actions)
    assert len(b.injector.frames) == 2 and [a.outcome for a in acts] == ["won", "won"]
    assert [a.flow_id for a in acts] == ["", "d2"]
    assert all(enc.observe(f).tunnel == "VXLAN" for f in b.injector.frames)


def test_dns_block_reports_dry_run_without_injector():
    b = _blocker()
    b.injector = None
    b.on_packet(time.time(), Tunnel("plain").wrap(udp_packet("10.200.0.2", "10.200.0.53", 5353, 53, _query()), True))
    assert [a.outcome for a in b.recent_actions] == ["dry_run"]
