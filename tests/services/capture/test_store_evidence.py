"""Evidence of alerts cut from the packet store (services/capture/store_evidence.py).

Through ``flowtarget analyze`` with FT_RECORD_DIR set (capture, the detectors' process, store):
a 200-port scan's evidence holds every port's packets, an ARP flood's evidence the flooding
MAC's frames, although the replay ran far ahead of the detectors (thousands of flows after the
attacks, so the meter's per-flow ring no longer holds them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest

from services.capture.export import ExportError, Query, export
from services.capture.store_evidence import query_for_incident
from services.capture.sources import open_source
from tests.services.capture.test_recorder import write_pcap

SCANNER, TARGET = bytes([10, 9, 9, 9]), bytes([10, 9, 9, 1])
FLOOD_MAC = b"\x02\x00\x00\x00\x00\x66"
QUIET_MAC = b"\x02\x00\x00\x00\x00\x11"


def eth(src_mac: bytes, dst_mac: bytes, data: dpkt.Packet, etype: int = 0x0800) -> bytes:
    return bytes(dpkt.ethernet.Ethernet(src=src_mac, dst=dst_mac, type=etype, data=data))


def tcp(src: bytes, sp: int, dst: bytes, dp: int, flags: int) -> bytes:
    t = dpkt.tcp.TCP(sport=sp, dport=dp, flags=flags, seq=1, ack=2 if flags & dpkt.tcp.TH_ACK else 0)
    ip = dpkt.ip.IP(src=src, dst=dst, p=6, data=t)
    ip.len = len(ip)
    return eth(b"\x02" * 6, b"\x04" * 6, ip)


def udp(src: bytes, sp: int, dst: bytes, dp: int, payload: bytes) -> bytes:
    u = dpkt.udp.UDP(sport=sp, dport=dp, data=payload)
    u.ulen = len(u)
    ip = dpkt.ip.IP(src=src, dst=dst, p=17, data=u)
    ip.len = len(ip)
    return eth(b"\x02" * 6, b"\x04" * 6, ip)


def arp(mac: bytes, spa: bytes, tpa: bytes) -> bytes:
    a = dpkt.arp.ARP(op=dpkt.arp.ARP_OP_REQUEST, sha=mac, spa=spa, tha=b"\x00" * 6, tpa=tpa)
    return eth(mac, b"\xff" * 6, a, 0x0806)


def attacks() -> list[tuple[float, bytes]]:
    frames: list[tuple[float, bytes]] = []
    for port in range(1, 201):                       # a vertical SYN scan of 200 ports, each answered by a RST
        t = 2000.0 + port * 0.005
        frames.append((t, tcp(SCANNER, 40000, TARGET, port, dpkt.tcp.TH_SYN)))
        frames.append((t + 0.0002, tcp(TARGET, port, SCANNER, 40000, dpkt.tcp.TH_RST | dpkt.tcp.TH_ACK)))
    for i in range(300):                             # 500 ARP requests/s from one MAC
        frames.append((2010.0 + i * 0.002, arp(FLOOD_MAC, bytes([10, 9, 8, 66]), bytes([10, 9, 8, i % 250 + 1]))))
    for i in range(20):                              # a quiet neighbour's ARP meanwhile
        frames.append((2009.0 + i * 0.2, arp(QUIET_MAC, bytes([10, 9, 8, 11]), bytes([10, 9, 8, 1]))))
    for i in range(4000):                            # then the replay goes on: thousands of other flows
        t = 2030.0 + i * 0.01
        frames.append((t, udp(bytes([10, 7, i // 250, i % 250 + 1]), 5000 + i % 1000, bytes([10, 7, 200, 1]), 53,
                              b"q%d" % i)))
        frames.append((t + 0.001, udp(bytes([10, 7, 200, 1]), 53, bytes([10, 7, i // 250, i % 250 + 1]),
                                      5000 + i % 1000, b"a%d" % i)))
    frames.sort(key=lambda r: r[0])
    return frames


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory):
    d = tmp_path_factory.mktemp("storeev")
    pcap = write_pcap(d / "attacks.pcap", attacks())
    out = d / "out"
    env = dict(os.environ, FT_RECORD_DIR=str(d / "store"), FT_RECORD_MAX_BYTES=str(64 << 20),
               FT_RECORD_FILE_BYTES=str(256 * 1024))
    proc = subprocess.run([sys.executable, "-m", "flowtarget", "analyze", str(pcap), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    alerts = [json.loads(x) for x in (out / "alerts.jsonl").read_text().splitlines() if x.strip()]
    return alerts, out, d


def test_scan_evidence_holds_every_port(analyzed):
    alerts, out, _d = analyzed
    scans = [a for a in alerts if a["alert_type"] == "port_scan"]
    assert scans, [a["alert_type"] for a in alerts]
    # one file for the incident (an earlier publication may lack it when capture's answer came late)
    assert len({a.get("evidence_pcap") for a in scans} - {None, ""}) == 1
    assert scans[-1]["details"]["state"] == "closed"
    path = Path(scans[-1]["evidence_pcap"])
    assert path.parent == out / "evidence" and path.exists()
    syn_ports, rst_ports = set(), set()
    for _ts, fr in open_source(path):
        ip = dpkt.ethernet.Ethernet(fr).data
        assert isinstance(ip, dpkt.ip.IP) and SCANNER in (ip.src, ip.dst)
        t = ip.data
        if ip.src == SCANNER and t.flags & dpkt.tcp.TH_SYN:
            syn_ports.add(t.dport)
        elif ip.src == TARGET and t.flags & dpkt.tcp.TH_RST:
            rst_ports.add(t.sport)
    assert syn_ports == rst_ports == set(range(1, 201))           # 200 flows' packets, not 32 of one


def test_arp_flood_evidence_holds_the_flooding_macs_frames(analyzed):
    alerts, out, _d = analyzed
    floods = [a for a in alerts if a["alert_type"] == "arp_flood" and a["details"].get("scope") == "mac"]
    assert floods, [(a["alert_type"], a["details"]) for a in alerts]
    path = Path(floods[-1]["evidence_pcap"])
    assert path.parent == out / "evidence" and path.exists()
    frames = [dpkt.ethernet.Ethernet(fr) for _ts, fr in open_source(path)]
    assert len(frames) == 300                                    # every frame of the flood
    assert all(e.src == FLOOD_MAC and e.type == 0x0806 for e in frames)   # and only the flooding MAC's


def test_queries_for_each_kind_of_incident():
    import pcap

    base = {"alert_id": "x", "first_seen": 100.0, "started_at": 100.0, "last_seen": 110.0}
    q = query_for_incident({**base, "alert_type": "port_scan", "src_ip": "10.0.0.9"})
    assert q.host == "10.0.0.9" and q.since == 99.0 and q.until == 111.0
    q = query_for_incident({**base, "alert_type": "syn_flood", "dst_ip": "10.0.0.1", "dst_port": 80})
    assert (q.host, q.port, q.bpf) == ("10.0.0.1", 80, "tcp")
    q = query_for_incident({**base, "alert_type": "dns_tunnel", "src_ip": "10.0.0.7", "dst_ip": "10.0.0.53",
                            "dst_port": 53})
    assert (q.host, q.port) == ("10.0.0.7", 53)
    for inc in ({"alert_type": "arp_flood", "details": {"src_mac": "02:00:00:00:00:66", "scope": "mac"}},
                {"alert_type": "arp_flood", "details": {"scope": "total"}},
                {"alert_type": "arp_spoof", "src_ip": "10.0.0.1"},
                {"alert_type": "icmp_flood", "dst_ip": "10.0.0.1"}):
        q = query_for_incident({**base, **inc})
        assert q is not None and q.bpf
        pcap.bpf(q.bpf.encode(), 1)                             # libpcap compiles it
    # text from the wire never reaches the BPF filter: a MAC that is not a MAC is not used
    q = query_for_incident({**base, "alert_type": "arp_flood",
                            "details": {"src_mac": "02:00:00:00:00:66 or tcp", "scope": "mac"}})
    assert "tcp" not in q.bpf
    q = query_for_incident({**base, "alert_type": "policy", "transport": "TCP", "src_ip": "10.0.0.2",
                            "src_port": 5555, "dst_ip": "10.0.0.3", "dst_port": 443, "flow_id": "f"})
    assert q.flow_keys and q.flow_keys[0][2] == 6
    assert query_for_incident({**base, "alert_type": "port_scan", "src_ip": "not an ip"}) is None
    assert query_for_incident({"alert_type": "port_scan", "src_ip": "10.0.0.9"}) is None    # no time at all


def _recorded_store_evidence(tmp_path, n_flows: int, seed: int, span_s: float):
    """Traffic recorded into a store under tmp_path, and a StoreEvidence over it (evidence in
    tmp_path/evidence, at most 1 MB per cut): (frames, meter, limits, store_evidence)."""
    from services.capture.evidence import EvidenceLimits
    from services.capture.store_evidence import StoreEvidence
    from shared.settings import CaptureSettings
    from tests.services.capture.test_recorder import record, traffic

    frames = traffic(n_flows=n_flows, seed=seed, span_s=span_s)
    store = tmp_path / "store"
    rec, meter, _ = record(frames, store, file_bytes=64 * 1024, file_s=60.0)
    settings = CaptureSettings(record_dir=store, evidence_dir=tmp_path / "evidence", record_evidence_max_mb=1)
    limits = EvidenceLimits.from_settings(settings)
    return frames, meter, limits, StoreEvidence(settings, rec, limits, meter)


def test_block_and_policy_evidence_is_the_flows_packets_from_the_store(tmp_path):
    """A block's evidence: its flow's 5-tuple from the flow's start (the recorder's index knows it),
    cut by the worker thread after the recorder's writer has written it; the ring's file comes first."""
    from services.capture.store_evidence import query_for_flow
    from tests.services.capture.test_recorder import addrs, dpkt_read

    frames, meter, limits, se = _recorded_store_evidence(tmp_path, n_flows=200, seed=21, span_s=300)
    tcp_flows = [f for f in meter.sink.flows if f.phase == "end" and f.transport == "TCP"][:4]
    paths, queries = [], []
    for f in tcp_flows:
        queries.append(query_for_flow("TCP", f.src_ip, f.src_port, f.dst_ip, f.dst_port, f.first_seen, None))
        paths.append(se.request("block:" + f.flow_id, queries[-1], src_ip=f.src_ip, ts=f.last_seen, tag="block-r1",
                                reason="block", flow_id=f.flow_id))
    # asked again while it waits or after: the same file
    assert se.request("block:" + tcp_flows[0].flow_id, queries[0], reason="block") == paths[0]
    assert se.wait(60)
    assert len(set(paths)) == 4
    for f, p in zip(tcp_flows, paths):
        ends = {(f.src_ip, f.src_port), (f.dst_ip, f.dst_port)}
        want = [(ts, fr) for ts, fr in frames if (a := addrs(fr)) and {(a[0], a[2]), (a[1], a[3])} == ends]
        assert want and dpkt_read(p) == [(round(ts, 6), fr) for ts, fr in want]
        assert Path(p).parent == tmp_path / "evidence" and (os.stat(p).st_mode & 0o777) == 0o640
    done = list(se.done)
    assert {d[0] for d in done} == set(paths) and all(d[1] == "block" and d[3] > 0 for d in done)
    assert limits.c["store_evidence_cut"] >= 4 and limits.c["store_evidence_errors"] == 0
    # an incident the store no longer holds gives no file (counted), never an empty pcap
    q = query_for_flow("TCP", "10.200.0.1", 1, "10.200.0.2", 2, 0.0, None)
    p = se.request("block:gone", q, reason="block")
    assert se.wait(60) and not Path(p).exists() and limits.c["store_evidence_empty"] == 1
    se.close()


def test_cuts_run_in_their_own_process_which_comes_back_after_it_dies(tmp_path):
    """The packets of a cut are read in the ``ft-evidence`` child (not in capture's process, where a
    cut held the interpreter against capture's loop); a child killed between cuts is started again,
    and close() ends it."""
    import signal
    import time

    from services.capture.store_evidence import query_for_flow
    from tests.services.capture.test_recorder import addrs, dpkt_read

    frames, meter, limits, se = _recorded_store_evidence(tmp_path, n_flows=120, seed=23, span_s=200)
    flows = [f for f in meter.sink.flows if f.phase == "end" and f.transport == "TCP"][:2]

    def cut(f):
        q = query_for_flow("TCP", f.src_ip, f.src_port, f.dst_ip, f.dst_port, f.first_seen, None)
        p = se.request("block:" + f.flow_id, q, src_ip=f.src_ip, ts=f.last_seen, reason="block")
        assert se.wait(60)
        ends = {(f.src_ip, f.src_port), (f.dst_ip, f.dst_port)}
        want = [(ts, fr) for ts, fr in frames if (a := addrs(fr)) and {(a[0], a[2]), (a[1], a[3])} == ends]
        assert want and dpkt_read(p) == [(round(ts, 6), fr) for ts, fr in want]

    cut(flows[0])
    child = se._cutter._proc
    assert child is not None and child.poll() is None and se._cutter.started == 1
    assert Path(f"/proc/{child.pid}/comm").read_text().strip() == "ft-evidence"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    cut(flows[1])                                   # a new child takes the next cut
    assert se._cutter.started == 2 and limits.c["store_evidence_errors"] == 0
    second = se._cutter._proc
    se.close()
    deadline = time.monotonic() + 10
    while second.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert second.returncode == 0                   # it ended at end of input, not killed
