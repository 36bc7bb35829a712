"""Crafted tunnelled flows replayed onto a real veth, with capture, classify and block running on it.

This kernel cannot create GRE links, so GRE is covered the way the issue found
the bug: frames of an HTTP flow inside GRE (with key and sequence numbers) are
replayed into one end of a veth pair; block listens on the other end and its
injected frames are read back from the first end.  The "client" is the replay
itself: after the injection it either answers the server's late data with a
RST (its socket is gone: won) or acknowledges the real answer (it got through:
lost) — block must judge the flow inside the tunnel and agree.  An ERSPAN
mirror session (a copy, not a path to the endpoints) must give not_possible
and no frame; the same VLAN flow replayed twice must give two outcomes.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import time

import pytest

from services.block import encap as enc
from tests.lab import skip_unless_lab
from tests.lab.pipeline import Services
from tests.services.block.test_block_lab import Collector
from tests.services.block.tunnels import VTEP_C, VTEP_S, Flow, Tunnel

pytestmark = [pytest.mark.root, pytest.mark.slow]

PROBE = "replaylab"
RULES = """
rules:
  - {id: g-reset, host: "*.gre.test", action: reset}
"""
PACKET_OUTGOING = 4


@pytest.fixture(scope="module")
def veth(tmp_path_factory):
    skip_unless_lab()
    from flowtarget.embedded import EmbeddedNats

    from services.block.rules import load_rules_file

    tmp = tmp_path_factory.mktemp("replaylab")
    a, b = f"ftr{os.getpid() % 100000}a", f"ftr{os.getpid() % 100000}b"
    subprocess.run(["ip", "link", "del", a], capture_output=True)
    subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True)
    nats = EmbeddedNats(store_dir=str(tmp / "js"), log_file=str(tmp / "nats.log"))
    try:
        for dev in (a, b):
            subprocess.run(["ethtool", "-K", dev, "tx", "off", "rx", "off", "gso", "off", "gro", "off", "tso", "off",
                            "rxvlan", "off", "txvlan", "off"], capture_output=True)
            subprocess.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{dev}.disable_ipv6=1"], capture_output=True)
            subprocess.run(["ip", "link", "set", dev, "up"], check=True)
        nats.start()
        (tmp / "rules.yaml").write_text(RULES)
        assert load_rules_file(nats.url, PROBE, str(tmp / "rules.yaml")) == 0
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        sock.bind((b, 0))
        sock.setsockopt(263, 8, 1)  # SOL_PACKET, PACKET_AUXDATA: the VLAN tag the kernel took off
        with Services(nats.url, PROBE, a, tmp / "logs", FT_DRY_RUN="false") as svc:
            for name in ("capture", "classify", "block"):
                svc.start(name)
            for name in ("capture", "classify", "block"):
                assert svc.wait_log(name, "connected to NATS", 30), svc.log(name)
            assert svc.wait_log("block", "rule g-reset", 30), svc.log("block")
            time.sleep(1.0)
            col = Collector(nats.url, PROBE)
            try:
                yield sock, svc, col
            finally:
                col.close()
                sock.close()
    finally:
        nats.close()
        subprocess.run(["ip", "link", "del", a], capture_output=True)


def _drain(sock: socket.socket) -> None:
    while select.select([sock], [], [], 0)[0]:
        sock.recv(65535)


def _send(sock: socket.socket, frames: list[bytes], gap_s: float = 0.002) -> None:
    for f in frames:
        sock.send(f)
        time.sleep(gap_s)


def _injected(sock: socket.socket, n: int, timeout: float = 5.0) -> list[bytes]:
    """Frames block sent (arriving at our end), not our own."""
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        if not select.select([sock], [], [], 0.1)[0]:
            continue
        data, anc, _flags, addr = sock.recvmsg(65535, 256)
        if addr[2] == PACKET_OUTGOING:
            continue
        for level, typ, cdata in anc:
            if level == 263 and typ == 8 and len(cdata) >= 20:
                status, _len, _snap, _mac, _net, tci, tpid = struct.unpack_from("=IIIHHHH", cdata)
                if status & 0x10:  # TP_STATUS_VLAN_VALID: put the tag back where it was on the wire
                    tpid = tpid if status & 0x40 else 0x8100
                    data = data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
        out.append(data)
    return out


def _actions(col: Collector, sport: int, n: int, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(col.by_port().get(sport, [])) < n:
        time.sleep(0.1)
    time.sleep(0.5)
    return col.by_port().get(sport, [])


def _gre_seq(frame: bytes) -> tuple[int, int]:
    """(key, sequence) of a GRE frame with K and S."""
    assert frame[23] == 47 and frame[34] & 0x30 == 0x30
    return struct.unpack_from("!II", frame, 38)


@pytest.mark.parametrize("ending", ["won", "lost"])
def test_gre_flow_is_reset_inside_its_tunnel_and_judged_there(veth, ending):
    sock, svc, col = veth
    _drain(sock)
    tun = Tunnel("gre-key-seq", key=0xBEEF)
    flow = Flow(tun, sport=41000 if ending == "won" else 41001)
    _send(sock, flow.handshake_and_request("www.gre.test"))
    got = _injected(sock, 2)
    assert len(got) == 2, svc.log("block")
    c_next, s_next = flow.cseq + 1 + flow.request_len, flow.sseq + 1
    by_dir = {}
    for f in got:
        s = enc.observe(f)
        assert s is not None and s.tunnel == "GRE" and s.flags & 0x04
        by_dir[s.src] = (s, f)
    s1, f1 = by_dir[flow.cip]   # to the server, inside the tunnel from the client's endpoint
    s2, f2 = by_dir[flow.sip]   # to the client
    assert (s1.seq, s1.ack, s2.seq, s2.ack) == (c_next, s_next, s_next, c_next)
    assert socket.inet_ntoa(f1[26:30]) == VTEP_C and socket.inet_ntoa(f1[30:34]) == VTEP_S
    assert socket.inet_ntoa(f2[26:30]) == VTEP_S and socket.inet_ntoa(f2[30:34]) == VTEP_C
    # the tunnel's own sequence numbers continue each direction's (the receiver drops old ones)
    assert _gre_seq(f1) == (0xBEEF, tun.seq[True] + 1) and _gre_seq(f2) == (0xBEEF, tun.seq[False] + 1)
    time.sleep(0.05)
    real = flow.reply()  # the server's real answer, 1 ms later on the wire
    if ending == "won":
        # the client's socket is gone: it answers the late data with a RST at its next sequence number
        _send(sock, [real, flow.frame(True, c_next, 0, 0x04)])
    else:
        # the client took the real answer: it acknowledges it
        _send(sock, [real, flow.frame(True, c_next, s_next + len(dpkt_payload(real)), 0x10)])
    acts = _actions(col, flow.sport, 1)
    assert [a["outcome"] for a in acts] == [ending], [(a["outcome"], a["message"]) for a in acts]
    if ending == "lost":
        retry = _injected(sock, 2)
        assert acts[0]["attempts"] >= 2 and len(retry) == 2
        for f in retry:  # the retry is in the tunnel too, its GRE sequence numbers never repeat
            s = enc.observe(f)
            assert s.tunnel == "GRE"
            seq = _gre_seq(f)[1]
            assert seq > (_gre_seq(f1)[1] if s.src == flow.cip else _gre_seq(f2)[1])


def dpkt_payload(frame: bytes) -> bytes:
    s = enc.observe(frame)
    return frame[s.po:s.po + s.plen]


def test_erspan_mirror_copy_is_not_possible_and_nothing_is_sent(veth):
    sock, svc, col = veth
    _drain(sock)
    flow = Flow(Tunnel("erspan"), sport=41100)
    _send(sock, flow.handshake_and_request("www.gre.test"))
    acts = _actions(col, flow.sport, 1)
    assert [a["outcome"] for a in acts] == ["not_possible"] and "mirror copy" in acts[0]["message"]
    assert _injected(sock, 1, timeout=1.0) == []


@pytest.mark.parametrize("kind", ["vlan", "qinq"])
def test_the_same_vlan_flow_replayed_twice_gets_two_outcomes(veth, kind):
    sock, svc, col = veth
    _drain(sock)
    sport = 41200 if kind == "vlan" else 41201
    frames = Flow(Tunnel(kind), sport=sport).handshake_and_request("again.gre.test")
    sent = []
    for _ in range(2):
        _send(sock, frames)
        got = _injected(sock, 2)
        assert len(got) == 2, svc.log("block")
        sent.append(got)
        time.sleep(1.5)
    acts = _actions(col, sport, 2)
    assert len(acts) == 2, acts
    assert all(a["outcome"] == "won" and a["attempts"] == 1 for a in acts)
    for got in sent:  # tags as seen: TPIDs, priority bits and ids
        for f in got:
            if kind == "vlan":
                assert struct.unpack_from("!HH", f, 12) == (0x8100, 0x2000 | 100)
            else:
                assert struct.unpack_from("!HHHH", f, 12) == (0x88A8, 100, 0x8100, 200)
