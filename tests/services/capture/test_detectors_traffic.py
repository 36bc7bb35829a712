"""Detectors fed by the real FlowMeter from frames crafted with dpkt.

Each scenario builds Ethernet frames, meters them with FlowMeter exactly as
the capture service does (ticks once per second of packet time, finish at the
end) and routes the meter's flow records and ARP/DNS packet events into the
detectors.
"""

from __future__ import annotations

import random
import socket

import dpkt
import pytest

from services.capture.detectors import Detectors
from services.capture.flows import FlowMeter
from shared.models import Alert
from shared.settings import CaptureSettings, DetectSettings

T0 = 1_750_000_000.0
BCAST = b"\xff" * 6
GW_IP, GW_MAC = "10.0.0.1", bytes.fromhex("001122330001")
BAD_MAC = bytes.fromhex("666666666666")
SYN, RST, ACK, FIN, PSH = dpkt.tcp.TH_SYN, dpkt.tcp.TH_RST, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN, dpkt.tcp.TH_PUSH


def mac_of(ip: str) -> bytes:
    return bytes.fromhex("0211") + socket.inet_aton(ip)


def ether(src: bytes, dst: bytes, ethtype: int, data) -> bytes:
    return bytes(dpkt.ethernet.Ethernet(src=src, dst=dst, type=ethtype, data=data))


def arp_frame(op: int, smac: bytes, sip: str, tip: str, tmac: bytes = b"\0" * 6, dst: bytes = BCAST,
              eth_src: bytes | None = None) -> bytes:
    a = dpkt.arp.ARP(op=op, sha=smac, spa=socket.inet_aton(sip), tha=tmac, tpa=socket.inet_aton(tip))
    return ether(eth_src or smac, dst, dpkt.ethernet.ETH_TYPE_ARP, a)


def ip_frame(src: str, dst: str, proto: int, l4) -> bytes:
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto, ttl=64, data=l4)
    ip.len = 20 + len(bytes(l4))
    return ether(mac_of(src), mac_of(dst), dpkt.ethernet.ETH_TYPE_IP, ip)


def tcp(src, sport, dst, dport, flags, seq=1000, ack=0, payload=b"") -> bytes:
    return ip_frame(src, dst, 6, dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, win=65535,
                                              data=payload))


def udp(src, sport, dst, dport, payload: bytes) -> bytes:
    u = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    u.ulen = 8 + len(payload)
    return ip_frame(src, dst, 17, u)


def icmp_echo(src, dst, ident, seq, reply=False) -> bytes:
    e = dpkt.icmp.ICMP.Echo(id=ident, seq=seq, data=b"x" * 56)
    return ip_frame(src, dst, 1, dpkt.icmp.ICMP(type=0 if reply else 8, code=0, data=e))


def dns_pair(ts, client, resolver, name, qtype=dpkt.dns.DNS_A, sport=None, rnd=random):
    sport = sport or rnd.randrange(20000, 60000)
    tid = rnd.randrange(65536)
    q = dpkt.dns.DNS(id=tid, op=dpkt.dns.DNS_RD, qd=[dpkt.dns.DNS.Q(name=name, type=qtype)])
    r = dpkt.dns.DNS(id=tid, op=dpkt.dns.DNS_RD | dpkt.dns.DNS_RA | 0x8000, qd=q.qd,
                     an=[dpkt.dns.DNS.RR(name=name, type=dpkt.dns.DNS_A, ttl=60, rdata=socket.inet_aton("93.184.216.34"))])
    return [(ts, udp(client, sport, resolver, 53, bytes(q))), (ts + 0.01, udp(resolver, 53, client, sport, bytes(r)))]


def tcp_session(ts, client, sport, server, dport, n_data=3):
    """Handshake, a few request/response exchanges, FIN both ways."""
    c, s = 1000, 5000
    fr = [(ts, tcp(client, sport, server, dport, SYN, c)),
          (ts + 0.010, tcp(server, dport, client, sport, SYN | ACK, s, c + 1)),
          (ts + 0.011, tcp(client, sport, server, dport, ACK, c + 1, s + 1))]
    c, s, t = c + 1, s + 1, ts + 0.02
    for _ in range(n_data):
        fr.append((t, tcp(client, sport, server, dport, PSH | ACK, c, s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")))
        c += 27
        fr.append((t + 0.01, tcp(server, dport, client, sport, PSH | ACK, s, c, b"HTTP/1.1 200 OK\r\n\r\n" + b"y" * 500)))
        s += 519
        t += 0.05
    fr += [(t, tcp(client, sport, server, dport, FIN | ACK, c, s)),
           (t + 0.01, tcp(server, dport, client, sport, FIN | ACK, s, c + 1)),
           (t + 0.02, tcp(client, sport, server, dport, ACK, c + 1, s + 1))]
    return fr


def normal_arp(t0, seconds, hosts=20, rnd=None):
    rnd = rnd or random.Random(7)
    fr = []
    for k in range(3):  # a host boots: gratuitous ARPs
        fr.append((t0 + k, arp_frame(1, mac_of("10.0.0.2"), "10.0.0.2", "10.0.0.2")))
    for s in range(seconds):
        for _ in range(rnd.randrange(0, 3)):
            ip = f"10.0.0.{rnd.randrange(2, 2 + hosts)}"
            ts = t0 + s + rnd.random()
            fr.append((ts, arp_frame(1, mac_of(ip), ip, GW_IP)))
            fr.append((ts + 0.001, arp_frame(2, GW_MAC, GW_IP, ip, mac_of(ip), dst=mac_of(ip))))
    return fr


def browsing(t0, seconds, client="10.0.0.5", resolver="10.0.0.53", n=120, rnd=None):
    rnd = rnd or random.Random(8)
    fr = []
    for i in range(n):
        ts = t0 + rnd.random() * seconds
        server = f"93.184.{rnd.randrange(8)}.{rnd.randrange(1, 250)}"
        fr += dns_pair(ts, client, resolver, f"www.site{i % 30}.example.com", rnd=rnd)
        fr += tcp_session(ts + 0.05, client, 30000 + i, server, rnd.choice((80, 443, 443)), n_data=rnd.randrange(1, 5))
    # real life: one refused connection, one unanswered SYN
    fr.append((t0 + 1, tcp(client, 29999, "93.184.9.9", 8443, SYN)))
    fr.append((t0 + 1.01, tcp("93.184.9.9", 8443, client, 29999, RST | ACK, 0, 1001)))
    fr.append((t0 + 2, tcp(client, 29998, "93.184.9.10", 443, SYN)))
    return fr


class _Sink:
    def __init__(self, det: Detectors) -> None:
        self.det = det
        self.alerts: list[Alert] = []
        self.records = 0

    def flow(self, rec) -> None:
        self.records += 1
        self.alerts += self.det.on_flow(rec)

    def sample(self, s) -> None:
        pass

    def packet(self, p) -> None:
        self.alerts += self.det.on_packet(p)


def meter(frames, **detect) -> list[Alert]:
    """Meter the frames (sorted by time) like capture does and return every alert published."""
    det = Detectors(DetectSettings(**detect), "p1")
    sink = _Sink(det)
    m = FlowMeter(CaptureSettings(verdict_wait_s=0, pcap=[]), sink, source="crafted.pcap", probe="p1")
    next_tick = None
    ts = T0
    for ts, frame in sorted(frames, key=lambda x: x[0]):
        if next_tick is None or ts >= next_tick:
            m.tick(ts)
            sink.alerts += det.tick(ts)
            next_tick = ts + 1.0
        m.process(ts, frame)
    m.finish("eof")
    m.flush_closing()
    sink.alerts += det.tick(ts)
    sink.alerts += det.flush()
    assert det.stats["errors"] == 0
    return sink.alerts


def incidents(alerts, kind=None):
    by: dict[str, list[Alert]] = {}
    for a in alerts:
        if kind is None or a.alert_type == kind:
            by.setdefault(a.alert_id, []).append(a)
    return by


def test_ordinary_browsing_dns_and_arp_raise_nothing():
    frames = normal_arp(T0, 120) + browsing(T0, 120)
    assert meter(frames) == []


def test_arp_flood():
    frames = normal_arp(T0, 30)
    frames += [(T0 + 10 + i / 1500, arp_frame(1, BAD_MAC, "10.0.0.66", f"10.0.{i // 250}.{i % 250 + 1}"))
               for i in range(3000)]
    alerts = meter(frames)
    inc = incidents(alerts)
    assert [a.alert_type for a in alerts if a.details["state"] == "open"] == ["arp_flood"]
    (ups,) = inc.values()
    assert ups[0].details["src_mac"] == "66:66:66:66:66:66" and ups[0].src_ip == "10.0.0.66"
    assert ups[-1].details["state"] == "closed" and ups[-1].count >= 2900


def test_spoofed_arp_reply_for_known_gateway():
    frames = normal_arp(T0, 60)
    victim = "10.0.0.3"
    frames += [(T0 + 40 + 2 * k, arp_frame(2, BAD_MAC, GW_IP, victim, mac_of(victim), dst=mac_of(victim)))
               for k in range(5)]
    alerts = meter(frames, arp_protected_ips=[GW_IP])
    inc = incidents(alerts)
    assert {a.alert_type for a in alerts} == {"arp_spoof"}
    (ups,) = inc.values()
    assert ups[0].severity == "critical" and ups[0].src_ip == GW_IP and ups[0].details["protected"] == "true"
    assert ups[0].details["old_mac"] == "00:11:22:33:00:01" and ups[0].details["new_mac"] == "66:66:66:66:66:66"
    assert ups[-1].count == 5


def test_gateway_is_known_from_traffic():
    """No configuration: the gateway is the MAC that fronts many addresses in the flows."""
    frames = normal_arp(T0, 60)
    for i in range(20):  # hosts talk to the internet through the gateway's MAC
        c, s = f"10.0.0.{2 + i % 10}", f"93.184.0.{i + 1}"
        syn = dpkt.ethernet.Ethernet(tcp(c, 30000 + i, s, 443, SYN))
        syn.dst = GW_MAC
        ack = dpkt.ethernet.Ethernet(tcp(s, 443, c, 30000 + i, SYN | ACK, 1, 1001))
        ack.src = GW_MAC
        frames += [(T0 + 1 + i, bytes(syn)), (T0 + 1.01 + i, bytes(ack))]
    frames.append((T0 + 40, arp_frame(2, BAD_MAC, GW_IP, "10.0.0.3", mac_of("10.0.0.3"), dst=mac_of("10.0.0.3"))))
    alerts = meter(frames)
    (ups,) = incidents(alerts, "arp_spoof").values()
    assert ups[0].severity == "critical" and ups[0].details["gateway"] == "true" and "(gateway)" in ups[0].message


def test_tcp_scan_over_1000_ports_is_one_port_scan():
    scanner, target = "10.0.0.66", "10.0.0.9"
    rnd = random.Random(9)
    ports = list(range(1, 1001))
    rnd.shuffle(ports)
    frames = normal_arp(T0, 60) + browsing(T0, 60)
    for i, port in enumerate(ports):  # a connect() scan: ~10 ms apart, open ports accept and get closed
        ts = T0 + 20 + i * 0.01
        sp = 40000 + i
        frames.append((ts, tcp(scanner, sp, target, port, SYN, 7000)))
        if port in (22, 80, 443):
            frames += [(ts + 0.0002, tcp(target, port, scanner, sp, SYN | ACK, 9000, 7001)),
                       (ts + 0.0003, tcp(scanner, sp, target, port, ACK, 7001, 9001)),
                       (ts + 0.0004, tcp(scanner, sp, target, port, RST | ACK, 7001, 9001))]
        else:
            frames.append((ts + 0.0002, tcp(target, port, scanner, sp, RST | ACK, 0, 7001)))
    alerts = meter(frames)
    inc = incidents(alerts)
    assert {a.alert_type for a in alerts} == {"port_scan"}, [a.message for a in alerts]
    assert len(inc) == 1
    (ups,) = inc.values()
    assert ups[0].src_ip == scanner and ups[0].dst_ip == target and ups[0].details["kind"] == "vertical"
    assert ups[-1].count == 1000
    assert len([a for a in ups if a.details["state"] != "closed"]) <= 3  # open + rate-limited updates


def test_syn_flood():
    rnd = random.Random(10)
    server = "10.0.0.9"
    frames = browsing(T0, 30)
    for i in range(3000):  # spoofed sources; the server answers SYN-ACK, nobody completes the handshake
        ts = T0 + 10 + i / 1000
        src = f"{rnd.randrange(1, 223)}.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
        sp = rnd.randrange(1024, 65536)
        frames.append((ts, tcp(src, sp, server, 80, SYN, rnd.randrange(1 << 31))))
        frames.append((ts + 0.0001, tcp(server, 80, src, sp, SYN | ACK, 1, 1)))
    alerts = meter(frames)
    inc = incidents(alerts)
    assert {a.alert_type for a in alerts} == {"syn_flood"}, [a.message for a in alerts]
    (ups,) = inc.values()
    assert ups[0].dst_ip == server and ups[0].dst_port == 80
    assert ups[-1].count == 3000


def test_icmp_flood():
    frames = [(T0 + i / 2000, icmp_echo("10.0.0.66", "10.0.0.9", 7, i % 65536)) for i in range(40000)]
    frames += [(T0 + i, icmp_echo("10.0.0.5", "10.0.0.1", 8, i)) for i in range(20)]
    alerts = meter(frames)
    inc = incidents(alerts)
    assert {a.alert_type for a in alerts} == {"icmp_flood"}
    (ups,) = inc.values()
    assert ups[0].dst_ip == "10.0.0.9" and ups[0].src_ip == "10.0.0.66" and ups[-1].count == 40000


def test_dns_tunnel():
    rnd = random.Random(11)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    frames = browsing(T0, 60)
    for i in range(200):
        data = "".join(rnd.choice(alphabet) for _ in range(63))
        frames += dns_pair(T0 + i * 0.25, "10.0.0.7", "10.0.0.53", f"{data}.{i}.t.exfil.test", qtype=dpkt.dns.DNS_TXT,
                           rnd=rnd)
    alerts = meter(frames)
    assert {a.alert_type for a in alerts} == {"dns_tunnel"}
    (ups,) = incidents(alerts).values()
    assert ups[0].details["domain"] == "exfil.test" and ups[0].src_ip == "10.0.0.7" and ups[0].dst_ip == "10.0.0.53"
    assert ups[-1].count == 200


def test_two_capture_files_do_not_mix():
    # the second file reuses 10.0.0.1 with another MAC: not spoofing
    a = [(T0 + i, arp_frame(2, GW_MAC, GW_IP, "10.0.0.2", mac_of("10.0.0.2"))) for i in range(3)]
    b = [(T0 - 86400 + i, arp_frame(2, BAD_MAC, GW_IP, "10.0.0.2", mac_of("10.0.0.2"))) for i in range(3)]
    det = Detectors(DetectSettings(), "p1")
    sink = _Sink(det)
    m = FlowMeter(CaptureSettings(verdict_wait_s=0, pcap=[]), sink, source="a.pcap", probe="p1")
    for ts, f in a:
        m.process(ts, f)
    m.set_source("b.pcap", 1)
    for ts, f in b:
        m.process(ts, f)
    assert sink.alerts == [] and det.counters()["sources"] == 3


# --------------------------------------------------------------------------- the nDPI corpus and the whole pipeline

# what the dev corpus deserves (each checked by reading the capture; see docs/alerts.md)
EXPECTED_CORPUS_ALERTS = {
    ("synscan.pcap", "port_scan"),
    ("bad-dns-traffic.pcap", "dns_tunnel"),
    ("dns-exf.pcap", "dns_tunnel"),
    ("fuzz-2006-06-26-2594.pcap", "arp_spoof"),
}


@pytest.mark.corpus
def test_corpus_alerts_are_the_deserved_ones():
    from services.capture.sources import open_source
    from tests.conftest import need_corpus

    corpus = need_corpus()
    got = set()
    counts: dict[str, int] = {}
    for path in sorted(corpus.iterdir()):
        if path.suffix == ".out" or not path.is_file():
            continue
        try:
            src = open_source(path)
        except Exception:
            continue
        det = Detectors(DetectSettings(), "p1")
        sink = _Sink(det)
        m = FlowMeter(CaptureSettings(verdict_wait_s=0, pcap=[]), sink, source=path.name, probe="p1")
        m.set_source(path.name, src.datalink)
        next_tick = None
        for ts, frame, dlt in src.iter_dlt():
            if next_tick is None or ts >= next_tick:
                m.tick(ts)
                sink.alerts += det.tick(ts)
                next_tick = ts + 1.0
            m.process(ts, frame, dlt)
        m.finish()
        m.flush_closing()
        sink.alerts += det.flush()
        assert det.stats["errors"] == 0, path.name
        for a in sink.alerts:
            got.add((path.name, a.alert_type))
            if a.alert_type == "port_scan":
                counts[a.alert_id] = a.count
    assert got == EXPECTED_CORPUS_ALERTS
    assert sorted(counts.values()) == [1000]  # synscan: one incident, 1,000 ports


def _write_pcap(path, frames) -> None:
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f)
        for ts, frame in sorted(frames, key=lambda x: x[0]):
            w.writepkt(frame, ts=ts)


@pytest.mark.slow
def test_analyze_writes_one_alert_per_incident(tmp_path):
    """The whole pipeline: crafted capture -> capture service -> JetStream -> store -> alerts.jsonl."""
    import json
    import os
    import subprocess
    import sys

    rnd = random.Random(12)
    frames = normal_arp(T0, 60) + browsing(T0, 60)
    frames += [(T0 + 10 + i / 1500, arp_frame(1, BAD_MAC, "10.0.0.66", f"10.0.{i // 250}.{i % 250 + 1}"))
               for i in range(600)]
    frames += [(T0 + 40, arp_frame(2, BAD_MAC, GW_IP, "10.0.0.3", mac_of("10.0.0.3"), dst=mac_of("10.0.0.3")))]
    for i, port in enumerate(range(1, 1001)):
        ts = T0 + 20 + i * 0.01
        frames.append((ts, tcp("10.0.0.66", 40000 + i, "10.0.0.9", port, SYN, 7000)))
        frames.append((ts + 0.0002, tcp("10.0.0.9", port, "10.0.0.66", 40000 + i, RST | ACK, 0, 7001)))
    for i in range(1000):
        ts = T0 + 30 + i / 1000
        src = f"{rnd.randrange(1, 223)}.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
        frames.append((ts, tcp(src, rnd.randrange(1024, 65536), "10.0.0.8", 443, SYN, 1)))
    pcap = tmp_path / "attacks.pcap"
    _write_pcap(pcap, frames)
    out = tmp_path / "out"
    exe = os.path.join(os.path.dirname(sys.executable), "flowtarget")
    r = subprocess.run([exe, "analyze", str(pcap), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    by_id: dict[str, list[dict]] = {}
    for row in rows:
        by_id.setdefault(row["alert_id"], []).append(row)
    types = sorted(v[0]["alert_type"] for v in by_id.values())
    assert types == ["arp_flood", "arp_spoof", "port_scan", "syn_flood"], rows
    scan = next(v for v in by_id.values() if v[0]["alert_type"] == "port_scan")
    assert max(x["count"] for x in scan) == 1000 and scan[0]["src_ip"] == "10.0.0.66"
    assert len(rows) <= 4 * 4  # updates are rate-limited: a handful per incident, not one per packet
