"""Unit tests of the alert detectors with hand-built PacketEvent/FlowRecord objects."""

from __future__ import annotations

import random

import dpkt
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from services.capture.detectors import Detectors
from services.capture.detectors.dns import entropy, parse_question
from services.capture.detectors.incidents import SlidingCount, clean
from shared.models import Alert, ArpInfo, FlowRecord, PacketEvent, parse_event
from shared.settings import DetectSettings
from shared.subjects import subject

PROBE = "p1"
T0 = 1_700_000_000.0
GW_IP, GW_MAC = "10.0.0.1", "00:11:22:33:44:01"
BAD_MAC = "66:66:66:66:66:66"


def det(**kw) -> Detectors:
    return Detectors(DetectSettings(**kw), PROBE)


def arp(ts, op, smac, sip, tip, tmac="00:00:00:00:00:00", eth_src=None, eth_dst="ff:ff:ff:ff:ff:ff") -> PacketEvent:
    return PacketEvent(timestamp=ts, probe=PROBE, kind="arp", src_mac=eth_src or smac, dst_mac=eth_dst,
                       arp=ArpInfo(operation=op, sender_mac=smac, sender_ip=sip, target_mac=tmac, target_ip=tip))


def flow(phase, ts, src, sport, dst, dport, transport="TCP", sflags=0x02, dflags=0, spk=1, dpk=0,
         first=None, fid=None) -> FlowRecord:
    first = ts if first is None else first
    return FlowRecord(timestamp=ts, probe=PROBE, flow_id=fid or f"{transport}-{src}:{sport}-{dst}:{dport}",
                      transport=transport, src_ip=src, src_port=sport, dst_ip=dst, dst_port=dport, phase=phase,
                      first_seen=first, last_seen=ts, src2dst_packets=spk, dst2src_packets=dpk,
                      src2dst_bytes=60 * spk, dst2src_bytes=60 * dpk,
                      src2dst_tcp_flags=sflags, dst2src_tcp_flags=dflags,
                      end_reason="rst" if phase == "end" else "")


def dns_query(ts, name, qtype=dpkt.dns.DNS_A, src="10.0.0.5", sport=40000, resolver="10.0.0.53") -> PacketEvent:
    q = dpkt.dns.DNS(id=random.randrange(65536), op=dpkt.dns.DNS_RD, qd=[dpkt.dns.DNS.Q(name=name, type=qtype)])
    return PacketEvent(timestamp=ts, probe=PROBE, kind="dns", transport="UDP", src_ip=src, src_port=sport,
                       dst_ip=resolver, dst_port=53, payload=bytes(q))


def run(d: Detectors, events, tick=True) -> list[Alert]:
    """Feed events in order, ticking once per second of packet time like capture does; then flush."""
    out: list[Alert] = []
    last_tick = None
    for e in events:
        if tick:
            if last_tick is None:
                last_tick = e.timestamp
            while e.timestamp - last_tick >= 1.0:
                last_tick += 1.0
                out += d.tick(last_tick)
        out += d.on_packet(e) if isinstance(e, PacketEvent) else d.on_flow(e)
    out += d.flush()
    return out


def incidents(alerts, kind=None) -> dict[str, list[Alert]]:
    by: dict[str, list[Alert]] = {}
    for a in alerts:
        if kind is None or a.alert_type == kind:
            by.setdefault(a.alert_id, []).append(a)
    return by


def normal_arp(t0=T0, seconds=300):
    """A /24 where hosts resolve the gateway and each other now and then; one host boots (3 gratuitous ARPs)."""
    ev = []
    rnd = random.Random(1)
    hosts = [(f"10.0.0.{i}", f"00:11:22:33:44:{i:02x}") for i in range(2, 40)]
    for k in range(3):
        ev.append(arp(t0 + k, 1, hosts[0][1], hosts[0][0], hosts[0][0]))
    for s in range(seconds):
        for _ in range(rnd.randrange(0, 4)):
            ip, mac = rnd.choice(hosts)
            ts = t0 + s + rnd.random()
            ev.append(arp(ts, 1, mac, ip, GW_IP))
            ev.append(arp(ts + 0.001, 2, GW_MAC, GW_IP, ip, tmac=mac, eth_dst=mac))
    ev.sort(key=lambda e: e.timestamp)
    return ev


# --------------------------------------------------------------------------- ARP


def test_arp_flood_from_one_mac_is_one_incident():
    ev = normal_arp(seconds=20)
    ev += [arp(T0 + 10 + i / 1000, 1, BAD_MAC, "10.0.0.66", f"10.0.{i // 250}.{i % 250}") for i in range(3000)]
    ev.sort(key=lambda e: e.timestamp)
    alerts = run(det(), ev)
    inc = incidents(alerts, "arp_flood")
    assert len(inc) == 1, alerts
    (updates,) = inc.values()
    assert updates[0].details["state"] == "open" and updates[-1].details["state"] == "closed"
    assert updates[0].details["src_mac"] == BAD_MAC
    assert updates[0].severity == "high" and "ARP flood" in updates[0].message
    assert 2900 <= updates[-1].count <= 3000
    assert [a.count for a in updates] == sorted(a.count for a in updates)
    assert not incidents(alerts, "arp_spoof")


def test_arp_flood_from_random_macs_raises_segment_flood():
    rnd = random.Random(2)
    ev = [arp(T0 + i / 2000, 1, "02:00:%02x:%02x:%02x:%02x" % tuple(rnd.randrange(256) for _ in range(4)),
              f"10.1.{rnd.randrange(256)}.{rnd.randrange(1, 255)}", "10.1.0.1") for i in range(4000)]
    alerts = run(det(), ev)
    inc = incidents(alerts, "arp_flood")
    assert len(inc) == 1
    a = next(iter(inc.values()))[0]
    assert a.details["scope"] == "total"


def test_normal_arp_raises_nothing():
    assert run(det(), normal_arp()) == []


def test_spoofed_reply_for_known_gateway():
    ev = normal_arp(seconds=60)
    # the attacker tells 10.0.0.2 every 2 s for 40 s that the gateway is at its MAC (arpspoof's pattern)
    ev += [arp(T0 + 30 + 2 * k, 2, BAD_MAC, GW_IP, "10.0.0.2", tmac="00:11:22:33:44:02", eth_dst="00:11:22:33:44:02")
           for k in range(20)]
    ev.sort(key=lambda e: e.timestamp)
    alerts = run(det(arp_protected_ips=[GW_IP]), ev)
    inc = incidents(alerts, "arp_spoof")
    assert len(inc) == 1, alerts
    first = next(iter(inc.values()))[0]
    assert first.severity == "critical"
    assert first.details["old_mac"] == GW_MAC and first.details["new_mac"] == BAD_MAC
    assert first.src_ip == GW_IP
    last = next(iter(inc.values()))[-1]
    assert last.count == 20
    assert not incidents(alerts, "arp_flood")


def test_old_binding_moving_is_not_spoofing():
    ev = [arp(T0, 2, "00:aa:00:00:00:01", "10.0.0.9", "10.0.0.2"),
          arp(T0 + 3600, 2, "00:aa:00:00:00:02", "10.0.0.9", "10.0.0.2")]  # re-assigned an hour later
    assert run(det(), ev) == []


def test_gratuitous_arp_storm():
    ev = [arp(T0 + i * 0.3, 1, BAD_MAC, "10.0.0.77", "10.0.0.77") for i in range(40)]
    alerts = run(det(), ev)
    inc = incidents(alerts, "arp_spoof")
    assert len(inc) == 1
    assert next(iter(inc.values()))[0].details["kind"] == "gratuitous_storm"


def test_arp_state_is_bounded():
    d = det(detect_max_tracked=1000)
    for i in range(20000):
        d.on_packet(arp(T0 + i, 2, "02:00:00:%02x:%02x:%02x" % (i >> 16, (i >> 8) & 255, i & 255),
                        f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", "10.0.0.1"))
    assert len(d.arp.per_mac) <= 1000 and len(d.arp.bindings) <= 1000 and len(d.arp.claims) <= 1000


# --------------------------------------------------------------------------- scans and SYN floods


def scan_flows(t0, src, dst, ports, open_ports=(22, 80)):
    """A connect scan as capture reports it: a start record, then the end (RST from closed ports)."""
    ev = []
    for i, port in enumerate(ports):
        ts = t0 + i * 0.002
        ev.append(flow("start", ts, src, 40000 + i % 20000, dst, port))
        if port in open_ports:
            ev.append(flow("end", ts + 0.001, src, 40000 + i % 20000, dst, port, sflags=0x16, dflags=0x12, spk=3, dpk=1,
                           first=ts))
        else:
            ev.append(flow("end", ts + 0.001, src, 40000 + i % 20000, dst, port, sflags=0x02, dflags=0x14, spk=1, dpk=1,
                           first=ts))
    return ev


def browsing(t0, client="10.0.0.5", n_hosts=80, seconds=120):
    """A browser: DNS lookups and successful TLS/HTTP connections to many servers."""
    rnd = random.Random(3)
    ev = []
    for i in range(n_hosts * 3):
        ts = t0 + rnd.random() * seconds
        host = f"93.184.{rnd.randrange(4)}.{rnd.randrange(1, 250)}"
        port = rnd.choice((443, 443, 443, 80))
        sp = 30000 + i
        ev.append(dns_query(ts - 0.05, f"www{i % 40}.example{i % 17}.com", src=client))
        ev.append(flow("start", ts, client, sp, host, port))
        dur = rnd.random() * 30
        ev.append(flow("end", ts + dur, client, sp, host, port, sflags=0x1B, dflags=0x1B, spk=12, dpk=15, first=ts))
    # a few failures that happen in real life: a closed port, an unanswered SYN
    ev.append(flow("end", t0 + 5, client, 29999, "93.184.9.9", 8443, sflags=0x02, dflags=0x14, spk=1, dpk=1))
    ev.append(flow("end", t0 + 7, client, 29998, "93.184.9.10", 443, sflags=0x02, spk=3, dpk=0))
    ev.sort(key=lambda e: e.timestamp)
    return ev


def test_vertical_scan_over_1000_ports_is_one_port_scan():
    ev = browsing(T0) + scan_flows(T0 + 30, "10.0.0.66", "10.0.0.9", range(1, 1001))
    ev.sort(key=lambda e: e.timestamp)
    alerts = run(det(), ev)
    inc = incidents(alerts, "port_scan")
    assert len(inc) == 1, [a.message for a in alerts]
    ups = next(iter(inc.values()))
    assert ups[0].src_ip == "10.0.0.66" and ups[0].dst_ip == "10.0.0.9"
    assert ups[0].details["kind"] == "vertical"
    assert ups[-1].count == 1000 and ups[-1].details["state"] == "closed"
    assert not incidents(alerts, "syn_flood")  # one SYN per port is a scan, not a flood
    assert {a.alert_type for a in alerts} == {"port_scan"}


def test_horizontal_scan_with_failures():
    ev = []
    for i in range(100):
        ts = T0 + i * 0.05
        dst = f"10.2.{i // 200}.{i % 200 + 1}"
        ev.append(flow("start", ts, "10.0.0.66", 50000 + i, dst, 445))
        ev.append(flow("end", ts + 3, "10.0.0.66", 50000 + i, dst, 445, spk=2, dpk=0, first=ts))
    alerts = run(det(), ev)
    inc = incidents(alerts, "port_scan")
    assert len(inc) == 1
    first = next(iter(inc.values()))[0]
    assert first.details["kind"] == "horizontal" and first.dst_port == 445


def test_browsing_and_dns_raise_nothing():
    assert run(det(), browsing(T0, n_hosts=150, seconds=60)) == []


def test_server_traffic_seen_mid_stream_is_not_a_scan():
    # a capture that starts while a busy server talks to one client on many ports: no SYN from the server
    ev = [flow("end", T0 + i * 0.01, "10.0.0.9", 443, "10.0.0.5", 20000 + i, sflags=0x18, dflags=0x10, spk=5, dpk=5)
          for i in range(500)]
    ev += [flow("end", T0 + i * 0.01, "10.0.0.53", 53, "10.0.0.5", 20000 + i, transport="UDP", sflags=0, spk=1)
           for i in range(500)]
    assert run(det(), ev) == []


def syn_flood(t0, n, dst="10.0.0.9", dport=80, answered=True):
    rnd = random.Random(4)
    ev = []
    for i in range(n):
        ts = t0 + i / 1000
        src = f"{rnd.randrange(1, 223)}.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
        sp = rnd.randrange(1024, 65536)
        ev.append(flow("start", ts, src, sp, dst, dport))
        # the server answers SYN-ACK (retransmitted), the spoofed source never ACKs; the flow idles out
        ev.append(flow("end", ts + 2, src, sp, dst, dport, sflags=0x02, dflags=0x12 if answered else 0,
                       spk=1, dpk=3 if answered else 0, first=ts))
    ev.sort(key=lambda e: e.timestamp)
    return ev


def test_syn_flood():
    alerts = run(det(), browsing(T0) + syn_flood(T0 + 20, 3000))
    inc = incidents(alerts, "syn_flood")
    assert len(inc) == 1
    ups = next(iter(inc.values()))
    assert ups[0].dst_ip == "10.0.0.9" and ups[0].dst_port == 80 and ups[0].severity == "high"
    assert int(ups[-1].details["sources"]) > 1000
    assert ups[-1].count == 3000
    assert not incidents(alerts, "port_scan")


def test_single_source_syn_flood():
    ev = [flow("end", T0 + i / 500, "10.0.0.66", 1024 + i, "10.0.0.9", 443, sflags=0x02, spk=1, dpk=0)
          for i in range(500)]
    alerts = run(det(), ev)
    inc = incidents(alerts, "syn_flood")
    assert len(inc) == 1
    assert next(iter(inc.values()))[-1].src_ip == "10.0.0.66"


# --------------------------------------------------------------------------- ICMP


def test_icmp_flood_from_updates():
    ev = []
    # ping -f for 30 s: ~1000 echo requests/s, update records every 5 s then the end
    for k in range(1, 7):
        ev.append(flow("update" if k < 6 else "end", T0 + 5 * k, "10.0.0.66", 0, "10.0.0.9", 0, transport="ICMP",
                       sflags=0, spk=5000 * k, dpk=5000 * k, first=T0, fid="icmp1"))
    # an ordinary ping beside it
    ev.append(flow("end", T0 + 30, "10.0.0.5", 0, "10.0.0.1", 0, transport="ICMP", sflags=0, spk=30, dpk=30,
                   first=T0, fid="icmp2"))
    alerts = run(det(), ev)
    inc = incidents(alerts, "icmp_flood")
    assert len(inc) == 1
    ups = next(iter(inc.values()))
    assert ups[0].dst_ip == "10.0.0.9" and ups[0].src_ip == "10.0.0.66"
    assert ups[-1].count >= 25000


def test_ordinary_ping_is_not_a_flood():
    ev = [flow("update", T0 + 60 * k, "10.0.0.5", 0, "10.0.0.1", 0, transport="ICMP", sflags=0, spk=60 * k, dpk=60 * k,
               first=T0, fid="p") for k in range(1, 10)]
    assert run(det(), ev) == []


# --------------------------------------------------------------------------- DNS


def b32(rnd, n):
    return "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(n))


def test_dns_tunnel_long_labels():
    rnd = random.Random(5)
    ev = [dns_query(T0 + i * 0.2, f"{b32(rnd, 60)}.{b32(rnd, 40)}.t.tunnel.test", qtype=dpkt.dns.DNS_NULL)
          for i in range(100)]
    alerts = run(det(), ev)
    inc = incidents(alerts, "dns_tunnel")
    assert len(inc) == 1
    first = next(iter(inc.values()))[0]
    assert first.details["domain"] == "tunnel.test" and first.src_ip == "10.0.0.5"
    assert next(iter(inc.values()))[-1].count == 100


def test_dns_tunnel_txt_volume():
    ev = [dns_query(T0 + i, f"c{i}.cmd.example.org", qtype=dpkt.dns.DNS_TXT) for i in range(40)]
    inc = incidents(run(det(), ev), "dns_tunnel")
    assert len(inc) == 1
    assert next(iter(inc.values()))[0].details["domain"] == "example.org"


def test_plain_dns_and_mdns_raise_nothing():
    rnd = random.Random(6)
    names = ["www.google.com", "mail.example.co.uk", "a1.b2.cdn.example.net", "_spf.example.com",
             "r3---sn-4g5e6nze.googlevideo.com", "e1234.dscb.akamaiedge.net",
             "ec2-54-12-34-56.eu-west-1.compute.amazonaws.com", "1.0.0.10.in-addr.arpa"]
    ev = [dns_query(T0 + i * 0.1, rnd.choice(names), qtype=rnd.choice((1, 28, 65))) for i in range(2000)]
    ev += [dns_query(T0 + i * 0.1, f"_spf.domain{i}.com", qtype=dpkt.dns.DNS_TXT) for i in range(200)]
    # Chromecasts announce UUID-like names over mDNS
    for i in range(200):
        e = dns_query(T0 + i, f"Chromecast-{b32(rnd, 32)}._googlecast._tcp.local", resolver="224.0.0.251")
        e.dst_port = 5353
        ev.append(e)
    ev.sort(key=lambda e: e.timestamp)
    assert run(det(), ev) == []


def test_dns_parser_on_bad_input():
    assert parse_question(b"") is None
    assert parse_question(b"\x00" * 12) is None
    assert parse_question(bytes(dpkt.dns.DNS(qd=[dpkt.dns.DNS.Q(name="a.b")]))) == (False, [b"a", b"b"], 1)
    assert entropy(b"aaaa") == 0.0 and entropy(b"ab") == 1.0


@hsettings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["dns", "arp", "other"]))
def test_garbage_never_raises(payload, kind):
    d = det()
    p = PacketEvent(timestamp=T0, probe=PROBE, kind=kind, payload=payload, src_ip="1.2.3.4", dst_ip="5.6.7.8",
                    dst_port=53)
    d.on_packet(p)
    d.tick(T0 + 100)
    assert d.stats["errors"] == 0


def test_hostile_names_are_escaped():
    name = "a\nb c\x00=\"\\." * 3 + "evil.test"
    p = PacketEvent(timestamp=T0, probe=PROBE, kind="dns", transport="UDP", src_ip="10.0.0.5", dst_ip="10.0.0.53",
                    dst_port=53, payload=bytes(dpkt.dns.DNS(qd=[dpkt.dns.DNS.Q(name=name, type=16)])))
    d = det(dns_tunnel_txt_queries=1)
    (a,) = d.on_packet(p)
    assert "\n" not in a.message and " " not in a.details["example_query"] and "\x00" not in a.message
    assert clean("é\r") == "\\xe9\\x0d"


# --------------------------------------------------------------------------- incidents and schema


def test_updates_are_rate_limited_and_ids_stable():
    d = det(alert_update_interval_s=10, alert_expire_s=30)
    out = []
    for s in range(100):  # a flood that lasts 100 s
        for k in range(200):
            out += d.on_packet(arp(T0 + s + k / 200, 1, BAD_MAC, "10.0.0.66", "10.0.0.1"))
        out += d.tick(T0 + s + 1)
    out += d.tick(T0 + 200)
    assert len({a.alert_id for a in out}) == 1
    states = [a.details["state"] for a in out]
    assert states[0] == "open" and states[-1] == "closed" and states.count("closed") == 1
    assert 9 <= states.count("update") <= 11
    times = [a.timestamp for a in out if a.details["state"] == "update"]
    assert all(b - a >= 10 for a, b in zip(times, times[1:]))
    assert d.tick(T0 + 300) == []


def test_incident_cap():
    d = det(alert_max_incidents=3, arp_gratuitous_max=1)
    for i in range(10):
        d.on_packet(arp(T0, 1, f"02:00:00:00:00:{i:02x}", f"10.0.0.{i + 2}", f"10.0.0.{i + 2}"))
    assert len(d.table.open) == 3 and d.counters()["alerts_suppressed"] == 7


def test_alert_serialises_onto_its_subject():
    d = det(dns_tunnel_txt_queries=1)
    (a,) = d.on_packet(dns_query(T0, "x.example.org", qtype=16))
    assert subject("alert", PROBE, a.alert_type) == "ft.alert.dns_tunnel.p1"
    back = parse_event(a.model_dump_json())
    assert back == a
    policy = Alert(timestamp=T0, probe=PROBE, alert_id="r1-1", alert_type="policy", first_seen=T0, last_seen=T0,
                   rule_id="r1", message="rule r1 matched")
    assert parse_event(policy.model_dump_json()) == policy


def test_detectors_can_be_disabled_and_bad_names_refused():
    d = det(detectors="port_scan")
    assert d.arp is None and d.dns is None and d.icmp is None
    assert run(d, [arp(T0 + i / 1000, 1, BAD_MAC, "10.0.0.66", "10.0.0.1") for i in range(2000)]) == []
    with pytest.raises(ValueError, match="arp_flod"):
        det(detectors="arp_flod")


def test_sliding_count():
    c = SlidingCount(10.0)
    for i in range(100):
        c.add(T0 + i * 0.1)
    assert c.total == pytest.approx(100, abs=10)
    c.add(T0 + 30)
    assert c.total == 1
    c.add(T0 - 100)  # far older than the window: ignored
    assert c.total == 1
    c2 = SlidingCount(10.0)
    assert c2.add_span(T0, T0 + 100, 1000) == pytest.approx(100, abs=11)


def test_p2p_udp_peers_are_not_a_scan_but_a_udp_sweep_is():
    # a Gnutella client pings ~100 peers on UDP 6346 within a minute; many never answer
    peers = [flow("end", T0 + i * 0.5, "10.0.2.15", 28681, f"{80 + i % 50}.{i}.20.{i % 200 + 1}", 6346,
                  transport="UDP", sflags=0, spk=1, dpk=0, first=T0 + i * 0.5) for i in range(100)]
    assert run(det(), peers) == []
    sweep = [flow("end", T0 + i * 0.01, "10.0.0.66", 40000, f"10.3.{i // 250}.{i % 250 + 1}", 161, transport="UDP",
                  sflags=0, spk=1, dpk=0, first=T0 + i * 0.01) for i in range(500)]
    inc = incidents(run(det(), sweep), "port_scan")
    assert len(inc) == 1 and next(iter(inc.values()))[0].dst_port == 161


def test_scan_window_holds_with_out_of_order_end_records():
    # 100 refused connections spread over 20 minutes, ended all at once at the end of a file (table order)
    ev = [flow("end", T0 + 1200, "10.0.0.5", 30000 + i, "10.0.0.9", 1000 + i, sflags=0x02, dflags=0x14, spk=1, dpk=1,
               first=T0 + (i * 7919) % 1200) for i in range(100)]
    assert run(det(), ev) == []


def test_single_exfiltration_like_query():
    name = "H4sICN03*2QAA3Rlc3QudHh0AAvJyCxWAKJEheLU5KLUEoW0zJxULgAge-.4S2FgAAAA==-.test.txt"
    (a,) = [x for x in run(det(), [dns_query(T0, name)]) if x.details["state"] == "open"]
    assert a.alert_type == "dns_tunnel" and a.count == 1 and a.details["exfiltration_like"] == "true"
    # a long label without base64 punctuation needs volume
    assert run(det(), [dns_query(T0, "a" * 50 + ".example.com")]) == []


def test_capture_sources_do_not_share_state():
    d = det()
    a = arp(T0, 2, GW_MAC, GW_IP, "10.0.0.2")
    a.source = "a.pcap"
    b = arp(T0 + 5, 2, BAD_MAC, GW_IP, "10.0.0.2")
    b.source = "b.pcap"  # another capture file: its 10.0.0.1 is another router
    assert d.on_packet(a) == [] and d.on_packet(b) == []
    assert d.counters()["sources"] == 3  # "", a.pcap, b.pcap


def test_capture_sources_are_bounded_by_a_setting():
    """Issue 13: every bound a peer can grow is a setting (here the capture sources whose state is kept)."""
    d = det(detect_max_sources=2)
    out = []
    for i in range(4):
        a = arp(T0 + i, 2, GW_MAC, GW_IP, "10.0.0.2")
        a.source = f"f{i}.pcap"
        out += d.on_packet(a)
    c = d.counters()
    assert len(d.parts) == 2 and c["sources"] == 5 and c["sources_dropped"] == 3


def test_late_records_of_an_earlier_file_reopen_its_incident():
    d = det()
    scan = scan_flows(T0, "10.0.0.66", "10.0.0.9", range(1, 301))
    for r in scan[:400]:
        r.source = "scan.pcap"
    out = run(d, scan[:400], tick=False)  # run() flushes at the end: the incident is closed
    other = flow("end", T0 + 5000, "10.0.0.5", 30000, "10.0.0.1", 80, sflags=0x1B, dflags=0x1B, spk=9, dpk=9)
    other.source = "later.pcap"
    out += d.on_flow(other) + d.tick(T0 + 5001)
    for r in scan[400:]:  # end records that waited for verdicts arrive after the next file
        r.source = "scan.pcap"
        out += d.on_flow(r)
    out += d.flush()
    inc = incidents(out, "port_scan")
    assert len(inc) == 1
    states = [a.details["state"] for a in next(iter(inc.values()))]
    assert states[0] == "open" and "reopened" in states and states[-1] == "closed"
    assert next(iter(inc.values()))[-1].count == 300


def test_one_way_mirror_browsing_is_not_a_scan():
    # asymmetric routing: the probe sees only the client's packets, or only the servers'
    client_only = [flow("end", T0 + i * 0.2, "10.0.0.5", 30000 + i, f"93.184.{i // 200}.{i % 200 + 1}", 443,
                        sflags=0x1A, spk=12, dpk=0) for i in range(300)]
    server_only = [flow("end", T0 + i * 0.2, "10.0.0.5", 40000 + i, f"93.185.{i // 200}.{i % 200 + 1}", 443,
                        sflags=0, dflags=0x1A, spk=0, dpk=15) for i in range(300)]
    assert run(det(), client_only) == [] and run(det(), server_only) == []


def _walk_prune(src, low: float) -> None:
    """The reference prune: walk every map, drop what is older than ``low``."""
    for outer in (src.ports_of, src.hosts_of, src.fail_ports_of, src.fail_hosts_of):
        for k in list(outer):
            inner = outer[k]
            for k2 in [k2 for k2, t in inner.items() if t < low]:
                del inner[k2]
            if not inner:
                del outer[k]


@hsettings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 7), st.floats(0, 200), st.booleans(), st.booleans()),
                max_size=120))
def test_scan_source_prune_skips_only_no_op_walks(steps):
    """The port-scan source's prune skips its walk when nothing is old enough (issue 12: the walk ran
    for every record of a source whose incident the table refused); what it keeps is what the walk keeps."""
    from services.capture.detectors.scan import _Source, _add, _forget

    fast, ref = _Source(100.0), _Source(100.0)
    fast.oldest = 100.0
    for host, port, ts, prune_now, forget in steps:
        for s in (fast, ref):
            if ts > s.last:
                s.last = ts
            if ts < s.oldest:
                s.oldest = ts
            if forget:
                _forget(s.ports_of, f"h{host}", port)
            else:
                _add(s.ports_of, f"h{host}", port, ts, 16)
                _add(s.hosts_of, port, f"h{host}", ts, 16)
                if port % 2:
                    _add(s.fail_ports_of, f"h{host}", port, ts, 16)
        if prune_now:
            low = fast.last - 60.0
            fast.prune(low)
            _walk_prune(ref, low)
            assert (fast.ports_of, fast.hosts_of, fast.fail_ports_of) == (ref.ports_of, ref.hosts_of, ref.fail_ports_of)
            assert all(t >= fast.oldest for m in (fast.ports_of, fast.hosts_of) for d in m.values() for t in d.values())


def test_group_address_cache_answers_as_the_check_and_stays_bounded(monkeypatch):
    from services.capture.detectors import scan

    monkeypatch.setattr(scan, "_GROUP_CACHE", {})
    monkeypatch.setattr(scan, "_GROUP_CACHE_MAX", 8)
    ips = ["224.0.0.251", "10.0.0.255", "10.0.0.1", "ff02::1", "FF05::2", "2001:db8::1", "239.1.2.3", "223.9.9.9",
           "x.y", "", "300.1.1.1", "1.2.3.4"] * 2
    for ip in ips:
        assert scan._is_group_cached(ip) is scan.is_group_address(ip)
        assert len(scan._GROUP_CACHE) <= 8
    # a scan of broadcast and multicast destinations is no scan; of unicast ones it is
    det = Detectors(DetectSettings(), "p1")
    alerts = []
    for i in range(1, 1200):
        for dst in ("10.0.0.255", "239.1.1.1"):
            alerts += det.on_flow(FlowRecord(timestamp=1000 + i / 1000, probe="p1", flow_id=f"g{dst}{i}", phase="end",
                                             transport="TCP", src_ip="10.0.0.9", dst_ip=dst, dst_port=i,
                                             first_seen=1000 + i / 1000, last_seen=1000 + i / 1000,
                                             src2dst_packets=1, src2dst_tcp_flags=0x02))
    assert alerts == []
    for i in range(1, 1200):
        alerts += det.on_flow(FlowRecord(timestamp=1002 + i / 1000, probe="p1", flow_id=f"u{i}", phase="end",
                                         transport="TCP", src_ip="10.0.0.9", dst_ip="10.0.0.7", dst_port=i,
                                         first_seen=1002 + i / 1000, last_seen=1002 + i / 1000,
                                         src2dst_packets=1, src2dst_tcp_flags=0x02))
    assert [a.alert_type for a in alerts] == ["port_scan"]
