"""BPF shard filters, checked offline with libpcap's compiler (no root needed)."""

from __future__ import annotations

import random
import struct

import dpkt
import pytest

from services.capture.shard import check_filter, fanout_group_id, shard_filter, shard_of


def _frame(src: bytes, dst: bytes, sp: int, dp: int, proto: int, vlan: int | None = None) -> bytes:
    l4 = dpkt.tcp.TCP(sport=sp, dport=dp) if proto == 6 else dpkt.udp.UDP(sport=sp, dport=dp, ulen=8)
    if len(src) == 16:
        ip = dpkt.ip6.IP6(src=src, dst=dst, nxt=proto, hlim=1, plen=len(bytes(l4)), data=l4)
        et = 0x86DD
    else:
        ip = dpkt.ip.IP(src=src, dst=dst, p=proto, data=l4)
        et = 0x0800
    tag = struct.pack("!HH", 0x8100, vlan) if vlan is not None else b""
    return b"\x02" * 12 + tag + struct.pack("!H", et) + bytes(ip)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_every_flow_in_exactly_one_shard_both_directions(n):
    rnd = random.Random(n)
    seen = set()
    for i in range(60):
        size = 16 if i % 3 == 0 else 4
        a, b = rnd.randbytes(size), rnd.randbytes(size)
        sp, dp, proto = rnd.randint(1024, 65535), rnd.choice([53, 80, 443]), rnd.choice([6, 17])
        vlan = 7 if i % 4 == 0 else None
        fwd = shard_of(_frame(a, b, sp, dp, proto, vlan), n)
        rev = shard_of(_frame(b, a, dp, sp, proto, vlan), n)
        assert len(fwd) == 1 and fwd == rev
        seen.add(fwd[0])
    assert seen == set(range(n))  # the hash spreads flows over every shard


def test_non_ip_goes_to_shard_zero_and_filters_compile():
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + bytes(dpkt.arp.ARP())
    assert shard_of(arp, 3) == [0]
    assert shard_filter(0, 1, "tcp") == "tcp"
    check_filter(shard_filter(1, 4, "udp port 53"))
    with pytest.raises(ValueError):
        check_filter("this is not bpf")
    with pytest.raises(ValueError):
        shard_filter(2, 2)
    assert fanout_group_id("eth0", 2) == fanout_group_id("eth0", 2) != fanout_group_id("eth1", 2)
