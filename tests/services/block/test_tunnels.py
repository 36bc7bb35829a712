"""Issue 17: injected frames are encapsulated exactly as the flow was seen, or the outcome is not_possible.

Crafted frames of one HTTP flow inside each encapsulation go through block's
own capture path (``Blocker.on_packet``, which decodes with capture's decoder);
the frames block would send are recorded and compared byte for byte with what
a real tunnel endpoint would have put on the wire for the same inner packet.
The same frames replayed onto a real veth are in test_block_tunnel_lab.py.
"""

from __future__ import annotations

import asyncio
import struct
import time

import dpkt
import pytest

from shared.models import FlowSample
from shared.settings import BlockSettings

from services.block import encap as enc
from services.block.rules import RuleSet, parse_rules_text
from services.block.service import Blocker
from tests.services.block.tunnels import VTEP_C, VTEP_S, Flow, Tunnel, udp_packet

RULES = parse_rules_text("""
rules:
  - {id: r-reset, host: "bad.test", action: reset}
  - {id: r-dns, host: "ads.test", action: dns_block, dns_answer: 0.0.0.0}
""")


class Recorder:
    """Records the frames block sends (unit test of frame building; the lab tests send for real)."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send(self, *frames: bytes) -> int:
        self.frames.extend(frames)
        return len(frames)

    def close(self) -> None:
        pass


def _blocker() -> Blocker:
    b = Blocker(BlockSettings(probe="unit", dry_run=False), bus=None)
    b.injector = Recorder()  # type: ignore[assignment]
    b.unnamed = None  # publish at once, do not wait for capture's flow id
    b.on_rules_changed(RuleSet(RULES), [])
    return b


def _feed(b: Blocker, frames: list[bytes], t0: float | None = None) -> None:
    t = t0 if t0 is not None else time.time()
    for i, f in enumerate(frames):
        b.on_packet(t + i * 0.001, f)


def _finish_all(b: Blocker) -> None:
    for w in list(b.watches):
        w.deadline = 0
    b.tick()


def _norm(frame: bytes) -> bytes:
    """Zero every IPv4 header's id and checksum (after checking the checksum): they differ by design."""
    b = bytearray(frame)
    o = 12
    while struct.unpack_from("!H", b, o)[0] in (0x8100, 0x88A8):
        o += 4
    o += 2
    while o + 20 <= len(b) and b[o] >> 4 == 4:
        ihl = (b[o] & 15) * 4
        assert enc._csum(bytes(b[o:o + ihl])) == 0, "bad IPv4 header checksum"
        b[o + 4:o + 6] = b"\0\0"
        b[o + 10:o + 12] = b"\0\0"
        proto = b[o + 9]
        o += ihl
        if proto == 17 and struct.unpack_from("!H", b, o + 2)[0] == 4789:
            o += 16 + 14
        elif proto == 17 and struct.unpack_from("!H", b, o + 2)[0] == 2152:
            o += 16
        elif proto == 47:
            fl, ptype = b[o], struct.unpack_from("!H", b, o + 2)[0]
            o += 4 + 4 * bin(fl & 0xB0).count("1")
            if ptype == 0x6558:
                o += 14
        else:
            break
    return bytes(b)


KINDS = ["plain", "vlan", "qinq", "mpls", "pppoe", "ipip", "vxlan", "vxlan6", "gre", "gre-key-seq", "gre-eth",
         "gre-csum", "gtp"]
TUNNEL_NAME = {"vxlan": "VXLAN", "vxlan6": "VXLAN", "gtp": "GTP", "ipip": "IP-in-IP"}


@pytest.mark.parametrize("kind", KINDS)
def test_resets_are_encapsulated_as_the_flow_was_seen(kind):
    b = _blocker()
    tun = Tunnel(kind)
    flow = Flow(tun)
    _feed(b, flow.handshake_and_request("bad.test"))
    frames = b.injector.frames
    assert len(frames) == 2, list(b.recent_actions)
    to_server, to_client = frames
    s1, s2 = enc.observe(to_server), enc.observe(to_client)
    # the race is judged inside the tunnel: inner addresses, ports and RFC 5961 sequence numbers
    c_next, s_next = flow.cseq + 1 + flow.request_len, flow.sseq + 1
    assert (s1.src, s1.dst, s1.sport, s1.dport, s1.seq, s1.ack, s1.flags) == \
        (flow.cip, flow.sip, flow.sport, 80, c_next, s_next, 0x14)
    assert (s2.src, s2.dst, s2.sport, s2.dport, s2.seq, s2.ack, s2.flags) == \
        (flow.sip, flow.cip, 80, flow.sport, s_next, c_next, 0x14)
    assert s1.tunnel == s2.tunnel == TUNNEL_NAME.get(kind, "GRE" if "gre" in kind else "")
    # byte for byte what the tunnel endpoint of each direction would send (GRE sequence: last seen + 1)
    assert _norm(to_server) == _norm(tun.wrap(to_server[s1.ip_off:], True))
    assert _norm(to_client) == _norm(tun.wrap(to_client[s2.ip_off:], False))
    ip = dpkt.ip.IP(to_server[s1.ip_off:])
    tcp_sum = ip.data.sum
    ip.data.sum = 0
    ip.sum = 0
    assert dpkt.ip.IP(bytes(ip)).data.sum == tcp_sum, "inner TCP checksum"


@pytest.mark.parametrize("kind", ["plain", "vlan", "qinq", "ipip", "vxlan", "vxlan6", "gtp"])
def test_a_request_cut_by_the_snap_length_is_reset_past_its_end(kind):
    """block's own capture takes 2,048 bytes of a frame: a jumbo frame or GRO's merged one reaches it cut.
    The reset goes after the whole request (the IP header's length), not after the bytes the frame
    holds, and inside the tunnel as before."""
    b = _blocker()
    tun = Tunnel(kind)
    flow = Flow(tun)
    frames = flow.handshake_and_request("bad.test")
    frames[-1] = frames[-1][:-25]              # "Accept: */*" and the blank line cut off; the Host line whole
    s = enc.observe(frames[-1])
    assert s.plen == flow.request_len and frames[-1][s.ip_off:][:1] in (b"\x45", b"\x60")
    _feed(b, frames)
    to_server, _to_client = b.injector.frames
    s1 = enc.observe(to_server)
    assert (s1.seq, s1.ack, s1.flags) == (flow.cseq + 1 + flow.request_len, flow.sseq + 1, 0x14)
    assert _norm(to_server) == _norm(tun.wrap(to_server[s1.ip_off:], True))


@pytest.mark.parametrize("kind", ["erspan", "tzsp"])
def test_mirror_encapsulations_are_not_possible(kind):
    b = _blocker()
    _feed(b, Flow(Tunnel(kind)).handshake_and_request("bad.test"))
    [a] = b.recent_actions
    assert a.outcome == "not_possible" and "mirror copy" in a.message and not b.injector.frames


def test_capwap_is_not_possible():
    """Issue 17: every encapsulation the decoder understands is reproduced or reported not_possible (CAPWAP data,
    the wireless controller tunnel, is decoded by capture but not rebuilt by block)."""
    b = _blocker()
    frames = Flow(Tunnel("capwap")).handshake_and_request("bad.test")
    assert enc.observe(frames[0]).tunnel == "CAPWAP"
    _feed(b, frames)
    [a] = b.recent_actions
    assert a.outcome == "not_possible" and "CAPWAP" in a.message and not b.injector.frames


def test_one_way_tunnel_ids_are_not_possible():
    b = _blocker()
    frames = Flow(Tunnel("gtp")).handshake_and_request("bad.test")
    _feed(b, [frames[0], frames[2], frames[3]])  # the downlink never seen: its TEID is unknown
    [a] = b.recent_actions
    assert a.outcome == "not_possible" and "TEID" in a.message and not b.injector.frames
    b = _blocker()
    frames = Flow(Tunnel("gre-key-seq")).handshake_and_request("bad.test")
    _feed(b, [frames[0], frames[2], frames[3]])
    [a] = b.recent_actions
    assert a.outcome == "not_possible" and "GRE" in a.message
    b = _blocker()
    frames = Flow(Tunnel("mpls")).handshake_and_request("bad.test")
    _feed(b, [frames[0], frames[2], frames[3]])
    [a] = b.recent_actions
    assert a.outcome == "not_possible" and "MPLS" in a.message

@pytest.mark.parametrize("kind", ["vxlan", "gre", "vlan", "pppoe", "ipip"])
def test_dns_answer_goes_back_through_the_tunnel(kind):
    b = _blocker()
    tun = Tunnel(kind)
    q = bytes(dpkt.dns.DNS(id=77, op=dpkt.dns.DNS_RD, qd=[dpkt.dns.DNS.Q(name="ads.test", type=1)]))
    b.on_packet(time.time(), tun.wrap(udp_packet("10.200.0.2", "10.200.0.53", 5353, 53, q), True))
    [f] = b.injector.frames
    s = enc.observe(f)
    assert (s.src, s.dst, s.sport, s.dport) == ("10.200.0.53", "10.200.0.2", 53, 5353)
    ans = dpkt.dns.DNS(f[s.po:s.po + s.plen])
    assert ans.id == 77 and ans.an[0].ip == b"\0\0\0\0"
    assert _norm(f) == _norm(tun.wrap(f[s.ip_off:], False)) or kind == "vxlan"
    if kind == "vxlan":  # the answer's outer UDP source port is the query's (a VTEP accepts any)
        assert f[26:30] == bytes(map(int, VTEP_S.split("."))) and f[30:34] == bytes(map(int, VTEP_C.split(".")))
        assert struct.unpack_from("!HH", f, 34)[1] == 4789 and f[46:49] == (4242).to_bytes(3, "big")


def _sample(flow_id: str, f: Flow) -> FlowSample:
    return FlowSample(timestamp=time.time(), probe="unit", flow_id=flow_id, transport="TCP", src_ip=f.cip,
                      src_port=f.sport, dst_ip=f.sip, dst_port=80, first_seen=time.time(),
                      src_payloads=[b"GET / HTTP/1.1\r\nHost: bad.test\r\n\r\n"], payload_dirs="s",
                      src_mac="02:00:00:00:0c:01", dst_mac="02:00:00:00:0c:02", vlan_ids=[100],
                      src2dst_next_seq=f.cseq + 1 + f.request_len, src2dst_ack=f.sseq + 1,
                      dst2src_next_seq=f.sseq + 1, trigger_time=time.time())


def test_a_repeated_flow_gets_its_own_outcome():
    """The same VLAN flow replayed twice (same 5-tuple, same numbers): two BlockActions, both named."""
    b = _blocker()
    f = Flow(Tunnel("vlan"))
    frames = f.handshake_and_request("bad.test")

    async def go():
        _feed(b, frames)
        await b.on_sample(_sample("F1", f))
        _feed(b, frames, time.time() + 0.5)     # the replay: a new SYN on the same ports
        await b.on_sample(_sample("F2", f))
        _finish_all(b)
        # a third connection seen mid-stream (no SYN): capture's sample still gets an outcome
        await b.on_sample(_sample("F3", f))
        _finish_all(b)
    asyncio.run(go())
    acts = list(b.recent_actions)
    assert sorted(a.flow_id for a in acts) == ["F1", "F2", "F3"], acts
    assert all(a.outcome in ("won", "lost") and a.attempts >= 1 for a in acts), acts
    assert len(b.injector.frames) >= 6


def test_remembered_encapsulations_are_bounded(monkeypatch):
    from services.block import tcp_race

    monkeypatch.setattr(tcp_race, "PREFIX_MAX_KEYS", 8)
    b = _blocker()
    for sp in range(40000, 40050):
        b.on_packet(time.time(), Flow(Tunnel("vxlan"), sport=sp).frame(True, 1, 0, 0x02))
    assert len(b.prefixes) == 8
