"""FlowMeter: counters, directions, TCP state, timeouts, eviction, samples, verdicts, packet events."""

from __future__ import annotations

import socket
import struct

import dpkt

from services.capture.flows import FlowMeter, ListSink, duration_ms
from shared.models import FlowSample, Verdict
from shared.settings import CaptureSettings

C = "10.1.0.1"
S = "10.2.0.2"
MAC_C = b"\x02\x00\x00\x00\x00\x0c"
MAC_S = b"\x02\x00\x00\x00\x00\x05"
FIN, SYN, RST, PSH, ACK = 1, 2, 4, 8, 16


def frame(src, dst, proto_layer, proto, smac=MAC_C, dmac=MAC_S, ip_id=1, vlan=None, **ipkw) -> bytes:
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    raw = bytes(proto_layer)
    if fam == socket.AF_INET:
        ip = dpkt.ip.IP(src=socket.inet_pton(fam, src), dst=socket.inet_pton(fam, dst), p=proto, ttl=64, id=ip_id, data=raw, **ipkw)
        ip.len = 20 + len(raw)
        et = 0x0800
    else:
        ip = dpkt.ip6.IP6(src=socket.inet_pton(fam, src), dst=socket.inet_pton(fam, dst), nxt=proto, hlim=64, plen=len(raw), data=raw)
        et = 0x86DD
    l2 = dmac + smac
    if vlan is not None:
        l2 += struct.pack("!HH", 0x8100, vlan)
    return l2 + struct.pack("!H", et) + bytes(ip)


def tcpf(src, sport, dst, dport, flags, seq=0, ack=0, data=b"", **kw) -> bytes:
    t = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, data=data)
    return frame(src, dst, t, 6, **kw)


def udpf(src, sport, dst, dport, data=b"", **kw) -> bytes:
    u = dpkt.udp.UDP(sport=sport, dport=dport, data=data)
    u.ulen = 8 + len(data)
    return frame(src, dst, u, 17, **kw)


def meter(**kw):
    sink = ListSink()
    settings = CaptureSettings(**kw)
    return FlowMeter(settings, sink, source="test.pcap", probe="t1"), sink


def ends(sink):
    return [r for r in sink.flows if r.phase == "end"]


def handshake(m, t0=1000.0, cport=40000, sport=443, c2s=b"", s2c=b""):
    """A complete TCP session; returns the per-direction IP bytes it sent."""
    pk = [
        (t0, tcpf(C, cport, S, sport, SYN, seq=100)),
        (t0 + 0.01, tcpf(S, sport, C, cport, SYN | ACK, seq=500, ack=101, smac=MAC_S, dmac=MAC_C)),
        (t0 + 0.02, tcpf(C, cport, S, sport, ACK, seq=101, ack=501)),
    ]
    if c2s:
        pk.append((t0 + 0.03, tcpf(C, cport, S, sport, PSH | ACK, seq=101, ack=501, data=c2s)))
    if s2c:
        pk.append((t0 + 0.04, tcpf(S, sport, C, cport, PSH | ACK, seq=501, ack=101 + len(c2s), data=s2c, smac=MAC_S, dmac=MAC_C)))
    pk += [
        (t0 + 0.05, tcpf(C, cport, S, sport, FIN | ACK, seq=101 + len(c2s), ack=501 + len(s2c))),
        (t0 + 0.06, tcpf(S, sport, C, cport, FIN | ACK, seq=501 + len(s2c), ack=102 + len(c2s), smac=MAC_S, dmac=MAC_C)),
        (t0 + 0.07, tcpf(C, cport, S, sport, ACK, seq=102 + len(c2s), ack=502 + len(s2c))),
    ]
    for ts, fr in pk:
        m.process(ts, fr)
    return pk


def test_tcp_session_counters_and_fin_end():
    m, sink = meter(verdict_wait_s=0)
    pk = handshake(m, c2s=b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", s2c=b"HTTP/1.1 200 OK\r\n\r\n")
    assert [r.phase for r in sink.flows] == ["start"]
    m.tick(2000.0)
    (rec,) = ends(sink)
    assert rec.end_reason == "fin"
    assert (rec.src_ip, rec.src_port, rec.dst_ip, rec.dst_port, rec.transport) == (C, 40000, S, 443, "TCP")
    c_bytes = sum(len(f) - 14 for _, f in pk if f[6:12] == MAC_C)
    s_bytes = sum(len(f) - 14 for _, f in pk if f[6:12] == MAC_S)
    assert (rec.src2dst_packets, rec.dst2src_packets) == (5, 3)
    assert (rec.src2dst_bytes, rec.dst2src_bytes) == (c_bytes, s_bytes)
    assert rec.src2dst_tcp_flags == SYN | ACK | PSH | FIN and rec.dst2src_tcp_flags == SYN | ACK | PSH | FIN
    assert rec.src_mac == "02:00:00:00:00:0c" and rec.dst_mac == "02:00:00:00:00:05"
    assert rec.first_seen == 1000.0 and abs(rec.last_seen - 1000.07) < 1e-9
    assert rec.duration_ms == 70.0   # whole microseconds: (1000.07 - 1000.0) * 1000 is 70.00000000004729
    st = m.stats()
    assert st["flows_ended"] == 1 and st["flows_active"] == 0 and st["packets"] == len(pk)


def test_late_ack_counts_to_closed_flow_and_new_syn_starts_new_flow():
    m, sink = meter(verdict_wait_s=0, tcp_closed_timeout_s=2.0)
    handshake(m)
    m.process(1000.5, tcpf(C, 40000, S, 443, ACK, seq=102, ack=502))  # stray late ACK
    m.process(1001.0, tcpf(C, 40000, S, 443, SYN, seq=9000))  # port reuse: a new connection
    m.finish()
    recs = ends(sink)
    assert len(recs) == 2
    assert recs[0].src2dst_packets == 5 and recs[0].end_reason == "fin"
    assert recs[1].src2dst_packets == 1 and recs[1].end_reason == "eof"
    assert recs[0].flow_id != recs[1].flow_id


def test_rst_ends_after_grace_period():
    m, sink = meter(verdict_wait_s=0, tcp_closed_timeout_s=2.0)
    m.process(10.0, tcpf(C, 1, S, 2, SYN))
    m.process(10.1, tcpf(S, 2, C, 1, RST | ACK))
    m.tick(11.0)
    assert not ends(sink)
    m.tick(12.5)
    (rec,) = ends(sink)
    assert rec.end_reason == "rst" and rec.dst2src_packets == 1


def test_syn_ack_first_makes_its_receiver_the_source():
    m, sink = meter(verdict_wait_s=0)
    m.process(1.0, tcpf(S, 443, C, 40000, SYN | ACK, smac=MAC_S, dmac=MAC_C))
    m.process(1.1, tcpf(C, 40000, S, 443, ACK))
    m.finish()
    (rec,) = ends(sink)
    assert (rec.src_ip, rec.src_port) == (C, 40000)
    assert (rec.src2dst_packets, rec.dst2src_packets) == (1, 1)
    assert rec.src_mac == "02:00:00:00:00:0c"


def test_udp_src_is_first_sender_and_vlans_split_flows():
    m, sink = meter(verdict_wait_s=0)
    m.process(1.0, udpf(S, 9999, C, 1234, b"a", vlan=10))
    m.process(1.1, udpf(C, 1234, S, 9999, b"b", vlan=10))
    m.process(1.2, udpf(C, 1234, S, 9999, b"c", vlan=11))
    m.finish()
    recs = sorted(ends(sink), key=lambda r: r.vlan_id)
    assert [(r.vlan_id, r.src_ip, r.src2dst_packets, r.dst2src_packets) for r in recs] == [(10, S, 1, 1), (11, C, 1, 0)]


def test_icmp_flow_ports_zero_and_ipv6():
    m, sink = meter(verdict_wait_s=0)
    echo = dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=1, seq=1, data=b"x"))
    m.process(1.0, frame(C, S, echo, 1))
    m.process(1.1, frame(S, C, dpkt.icmp.ICMP(type=0, data=dpkt.icmp.ICMP.Echo(id=1, seq=1, data=b"x")), 1))
    m.process(1.2, udpf("2001:db8::1", 5000, "2001:db8::2", 6000, b"hi"))
    m.finish()
    recs = {r.transport: r for r in ends(sink)}
    assert (recs["ICMP"].src_port, recs["ICMP"].dst_port, recs["ICMP"].dst2src_packets) == (0, 0, 1)
    assert recs["UDP"].ip_version == 6 and recs["UDP"].src_ip == "2001:db8::1"


def test_idle_and_active_timeouts_and_updates():
    m, sink = meter(verdict_wait_s=0, idle_timeout_s=60, active_timeout_s=300, update_interval_s=100)
    m.process(0.0, udpf(C, 1, S, 2, b"x"))
    m.process(100.0, udpf(C, 1, S, 2, b"x"))  # idle > 60 s: the first flow ended before
    for t in range(130, 460, 30):
        m.process(float(t), udpf(C, 1, S, 2, b"x"))
    m.finish()
    reasons = [r.end_reason for r in ends(sink)]
    assert reasons[0] == "idle" and "active" in reasons and reasons[-1] == "eof"
    assert any(r.phase == "update" for r in sink.flows)
    assert sum(r.src2dst_packets for r in ends(sink)) == 2 + len(range(130, 460, 30))


def test_max_flows_evicts_oldest_and_counts():
    m, sink = meter(verdict_wait_s=0, max_flows=16)
    for i in range(20):
        m.process(float(i), udpf(C, 1000 + i, S, 53, b"\x00" * 12))
    st = m.stats()
    assert st["flows_evicted"] == 4 and st["flows_active"] == 16
    assert [r.src_port for r in ends(sink)] == [1000, 1001, 1002, 1003]
    assert all(r.end_reason == "evicted" for r in ends(sink))


def test_ipv4_fragments_count_to_their_flow():
    m, sink = meter(verdict_wait_s=0)
    u = dpkt.udp.UDP(sport=7000, dport=8000, data=b"a" * 32)
    u.ulen = 40
    raw = bytes(u)
    first = frame(C, S, raw[:24], 17, ip_id=99, mf=1)
    later = frame(C, S, raw[24:], 17, ip_id=99, offset=24)
    m.process(1.0, first)
    m.process(1.001, later)
    m.finish()
    (rec,) = ends(sink)
    assert (rec.src_port, rec.dst_port, rec.src2dst_packets) == (7000, 8000, 2)
    assert rec.src2dst_bytes == 20 + 24 + 20 + 16
    assert m.stats()["counters"]["ip_fragments"] == 1


def test_samples_reassemble_tcp_in_order_and_drop_retransmissions():
    m, sink = meter(verdict_wait_s=0)
    hello = bytes(range(256)) * 3  # a "ClientHello" split in three segments
    a, b, c = hello[:300], hello[300:600], hello[600:]
    m.process(1.0, tcpf(C, 5000, S, 443, SYN, seq=100))
    m.process(1.01, tcpf(S, 443, C, 5000, SYN | ACK, seq=700, ack=101))
    m.process(1.02, tcpf(C, 5000, S, 443, ACK, seq=101, ack=701))
    m.process(1.03, tcpf(C, 5000, S, 443, ACK, seq=401, ack=701, data=b))  # out of order
    assert not sink.samples
    m.process(1.04, tcpf(C, 5000, S, 443, ACK, seq=101, ack=701, data=a))
    m.process(1.05, tcpf(C, 5000, S, 443, ACK, seq=101, ack=701, data=a))  # retransmission
    m.process(1.06, tcpf(C, 5000, S, 443, PSH | ACK, seq=701, ack=701, data=c))
    assert len(sink.samples) == 2
    s = sink.samples[-1]
    assert b"".join(s.src_payloads) == hello and s.dst_payloads == []
    assert s.seq_no == 1 and s.payload_dirs == "ss" and not s.final
    assert s.src2dst_next_seq == 701 + len(c) and s.src2dst_ack == 701 and s.dst2src_next_seq == 701
    assert s.src_mac == "02:00:00:00:00:0c" and s.trigger_from_src and s.trigger_time == 1.06
    assert m.pending_verdicts() == 2
    FlowSample.model_validate_json(s.model_dump_json())  # what was built is a valid event


def test_sample_limits_final_and_verdicts():
    m, sink = meter(verdict_wait_s=5.0, sample_max_packets=2)
    for i in range(2):
        m.process(1.0 + i, udpf(C, 1111, S, 2222, b"req%d" % i))
        m.process(1.5 + i, udpf(S, 2222, C, 1111, b"rsp%d" % i))
    m.process(5.0, udpf(C, 1111, S, 2222, b"more"))  # beyond the limits: no sample
    assert [s.final for s in sink.samples] == [False, False, False, True]
    assert sink.samples[-1].payload_dirs == "sdsd"
    assert m.pending_verdicts() == 4
    fid = sink.samples[0].flow_id
    v1 = Verdict(timestamp=2.0, probe="t1", flow_id=fid, sample_seq_no=3, app_protocol="DNS", host="a.example", confidence="dpi")
    v0 = Verdict(timestamp=2.0, probe="t1", flow_id=fid, sample_seq_no=1, app_protocol="Other")
    m.on_verdict(v1)
    m.on_verdict(v0)  # older answer arriving late does not win
    assert m.pending_verdicts() == 2
    m.finish()
    assert not ends(sink)  # waiting for the two remaining verdicts
    m.tick(10.0, wall=0.0)
    assert not ends(sink)
    m.on_verdict(Verdict(timestamp=2.0, probe="t1", flow_id=fid, sample_seq_no=2, app_protocol="DNS"))
    m.on_verdict(Verdict(timestamp=2.0, probe="t1", flow_id=fid, sample_seq_no=0, app_protocol="DNS"))
    (rec,) = ends(sink)  # published as soon as every verdict is in
    assert (rec.app_protocol, rec.host, rec.confidence) == ("DNS", "a.example", "dpi")
    assert rec.src2dst_packets == 3 and m.pending_verdicts() == 0


def test_final_verdict_stops_sampling_and_deadline_publishes():
    m, sink = meter(verdict_wait_s=3.0)
    m.process(1.0, udpf(C, 1, S, 2, b"one"))
    fid = sink.samples[0].flow_id
    m.on_verdict(Verdict(timestamp=1.0, probe="t1", flow_id=fid, sample_seq_no=0, final=True, app_protocol="QUIC"))
    m.process(1.1, udpf(C, 1, S, 2, b"two"))
    assert len(sink.samples) == 1
    m.process(1.2, udpf(C, 3, S, 4, b"other flow"))
    m.finish()
    recs = {r.src_port: r for r in ends(sink)}
    assert recs[1].app_protocol == "QUIC"
    assert 3 not in recs  # its verdict is pending
    import time

    m.tick(2.0, wall=time.monotonic() + 10)
    assert {r.src_port for r in ends(sink)} == {1, 3}
    assert m.pending_verdicts() == 0
    assert m.stats()["counters"]["flows_closing"] == 0


def test_closing_flows_wait_for_their_own_deadline_or_verdict():
    """Ended flows waiting for a verdict: a verdict publishes its flow at once (also from the middle of
    the queue); tick publishes the others when their deadline is due, oldest first, and no earlier."""
    import time

    m, sink = meter(verdict_wait_s=5.0)
    for port in (1, 2, 3):
        m.process(1.0, udpf(C, port, S, 9, b"payload"))
        m.finish()   # one flow ends at a time: deadlines in this order
        time.sleep(0.01)
    assert not ends(sink) and m.stats()["counters"]["flows_closing"] == 3
    fid = {s.src_port: s.flow_id for s in sink.samples}
    m.on_verdict(Verdict(timestamp=1.0, probe="t1", flow_id=fid[2], sample_seq_no=0, app_protocol="DNS"))
    assert [r.src_port for r in ends(sink)] == [2] and ends(sink)[0].app_protocol == "DNS"
    first_deadline = m._closing[fid[1]].deadline
    m.tick(2.0, wall=first_deadline - 0.001)
    assert [r.src_port for r in ends(sink)] == [2]
    m.tick(2.0, wall=first_deadline + 0.001)
    assert [r.src_port for r in ends(sink)] == [2, 1]
    m.tick(2.0, wall=first_deadline + 5.0)
    assert [r.src_port for r in ends(sink)] == [2, 1, 3]
    assert m.pending_verdicts() == 0 and m.stats()["counters"]["flows_closing"] == 0


def test_flush_closing_publishes_everything():
    m, sink = meter(verdict_wait_s=60)
    m.process(1.0, udpf(C, 1, S, 2, b"x"))
    m.finish()
    assert not ends(sink)
    m.flush_closing()
    assert len(ends(sink)) == 1 and m.pending_verdicts() == 0


def test_dns_and_arp_packet_events():
    m, sink = meter(verdict_wait_s=0)
    q = dpkt.dns.DNS(id=7, qd=[dpkt.dns.DNS.Q(name="example.com", type=1)])
    m.process(1.0, udpf(C, 5555, S, 53, bytes(q)))
    r = dpkt.dns.DNS(id=7, qr=1, qd=[dpkt.dns.DNS.Q(name="example.com", type=1)])
    m.process(1.1, udpf(S, 53, C, 5555, bytes(r), smac=MAC_S, dmac=MAC_C))
    arp = dpkt.arp.ARP(sha=MAC_C, spa=socket.inet_aton(C), tha=b"\x00" * 6, tpa=socket.inet_aton(S), op=1)
    m.process(1.2, b"\xff" * 6 + MAC_C + b"\x08\x06" + bytes(arp))
    dns = [p for p in sink.packets if p.kind == "dns"]
    assert [p.from_src for p in dns] == [True, False]
    assert dpkt.dns.DNS(dns[0].payload).id == 7 and dns[1].src_ip == C and dns[1].dst_port == 53
    assert dns[0].flow_id == dns[1].flow_id != ""
    (a,) = [p for p in sink.packets if p.kind == "arp"]
    assert (a.arp.operation, a.arp.sender_ip, a.arp.target_ip, a.arp.sender_mac) == (1, C, S, "02:00:00:00:00:0c")
    assert a.src_mac == "02:00:00:00:00:0c" and a.dst_mac == "ff:ff:ff:ff:ff:ff"


def test_bad_unsupported_and_l2_are_counted_not_metered():
    m, sink = meter(verdict_wait_s=0)
    m.process(1.0, b"\x00" * 5)
    m.process(1.0, b"\x01\x80\xc2\x00\x00\x00" + MAC_C + b"\x00\x26\x42\x42\x03" + b"\x00" * 35)
    m.set_source("other", 147)
    m.process(1.0, b"\x00" * 40)
    st = m.stats()
    assert (st["bad_packets"], st["unsupported_packets"], st["packets"]) == (1, 1, 3)
    assert st["counters"]["truncated_l2"] == 1 and st["counters"]["stp"] == 1 and st["counters"]["dlt_147"] == 1
    assert sink.flows == []


def test_mirror_health_counters():
    m, sink = meter(verdict_wait_s=0)
    f = tcpf(C, 1, S, 2, SYN)
    m.process(1.0, f)
    m.process(1.0001, f)  # the same frame again from an overlapping mirror session
    m.finish()
    st = m.stats()
    assert st["duplicate_frames"] == 1 and st["one_way_tcp_flows"] == 1


def test_built_events_are_valid_models():
    """Records, samples and packet events are built without validation: they must validate as they are."""
    from shared.models import FlowRecord, PacketEvent

    m, sink = meter(verdict_wait_s=0)
    handshake(m, c2s=b"GET / HTTP/1.1\r\n\r\n", s2c=b"HTTP/1.1 200 OK\r\n\r\n")
    q = dpkt.dns.DNS(id=7, qd=[dpkt.dns.DNS.Q(name="example.com", type=1)])
    m.process(1.0, udpf(C, 5555, S, 53, bytes(q), vlan=7))
    arp = dpkt.arp.ARP(sha=MAC_C, spa=socket.inet_aton(C), tha=b"\x00" * 6, tpa=socket.inet_aton(S), op=1)
    m.process(1.2, b"\xff" * 6 + MAC_C + b"\x08\x06" + bytes(arp))
    m.finish()
    assert sink.flows and sink.samples and sink.packets
    for ev, cls in [(r, FlowRecord) for r in sink.flows] + [(s, FlowSample) for s in sink.samples] + \
            [(p, PacketEvent) for p in sink.packets]:
        again = cls.model_validate_json(ev.model_dump_json())
        assert again == ev
        assert set(ev.__dict__) == set(cls.model_fields)


def test_inline_fast_path_equals_general_decoder():
    """Untagged IPv4 TCP/UDP frames take the meter's inline path; the same traffic on a VLAN takes decode()."""
    import random

    rnd = random.Random(7)
    plain, tagged = meter(verdict_wait_s=0), meter(verdict_wait_s=0)
    ts = 1.0
    for i in range(300):
        c = f"10.3.0.{rnd.randint(1, 5)}"
        if rnd.random() < 0.5:
            args = (c, rnd.choice([1000, 1001]), S, 443, rnd.choice([SYN, ACK, PSH | ACK, FIN | ACK, RST]))
            kw = dict(seq=rnd.randint(0, 2**32 - 1), data=b"x" * rnd.randint(0, 40))
            fr = [tcpf(*args, **kw), tcpf(*args, vlan=3, **kw)]
        else:
            data = b"y" * rnd.randint(0, 30)
            dport = rnd.choice([53, 123])
            fr = [udpf(c, 2000, S, dport, data), udpf(c, 2000, S, dport, data, vlan=3)]
        if rnd.random() < 0.1:  # truncated copies hit the bad-packet paths
            cut = rnd.randint(0, 60)
            fr = [fr[0][:cut], fr[1][:cut + 4] if cut >= 14 else fr[0][:cut]]
        ts += 0.01
        plain[0].process(ts, fr[0])
        tagged[0].process(ts, fr[1])
    for m, _ in (plain, tagged):
        m.finish()

    def view(sink):
        keep = ("phase", "end_reason", "src_ip", "src_port", "dst_ip", "dst_port", "transport", "src2dst_packets",
                "dst2src_packets", "src2dst_bytes", "dst2src_bytes", "src2dst_tcp_flags", "dst2src_tcp_flags",
                "first_seen", "last_seen")
        return [tuple(getattr(r, k) for k in keep) for r in sink.flows]

    assert view(plain[1]) == view(tagged[1])
    assert [(s.src_payloads, s.dst_payloads, s.payload_dirs, s.src2dst_next_seq) for s in plain[1].samples] == \
        [(s.src_payloads, s.dst_payloads, s.payload_dirs, s.src2dst_next_seq) for s in tagged[1].samples]
    sp, st = plain[0].stats(), tagged[0].stats()
    assert sp["bad_packets"] == st["bad_packets"] and sp["packets"] == st["packets"]


def test_idle_expiry_survives_a_clock_jump_back_and_one_way_flows():
    """Out-of-order capture times must not stall expiry; a flow alive in one direction is not expired."""
    m, sink = meter(verdict_wait_s=0, idle_timeout_s=60)
    m.process(5000.0, udpf(C, 9, S, 9, b"future"))  # a stray late timestamp first
    m.process(100.0, udpf(C, 1, S, 2, b"a"))
    m.process(101.0, udpf(S, 2, C, 1, b"b"))
    for t in range(110, 400, 20):  # only the server keeps talking
        m.process(float(t), udpf(S, 2, C, 1, b"c"))
    m.process(500.0, udpf(C, 1, S, 2, b"d"))  # > 60 s after the last packet: a new flow
    m.finish()
    recs = [r for r in ends(sink) if r.src_port in (1, 2)]
    assert [(r.end_reason, r.src2dst_packets + r.dst2src_packets) for r in recs] == \
        [("idle", 2 + len(range(110, 400, 20))), ("eof", 1)]


def test_tick_zero_uses_the_current_sources_clock():
    """A later file with an older clock: tick(0) must not expire its flows with the earlier file's time."""
    m, sink = meter(verdict_wait_s=0, idle_timeout_s=120)
    m.set_source("new.pcap", 1)
    m.process(1_700_000_000.0, udpf(C, 1, S, 2, b"x"))
    m.finish()
    m.set_source("old.pcap", 1)
    m.process(72.0, udpf(C, 3, S, 4, b"x"))
    m.tick(0.0)
    m.process(191.0, udpf(C, 3, S, 4, b"x"))  # 119 s later: same flow
    m.tick(0.0)
    m.finish()
    recs = [r for r in ends(sink) if r.src_port == 3]
    assert [(r.src2dst_packets, r.end_reason, r.source) for r in recs] == [(2, "eof", "old.pcap")]


def test_longer_segment_at_the_same_seq_replaces_a_bogus_short_payload():
    """A bare ACK whose IP length counts 2 padding bytes, then the real ClientHello at the same seq."""
    m, sink = meter(verdict_wait_s=0)
    hello = b"\x16\x03\x01\x02\x00" + b"\x01" * 40
    m.process(1.0, tcpf(C, 5000, S, 443, SYN, seq=100))
    m.process(1.01, tcpf(S, 443, C, 5000, SYN | ACK, seq=700, ack=101))
    m.process(1.02, tcpf(C, 5000, S, 443, ACK, seq=101, ack=701, data=b"\x00\x00"))
    m.process(1.03, tcpf(C, 5000, S, 443, PSH | ACK, seq=101, ack=701, data=hello))
    m.process(1.04, tcpf(C, 5000, S, 443, PSH | ACK, seq=101 + len(hello), ack=701, data=b"next"))
    s = sink.samples[-1]
    assert s.src_payloads == [hello, b"next"] and s.payload_dirs == "ss"
    assert [x.seq_no for x in sink.samples] == [0, 1, 2]


def test_port_guess_hook_names_unclassified_flows_at_their_end():
    m, sink = meter(verdict_wait_s=0)
    m.port_guess = lambda transport, sp, dp: "TLS" if 443 in (sp, dp) and transport == "TCP" else ""
    m.process(1.0, tcpf(C, 5000, S, 443, SYN))
    m.process(1.1, tcpf(C, 5001, S, 444, SYN))
    m.finish()
    got = {r.dst_port: (r.app_protocol, r.confidence, r.end_reason) for r in ends(sink)}
    assert got == {443: ("TLS", "port", "eof"), 444: ("Unknown", "", "eof")}
    assert [r.app_protocol for r in sink.flows if r.phase == "start"] == ["Unknown", "Unknown"]
    m2, sink2 = meter(verdict_wait_s=0)
    m2.port_guess = lambda *a: 1 / 0  # a broken hook is counted, never raised
    m2.process(1.0, tcpf(C, 5000, S, 443, SYN))
    m2.finish()
    assert ends(sink2)[0].app_protocol == "Unknown" and m2.stats()["counters"]["port_guess_errors"] == 1


def icmpf(src, dst, seq, ident=7) -> bytes:
    ic = dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=ident, seq=seq, data=b"x" * 24))
    return frame(src, dst, ic, 1)


def test_hot_records_for_a_busy_flow_within_hot_interval_and_none_for_a_quiet_one():
    m, sink = meter(verdict_wait_s=0)
    t0 = 1000.0
    for i in range(3000):  # an echo flood: 2000 packets/s in one flow, for 1.5 s
        m.process(t0 + i / 2000, icmpf(C, S, i))
    for i in range(5):  # an ordinary ping: one packet a second
        m.process(t0 + i, icmpf(C, "10.3.0.3", i, ident=9))
    hot = sink.hot_records
    assert hot and {r.dst_ip for r in hot} == {S}
    assert all(r.phase == "update" for r in hot)
    first = hot[0]
    assert first.timestamp - t0 <= 0.51 and first.src2dst_packets >= 1000
    # at most one per hot_interval_s, cumulative counters
    ts = [r.timestamp for r in hot]
    assert all(b - a >= 0.5 for a, b in zip(ts, ts[1:]))
    assert [r.src2dst_packets for r in hot] == sorted(r.src2dst_packets for r in hot)
    assert m.stats()["counters"]["hot_records"] == len(hot)


def test_hot_records_for_half_open_syns_not_for_completed_handshakes():
    m, sink = meter(verdict_wait_s=0)
    t0 = 1000.0
    for i in range(200):  # unanswered SYNs, and SYNs answered by RST
        m.process(t0 + i / 1000, tcpf("10.9.0.1", 1024 + i, S, 80, SYN))
        if i % 2:
            m.process(t0 + i / 1000 + 1e-4, tcpf(S, 80, "10.9.0.1", 1024 + i, RST | ACK))
    handshake(m, t0=t0 + 0.3, cport=50000, sport=80)  # a real connection to the same port
    m.tick(t0 + 0.4)
    assert sink.hot_records == []  # not yet hot_interval_s old
    m.tick(t0 + 1.0)
    hot = sink.hot_records
    assert len(hot) == 200 and {r.src_port for r in hot} == set(range(1024, 1224))
    assert all(r.src2dst_tcp_flags == SYN for r in hot)
    assert sum(1 for r in hot if r.dst2src_tcp_flags & RST) == 100
    m.tick(t0 + 3.0)
    assert len(sink.hot_records) == 200  # once per flow
    # SYN-ACKed, never ACKed (a spoofed source): reported at twice hot_interval_s, not before
    m.process(t0 + 5.0, tcpf("10.9.0.2", 5000, S, 80, SYN))
    m.process(t0 + 5.01, tcpf(S, 80, "10.9.0.2", 5000, SYN | ACK))
    m.tick(t0 + 5.6)
    assert len(sink.hot_records) == 200
    m.tick(t0 + 6.05)
    assert len(sink.hot_records) == 201 and sink.hot_records[-1].dst2src_tcp_flags == SYN | ACK


def test_hot_records_do_not_change_the_stored_records():
    def run(**kw):
        m, sink = meter(verdict_wait_s=0, **kw)
        t0 = 1000.0
        for i in range(1500):
            m.process(t0 + i / 500, icmpf(C, S, i))
            if i % 3 == 0:
                m.process(t0 + i / 500, tcpf("10.9.0.1", 2000 + i, S, 80, SYN))
        handshake(m, t0=t0 + 1, cport=50000, sport=80)
        m.tick(t0 + 200)
        m.finish()
        return sink

    on, off = run(), run(hot_packets=0)
    assert on.hot_records and not off.hot_records
    strip = lambda rs: [r.model_dump(exclude={"flow_id"}) for r in rs]  # noqa: E731
    assert strip(on.flows) == strip(off.flows)


def test_capture_port_guess_is_classifys():
    """capture's port guess (a PortTable of classify's ports, which the compiled meter reads itself) answers
    as Engine.guess for well-known, ephemeral and equal ports of every transport."""
    import random

    from services.capture.flows import PortTable
    from services.capture.service import port_guesser
    from services.classify.engine import Engine

    hook, engine = port_guesser(), Engine()
    assert isinstance(hook, PortTable)
    known = sorted({p for _t, p in engine.port_table})
    rnd = random.Random(7)
    pairs = [(a, b) for a in known[:60] for b in known[-60:]] + [(p, p) for p in known[:50]]
    pairs += [(rnd.choice(known), rnd.randrange(65536)) for _ in range(3000)]
    named = 0
    for t in ("TCP", "UDP", "SCTP"):
        for a, b in pairs:
            for sp, dp in ((a, b), (b, a)):
                g = hook(t, sp, dp)
                assert g == engine.guess(t, sp, dp)
                named += bool(g)
    assert named > 1000


def test_durations_are_whole_microseconds():
    """duration_ms (flows.duration_ms, and _meter.c's record the same): the microseconds between two packet times,
    rounded half to even; nothing below zero, and 0 where the times are not numbers."""
    t = 1_700_000_000.0
    assert duration_ms(t, t + 0.123456) == 123.456
    assert duration_ms(0.0, 1.5e-6) == 0.002 and duration_ms(0.0, 2.5e-6) == 0.002   # half to even
    assert duration_ms(0.0, 0.5e-6) == 0.0
    assert duration_ms(t, t) == 0.0 and duration_ms(t + 1, t) == 0.0
    assert duration_ms(0.0, float("inf")) == 0.0 and duration_ms(0.0, float("nan")) == 0.0
    for dt in (0.07, 3600.25, 86_400.000_001, 1e-7):
        d = duration_ms(t, t + dt)
        assert d == round((t + dt - t) * 1e6) / 1e3 and round(d * 1e3) == d * 1e3
