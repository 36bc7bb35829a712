"""ICMP/ICMPv6 flows get their Community ID: capture keeps the first packet's type and code (flows stay keyed
without them) and every event about the flow carries them to store, which computes the id.

Expected values are the spec's published vectors (corelight/community-id-spec, baseline/README.md tables,
seed 0) or, for a case the tables lack, the spec's algorithm written out here independently of
shared/community_id.py.
"""

from __future__ import annotations

import base64
import hashlib
import socket

import dpkt

from services.capture.flows import FlowMeter, ListSink
from services.classify.engine import Engine
from services.store.schema import Schema, community_id
from shared.models import Alert, BlockAction
from shared.settings import CaptureSettings

MAC_A = b"\x02\x00\x00\x00\x00\x01"
MAC_B = b"\x02\x00\x00\x00\x00\x02"


def eth4(src: str, dst: str, icmp_type: int, code: int, body: bytes = b"\x00\x01\x00\x01abcdefgh") -> bytes:
    ic = dpkt.icmp.ICMP(type=icmp_type, code=code, data=body)
    ip = dpkt.ip.IP(src=socket.inet_pton(socket.AF_INET, src), dst=socket.inet_pton(socket.AF_INET, dst),
                    p=1, ttl=64, data=ic)
    ip.len = len(bytes(ip))
    return bytes(dpkt.ethernet.Ethernet(src=MAC_A, dst=MAC_B, type=0x0800, data=ip))


def eth6(src: str, dst: str, icmp_type: int, code: int, body: bytes = b"\x00\x01\x00\x01abcdefgh") -> bytes:
    ic = dpkt.icmp6.ICMP6(type=icmp_type, code=code, data=body)
    ip = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, src), dst=socket.inet_pton(socket.AF_INET6, dst),
                      nxt=58, hlim=64, data=ic)
    ip.plen = len(bytes(ic))
    return bytes(dpkt.ethernet.Ethernet(src=MAC_A, dst=MAC_B, type=0x86DD, data=ip))


def spec_cid(saddr: str, daddr: str, proto: int, itype: int, code: int, one_way: bool) -> str:
    """The spec's algorithm, written out: seed 0, ordered endpoints unless one-way, type/code as ports."""
    fam = socket.AF_INET6 if ":" in saddr else socket.AF_INET
    a, b = socket.inet_pton(fam, saddr), socket.inet_pton(fam, daddr)
    sp, dp = itype, code
    if not one_way and (a, sp) > (b, dp):
        a, b, sp, dp = b, a, dp, sp
    data = (0).to_bytes(2, "big") + a + b + bytes((proto, 0)) + sp.to_bytes(2, "big") + dp.to_bytes(2, "big")
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode()


def spec_tcp(saddr: str, daddr: str, sport: int, dport: int) -> str:
    a, b = socket.inet_aton(saddr), socket.inet_aton(daddr)
    if (a, sport) > (b, dport):
        a, b, sport, dport = b, a, dport, sport
    data = b"\x00\x00" + a + b + b"\x06\x00" + sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode()


def meter_flows(frames: list[bytes]) -> list:
    sink = ListSink()
    m = FlowMeter(CaptureSettings(verdict_wait_s=0), sink, source="t")
    m.process_batch([(1_700_000_000.0 + i * 0.01, fr) for i, fr in enumerate(frames)])
    m.finish("eof")
    return sink


def ends(sink) -> list:
    return [r for r in sink.flows if r.phase == "end"]


def test_echo_request_and_reply_one_flow_with_the_spec_value():
    # baseline/README.md: 192.168.0.89 -> 192.168.0.1 ICMP 8/0 and its reply: 1:X0snYXpgwiv9TZtqg64sgzUn6Dk=
    sink = meter_flows([eth4("192.168.0.89", "192.168.0.1", 8, 0), eth4("192.168.0.1", "192.168.0.89", 0, 0)])
    (end,) = ends(sink)
    assert (end.transport, end.src_port, end.dst_port) == ("ICMP", 0, 0)     # still keyed without type/code
    assert (end.src2dst_packets, end.dst2src_packets) == (1, 1)
    assert (end.icmp_type, end.icmp_code) == (8, 0)
    start = [r for r in sink.flows if r.phase == "start"][0]
    assert community_id(start) == community_id(end) == "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="
    # the samples classify gets carry them too, and so do the verdicts it makes of them
    assert sink.samples and all((s.icmp_type, s.icmp_code) == (8, 0) for s in sink.samples)
    v = Engine().new_verdict(sink.samples[0])
    assert community_id(v) == "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="


def test_reply_seen_first_gives_the_same_id():
    sink = meter_flows([eth4("192.168.0.1", "192.168.0.89", 0, 0), eth4("192.168.0.89", "192.168.0.1", 8, 0)])
    (end,) = ends(sink)
    assert (end.src_ip, end.icmp_type) == ("192.168.0.1", 0)
    assert community_id(end) == "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="


def test_icmpv6_echo_and_one_way_types():
    # baseline/README.md: ICMPv6 echo 128 and its reply 129; 1/4 (destination unreachable, port) is one-way
    sink = meter_flows([
        eth6("3ffe:507:0:1:200:86ff:fe05:80da", "3ffe:501:0:1001::2", 128, 0),
        eth6("3ffe:501:0:1001::2", "3ffe:507:0:1:200:86ff:fe05:80da", 129, 0),
        eth6("3ffe:501:410:0:2c0:dfff:fe47:33e", "3ffe:507:0:1:200:86ff:fe05:80da", 1, 4),
    ])
    by_src = {r.src_ip: r for r in ends(sink)}
    assert len(by_src) == 2
    echo = by_src["3ffe:507:0:1:200:86ff:fe05:80da"]
    assert (echo.transport, echo.icmp_type, echo.dst2src_packets) == ("ICMPV6", 128, 1)
    assert community_id(echo) == "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg="
    unreach = by_src["3ffe:501:410:0:2c0:dfff:fe47:33e"]
    assert (unreach.icmp_type, unreach.icmp_code) == (1, 4)
    assert community_id(unreach) == "1:hLZd0XGWojozrvxqE0dWB1iM6R0="


def test_icmp_one_way_types_use_the_code_and_keep_direction():
    # time exceeded 11/0: baseline/README.md; destination unreachable 3/3 (port): the spec's algorithm
    sink = meter_flows([eth4("10.0.0.1", "10.0.0.2", 11, 0), eth4("10.0.0.9", "10.0.0.3", 3, 3)])
    by_src = {r.src_ip: r for r in ends(sink)}
    assert community_id(by_src["10.0.0.1"]) == "1:YHxtAirCG//0OzkcVAukqKQN9xM="
    un = by_src["10.0.0.9"]
    assert (un.icmp_type, un.icmp_code) == (3, 3)
    expect = spec_cid("10.0.0.9", "10.0.0.3", 1, 3, 3, one_way=True)
    assert community_id(un) == expect != spec_cid("10.0.0.9", "10.0.0.3", 1, 3, 3, one_way=False)


def test_alerts_and_blocks_naming_an_icmp_flow_carry_its_id():
    sink = meter_flows([eth4("192.168.0.89", "192.168.0.1", 8, 0)])
    (end,) = ends(sink)
    env = dict(timestamp=end.timestamp, probe="p", flow_id=end.flow_id, transport="ICMP", src_ip=end.src_ip,
               dst_ip=end.dst_ip, icmp_type=end.icmp_type, icmp_code=end.icmp_code)
    a = Alert(**env, alert_id="x", alert_type="policy", first_seen=end.first_seen, last_seen=end.last_seen)
    b = BlockAction(**env, rule_id="r", action="drop", outcome="dry_run")
    sc = Schema()
    sc.rule.log_all = True
    pts: list = []
    for ev in (end, a, b):
        sc.points(ev, pts)
    cids = {p.measurement: p.fields.get("community_id") for p in pts}
    assert cids == {"flows": "1:X0snYXpgwiv9TZtqg64sgzUn6Dk=", "alerts": "1:X0snYXpgwiv9TZtqg64sgzUn6Dk=",
                    "blocks": "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="}


def test_tcp_flows_have_no_icmp_fields_and_icmp_without_them_has_no_id():
    tcp = dpkt.tcp.TCP(sport=40000, dport=80, flags=dpkt.tcp.TH_SYN, seq=1)
    ip = dpkt.ip.IP(src=b"\x0a\x00\x00\x01", dst=b"\x0a\x00\x00\x02", p=6, data=tcp)
    ip.len = len(bytes(ip))
    fr = bytes(dpkt.ethernet.Ethernet(src=MAC_A, dst=MAC_B, type=0x0800, data=ip))
    (end,) = ends(meter_flows([fr]))
    assert end.icmp_type is None and end.icmp_code is None
    assert community_id(end) == spec_tcp("10.0.0.1", "10.0.0.2", 40000, 80)
    # an ICMP packet whose flow's first packet carried no type and code (an older producer): no value
    assert community_id(end.model_copy(update={"transport": "ICMP", "src_port": 0, "dst_port": 0})) == ""
