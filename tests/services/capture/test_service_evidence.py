"""capture service: evidence pcaps for alerts, and on request over ft.ctl.<probe>.pcap."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import dpkt

from services.capture.sources import open_source
from shared.bus import Bus
from shared.models import Evidence
from shared.settings import CaptureSettings, CommonSettings
from services.capture import service


def udp_frame(sport: int, dport: int, payload: bytes) -> bytes:
    udp = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    udp.ulen = len(udp)
    ip = dpkt.ip.IP(src=bytes([10, 0, 0, 1]), dst=bytes([10, 0, 0, 2]), p=17, data=udp)
    ip.len = len(ip)
    eth = dpkt.ethernet.Ethernet(src=b"\x02\x00\x00\x00\x00\x01", dst=b"\x02\x00\x00\x00\x00\x02", data=ip)
    return bytes(eth)


def write_pcap(path: Path, frames: list[tuple[float, bytes]]) -> None:
    with open(path, "wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for ts, fr in frames:
            w.writepkt(fr, ts)


def test_pcap_on_request_records_only_matching_packets(nats_server, tmp_path):
    pcap = tmp_path / "two-streams.pcap"
    frames = []
    for i in range(60):                       # 3 s of packet time, two streams
        frames.append((1000.0 + i * 0.05, udp_frame(5000, 9999, b"want %d" % i)))
        frames.append((1000.0 + i * 0.05 + 0.01, udp_frame(6000, 7777, b"other %d" % i)))
    write_pcap(pcap, frames)

    async def main():
        settings = CaptureSettings(nats_url=nats_server.url, probe="ev", pcap=[pcap], replay_realtime=True,
                                   evidence_dir=tmp_path / "evidence", verdict_wait_s=0)
        stop = asyncio.Event()
        bus = await Bus.connect(settings, "capture", stop)
        client = await Bus.connect(CommonSettings(nats_url=nats_server.url, probe="ev"), "test")
        got: list[Evidence] = []

        async def on_evidence(e):
            got.append(e)

        await client.subscribe("ft.evidence.ev", on_evidence, types=(Evidence,))
        task = asyncio.create_task(service.main(settings, bus, stop))
        answer = None
        for _ in range(100):                  # until the service subscribed
            try:
                msg = await client.nc.request("ft.ctl.ev.pcap", json.dumps({"bpf": "udp port 9999",
                                                                            "duration_s": 1.0}).encode(), timeout=0.2)
                answer = json.loads(msg.data)
                break
            except Exception:
                await asyncio.sleep(0.05)
        await asyncio.wait_for(task, 30)
        await asyncio.sleep(0.3)
        await bus.close()
        await client.close()
        return answer, got

    answer, got = asyncio.run(main())
    assert answer is not None and answer["status"] == "recording", answer
    requested = [e for e in got if e.reason == "request"]
    assert len(requested) == 1
    path = Path(requested[0].path)
    assert path.parent == tmp_path / "evidence" and path.exists()
    packets = list(open_source(path))
    assert 5 <= len(packets) <= 30 and requested[0].packets == len(packets)   # ~1 s of one stream
    for _ts, fr in packets:
        assert dpkt.ethernet.Ethernet(fr).data.data.dport == 9999


def test_bad_pcap_request_is_answered_with_an_error(nats_server, tmp_path):
    pcap = tmp_path / "short.pcap"
    write_pcap(pcap, [(1000.0 + i * 0.05, udp_frame(5000, 9999, b"x")) for i in range(40)])

    async def main():
        settings = CaptureSettings(nats_url=nats_server.url, probe="ev2", pcap=[pcap], replay_realtime=True,
                                   evidence_dir=tmp_path / "evidence", verdict_wait_s=0)
        stop = asyncio.Event()
        bus = await Bus.connect(settings, "capture", stop)
        task = asyncio.create_task(service.main(settings, bus, stop))
        answer = None
        for _ in range(100):
            try:
                msg = await bus.nc.request("ft.ctl.ev2.pcap", b'{"bpf": "this is not bpf ((", "duration_s": 1}',
                                           timeout=0.2)
                answer = json.loads(msg.data)
                break
            except Exception:
                await asyncio.sleep(0.05)
        await asyncio.wait_for(task, 30)
        await bus.close()
        return answer

    answer = asyncio.run(main())
    assert answer is not None and answer["status"] == "error" and "BPF" in answer["error"]


def test_alert_carries_its_evidence_pcap(tmp_path):
    """A port scan replayed through analyze: the alert names a pcap of the scanning flow's packets."""
    frames = []
    for port in range(1, 400):
        tcp = dpkt.tcp.TCP(sport=40000, dport=port, flags=dpkt.tcp.TH_SYN, seq=1)
        ip = dpkt.ip.IP(src=bytes([10, 9, 9, 9]), dst=bytes([10, 9, 9, 1]), p=6, data=tcp)
        ip.len = len(ip)
        eth = dpkt.ethernet.Ethernet(src=b"\x02\x00\x00\x00\x00\x09", dst=b"\x02\x00\x00\x00\x00\x01", data=ip)
        frames.append((2000.0 + port * 0.001, bytes(eth)))
        rst = dpkt.tcp.TCP(sport=port, dport=40000, flags=dpkt.tcp.TH_RST | dpkt.tcp.TH_ACK, ack=2)
        ip2 = dpkt.ip.IP(src=bytes([10, 9, 9, 1]), dst=bytes([10, 9, 9, 9]), p=6, data=rst)
        ip2.len = len(ip2)
        eth2 = dpkt.ethernet.Ethernet(src=b"\x02\x00\x00\x00\x00\x01", dst=b"\x02\x00\x00\x00\x00\x09", data=ip2)
        frames.append((2000.0 + port * 0.001 + 0.0002, bytes(eth2)))
    pcap = tmp_path / "scan.pcap"
    write_pcap(pcap, frames)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "flowtarget", "analyze", str(pcap), "--out", str(out)],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    alerts = [json.loads(x) for x in (out / "alerts.jsonl").read_text().splitlines() if x.strip()]
    scans = [a for a in alerts if a["alert_type"] == "port_scan"]
    assert scans, alerts
    path = Path(scans[-1]["evidence_pcap"])
    assert path.exists() and path.parent == out / "evidence"
    pk = list(open_source(path))
    assert pk and all(dpkt.ethernet.Ethernet(fr).data.src in (bytes([10, 9, 9, 9]), bytes([10, 9, 9, 1]))
                      for _t, fr in pk)
