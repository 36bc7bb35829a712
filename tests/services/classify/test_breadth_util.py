"""Helpers of the breadth dissectors, and the rule every dissector obeys: hostile input never raises."""

from __future__ import annotations

import random

import pytest

from services.classify.dissectors import REGISTRY
from services.classify.dissectors.base import Match
from services.classify.dissectors.breadth_util import PortHint, first, ordered, printable, stream, u16, u32, u32le
from shared.models import Verdict
from tests.services.classify.flowsample import sampler

BREADTH_MODULES = {"breadth_util", "netbios", "vpn", "voip", "netsvc", "mail", "remote", "p2p", "db", "iot", "misc",
                   "games", "messaging", "media", "ipproto", "extra"}
MINE = [d for d in REGISTRY if type(d).__module__.rsplit(".", 1)[-1] in BREADTH_MODULES]


_s = sampler("UDP")


def test_integers_are_bounds_checked():
    assert u16(b"\x01", 0) == -1 and u32(b"\x00\x01\x02", 0) == -1 and u32le(b"", 3) == -1
    assert u16(b"\x01\x02", 0) == 0x0102 and u32le(b"\x01\x00\x00\x00", 0) == 1


def test_ordered_follows_arrival_order_and_survives_bad_dirs():
    s = _s(src=[b"a", b"c"], dst=[b"b"], dirs="sds")
    assert list(ordered(s)) == [(True, b"a"), (False, b"b"), (True, b"c")]
    bad = _s(src=[b"a"], dst=[b"b"], dirs="ddd")          # does not agree with the lists
    assert list(ordered(bad)) == [(True, b"a"), (False, b"b")]
    assert first(_s()) == (True, b"")
    assert stream(_s(transport="TCP", src=[b"ab", b"cd"]), True, limit=3) == b"abc"
    assert printable(b"ok\x00\x1b[31m\xff") == "ok[31m"


def test_port_hint_never_matches_payloads():
    h = PortHint("SMTP", {25})
    assert not h.could_be(_s(transport="TCP", dport=25, src=[b"EHLO x\r\n"]))
    assert h.dissect(_s(), Verdict(timestamp=0, probe="t")) == Match.NO


def test_registry_holds_the_breadth_dissectors_after_the_core_ones():
    names = {d.name for d in MINE}
    assert {"NetBIOS", "STUN", "SIP", "IPSec", "OpenVPN", "WireGuard", "BitTorrent", "DHCP", "NTP", "RDP",
            "MySQL", "Modbus", "RTSP", "SMTP"} <= names
    first_mine = REGISTRY.index(MINE[0])
    assert all(type(d).__module__.rsplit(".", 1)[-1] not in BREADTH_MODULES for d in REGISTRY[:first_mine])


def _hostile_payloads(rng: random.Random) -> list[bytes]:
    seeds = [b"", b"\x00", b"\xff" * 3, b"\x03\x00\x00\x13\x0e\xe0", b"\x30\x82\xff\xff", b"\x7e\xa0", b"ZBXD",
             b"\x13BitTorrent protocol", b"GNUTELLA CONNECT/0.6\r\n", b"\x00\x01\x00\x58\x21\x12\xa4\x42",
             b"INVITE sip:", b"220 ", b"* OK", b"+OK", b"RFB 003.008\n", b"\xfe\xfd", b"\x16\xfe\xff", b"SSH-",
             b"\x01\x00\x00\x00" * 3, b"\x05\x64\x05", b"\x81\x0b\x00\x04", b"ES\x00\x00", b"\x10\x0c\x00\x04MQTT"]
    seeds += [m for d in MINE for m in getattr(d, "magic", ())]
    out = []
    for seed in seeds:
        out.append(seed)
        out.append(seed + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))))
    out += [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300))) for _ in range(60)]
    return out


@pytest.mark.parametrize("transport", ["TCP", "UDP", "ESP", "ICMP"])
def test_no_dissector_raises_on_hostile_input(transport):
    rng = random.Random(4)
    payloads = _hostile_payloads(rng)
    ports = [0, 21, 25, 53, 67, 88, 102, 123, 137, 138, 139, 161, 443, 445, 500, 502, 1194, 1883, 3389, 4500, 5060,
             9999, 10001, 20000, 47808]
    checked = 0
    for i, p in enumerate(payloads):
        for d in MINE:
            if transport not in d.transports:
                continue
            both = _s(transport=transport, src=[p, payloads[(i * 7) % len(payloads)]], dst=[payloads[(i * 3) % len(payloads)]],
                      sport=ports[i % len(ports)], dport=ports[(i * 5) % len(ports)], dirs="sds")
            dst_only = _s(transport=transport, dst=[p], sport=ports[(i * 3) % len(ports)], dport=ports[i % len(ports)])
            for s in (both, dst_only):
                if d.could_be(s):
                    assert d.dissect(s, Verdict(timestamp=0, probe="t")) in (Match.NO, Match.PARTIAL, Match.FINAL)
                    checked += 1
    assert checked > 100
