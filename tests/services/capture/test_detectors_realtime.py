"""Detectors fed by the real meter in packet time (a replay): alert timing, one incident per attack, one clock.

Frames go through FlowMeter with a sink that hands flow records and hot
records to the detectors, as capture and the detectors' process do, and the
meter and detectors tick once per 0.1 s of packet time.
"""

from __future__ import annotations

import random

from services.capture.detectors import Detectors
from services.capture.flows import FlowMeter
from shared.models import Alert
from shared.settings import CaptureSettings, DetectSettings
from tests.services.capture.test_detectors import GW_IP, GW_MAC, T0, arp
from tests.services.capture.test_flows import ACK, FIN, RST, SYN, icmpf, tcpf


class Feed:
    def __init__(self, **detect) -> None:
        self.det = Detectors(DetectSettings(**detect), "rt")
        self.alerts: list[Alert] = []
        self.meter = FlowMeter(CaptureSettings(verdict_wait_s=0, idle_timeout_s=20), self, source="rt.pcap")
        self.next_tick = 0.0

    # the meter's sink
    def flow(self, r):
        self.alerts += self.det.on_flow(r)

    hot = flow

    def sample(self, s):
        pass

    def packet(self, p):
        self.alerts += self.det.on_packet(p)

    def frames(self, items):
        for ts, fr in items:
            self.meter.process(ts, fr)
            self._tick(ts)

    def events(self, items):
        for e in items:
            self.alerts += self.det.on_packet(e)
            self._tick(e.timestamp)

    def _tick(self, ts):
        if ts >= self.next_tick:
            self.next_tick = ts + 0.1
            self.meter.tick(ts)
            self.alerts += self.det.tick(ts)

    def idle(self, t0, t1):
        t = t0
        while t < t1:
            self._tick(t)
            t += 0.1

    def by_id(self):
        out: dict[str, list[Alert]] = {}
        for a in self.alerts:
            out.setdefault(a.alert_id, []).append(a)
        return out


def test_icmp_flood_of_one_flow_alerts_within_a_second_with_its_measured_rate():
    f = Feed()
    f.frames((T0 + i / 2000, icmpf("10.0.0.5", "10.0.0.9", i)) for i in range(6000))  # 3 s at 2000/s
    f.idle(T0 + 3, T0 + 200)   # the flow idles out (its end record), the incident closes
    f.meter.finish()
    f.alerts += f.det.flush()
    inc = f.by_id()
    assert len(inc) == 1
    (ups,) = inc.values()
    first = ups[0]
    assert first.alert_type == "icmp_flood" and first.details["state"] == "open"
    assert first.last_seen - T0 <= 0.6
    assert first.started_at == T0 and 1500 <= first.rate <= 2500 and first.rate_unit == "packets/s"
    assert first.top_sources == ["10.0.0.5"] and first.top_targets == ["10.0.0.9"]
    assert [a.details["state"] for a in ups].count("closed") == 1
    assert ups[-1].count == 6000   # every packet once, hot records and end record together


def test_unanswered_syn_flood_alerts_at_once_and_late_end_records_do_not_reopen():
    f = Feed(alert_expire_s=5)
    rnd = random.Random(3)
    fr = []
    for i in range(3000):   # 1000/s for 3 s from spoofed sources; half answered by RST
        ts = T0 + i / 1000
        src = f"172.16.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
        sp = rnd.randrange(1024, 65535)
        fr.append((ts, tcpf(src, sp, "10.0.0.9", 80, SYN)))
        if i % 2:
            fr.append((ts + 1e-4, tcpf("10.0.0.9", 80, src, sp, RST | ACK)))
    f.frames(fr)
    f.idle(T0 + 3, T0 + 40)   # incident closes after 5 s; the flows idle out after 20 s, end records come late
    inc = f.by_id()
    assert len(inc) == 1, [a.message for a in f.alerts]
    (ups,) = inc.values()
    states = [a.details["state"] for a in ups]
    assert states[0] == "open" and states.count("closed") == 1 and "reopened" not in states, states
    assert states[-1] == "closed"
    first = ups[0]
    assert first.alert_type == "syn_flood" and first.dst_port == 80
    assert first.last_seen - T0 < 0.2 and first.rate > 500 and first.rate_unit == "flows/s"
    assert ups[-1].count == 3000   # each half-open flow once
    assert f.meter.flows_ended == 3000   # their end records all came (after the incident closed)


def test_a_fast_syn_flood_reports_its_rate_in_the_first_alert():
    """At 2,000 SYNs/s the threshold of 100 half-open flows is reached within 50 ms: the first alert said
    "0/s measured" (a rate only from 50 ms of evidence on)."""
    f = Feed()
    fr = [(T0 + i / 2000, tcpf(f"172.16.0.{1 + i % 250}", 1024 + i, "10.0.0.9", 80, SYN)) for i in range(2000)]
    f.frames(fr)
    first = next(a for a in f.alerts if a.alert_type == "syn_flood")
    assert 1500 <= first.rate <= 2500, first.message
    assert "(0/s measured)" not in first.message


def test_syn_flood_rate_holds_when_records_come_out_of_time_order():
    """Live, the meter hands the half-open flows' records over in batches whose order is not packet time
    (flows answered by RST end at once, others at their hot check): the rate must not depend on it."""
    f = Feed()
    records = []
    f.flow = f.hot = records.append
    fr = []
    for i in range(2000):
        ts = T0 + i / 2000
        fr.append((ts, tcpf("10.0.0.5", 1024 + i, "10.0.0.9", 9, SYN)))
        fr.append((ts + 1e-4, tcpf("10.0.0.9", 9, "10.0.0.5", 1024 + i, RST | ACK)))
    f.frames(fr)
    f.meter.finish()
    for i in range(0, len(records), 512):   # each batch of records newest first
        for r in reversed(records[i:i + 512]):
            f.alerts += f.det.on_flow(r)
    first = next(a for a in f.alerts if a.alert_type == "syn_flood")
    assert 1000 <= first.rate <= 3000, first.message


def test_gratuitous_flood_from_random_macs_is_one_flood_incident_noting_the_spoofing():
    f = Feed()
    f.events(arp(T0 + k, 1, GW_MAC, GW_IP, "10.0.0.2") for k in range(5))   # the gateway's binding before
    rnd = random.Random(5)
    ev = []
    for i in range(5000):   # 1000/s for 5 s, random MACs claiming addresses of a /24: many collisions
        mac = "02:%02x:%02x:%02x:%02x:%02x" % tuple(rnd.randrange(256) for _ in range(5))
        ip = GW_IP if i == 2500 else f"10.0.0.{rnd.randrange(1, 255)}"
        ev.append(arp(T0 + 10 + i / 1000, 2, mac, ip, ip))
    f.events(ev)
    f.idle(T0 + 15, T0 + 100)
    inc = f.by_id()
    assert {ups[0].alert_type for ups in inc.values()} == {"arp_flood"}, [a.message for a in f.alerts]
    assert len(inc) == 1
    (ups,) = inc.values()
    first, last = ups[0], ups[-1]
    assert first.last_seen - (T0 + 10) <= 0.6
    assert 500 <= first.rate <= 2000
    assert int(last.details["binding_changes"]) > 0 and last.details["spoofing"] == "true"
    assert int(last.details["gratuitous"]) > 1000 and last.details["macs"] in ("4096+",) + tuple(str(n) for n in range(1000, 4096))
    assert "spoofing" in last.message


def test_forged_reply_then_owner_reclaims_closes_the_incident_without_a_second_one():
    f = Feed()
    f.events(arp(T0 + k, 1, GW_MAC, GW_IP, "10.0.0.2") for k in range(3))
    bad = "66:66:66:66:66:66"
    f.events([arp(T0 + 10, 2, bad, GW_IP, "10.0.0.2", tmac="00:11:22:33:44:02", eth_dst="00:11:22:33:44:02")])
    f.events(arp(T0 + 12 + k, 1, GW_MAC, GW_IP, "10.0.0.2") for k in range(30))   # the owner, as before
    f.alerts += f.det.flush()
    inc = f.by_id()
    assert len(inc) == 1, [a.message for a in f.alerts]
    (ups,) = inc.values()
    assert [a.details["state"] for a in ups] == ["open", "closed"]
    assert ups[0].details["old_mac"] == GW_MAC and ups[0].details["new_mac"] == bad
    assert ups[-1].details["closed_because"] == "owner reclaimed its address"
    assert ups[-1].timestamp < T0 + 20   # closed a few seconds after the owner's claim, not at expiry


def test_arpspoof_repeating_against_the_owner_stays_one_open_incident():
    f = Feed()
    f.events(arp(T0 + k, 1, GW_MAC, GW_IP, "10.0.0.2") for k in range(3))
    bad = "66:66:66:66:66:66"
    ev = [arp(T0 + 10 + 2 * k, 2, bad, GW_IP, "10.0.0.2", tmac="00:11:22:33:44:02") for k in range(20)]
    ev += [arp(T0 + 10.5 + k, 1, GW_MAC, GW_IP, "10.0.0.2") for k in range(40)]
    f.events(sorted(ev, key=lambda e: e.timestamp))
    f.alerts += f.det.flush()
    inc = f.by_id()
    assert len(inc) == 1
    (ups,) = inc.values()
    states = [a.details["state"] for a in ups]
    assert states.count("open") == 1 and states.count("closed") == 1 and "reopened" not in states, states
    assert ups[-1].count == 20


def test_slow_handshakes_counted_half_open_then_completed_raise_no_syn_flood():
    """A busy server behind a 0.8 s round trip: each SYN is still unanswered at capture's hot check."""
    f = Feed()
    fr = []
    for i in range(300):   # 100 connections/s for 3 s, each completing 0.8 s later
        ts = T0 + i / 100
        c = f"10.5.{i // 200}.{i % 200 + 1}"
        fr.append((ts, tcpf(c, 40000 + i, "10.0.0.9", 443, SYN, seq=1)))
        fr.append((ts + 0.4, tcpf("10.0.0.9", 443, c, 40000 + i, SYN | ACK, seq=7, ack=2)))
        fr.append((ts + 0.8, tcpf(c, 40000 + i, "10.0.0.9", 443, ACK, seq=2, ack=8)))
        fr.append((ts + 0.9, tcpf(c, 40000 + i, "10.0.0.9", 443, FIN | ACK, seq=2, ack=8)))
        fr.append((ts + 1.0, tcpf("10.0.0.9", 443, c, 40000 + i, FIN | ACK, seq=8, ack=3)))
    f.frames(sorted(fr, key=lambda x: x[0]))
    f.idle(T0 + 4, T0 + 30)
    # SYN-ACKed at the first check, ACKed by the second (twice FT_HOT_INTERVAL_S): never reported half-open
    assert f.meter.stats()["counters"].get("hot_records", 0) == 0
    assert [a.message for a in f.alerts if a.alert_type == "syn_flood"] == []


def test_a_flood_after_every_evidence_ring_was_taken_still_gets_evidence():
    """The meter keeps an evidence ring for at most evidence_max_flows flows at a time.  A SYN flood's
    half-open flows took them all (they live until their idle timeout), and an ICMP flood that came next
    had no ring, so its alert came without evidence (found at the issue's 2,000/s for 10 s)."""
    f = Feed()
    f.meter.evidence_max_flows = 200
    f.frames((T0 + i / 2000, tcpf(f"172.16.1.{1 + i % 250}", 1024 + i, "10.0.0.9", 80, SYN)) for i in range(400))
    t1 = T0 + 0.3
    f.frames((t1 + i / 2000, icmpf("10.0.0.5", "10.0.0.9", i)) for i in range(2000))
    icmp = next(a for a in f.alerts if a.alert_type == "icmp_flood")
    assert icmp.flow_id
    ring = f.meter.evidence(icmp.flow_id)
    assert ring and all(fr[23] == 1 for _ts, fr in ring)   # the ICMP flood's own packets (IP proto 1)
