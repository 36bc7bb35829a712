"""Alerts in real time (issue 14): every attack alerts before it ends, as one incident.

A namespace lab (client, server, a probe on the hub bridge) with the real
capture service on the probe's interface (``flowtarget capture``, which starts
the detectors' process) and a real nats-server; the test listens on
``ft.alert.>`` like any consumer.  Attacks are bounded generators (dpkt frames
on a raw AF_PACKET socket, or plain sockets) run inside the client namespace;
each prints the wall time of its first and last packet.

For every attack: an alert of the expected type arrives before the attack's
last packet, the attack makes exactly one incident (one ``alert_id``, no
other incident opens meanwhile), and the incident never closes and reopens.
A benign period (ping, dig, curl) first: no alert at all.

``FT_TEST_BENIGN_S`` sets the benign period (default 12 s; the issue's minute:
60), ``FT_TEST_ATTACK_RATE`` and ``FT_TEST_ATTACK_S`` the floods' rate and length
(default 1,000/s for 3 s; the issue's: 2,000/s for 10 s).
``FT_TEST_ALERT_REPORT=path`` writes the measured table as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.lab import Lab, servers, skip_unless_lab
from tests.lab.pipeline import Services

pytestmark = [pytest.mark.root, pytest.mark.slow]

TOOLS = str(Path(__file__).resolve().parents[2] / "lab" / "tools.py")
NET = 91
# the table used 2,000 packets/s for 10 s: FT_TEST_ATTACK_RATE=2000 FT_TEST_ATTACK_S=10 reproduces it
RATE = float(os.environ.get("FT_TEST_ATTACK_RATE", "1000"))   # packets (or queries) per second of the floods
SECONDS = float(os.environ.get("FT_TEST_ATTACK_S", "3"))       # how long each flood lasts
# incidents close after EXPIRE_S without evidence (default 60 s; shorter here so that the two ARP floods are
# two attacks), and half-open flows idle out after IDLE_S: their end records come after their incident
# closed and must not reopen it
EXPIRE_S = 10.0
IDLE_S = 15.0

GEN = r"""
import json, random, socket, struct, sys, time
import dpkt
kind, iface, my_mac, my_ip, peer_ip, peer_mac, rate, seconds = sys.argv[1:9]
rate, seconds = float(rate), float(seconds)
mac = lambda s: bytes.fromhex(s.replace(":", ""))
aton = socket.inet_aton
rnd = random.Random(7)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
ME, PEER, BCAST = mac(my_mac), mac(peer_mac), b"\xff" * 6
def rmac():
    return bytes([0x02] + [rnd.randrange(256) for _ in range(5)])
def arp(op, sha, spa, tha, tpa, src, dst):
    a = dpkt.arp.ARP(op=op, sha=sha, spa=aton(spa), tha=tha, tpa=aton(tpa))
    return bytes(dpkt.ethernet.Ethernet(src=src, dst=dst, type=dpkt.ethernet.ETH_TYPE_ARP, data=a))
def ip4(src, dst, p, data, dmac):
    ip = dpkt.ip.IP(src=aton(src), dst=aton(dst), p=p, ttl=64, data=data)
    ip.len = 20 + len(bytes(data))
    return bytes(dpkt.ethernet.Ethernet(src=ME, dst=dmac, type=dpkt.ethernet.ETH_TYPE_IP, data=ip))
def syn(src, dst, dport, dmac):
    t = dpkt.tcp.TCP(sport=rnd.randrange(1024, 65535), dport=dport, seq=rnd.randrange(1 << 31),
                     flags=dpkt.tcp.TH_SYN, win=1024)
    return ip4(src, dst, 6, t, dmac)
def rip():
    return "10.%d.%d.%d" % (rnd.randrange(100, 200), rnd.randrange(256), rnd.randrange(1, 255))
def frame(i):
    if kind == "syn_rst":       # the client's own address, random ports, to a closed port: the server sends RSTs
        return syn(my_ip, peer_ip, 9, PEER)
    if kind == "syn_synack":    # spoofed sources, to a listening port: the server's SYN-ACKs go unanswered
        return syn("172.%d.%d.%d" % (rnd.randrange(16, 32), rnd.randrange(256), rnd.randrange(1, 255)),
                   peer_ip, 80, PEER)
    if kind == "syn_nobody":    # spoofed sources, to an address nobody holds: nothing answers
        return syn("172.%d.%d.%d" % (rnd.randrange(16, 32), rnd.randrange(256), rnd.randrange(1, 255)),
                   peer_ip, 80, b"\x02\x99\x99\x99\x99\x99")
    if kind == "icmp":
        e = dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=4242, seq=i & 0xFFFF, data=b"f" * 32))
        return ip4(my_ip, peer_ip, 1, e, PEER)
    if kind == "arp_requests":  # requests from random MACs (Ethernet and ARP sender), asking for random addresses
        m = rmac()
        return arp(1, m, rip(), b"\0" * 6, rip(), m, BCAST)
    if kind == "garp":          # gratuitous ARP from random MACs claiming random addresses
        m, a = rmac(), rip()
        return arp(2, m, a, BCAST, a, m, BCAST)
    if kind == "forged_reply":  # one reply: peer_ip (the server's address) is at 66:66:66:66:66:66
        return arp(2, mac("66:66:66:66:66:66"), peer_ip, ME, my_ip, ME, ME)
    if kind == "owner_arp":     # the owner asks for peer_ip: claims its own address again
        return arp(1, ME, my_ip, b"\0" * 6, peer_ip, ME, BCAST)
    raise SystemExit("unknown kind " + kind)
n = max(1, int(rate * seconds))
frames = [frame(i) for i in range(n)]
t0 = time.time()
first = None
for i, f in enumerate(frames):
    due = t0 + i / rate
    ahead = due - time.time()
    if ahead > 0.002:
        time.sleep(ahead)
    if first is None:
        first = time.time()
    s.send(f)
print(json.dumps({"start": first, "end": time.time(), "sent": n}))
"""

DNS = r"""
import base64, json, os, random, socket, struct, sys, time
server, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
n = int(rate * seconds)
first = None
t0 = time.time()
for i in range(n):
    label = base64.b32encode(os.urandom(35)).decode().rstrip("=").lower()[:56]
    q = struct.pack("!HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0)
    for part in (label, "t", "exfil", "test"):
        q += bytes([len(part)]) + part.encode()
    q += b"\0" + struct.pack("!HH", 16, 1)
    due = t0 + i / rate
    if due - time.time() > 0.002:
        time.sleep(due - time.time())
    if first is None:
        first = time.time()
    s.sendto(q, (server, 53))
    try:
        while True:
            s.recv(2048)
    except BlockingIOError:
        pass
print(json.dumps({"start": first, "end": time.time(), "sent": n}))
"""

SCAN = r"""
import json, socket, sys, time
dst, rate = sys.argv[1], float(sys.argv[2])
first = time.time()
for port in range(1, 1001):
    due = first + (port - 1) / rate
    if due - time.time() > 0.002:
        time.sleep(due - time.time())
    s = socket.socket()
    s.settimeout(1.0)
    s.connect_ex((dst, port))
    s.close()
print(json.dumps({"start": first, "end": time.time(), "sent": 1000}))
"""


class AlertListener:
    """Collects every message on ft.alert.> with its arrival wall time (core NATS, in a thread)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.got: list[tuple[float, dict]] = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()
        assert self.ready.wait(20), "could not subscribe to ft.alert.>"

    async def _run(self) -> None:
        import nats

        nc = await nats.connect(self.url)

        async def cb(msg) -> None:
            now = time.time()
            doc = json.loads(msg.data)
            for a in doc.get("events", [doc]):
                with self.lock:
                    self.got.append((now, a))

        await nc.subscribe("ft.alert.>", cb=cb)
        await nc.flush()
        self.ready.set()
        while not self.stop.is_set():
            await asyncio.sleep(0.05)
        await nc.close()

    def since(self, t: float) -> list[tuple[float, dict]]:
        with self.lock:
            return [x for x in self.got if x[0] >= t]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    skip_unless_lab()
    from flowtarget.embedded import EmbeddedNats

    tmp = tmp_path_factory.mktemp("alerts_rt")
    nats_srv = EmbeddedNats(store_dir=str(tmp / "nats-store"), log_file=str(tmp / "nats.log"))
    nats_srv.start()
    try:
        with Lab(mode="hub", probe_in_root=True, net=NET) as lab:
            servers.start_http(lab)
            servers.start_dnsmasq(lab, {"www.alerts.test": [lab.server.ip]})
            with Services(nats_srv.url, "rt", lab.probe_iface, tmp / "logs",
                          FT_EVIDENCE_DIR=str(tmp / "evidence"), FT_VERDICT_WAIT_S="0.5",
                          FT_ALERT_EXPIRE_S=str(EXPIRE_S), FT_IDLE_TIMEOUT_S=str(IDLE_S)) as svc:
                svc.start("capture")
                assert svc.wait_log("capture", "detectors ready", 40), svc.log("capture")
                assert svc.wait_log("capture", "connected to NATS", 40), svc.log("capture")
                listener = AlertListener(nats_srv.url)
                time.sleep(3.0)   # capture's handle open
                try:
                    yield lab, svc, listener, tmp
                finally:
                    listener.close()
                    report = os.environ.get("FT_TEST_ALERT_REPORT")
                    if report and RESULTS:
                        Path(report).write_text(json.dumps(RESULTS, indent=1))
    finally:
        nats_srv.close()


RESULTS: dict[str, dict] = {}


def _run_json(lab: Lab, host: str, *args: str, timeout: float = 60) -> dict:
    p = lab.run(host, sys.executable, *args, timeout=timeout)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def _judge(name: str, listener: AlertListener, t_mark: float, info: dict, expect: str, svc: Services,
           linger: float = 3.0, closed: bool = False) -> list[dict]:
    """The alerts since t_mark: one incident of ``expect``, first alert before the attack's last packet.

    ``closed``: also wait until the incident has closed (for an attack whose successor would extend it)."""
    time.sleep(linger)
    earlier = {a["alert_id"] for t, a in listener.since(0) if t < t_mark}
    deadline = time.monotonic() + EXPIRE_S + 5
    while closed and time.monotonic() < deadline:
        if any(a["details"].get("state") == "closed" and a["alert_type"] == expect and a["alert_id"] not in earlier
               for _t, a in listener.since(t_mark)):
            break
        time.sleep(0.5)
    got = listener.since(t_mark)
    new = [(t, a) for t, a in got if a["alert_id"] not in earlier]
    ids = {a["alert_id"] for _t, a in new}
    types = {a["alert_type"] for _t, a in new}
    msgs = [f'{a["alert_type"]} {a["details"].get("state")}: {a["message"]}' for _t, a in new]
    assert types == {expect}, (msgs, svc.log("capture"))
    assert len(ids) == 1, msgs
    states = [a["details"].get("state") for _t, a in new]
    assert states[0] == "open" and "reopened" not in states, states
    first_t, first = new[0]
    latency = first_t - info["start"]
    RESULTS[name] = {"alert_type": expect, "first_alert_s": round(latency, 3),
                     "attack_s": round(info["end"] - info["start"], 3), "messages": len(new), "incidents": len(ids),
                     "rate": first.get("rate"), "rate_unit": first.get("rate_unit"),
                     "evidence_pcap": first.get("evidence_pcap", ""),
                     "top_sources": first.get("top_sources"), "top_targets": first.get("top_targets"),
                     "message": first["message"]}
    print(f"\n{name}: first alert after {latency:.3f} s, {len(new)} message(s), {len(ids)} incident: {first['message']}")
    assert first_t < info["end"], (f"alert {latency:.2f} s after the start, the attack lasted "
                                   f"{info['end'] - info['start']:.2f} s", msgs)
    assert first["started_at"] > 0 and first["started_at"] <= first["last_seen"]
    assert first["top_sources"] or first["top_targets"], first
    return [a for _t, a in new]


def _gen(lab: Lab, kind: str, peer_ip: str, peer_mac: str, rate: float = RATE, seconds: float = SECONDS,
         host: str = "client") -> dict:
    h = lab.host(host)
    return _run_json(lab, host, "-c", GEN, kind, h.iface, h.mac, h.ip, peer_ip, peer_mac, str(rate), str(seconds))


def test_benign_traffic_raises_no_alert(rig):
    lab, svc, listener, _tmp = rig
    seconds = float(os.environ.get("FT_TEST_BENIGN_S", "12"))
    srv = lab.server.ip
    t_mark = time.time()
    ping = lab.popen("client", sys.executable, TOOLS, "ping", srv, "--count", str(int(seconds)),
                     "--interval", "1", stdout=subprocess.PIPE, text=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert lab.run("client", "dig", "+short", "+tries=1", "+time=2", f"@{srv}", "www.alerts.test").returncode == 0
        assert lab.run("client", "curl", "-s", "-o", "/dev/null", "--max-time", "5", f"http://{srv}/").returncode == 0
        time.sleep(1.0)
    ping.communicate(timeout=30)
    time.sleep(2.0)
    got = listener.since(t_mark)
    RESULTS["benign"] = {"seconds": seconds, "messages": len(got)}
    assert got == [], [a["message"] for _t, a in got]


def test_syn_flood_answered_by_rst(rig):
    lab, svc, listener, _ = rig
    t = time.time()
    info = _gen(lab, "syn_rst", lab.server.ip, lab.server.mac)
    alerts = _judge("syn_flood_rst", listener, t, info, "syn_flood", svc)
    assert alerts[0]["dst_ip"] == lab.server.ip and alerts[0]["dst_port"] == 9
    # the first alert's rate counts the flows known to be half-open by then: the RST-answered ones only
    # partly (25-35 % of the sent rate was measured here), so it is judged against the threshold's own
    # rate (100 half-open flows in 10 s), not the sender's
    assert alerts[0]["rate_unit"] == "flows/s" and alerts[0]["rate"] > 10, alerts[0]["rate"]


def test_syn_flood_whose_syn_acks_nobody_answers(rig):
    lab, svc, listener, _ = rig
    # the server routes its answers to the spoofed sources via the client, which does not forward
    lab.run("server", "ip", "route", "replace", "default", "via", lab.client.ip, check=True)
    t = time.time()
    info = _gen(lab, "syn_synack", lab.server.ip, lab.server.mac)
    alerts = _judge("syn_flood_synack_unanswered", listener, t, info, "syn_flood", svc)
    assert alerts[0]["dst_ip"] == lab.server.ip and alerts[0]["dst_port"] == 80


def test_syn_flood_to_an_address_nobody_holds(rig):
    lab, svc, listener, _ = rig
    nobody = lab.server.ip.rsplit(".", 1)[0] + ".99"
    t = time.time()
    info = _gen(lab, "syn_nobody", nobody, lab.server.mac)
    alerts = _judge("syn_flood_unanswered", listener, t, info, "syn_flood", svc)
    RESULTS["_syn_end"] = info["end"]
    assert alerts[0]["dst_ip"] == nobody and int(alerts[0]["details"]["sources"]) >= 50


def test_icmp_echo_flood(rig):
    lab, svc, listener, _ = rig
    t = time.time()
    info = _gen(lab, "icmp", lab.server.ip, lab.server.mac)
    alerts = _judge("icmp_flood", listener, t, info, "icmp_flood", svc)
    assert alerts[0]["dst_ip"] == lab.server.ip and alerts[0]["top_sources"] == [lab.client.ip]
    assert alerts[0]["evidence_pcap"].endswith(".pcap")   # the flood flow's recent packets
    assert 0.5 * RATE < alerts[0]["rate"] < 2 * RATE, alerts[0]


def test_connect_scan_of_1000_ports(rig):
    lab, svc, listener, _ = rig
    t = time.time()
    info = _run_json(lab, "client", "-c", SCAN, lab.server.ip, "500")   # 1000 ports in 2 s
    alerts = _judge("port_scan", listener, t, info, "port_scan", svc)
    assert alerts[0]["src_ip"] == lab.client.ip


def test_arp_request_flood_from_random_macs(rig):
    lab, svc, listener, _ = rig
    t = time.time()
    info = _gen(lab, "arp_requests", lab.server.ip, lab.server.mac)
    alerts = _judge("arp_flood_requests", listener, t, info, "arp_flood", svc, closed=True)
    assert alerts[0]["details"]["scope"] == "total"
    assert 0.5 * RATE < alerts[0]["rate"] < 2 * RATE, alerts[0]  # measured, not the threshold


def test_gratuitous_arp_from_random_macs_is_one_flood(rig):
    lab, svc, listener, _ = rig
    t = time.time()
    info = _gen(lab, "garp", lab.server.ip, lab.server.mac)
    alerts = _judge("arp_flood_gratuitous", listener, t, info, "arp_flood", svc, closed=True)
    assert int(alerts[-1]["details"].get("gratuitous", "0")) > 0
    assert 0.5 * RATE < alerts[0]["rate"] < 2 * RATE, alerts[0]


def test_one_forged_arp_reply_then_the_owner_reclaims(rig):
    lab, svc, listener, _ = rig
    # the probe learns the real binding (the server answers the client's ARP) well before
    lab.run("client", "ip", "neigh", "flush", "all")
    assert lab.run("client", "curl", "-s", "-o", "/dev/null", "--max-time", "5",
                   f"http://{lab.server.ip}/").returncode == 0
    time.sleep(3.0)   # after the ARP surge of the floods before, and clear of their windows
    t = time.time()
    info = _gen(lab, "forged_reply", lab.server.ip, lab.server.mac, rate=1, seconds=1)
    time.sleep(1.5)
    # the real owner ARPs again: the incident closes, no second one names the owner
    _gen(lab, "owner_arp", lab.client.ip, lab.client.mac, rate=1, seconds=1, host="server")
    info["end"] = info["start"] + 1.0   # one packet: "before it ends" = within a second
    alerts = _judge("arp_spoof_forged_reply", listener, t, info, "arp_spoof", svc, linger=8.0)
    first, last = alerts[0], alerts[-1]
    assert first["details"]["old_mac"] == lab.server.mac and first["details"]["new_mac"] == "66:66:66:66:66:66"
    assert last["details"]["state"] == "closed" and "owner" in last["details"].get("closed_because", "")


def test_dns_tunnel(rig):
    lab, svc, listener, _ = rig
    t = time.time()
    info = _run_json(lab, "client", "-c", DNS, lab.server.ip, "200", str(SECONDS))
    alerts = _judge("dns_tunnel", listener, t, info, "dns_tunnel", svc)
    assert alerts[0]["details"]["domain"] == "exfil.test"


def test_no_incident_closed_and_reopened_over_the_whole_run(rig):
    """Every incident of the run opened once and never reopened, also after the late end records of the
    half-open flows (they idle out after the SYN incidents closed)."""
    lab, svc, listener, _ = rig
    time.sleep(max(0.0, IDLE_S + 3 - (time.time() - RESULTS.get("_syn_end", 0.0))))
    states: dict[str, list[str]] = {}
    for _t, a in listener.since(0):
        states.setdefault(a["alert_id"], []).append(a["details"].get("state", ""))
    assert states
    for aid, st in states.items():
        assert st.count("open") == 1 and "reopened" not in st, (aid, st)
