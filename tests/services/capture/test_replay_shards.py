"""A file replayed by several capture processes (FT_SHARDS > 1 with FT_PCAP).

Each shard reads the whole file and keeps the packets whose IP addresses hash
to it (``fastpath.shard_hash``, in C while reading, with a pure-Python twin).
These tests check the hash (compiled = twin, symmetric, every link type), that
the shards partition a file exactly (every record in one shard, pcap and
pcapng, damaged records too), and, on a real nats-server, that
``flowtarget capture`` with two shards gives the same flow records and the same
alert incidents as one process.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import re
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import dpkt
import pytest

from services.capture import fastpath
from services.capture.sources import FileSource
from shared.bus import Bus
from shared.settings import CommonSettings
from tests.conftest import CORPUS, SAMPLE_PCAP, need_corpus


def _ip4(src: bytes, dst: bytes, proto: int = 17, frag: int = 0) -> bytes:
    l4 = dpkt.udp.UDP(sport=1234, dport=53, ulen=8) if proto == 17 else dpkt.tcp.TCP(sport=1234, dport=80)
    raw = bytearray(bytes(dpkt.ip.IP(src=src, dst=dst, p=proto, data=l4)))
    raw[6:8] = struct.pack("!H", frag)     # flags and fragment offset (the checksum is not read)
    return bytes(raw)


def _ip6(src: bytes, dst: bytes) -> bytes:
    l4 = dpkt.udp.UDP(sport=1234, dport=53, ulen=8)
    return bytes(dpkt.ip6.IP6(src=src, dst=dst, nxt=17, hlim=1, plen=8, data=l4))


def _framings(ip: bytes, v6: bool) -> list[tuple[int, bytes]]:
    """The same IP packet in every link layer the hash reads: (datalink, frame)."""
    et = struct.pack("!H", 0x86DD if v6 else 0x0800)
    mac = b"\x02" * 12
    ppp = struct.pack("!BBHHH", 0x11, 0, 7, len(ip) + 2, 0x0057 if v6 else 0x0021)
    return [
        (1, mac + et + ip),
        (1, mac + b"\x81\x00\x00\x07" + et + ip),                          # 802.1Q
        (1, mac + b"\x88\xa8\x00\x05\x81\x00\x00\x07" + et + ip),          # QinQ
        (1, mac + b"\x88\x64" + ppp + ip),                                 # PPPoE session
        (1, mac + b"\x88\x47" + b"\x00\x01\x00\x40" + b"\x00\x02\x01\x40" + ip),   # two MPLS labels
        (113, b"\x00" * 14 + et + ip),                                     # Linux cooked
        (276, et + b"\x00" * 18 + ip),                                     # Linux cooked v2
        (0, b"\x02\x00\x00\x00" + ip),                                     # BSD loopback
        (101, ip), (12, ip), (229 if v6 else 228, ip),                     # raw IP
    ]


def test_shard_hash_is_symmetric_on_every_link_type_and_the_twins_agree():
    rnd = random.Random(7)
    for i in range(40):
        v6 = i % 2 == 1
        a, b = rnd.randbytes(16 if v6 else 4), rnd.randbytes(16 if v6 else 4)
        fwd, rev = (_ip6(a, b), _ip6(b, a)) if v6 else (_ip4(a, b, 6 if i % 4 else 17), _ip4(b, a, 6 if i % 4 else 17))
        hashes = set()
        for (dlt, f1), (_, f2) in zip(_framings(fwd, v6), _framings(rev, v6)):
            h1, h2 = fastpath.shard_hash(f1, dlt), fastpath.shard_hash(f2, dlt)
            assert h1 == h2 == fastpath.shard_hash_py(f1, dlt) == fastpath.shard_hash_py(f2, dlt) >= 0, (i, dlt)
            hashes.add(h1)
        assert len(hashes) == 1, (i, hashes)     # the link layer does not change the shard
    # a fragment hashes with its datagram's unfragmented packets (addresses only)
    a, b = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"
    assert fastpath.shard_hash(b"\x02" * 12 + b"\x08\x00" + _ip4(a, b, frag=0x2000 | 185), 1) == \
        fastpath.shard_hash(b"\x02" * 12 + b"\x08\x00" + _ip4(b, a), 1)
    # no IP header: -1 (shard 0 takes it); short or unknown link types too
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + bytes(dpkt.arp.ARP())
    for dlt, frame in [(1, arp), (1, b"\x00" * 10), (1, b"\x02" * 12 + b"\x08\x00" + b"\x45" * 10),
                       (147, _ip4(a, b)), (101, b"\x10" * 40), (113, b"\x00" * 15)]:
        assert fastpath.shard_hash(frame, dlt) == fastpath.shard_hash_py(frame, dlt) == -1, (dlt, frame[:20])
        assert fastpath.in_shard(frame, dlt, 0, 3)
    # the hash spreads host pairs over the shards
    spread = Counter(fastpath.shard_hash(b"\x02" * 12 + b"\x08\x00" + _ip4(struct.pack("!I", 0x0A000000 + i),
                                                                            b"\xc0\xa8\x00\x01"), 1) % 4
                     for i in range(400))
    assert len(spread) == 4 and min(spread.values()) > 60, spread


def test_compiled_hash_equals_the_twin_on_the_corpus():
    corpus = need_corpus()
    files = sorted(p for p in corpus.iterdir() if p.suffix in (".pcap", ".pcapng"))
    assert files
    n = 0
    for path in files[::3]:
        with FileSource(path) as src:
            for _ts, frame, dlt in src.iter_dlt():
                assert fastpath.shard_hash(frame, dlt) == fastpath.shard_hash_py(frame, dlt), (path.name, n)
                n += 1
    assert n > 5000


def _records(path: Path, shard: int = 0, shards: int = 1) -> list[tuple[float, bytes, int]]:
    with FileSource(path, shard, shards) as src:
        out = [(ts, frame, dlt) for dlt, recs in src.batches(64) for ts, frame in recs]
        assert src.packets == len(out)
        return out


def _partition_holds(path: Path, shards: int) -> int:
    whole = _records(path)
    parts = [_records(path, k, shards) for k in range(shards)]
    # each shard's records in file order, and every record in exactly one shard
    assert Counter(itertools.chain.from_iterable(parts)) == Counter(whole), path
    for part in parts:
        it = iter(whole)
        assert all(any(r == w for w in it) for r in part)     # a subsequence of the file
    for k, part in enumerate(parts):
        for _ts, frame, dlt in part:
            assert fastpath.in_shard(frame, dlt, k, shards)
    return sum(1 for p in parts if p)


@pytest.mark.parametrize("shards", [2, 3])
def test_shards_partition_pcap_and_pcapng_files(shards):
    corpus = need_corpus()
    pcaps = sorted(corpus.glob("*.pcap"))[:25]
    ngs = sorted(corpus.glob("*.pcapng"))[:10]
    assert pcaps and ngs
    used = 0
    for path in [SAMPLE_PCAP, *pcaps, *ngs]:
        used = max(used, _partition_holds(path, shards))
    assert used == shards        # some file has packets in every shard


def test_shards_partition_damaged_files(tmp_path):
    """Records the reader takes in Python (caplen above the original length, a truncated last record)."""
    frames = [b"\x02" * 12 + b"\x08\x00" + _ip4(struct.pack("!I", 0x0A000000 + i), b"\xc0\xa8\x00\x01")
              for i in range(50)]
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for i, fr in enumerate(frames):
        orig = len(fr) - 4 if i % 7 == 3 else len(fr)      # caplen > origlen: an anomaly, trimmed and counted
        out += struct.pack("<IIII", 1000 + i, 0, len(fr), orig) + fr
    out += struct.pack("<IIII", 2000, 0, len(frames[9]), len(frames[9])) + frames[9][:30]   # truncated
    path = tmp_path / "damaged.pcap"
    path.write_bytes(bytes(out))
    assert _partition_holds(path, 2) == 2
    assert len(_records(path)) == 51
    # the pure-Python reader skips the same records
    buf = bytes(out)
    for k in range(2):
        c = fastpath.pcap_records(buf, 24, False, 1e-6, 10_000, 1 << 20, 0, k, 2, 1)
        p = fastpath.pcap_records_py(buf, 24, False, 1e-6, 10_000, 1 << 20, 0, k, 2, 1)
        assert c == p
    with pytest.raises(ValueError):
        FileSource(path, 2, 2)


# --------------------------------------------------------------------------- flowtarget capture, two shards

def _scan_pcap(path: Path) -> None:
    """A horizontal SYN scan of 120 hosts (refused: RST) from one source, spread over the shards by the
    address hash, and 40 small HTTP exchanges between other hosts."""
    w = dpkt.pcap.Writer(path.open("wb"))
    t = 1_700_000_000.0
    mac = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02"

    def put(src: bytes, dst: bytes, sp: int, dp: int, flags: int, data: bytes = b"") -> None:
        nonlocal t
        tcp = dpkt.tcp.TCP(sport=sp, dport=dp, flags=flags, seq=1000, data=data)
        ip = dpkt.ip.IP(src=src, dst=dst, p=6, ttl=64, data=tcp)
        ip.len = len(bytes(ip))
        w.writepkt(mac + b"\x08\x00" + bytes(ip), ts=t)
        t += 0.01

    scanner = b"\x0a\x09\x09\x09"
    for i in range(120):
        target = struct.pack("!I", 0x0A140000 + i)
        put(scanner, target, 40000 + i, 23, dpkt.tcp.TH_SYN)
        put(target, scanner, 23, 40000 + i, dpkt.tcp.TH_RST | dpkt.tcp.TH_ACK)
    for i in range(40):
        c, s = struct.pack("!I", 0xC0A80100 + i), struct.pack("!I", 0xC0A80200 + (i % 7))
        put(c, s, 50000 + i, 80, dpkt.tcp.TH_SYN)
        put(s, c, 80, 50000 + i, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK)
        put(c, s, 50000 + i, 80, dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        put(s, c, 80, 50000 + i, dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, b"HTTP/1.1 200 OK\r\n\r\n")
        put(c, s, 50000 + i, 80, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK)
        put(s, c, 80, 50000 + i, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK)
    w.close()


def _run_capture(nats_url: str, probe: str, pcap: Path, shards: int, tmp: Path) -> tuple[list, list, list, str]:
    async def main():
        watcher = await Bus.connect(CommonSettings(nats_url=nats_url, probe=probe), "watcher")
        flows, alerts, stats = [], [], []
        ctl: set[str] = set()

        async def on_flow(msg):
            flows.extend(e for e in json.loads(msg.data)["events"] if e.get("phase") == "end")

        async def on_alert(msg):
            body = json.loads(msg.data)
            alerts.extend(body.get("events", [body]))

        async def on_stats(msg):
            stats.append(json.loads(msg.data))

        async def on_ctl(msg):
            ctl.add(msg.subject)

        await watcher.nc.subscribe(f"ft.flow.{probe}", cb=on_flow)
        await watcher.nc.subscribe("ft.alert.>", cb=on_alert)
        await watcher.nc.subscribe(f"ft.stats.{probe}", cb=on_stats)
        await watcher.nc.subscribe(f"ft.ctl.{probe}.>", cb=on_ctl)
        await watcher.nc.flush()
        env = dict(os.environ, FT_NATS_URL=nats_url, FT_PROBE=probe, FT_PCAP=str(pcap), FT_SHARDS=str(shards),
                   FT_VERDICT_WAIT_S="0", FT_REPLAY_MAX_PENDING="0", FT_STREAM_STORAGE="memory",
                   FT_METRICS_PORT="0", FT_LOG_LEVEL="INFO", FT_DETECTORS="port_scan",
                   FT_EVIDENCE_DIR=str(tmp / f"evidence{shards}"), FT_RECORD_DIR=str(tmp / f"store{shards}"),
                   FT_RECORD_MAX_BYTES=str(64 << 20))
        env.pop("FT_SHARD_INDEX", None)
        env.pop("FT_DETECT_INLINE", None)
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "flowtarget", "capture", env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        await asyncio.sleep(0.5)
        await watcher.close()
        assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
        pos = {x for x in ctl if ".replay_pos" in x}
        # the shards of one replay pace each other on a subject of their run (the parent's token)
        assert (len(pos) == 1 and re.fullmatch(rf"ft\.ctl\.{probe}\.replay_pos_[0-9a-f]{{12}}", pos.pop())) \
            if shards > 1 else not pos
        return flows, alerts, stats, out.decode(errors="replace")

    return asyncio.run(main())


def test_two_shards_replay_a_file_as_one_process_does(nats_server, tmp_path):
    pcap = tmp_path / "scan.pcap"
    _scan_pcap(pcap)
    one = _run_capture(nats_server.url, "rs1", pcap, 1, tmp_path)
    two = _run_capture(nats_server.url, "rs2", pcap, 2, tmp_path)

    def key(f):
        return (f["transport"], f["src_ip"], f["src_port"], f["dst_ip"], f["dst_port"], f["src2dst_packets"],
                f["dst2src_packets"], f["src2dst_bytes"], f["dst2src_bytes"], f["end_reason"])

    flows1, flows2 = Counter(map(key, one[0])), Counter(map(key, two[0]))
    assert sum(flows1.values()) == 160
    assert flows2 == flows1
    # both shards replayed a share (the flows' ids carry each meter's prefix)
    assert len({f["flow_id"].split("-")[0] for f in two[0]}) == 2, two[3][-2000:]
    # every packet counted once over the two shards' final stats
    done1 = sum(s.get("packets", 0) for s in one[2] if s.get("finished"))
    done2 = sum(s.get("packets", 0) for s in two[2] if s.get("finished"))
    assert done1 == done2 == 120 * 2 + 40 * 6
    # the scan is one incident, though its flows hash to both shards, with every probe in its evidence
    for alerts in (one[1], two[1]):
        scans = {a["alert_id"]: a for a in alerts if a["alert_type"] == "port_scan"}
        assert len(scans) == 1, alerts
        last = max(alerts, key=lambda a: a["count"])
        assert last["details"]["kind"] == "horizontal" and last["count"] >= 100
        assert last["evidence_pcap"] and Path(last["evidence_pcap"]).is_file()
        with open(last["evidence_pcap"], "rb") as fh:
            syns = sum(1 for _ts, buf in dpkt.pcap.Reader(fh)
                       if dpkt.ethernet.Ethernet(buf).data.src == b"\x0a\x09\x09\x09")
        assert syns == 120


def test_another_shards_verdicts_are_not_counted_as_unknown():
    """Every shard hears the probe's verdicts; only those for its own unknown flows count."""
    from services.capture.bench import CountingSink
    from services.capture.flows import FlowMeter
    from shared.models import Verdict
    from shared.settings import CaptureSettings

    meter = FlowMeter(CaptureSettings(verdict_wait_s=0), CountingSink(), source="t")
    other = FlowMeter(CaptureSettings(verdict_wait_s=0), CountingSink(), source="t")

    def verdict(flow_id: str) -> Verdict:
        return Verdict(timestamp=1.0, probe="p", flow_id=flow_id, app_protocol="HTTP", confidence="dpi")

    meter.on_verdict(verdict(f"{other._prefix}-7"))
    assert meter.counters.get("verdicts_unknown_flow", 0) == 0
    meter.on_verdict(verdict(f"{meter._prefix}-7"))
    assert meter.counters.get("verdicts_unknown_flow", 0) == 1


def test_two_replays_under_one_probe_name_do_not_pace_each_other(nats_server):
    """The shards of one replay publish how far they have read on a subject of their own run
    (FT_SHARD_RUN, the parent's token): another sharded replay under the same probe name, on the same
    NATS, is neither waited for nor slowed by them."""
    from services.capture.service import ShardPacer
    from shared.settings import CaptureSettings

    async def main():
        stop = asyncio.Event()
        buses, pacers = [], {}
        for run in ("aaaa", "bbbb"):
            for k in range(2):
                s = CaptureSettings(nats_url=nats_server.url, probe="same", shards=2, shard_index=k, shard_run=run)
                bus = await Bus.connect(s, f"capture-{run}-{k}", stop)
                buses.append(bus)
                p = pacers[run, k] = ShardPacer(bus, s)
                await p.start()
        for bus in buses:
            await bus.nc.flush()
        await pacers["aaaa", 0].report(0, 50 << 20)       # run aaaa's shard 0 far into the file
        await pacers["bbbb", 1].report(0, 1 << 10)        # run bbbb's shard 1 at its start
        await asyncio.sleep(0.5)
        heard = {key: dict(p.pos) for key, p in pacers.items()}
        # aaaa's shard 1 hears its sibling; bbbb's shard 0 waits for its own sibling, not for aaaa's
        assert heard == {("aaaa", 0): {}, ("aaaa", 1): {0: (0, 50 << 20)}, ("bbbb", 0): {1: (0, 1 << 10)},
                         ("bbbb", 1): {}}
        assert not pacers["aaaa", 1]._behind(0, 1 << 20) and pacers["bbbb", 0]._behind(0, 60 << 20)
        for p in pacers.values():
            await p.close()
        for bus in buses:
            await bus.close()

    asyncio.run(main())

