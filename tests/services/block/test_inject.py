"""Injected frames: exact sequence numbers, valid checksums, MACs, VLAN tags, IPv4/IPv6, DNS answers."""

from __future__ import annotations

import struct

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.block import inject as inj
from services.block.encap import observe
from services.block.guard import Allowlist, TokenBucket
from services.block.service import flow_keys

C4 = inj.Endpoint("10.0.0.2", 40000, "02:00:00:00:00:02")
S4 = inj.Endpoint("10.0.0.3", 80, "02:00:00:00:00:03")
C6 = inj.Endpoint("fd00::2", 40001, "02:00:00:00:00:02")
S6 = inj.Endpoint("fd00::3", 443, "02:00:00:00:00:03")


def _l4_checksum_ok(ip) -> bool:
    """Re-serialise with zeroed checksums (dpkt recomputes them) and compare."""
    raw = bytes(ip)
    again = type(ip)(raw)
    want = again.data.sum
    again.data.sum = 0
    if isinstance(again, dpkt.ip.IP):
        ipsum = again.sum
        again.sum = 0
        again2 = dpkt.ip.IP(bytes(again))
        return again2.sum == ipsum and again2.data.sum == want
    return type(ip)(bytes(again)).data.sum == want


@pytest.mark.parametrize("client,server", [(C4, S4), (C6, S6)])
def test_reset_frames_use_exact_sequence_numbers(client, server):
    to_server, to_client = inj.reset_frames(client, server, [], 1000 + 517, 5000)
    e = dpkt.ethernet.Ethernet(to_server)
    assert e.src == inj.mac_bytes(client.mac) and e.dst == inj.mac_bytes(server.mac)
    t = e.data.data
    assert (t.sport, t.dport, t.seq, t.ack) == (client.port, server.port, 1517, 5000)
    assert t.flags == dpkt.tcp.TH_RST | dpkt.tcp.TH_ACK and t.data == b""
    assert _l4_checksum_ok(e.data)
    e2 = dpkt.ethernet.Ethernet(to_client)
    t2 = e2.data.data
    assert e2.src == inj.mac_bytes(server.mac) and e2.dst == inj.mac_bytes(client.mac)
    assert (t2.sport, t2.dport, t2.seq, t2.ack) == (server.port, client.port, 5000, 1517)
    assert _l4_checksum_ok(e2.data)


def test_block_page_frame_and_sequence_wrap():
    page = inj.block_page("r1", "bad.test", "no <script>")
    to_server, to_client = inj.http_block_frames(C4, S4, [], 0xFFFFFFFF, 7, page)
    t = dpkt.ethernet.Ethernet(to_client).data.data
    assert t.flags == dpkt.tcp.TH_FIN | dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK
    assert (t.seq, t.ack) == (7, 0xFFFFFFFF)
    resp = dpkt.http.Response(t.data)
    assert resp.status == "403" and int(resp.headers["content-length"]) == len(resp.body)
    assert b"<script>" not in resp.body and b"&lt;script&gt;" in resp.body
    assert dpkt.ethernet.Ethernet(to_server).data.data.flags & dpkt.tcp.TH_RST
    redirect = inj.block_page("r1", "bad.test", redirect="http://portal.test/blocked")
    r = dpkt.http.Response(redirect)
    assert r.status == "302" and r.headers["location"] == "http://portal.test/blocked"


def test_vlan_tags_are_kept_in_order():
    f, _ = inj.reset_frames(C4, S4, [100, 200], 1, 2)
    assert struct.unpack_from("!HHHHH", f, 12) == (0x8100, 100, 0x8100, 200, 0x0800)
    s = observe(f)
    assert s.key == flow_keys(C4, S4)[0] and (s.seq, s.ack, s.plen, s.po) == (1, 2, 0, len(f)) and s.flags & 0x04
    assert (s.src, s.dst, s.sport, s.dport, s.smac, s.dmac, s.vlans) == ("10.0.0.2", "10.0.0.3", 40000, 80, C4.mac,
                                                                         S4.mac, (100, 200))
    assert s.ip_off == 22 and s.tunnel == ""


def _query(name: str, qtype: int, tid: int = 0x1234) -> bytes:
    q = dpkt.dns.DNS(id=tid, op=dpkt.dns.DNS_RD, qd=[dpkt.dns.DNS.Q(name=name, type=qtype)])
    return bytes(q)


@pytest.mark.parametrize("qtype,sinkhole,want", [
    (dpkt.dns.DNS_A, "0.0.0.0", ("A", "0.0.0.0")),
    (dpkt.dns.DNS_AAAA, "0.0.0.0", ("AAAA", "::")),
    (dpkt.dns.DNS_AAAA, "fd00::53", ("AAAA", "fd00::53")),
    (dpkt.dns.DNS_A, "fd00::53", ("A", "0.0.0.0")),
    (dpkt.dns.DNS_MX, "0.0.0.0", ("NODATA", "")),
    (dpkt.dns.DNS_A, None, ("NXDOMAIN", "")),
    (dpkt.dns.DNS_TXT, None, ("NXDOMAIN", "")),
])
def test_forged_dns_answers(qtype, sinkhole, want):
    import ipaddress

    q = inj.parse_dns_query(_query("x.ads.test", qtype))
    assert q is not None and q.name == "x.ads.test" and q.id == 0x1234 and q.rd
    r = dpkt.dns.DNS(inj.forge_dns_answer(q, sinkhole))
    assert r.id == 0x1234 and r.qr == dpkt.dns.DNS_R and r.qd[0].name == "x.ads.test"
    kind, value = want
    if kind == "NXDOMAIN":
        assert r.rcode == dpkt.dns.DNS_RCODE_NXDOMAIN and not r.an
    elif kind == "NODATA":
        assert r.rcode == 0 and not r.an
    elif kind == "A":
        assert r.an[0].type == dpkt.dns.DNS_A and str(ipaddress.ip_address(r.an[0].ip)) == value
    else:
        assert r.an[0].type == dpkt.dns.DNS_AAAA and str(ipaddress.ip_address(r.an[0].ip6)) == value
    frame = inj.udp_frame(S4, C4, [7], inj.forge_dns_answer(q, sinkhole))
    e = dpkt.ethernet.Ethernet(frame)
    assert e.data.data.sport == 80 and e.data.data.dport == 40000 and _l4_checksum_ok(e.data)


def test_dns_query_parser_rejects_responses_and_junk():
    assert inj.parse_dns_query(b"") is None
    assert inj.parse_dns_query(b"\x00" * 11) is None
    resp = dpkt.dns.DNS(id=1, qr=dpkt.dns.DNS_R, qd=[dpkt.dns.DNS.Q(name="a.test")])
    assert inj.parse_dns_query(bytes(resp)) is None
    looped = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01"
    assert inj.parse_dns_query(looped) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_parsers_never_raise_on_random_bytes(data):
    inj.parse_dns_query(data)
    inj.dns_transaction_of_response(data)
    observe(data)
    observe(b"\x02" * 12 + b"\x08\x00" + data)
    observe(b"\x02" * 12 + b"\x86\xdd" + data)


def test_allowlist_and_rate_limit():
    a = Allowlist(["10.9.0.0/16", "*.trusted.test", "fd00:9::/32"])
    assert a.hit(["1.2.3.4", "10.9.8.7"], "")
    assert a.hit(["fd00:9::1"], "")
    assert a.hit(["1.2.3.4"], "WWW.Trusted.Test")
    assert not a.hit(["1.2.3.4", "not-an-ip"], "trusted.test.evil")
    b = TokenBucket(rate=0.001, burst=3)
    assert [b.take() for _ in range(5)] == [True, True, True, False, False]


def test_observe_dns_frames():
    q = inj.parse_dns_query(_query("x.ads.test", dpkt.dns.DNS_A))
    f = inj.udp_frame(C4, inj.Endpoint("10.0.0.53", 53, S4.mac), [5], inj.forge_dns_answer(q, None))
    s = observe(f)
    assert (s.proto, s.src, s.dst, s.sport, s.dport, s.smac, s.dmac, s.vlans) == \
        (17, "10.0.0.2", "10.0.0.53", 40000, 53, C4.mac, S4.mac, (5,))
    assert inj.dns_transaction_of_response(f[s.po:s.po + s.plen]) == (0x1234, True)
    f6 = inj.udp_frame(C6, inj.Endpoint("fd00::53", 53, S6.mac), [], b"\x00" * 12)
    s6 = observe(f6)
    assert (s6.src, s6.dst, s6.sport, s6.dport) == ("fd00::2", "fd00::53", 40001, 53)
