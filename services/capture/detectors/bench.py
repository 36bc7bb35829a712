"""``python -m services.capture.detectors.bench [CAPTURE ...]``: what the detectors cost.

Prints events/s of each input kind on synthetic traffic, and, for capture
files given, FlowMeter packets/s without and with the detectors attached.
"""

from __future__ import annotations

import random
import sys
import time

import dpkt

from shared.models import ArpInfo, FlowRecord, PacketEvent
from shared.settings import CaptureSettings, DetectSettings

from . import Detectors

T0 = 1_700_000_000.0


def _flows(n: int) -> list[FlowRecord]:
    rnd = random.Random(1)
    out = []
    for i in range(n):
        ts = T0 + i * 0.001
        src = f"10.{rnd.randrange(4)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
        dst = f"93.184.{rnd.randrange(64)}.{rnd.randrange(1, 255)}"
        common = dict(probe="b", flow_id=f"f{i}", transport="TCP", src_ip=src, src_port=30000 + i % 30000,
                      dst_ip=dst, dst_port=rnd.choice((80, 443, 443, 8080)), first_seen=ts)
        out.append(FlowRecord(timestamp=ts, phase="start", last_seen=ts, **common))
        out.append(FlowRecord(timestamp=ts + 2, phase="end", last_seen=ts + 2, src2dst_packets=9, dst2src_packets=11,
                              src2dst_tcp_flags=0x1B, dst2src_tcp_flags=0x1B, **common))
    return out


def _dns(n: int) -> list[PacketEvent]:
    rnd = random.Random(2)
    names = [f"www.site{i}.example.com" for i in range(500)] + \
            ["".join(rnd.choice("abcdef0123456789") for _ in range(40)) + ".t.example.org" for _ in range(50)]
    msgs = [bytes(dpkt.dns.DNS(id=i, qd=[dpkt.dns.DNS.Q(name=nm)])) for i, nm in enumerate(names)]
    return [PacketEvent(timestamp=T0 + i * 0.001, probe="b", kind="dns", transport="UDP", src_ip="10.0.0.5",
                        dst_ip="10.0.0.53", dst_port=53, payload=rnd.choice(msgs)) for i in range(n)]


def _arp(n: int) -> list[PacketEvent]:
    rnd = random.Random(3)
    out = []
    for i in range(n):
        h = rnd.randrange(2, 250)
        mac = f"02:00:00:00:00:{h:02x}"
        out.append(PacketEvent(timestamp=T0 + i * 0.01, probe="b", kind="arp", src_mac=mac,
                               arp=ArpInfo(operation=1, sender_mac=mac, sender_ip=f"10.0.0.{h}",
                                           target_mac="00:00:00:00:00:00", target_ip="10.0.0.1")))
    return out


def _rate(fn, items) -> float:
    t = time.perf_counter()
    for x in items:
        fn(x)
    return len(items) / (time.perf_counter() - t)


def main(argv: list[str]) -> int:
    d = Detectors(DetectSettings(), "b")
    print(f"flow records (TCP start+end, browsing-like): {_rate(d.on_flow, _flows(100_000)):,.0f}/s")
    d = Detectors(DetectSettings(), "b")
    print(f"DNS packet events:                           {_rate(d.on_packet, _dns(100_000)):,.0f}/s")
    d = Detectors(DetectSettings(), "b")
    print(f"ARP packet events:                           {_rate(d.on_packet, _arp(100_000)):,.0f}/s")
    if argv:
        from services.capture.flows import FlowMeter
        from services.capture.sources import open_source

        frames = []
        for path in argv:
            try:
                src = open_source(path)
            except Exception as exc:  # not a capture: say so, go on
                print(f"skip {path}: {exc}", file=sys.stderr)
                continue
            frames += [(ts, f, dlt) for ts, f, dlt in src.iter_dlt()]

        class Sink:
            def __init__(self, det: Detectors | None) -> None:
                self.det = det

            def flow(self, r) -> None:
                if self.det is not None:
                    self.det.on_flow(r)

            def sample(self, s) -> None:
                pass

            def packet(self, p) -> None:
                if self.det is not None:
                    self.det.on_packet(p)

        for label, det in (("without detectors", None), ("with detectors   ", Detectors(DetectSettings(), "b"))):
            best = 0.0
            for _ in range(3):
                m = FlowMeter(CaptureSettings(verdict_wait_s=0, pcap=[]), Sink(det), source="bench")
                t = time.perf_counter()
                for ts, f, dlt in frames:
                    m.process(ts, f, dlt)
                m.finish()
                best = max(best, len(frames) / (time.perf_counter() - t))
            print(f"FlowMeter {label}: {best:,.0f} packets/s over {len(frames):,} packets")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
