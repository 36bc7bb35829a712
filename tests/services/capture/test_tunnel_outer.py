"""Outer tunnel endpoints and tunnel id on flow records (GRE key, VXLAN VNI, GTP-U TEID, IP-in-IP)."""

from __future__ import annotations

import struct

import dpkt

from services.capture.decode import decode, tunnel_outer
from services.capture.flows import FlowMeter, ListSink
from shared.models import FlowRecord
from shared.settings import CaptureSettings

O1, O2 = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"          # outer endpoints
I1, I2 = b"\xc0\xa8\x00\x01", b"\xc0\xa8\x00\x02"          # inner hosts


def eth(payload: bytes, etype: int = 0x0800) -> bytes:
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01" + struct.pack("!H", etype) + payload


def ip4(data: bytes, proto: int, src: bytes, dst: bytes) -> bytes:
    ip = dpkt.ip.IP(src=src, dst=dst, p=proto, data=data)
    ip.len = 20 + len(data)
    return bytes(ip)


def inner_tcp(flags: int = dpkt.tcp.TH_SYN, src: bytes = I1, dst: bytes = I2, sport: int = 4000, dport: int = 443) -> bytes:
    t = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=1, data=b"")
    t.off = 5
    return ip4(bytes(t), 6, src, dst)


def udp(sport: int, dport: int, data: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def gre(inner: bytes, key: int | None) -> bytes:
    if key is None:
        return struct.pack("!HH", 0, 0x0800) + inner
    return struct.pack("!HHI", 0x2000, 0x0800, key) + inner


def vxlan(inner: bytes, vni: int) -> bytes:
    return udp(55555, 4789, struct.pack("!II", 0x08000000, vni << 8) + eth(inner))


def gtp(inner: bytes, teid: int) -> bytes:
    return udp(2152, 2152, struct.pack("!BBHI", 0x30, 0xFF, len(inner), teid) + inner)


def test_tunnel_outer_gives_outer_endpoints_and_id():
    i = inner_tcp()
    assert tunnel_outer(eth(ip4(gre(i, 0xDEADBEEF), 47, O1, O2)), 1) == (O1, O2, 0xDEADBEEF)
    assert tunnel_outer(eth(ip4(gre(i, None), 47, O1, O2)), 1) == (O1, O2, 0)
    assert tunnel_outer(eth(ip4(vxlan(i, 5000), 17, O1, O2)), 1) == (O1, O2, 5000)
    assert tunnel_outer(eth(ip4(gtp(i, 0x01020304), 17, O1, O2)), 1) == (O1, O2, 0x01020304)
    assert tunnel_outer(eth(ip4(i, 4, O1, O2)), 1) == (O1, O2, 0)
    assert tunnel_outer(eth(i), 1) is None                                   # not tunnelled
    assert tunnel_outer(eth(ip4(udp(1, 4789, b"\x00" * 30), 17, O1, O2)), 1) is None   # garbage on a tunnel port
    # nested: GRE inside VXLAN gives the outermost (the VXLAN endpoints)
    nested = eth(ip4(vxlan(ip4(gre(i, 7), 47, b"\x0b\x00\x00\x01", b"\x0b\x00\x00\x02"), 99), 17, O1, O2))
    assert tunnel_outer(nested, 1) == (O1, O2, 99)
    assert decode(nested, 1)[3] == I1                                          # decode still meters the inner flow


def test_flow_records_carry_the_outer_endpoints_once_per_flow():
    sink = ListSink()
    m = FlowMeter(CaptureSettings(verdict_wait_s=0), sink, source="t")
    m.process(1.0, eth(ip4(gtp(inner_tcp(), 77), 17, O1, O2)))
    # a flow first seen by its SYN-ACK (server to client): src is the client, so the outer ends swap too
    synack = inner_tcp(dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK, src=I2, dst=I1, sport=443, dport=5000)
    m.process(1.1, eth(ip4(gre(synack, 5), 47, O2, O1)))
    m.process(1.2, eth(inner_tcp(sport=6000)))     # no tunnel
    m.finish()
    ends = {r.src_port: r for r in sink.flows if r.phase == "end"}
    a, b, c = ends[4000], ends[5000], ends[6000]
    assert (a.tunnel, a.tunnel_src_ip, a.tunnel_dst_ip, a.tunnel_id) == ("GTP", "10.0.0.1", "10.0.0.2", 77)
    assert (b.tunnel, b.src_ip, b.tunnel_src_ip, b.tunnel_dst_ip, b.tunnel_id) == ("GRE", "192.168.0.1", "10.0.0.1",
                                                                                   "10.0.0.2", 5)
    assert (c.tunnel, c.tunnel_src_ip, c.tunnel_dst_ip, c.tunnel_id) == ("", "", "", 0)
    for r in sink.flows:   # the records the meter builds without validation are valid
        assert FlowRecord.model_validate(r.model_dump()) == r


def test_gre_and_vxlan_tunnels_are_metered_as_their_own_flow_too():
    """A GRE or VXLAN packet meters its inner flow and the tunnel's own flow (NFStream names that
    one GRE / VXLAN, ndpiReader the inner flows); GTP and IP-in-IP give the inner flow only."""
    from services.capture.decode import tunnel_frame

    sink = ListSink()
    m = FlowMeter(CaptureSettings(verdict_wait_s=0), sink, source="t")
    vx = eth(ip4(vxlan(inner_tcp(sport=4000), 5000), 17, O1, O2))
    m.process(1.0, vx)
    m.process(1.1, vx)
    m.process(1.2, eth(ip4(gre(inner_tcp(sport=5000), 9), 47, O1, O2)))
    m.process(1.3, eth(ip4(gtp(inner_tcp(sport=6000), 77), 17, O1, O2)))
    m.process(1.4, eth(ip4(inner_tcp(sport=7000), 4, O1, O2)))
    m.finish()
    ends = {(r.transport, r.src_port, r.dst_port): r for r in sink.flows if r.phase == "end"}
    assert set(ends) == {("TCP", 4000, 443), ("UDP", 55555, 4789), ("TCP", 5000, 443), ("GRE", 0, 0),
                         ("TCP", 6000, 443), ("TCP", 7000, 443)}
    outer = ends[("UDP", 55555, 4789)]
    assert (outer.src_ip, outer.dst_ip, outer.tunnel, outer.src2dst_packets) == ("10.0.0.1", "10.0.0.2", "", 2)
    assert ends[("TCP", 4000, 443)].src2dst_packets == 2 and ends[("TCP", 4000, 443)].tunnel == "VXLAN"
    assert (ends[("GRE", 0, 0)].src_ip, ends[("GRE", 0, 0)].tunnel) == ("10.0.0.1", "")
    assert m.packets == 5                       # frames, not flows: the outer flow counts no extra frame
    # the outer flow's sample holds the VXLAN header (what names it VXLAN)
    first = {s.flow_id: s for s in sink.samples}
    vs = [s for s in first.values() if s.dst_port == 4789]
    assert len(vs) == 1 and vs[0].src_payloads[0][:1] == b"\x08"
    # tunnel_frame() keeps GRE/VXLAN, still decapsulates the rest; decode() is unchanged
    assert tunnel_frame(vx, 1)[5:7] == (55555, 4789) and decode(vx, 1)[5:7] == (4000, 443)
    assert tunnel_frame(eth(ip4(gtp(inner_tcp(sport=6000), 77), 17, O1, O2)), 1)[5] == 6000
