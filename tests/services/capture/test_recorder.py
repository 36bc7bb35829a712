"""The packet recorder (services/capture/recorder.py) and exports from its store (export.py).

Exports are checked packet by packet against the packets of the pcap that was
recorded, read independently with dpkt.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import random
import re
import stat
import subprocess
import sys
import threading
from pathlib import Path

import dpkt
import pytest

from services.capture.export import ExportError, Query, export, parse_time
from services.capture.flows import FlowMeter, ListSink
from services.capture.recorder import IDX_SUFFIX, Recorder, list_store
from services.capture.sources import open_source
from shared.settings import CaptureSettings

ROOT = Path(__file__).resolve().parents[3]
HOSTS = [f"10.1.0.{i}" for i in range(1, 9)] + ["2001:db8::5"]
T0 = 1_700_000_000.0


def _ip(src: str, dst: str, l4: dpkt.Packet, p: int) -> bytes:
    if ":" in src:
        ip6 = dpkt.ip6.IP6(src=ipaddress.ip_address(src).packed, dst=ipaddress.ip_address(dst).packed, nxt=p,
                           hlim=64, data=l4, plen=len(bytes(l4)))
        return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x86DD, data=ip6))
    ip = dpkt.ip.IP(src=ipaddress.ip_address(src).packed, dst=ipaddress.ip_address(dst).packed, p=p, data=l4)
    ip.len = len(ip)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, data=ip))


def tcp(src: str, sp: int, dst: str, dp: int, flags: int, payload: bytes = b"") -> bytes:
    return _ip(src, dst, dpkt.tcp.TCP(sport=sp, dport=dp, flags=flags, seq=1, data=payload), 6)


def udp(src: str, sp: int, dst: str, dp: int, payload: bytes) -> bytes:
    u = dpkt.udp.UDP(sport=sp, dport=dp, data=payload)
    u.ulen = len(u)
    return _ip(src, dst, u, 17)


def arp() -> bytes:
    a = dpkt.arp.ARP(sha=b"\x02" * 6, spa=bytes([10, 1, 0, 1]), tha=b"\x00" * 6, tpa=bytes([10, 1, 0, 2]))
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\xff" * 6, type=0x0806, data=a))


def traffic(n_flows: int = 300, seed: int = 1, t0: float = T0, span_s: float = 3600.0) -> list[tuple[float, bytes]]:
    """TCP conversations (handshake, data both ways, FIN), UDP exchanges and ARP among HOSTS, interleaved in time."""
    rnd = random.Random(seed)
    out: list[tuple[float, bytes]] = []
    v4 = HOSTS[:-1]
    for i in range(n_flows):
        start = t0 + rnd.random() * span_s
        if i % 10 == 9:
            a, b = "2001:db8::5", "2001:db8::9"
        else:
            a, b = rnd.sample(v4, 2)
        sp = 20000 + i
        dp = rnd.choice([80, 443, 53, 8080])
        t = start
        if i % 3:
            seq = [tcp(a, sp, b, dp, 0x02), tcp(b, dp, a, sp, 0x12), tcp(a, sp, b, dp, 0x10)]
            for k in range(rnd.randint(1, 12)):
                seq.append(tcp(a, sp, b, dp, 0x18, os.urandom(rnd.randint(10, 1200))))
                seq.append(tcp(b, dp, a, sp, 0x18, os.urandom(rnd.randint(10, 1400))))
            seq += [tcp(a, sp, b, dp, 0x11), tcp(b, dp, a, sp, 0x11), tcp(a, sp, b, dp, 0x10)]
        else:
            seq = []
            for k in range(rnd.randint(1, 6)):
                seq.append(udp(a, sp, b, dp, os.urandom(rnd.randint(20, 500))))
                seq.append(udp(b, dp, a, sp, os.urandom(rnd.randint(20, 500))))
        for fr in seq:
            t += rnd.random() * 0.2
            out.append((round(t, 6), fr))
        if i % 25 == 0:
            out.append((round(start + 0.01, 6), arp()))
    out.sort(key=lambda r: r[0])
    return out


def write_pcap(path: Path, frames: list[tuple[float, bytes]]) -> Path:
    with open(path, "wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for ts, fr in frames:
            w.writepkt(fr, ts)
    return path


def dpkt_read(path: Path | str) -> list[tuple[float, bytes]]:
    with open(path, "rb") as fh:
        return [(round(ts, 6), bytes(buf)) for ts, buf in dpkt.pcap.Reader(fh)]


def addrs(frame: bytes) -> tuple[str, str, int, int, int] | None:
    """(src, dst, sport, dport, proto) by dpkt, independently of capture's decoder."""
    eth = dpkt.ethernet.Ethernet(frame)
    ip = eth.data
    if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
        return None
    l4 = ip.data
    sp = getattr(l4, "sport", 0)
    dp = getattr(l4, "dport", 0)
    proto = ip.p if isinstance(ip, dpkt.ip.IP) else ip.nxt
    return (str(ipaddress.ip_address(ip.src)), str(ipaddress.ip_address(ip.dst)), sp, dp, proto)


def record(frames, directory: Path, batch: int = 512, raw: bool = False, **kw) -> tuple[Recorder, FlowMeter, list[int]]:
    """Meter + recorder over ``frames`` in batches, as capture does; returns the store size after every batch.
    ``raw``: the sink takes records as their JSON and offers the recorder's ``pending`` as ``raw_index``, as
    capture's Outbox does without inline detectors (the index then reads the flows, not record objects)."""
    sink = ListSink()
    meter = FlowMeter(CaptureSettings(verdict_wait_s=0), sink, source="eth7")
    meter.set_source("eth7", 1)
    rec = Recorder(directory, meter=meter, **kw)

    def flow(r):          # as capture's Outbox does
        sink.flows.append(r)
        rec.on_flow(r)

    sink.flow = flow
    if raw:
        sink.raw_records = sink.raw_live = sink.flows
        sink.raw_index = rec.pending
    sizes = []
    for i in range(0, len(frames), batch):
        part = frames[i:i + batch]
        meter.process_batch(part)
        rec.record(part, 1)
        rec.tick(part[-1][0])
        sizes.append(du_between_ops(rec, directory))   # the writer thread's queue half done: within the bound
    rec.close()
    meter.finish()
    sizes.append(du(directory))
    return rec, meter, sizes


def du_between_ops(rec: Recorder, directory: Path) -> int:
    """The store's size with the writer thread held between two of its file operations (a size read while
    it works could count a file it deletes next and the bytes it then appends, which never coexist)."""
    with rec.hold_writer():
        return du(directory)


def du(directory: Path) -> int:
    total = 0
    for p in directory.iterdir():
        try:
            total += p.stat().st_size
        except FileNotFoundError:    # deleted by the recorder's writer thread meanwhile
            pass
    return total


def test_store_never_exceeds_a_tiny_byte_bound_over_a_long_replay(tmp_path):
    frames = traffic(n_flows=1500, seed=2)
    bound = 96 * 1024
    store = tmp_path / "store"
    rec, _m, sizes = record(frames, store, batch=256, max_bytes=bound, file_s=60.0)
    total_in = sum(16 + len(f) for _, f in frames)
    assert total_in > 20 * bound                      # a long replay against a tiny store
    assert max(sizes) <= bound, max(sizes)
    assert rec.files_deleted > 10 and rec.rotations > 10 and rec.packets_written == len(frames)
    assert rec.stats()["stored_bytes"] == sizes[-1]
    for p in store.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, p
        assert not p.name.endswith(".tmp")
    # what is left is the newest traffic, readable, and every pcap has its index
    pcaps = list_store(store)
    assert pcaps and all(p.with_name(p.name + IDX_SUFFIX).exists() for p in pcaps)
    kept = [r for p in pcaps for r in dpkt_read(p)]
    assert kept == [(ts, f) for ts, f in frames[-len(kept):]]


@pytest.mark.parametrize("index_max_flows", [100_000, 50])
def test_the_index_is_the_same_from_record_json_as_from_record_objects(tmp_path, index_max_flows):
    """Where the compiled meter writes records as JSON (capture without inline detectors), the recorder's
    index reads the flows the meter hands it (raw_index) instead of record objects: same index files (also
    where they overflow the index's bound and are truncated)."""
    frames = traffic(n_flows=400, seed=12, span_s=900)
    frames += [(ts + 1000, f) for ts, f in traffic(n_flows=60, seed=13, span_s=30)]   # ends by idle timeout
    rec_o, m_o, _ = record(frames, tmp_path / "objects", file_s=60.0, index_max_flows=index_max_flows)
    rec_j, m_j, _ = record(frames, tmp_path / "json", file_s=60.0, raw=True, index_max_flows=index_max_flows)
    assert (rec_o.index_truncated > 0) == (index_max_flows < 100) and rec_o.index_truncated == rec_j.index_truncated
    from services.capture import flows as flows_mod
    if flows_mod._crecord_out is not None:     # built (as CI builds it): the JSON path was taken
        assert any(type(r) is bytes for r in m_j.sink.flows)
    idx_o = [json.loads(p.with_name(p.name + IDX_SUFFIX).read_text()) for p in list_store(tmp_path / "objects")]
    idx_j = [json.loads(p.with_name(p.name + IDX_SUFFIX).read_text()) for p in list_store(tmp_path / "json")]
    assert len(idx_o) >= 10 and sum(len(i["flows"]) for i in idx_o) > (400 if index_max_flows > 100 else 150)
    for a, b in zip(idx_o, idx_j, strict=True):
        a.pop("file"), b.pop("file")
        for row in a["flows"] + b["flows"]:   # a flow id is the meter's own prefix and the flow's number
            row[6] = row[6].split("-", 1)[1]
        assert a == b
    assert any(row[8] for i in idx_o for row in i["flows"])   # ended flows, with their last packet's time


def test_time_rotation_and_index_contents(tmp_path):
    frames = traffic(n_flows=200, seed=3, span_s=600)
    rec, meter, _ = record(frames, tmp_path, file_s=60.0)
    pcaps = list_store(tmp_path)
    assert len(pcaps) >= 10
    seen = 0
    for p in pcaps:
        idx = json.loads(p.with_name(p.name + IDX_SUFFIX).read_text())
        pk = dpkt_read(p)
        seen += len(pk)
        assert idx["packets"] == len(pk) and idx["first_ts"] == pytest.approx(pk[0][0]) and idx["last_ts"] == pytest.approx(pk[-1][0])
        assert pk[-1][0] - pk[0][0] < 60.0
        hosts = {h for fr in pk if (a := addrs(fr[1])) for h in a[:2]}
        assert set(idx["hosts"]) >= hosts       # a superset: the flows open while the file was written
        tuples = {(a[4], frozenset([(a[0], a[2]), (a[1], a[3])])) for fr in pk if (a := addrs(fr[1]))}
        listed = {(f[0], frozenset([(f[1], f[2]), (f[3], f[4])])) for f in idx["flows"]}
        assert tuples <= listed and len(listed) < 3 * len(tuples) + 10, (len(listed), len(tuples))
        assert all(f[6] for f in idx["flows"])
    assert seen == len(frames)
    named = {f.flow_id for f in meter.sink.flows}
    indexed = {f[6] for p in pcaps for f in json.loads(p.with_name(p.name + IDX_SUFFIX).read_text())["flows"]}
    assert indexed == named             # every flow's id is in an index


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    d = tmp_path_factory.mktemp("rec")
    frames = traffic(n_flows=400, seed=4)
    src = write_pcap(d / "in.pcap", frames)
    store = d / "store"
    _rec, meter, _ = record(list(open_source(src)), store,
                            file_bytes=64 * 1024, file_s=300.0)
    return dpkt_read(src), store, meter.sink.flows, d


def test_export_by_host_is_exactly_that_hosts_packets(recorded):
    packets, store, _flows, d = recorded
    for host in HOSTS[:4] + ["2001:db8::5"]:
        res = export(store, Query(host=host), d / f"host-{host.replace(':', '_')}.pcap")
        want = [(ts, f) for ts, f in packets if (a := addrs(f)) and host in a[:2]]
        assert len(want) > 20
        assert dpkt_read(res["path"]) == want
        assert res["packets"] == len(want) and res["files_skipped"] >= 0
        assert stat.S_IMODE(os.stat(res["path"]).st_mode) == 0o640


def test_export_by_flow_id_port_time_and_bpf(recorded):
    packets, store, flows, d = recorded
    tcp_flows = [f for f in flows if f.transport == "TCP" and f.phase == "start"][:5]
    for f in tcp_flows:
        res = export(store, Query(flow_id=f.flow_id), d / "flow.pcap")
        ends = {(f.src_ip, f.src_port), (f.dst_ip, f.dst_port)}
        want = [(ts, fr) for ts, fr in packets if (a := addrs(fr)) and {(a[0], a[2]), (a[1], a[3])} == ends and a[4] == 6]
        assert dpkt_read(res["path"]) == want and len(want) >= 7
        assert res["files_skipped"] > 0            # the index kept the export from reading every file
    since, until = T0 + 600, T0 + 900
    res = export(store, Query(port=443, since=since, until=until), d / "port.pcap")
    want = [(ts, fr) for ts, fr in packets if since <= ts <= until and (a := addrs(fr)) and 443 in a[2:4]]
    assert dpkt_read(res["path"]) == want and want and res["files_skipped"] > 0
    res = export(store, Query(host="10.1.0.2", bpf="udp"), d / "bpf.pcap")
    want = [(ts, fr) for ts, fr in packets if (a := addrs(fr)) and "10.1.0.2" in a[:2] and a[4] == 17]
    assert dpkt_read(res["path"]) == want and want
    with pytest.raises(ExportError):
        export(store, Query(flow_id="no-such-flow"), d / "none.pcap")
    with pytest.raises(ExportError):
        export(store, Query(host="10.1.0.2", bpf="this is not bpf"), d / "bad.pcap")
    with pytest.raises(ExportError):
        export(store, Query(host="../../etc"), d / "bad.pcap")


def test_export_by_community_id(recorded):
    from shared.community_id import for_event

    packets, store, flows, d = recorded
    starts = [f for f in flows if f.phase == "start" and f.transport in ("TCP", "UDP")]
    picked = [f for f in starts if ":" not in f.src_ip][:3] + [f for f in starts if ":" in f.src_ip][:1]
    assert len(picked) == 4
    for f in picked:
        cid = for_event(f.transport, f.src_ip, f.src_port, f.dst_ip, f.dst_port)
        res = export(store, Query(community_id=cid), d / "cid.pcap")
        ends = {(f.src_ip, f.src_port), (f.dst_ip, f.dst_port)}
        proto = 6 if f.transport == "TCP" else 17
        want = [(ts, fr) for ts, fr in packets
                if (a := addrs(fr)) and {(a[0], a[2]), (a[1], a[3])} == ends and a[4] == proto]
        assert want and dpkt_read(res["path"]) == want, cid
        assert res["files_skipped"] > 0            # the indexes kept it from reading every file
    # the same through a store without indexes (a file being written is filtered packet by packet)
    f = picked[0]
    cid = for_event(f.transport, f.src_ip, f.src_port, f.dst_ip, f.dst_port)
    bare = d / "bare"
    bare.mkdir(exist_ok=True)
    for p in list_store(store):
        (bare / p.name).write_bytes(p.read_bytes())
    res = export(bare, Query(community_id=cid), d / "cid-bare.pcap")
    assert dpkt_read(res["path"]) == dpkt_read(export(store, Query(community_id=cid), d / "cid2.pcap")["path"])
    assert res["files_skipped"] == 0 and res["packets"] > 0
    for bad in ("1:abc", "2:" + cid[2:], cid + "x", "1:" + "A" * 27 + "=;", "1:" + "A" * 26 + "\n="):
        with pytest.raises(ExportError, match="community id"):
            export(store, Query(community_id=bad), d / "bad.pcap")


def test_export_as_pcapng_with_interface_and_comments(recorded):
    import shutil

    packets, store, flows, d = recorded
    f = next(x for x in flows if x.transport == "TCP" and x.phase == "start")
    plain = export(store, Query(flow_id=f.flow_id), d / "flow-plain.pcap")
    res = export(store, Query(flow_id=f.flow_id), d / "flow.pcapng", fmt="pcapng", iface="eth7")
    assert res["bytes"] == os.path.getsize(res["path"]) and res["packets"] == plain["packets"] > 5
    with open(res["path"], "rb") as fh:
        r = dpkt.pcapng.Reader(fh)
        got = [(round(ts, 6), bytes(buf)) for ts, buf in r]
        assert r.datalink() == 1
    assert got == dpkt_read(plain["path"])
    raw = Path(res["path"]).read_bytes()
    assert b"flowtarget export: flow_id=" + f.flow_id.encode() in raw            # the section's comment
    assert raw.count(b"flow_id=" + f.flow_id.encode()) == 1 + res["packets"]    # and each packet's
    assert b"eth7" in raw                                                          # the interface's name
    assert [(round(ts, 6), fr) for ts, fr in open_source(res["path"])] == got              # libpcap reads it
    if shutil.which("tcpdump"):
        out = subprocess.run(["tcpdump", "-nr", res["path"]], capture_output=True, text=True)
        assert out.returncode == 0 and len(out.stdout.splitlines()) == res["packets"], out.stderr
    with pytest.raises(ExportError, match="format"):
        export(store, Query(flow_id=f.flow_id), d / "x.bin", fmt="bin")
    # per source too, with a bound on the bytes written
    res = export(store, Query(since=T0, until=T0 + 100), d / "ng-per-source", per_source=True, fmt="pcapng",
                 max_bytes=40_000)
    assert res["files"] and all(p.endswith(".pcapng") for p in res["files"]) and res["truncated"]
    assert sum(os.path.getsize(p) for p in res["files"]) == res["bytes"] <= 40_000
    for p in res["files"]:
        with open(p, "rb") as fh:
            assert len(list(dpkt.pcapng.Reader(fh))) >= 1


def test_export_per_source_names_and_contents(recorded):
    packets, store, _flows, d = recorded
    out = d / "per-source"
    res = export(store, Query(since=T0, until=T0 + 400), out, per_source=True, iface="eth7/../x")
    names = sorted(Path(p).name for p in res["files"])
    assert names and all(n.startswith("eth7-..-x-") and "/" not in n for n in names)
    got = []
    for p in res["files"]:
        pk = dpkt_read(p)
        srcs = {addrs(f)[0] if addrs(f) else "non-ip" for _, f in pk}
        assert len(srcs) == 1 and safe(srcs.pop()) in Path(p).name
        got += pk
    want = [(ts, f) for ts, f in packets if T0 <= ts <= T0 + 400]
    assert sorted(got) == sorted(want)


def safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", s)


def test_aged_out_data_gives_nothing(tmp_path):
    old = traffic(n_flows=50, seed=5, t0=T0, span_s=100)
    new = [(ts + 10_000, fr) for ts, fr in traffic(n_flows=50, seed=6, t0=T0, span_s=100)]
    rec, _m, _ = record(old + new, tmp_path, max_age_s=3600, file_s=30.0)
    assert rec.files_aged_out > 0
    res = export(tmp_path, Query(until=T0 + 200), tmp_path / "old.pcap")
    assert res["packets"] == 0 and dpkt_read(res["path"]) == []
    res = export(tmp_path, Query(host="10.1.0.3"), tmp_path / "new.pcap")
    assert res["packets"] > 0 and all(ts >= T0 + 10_000 for ts, _ in dpkt_read(res["path"]))


def test_cutoff_keeps_the_first_bytes_of_every_flow(tmp_path):
    frames = traffic(n_flows=300, seed=7)
    cutoff = 2000
    rec, _m, _ = record(frames, tmp_path, cutoff_bytes=cutoff)
    kept = [r for p in list_store(tmp_path) for r in dpkt_read(p)]
    per_flow: dict = {}
    expect = []
    for ts, fr in frames:
        a = addrs(fr)
        if a is None:
            expect.append((ts, fr))
            continue
        k = (a[4], frozenset([(a[0], a[2]), (a[1], a[3])]))
        n = per_flow.get(k, 0)
        if n < cutoff:
            expect.append((ts, fr))
            per_flow[k] = n + len(fr)
    assert kept == expect
    assert rec.packets_cut == len(frames) - len(expect) > 0


def test_recorder_settings_need_a_bound():
    with pytest.raises(ValueError, match="FT_RECORD_MAX_BYTES"):
        CaptureSettings(record_dir="/tmp/x", record_max_bytes=0)
    assert CaptureSettings(record_dir="/tmp/x", record_max_bytes=0, record_max_age_s=60).record_max_age_s == 60
    # compose passes a blank FT_RECORD_DIR to turn recording off: that is off, not the working directory
    assert CaptureSettings(record_dir="").record_dir is None
    assert CaptureSettings(record_dir="  ").record_dir is None


def test_parse_time():
    assert parse_time("1700000000.5") == 1700000000.5
    assert parse_time("2023-11-14T22:13:20") == 1700000000.0
    assert parse_time("2023-11-14T23:13:20+01:00") == 1700000000.0
    with pytest.raises(ExportError):
        parse_time("yesterday")


def test_shards_write_their_own_files_and_exports_merge_them_in_time_order(tmp_path):
    frames = traffic(n_flows=300, seed=8)
    store = tmp_path / "store"
    parts: list[list] = [[], []]
    for ts, fr in frames:        # a symmetric flow hash, as the kernel's fanout does
        a = addrs(fr)
        parts[(a[2] + a[3]) % 2 if a else 0].append((ts, fr))
    recs = []
    for k in (0, 1):
        sink = ListSink()
        meter = FlowMeter(CaptureSettings(verdict_wait_s=0), sink, source="eth7")
        meter.set_source("eth7", 1)
        rec = Recorder(store, meter=meter, shard=k, shards=2, max_bytes=64 << 20, file_bytes=16 * 1024)
        sink.flow = rec.on_flow
        for i in range(0, len(parts[k]), 300):
            meter.process_batch(parts[k][i:i + 300])
            rec.record(parts[k][i:i + 300], 1)
        meter.finish()
        rec.close()
        recs.append(rec)
    names = [p.name for p in list_store(store)]
    assert any("-s0-" in n for n in names) and any("-s1-" in n for n in names)
    assert all(r.max_bytes == 32 << 20 and r.files_deleted == 0 for r in recs)   # each shard bounds its share
    res = export(store, Query(host="10.1.0.6"), tmp_path / "merged.pcap")
    want = [(ts, f) for ts, f in frames if (a := addrs(f)) and "10.1.0.6" in a[:2]]
    assert dpkt_read(res["path"]) == want and res["files_skipped"] > 0


def test_a_restarted_recorder_counts_the_files_it_left(tmp_path):
    frames = traffic(n_flows=400, seed=9)
    bound = 128 * 1024
    half = len(frames) // 2
    _r1, _m, sizes1 = record(frames[:half], tmp_path, max_bytes=bound)
    r2, _m, sizes2 = record(frames[half:], tmp_path, max_bytes=bound)   # a new process on the same store
    assert max(sizes1 + sizes2) <= bound
    assert r2.files_deleted > 0 and r2.seq > _r1.seq                  # continued the numbering, deleted old files


def test_an_unusable_record_dir_stops_capture_with_one_line():
    from services.capture.service import _make_recorder
    from shared.runner import ConfigError

    with pytest.raises(ConfigError, match="FT_RECORD_DIR"):
        _make_recorder(CaptureSettings(record_dir="/proc/no/such/dir"), None)


def test_a_truncated_index_makes_the_export_read_the_file_whole(tmp_path):
    frames = traffic(n_flows=200, seed=10)
    rec, _m, _ = record(frames, tmp_path, index_max_flows=2, file_bytes=32 * 1024)
    assert rec.index_truncated > 0
    idxs = [json.loads(p.with_name(p.name + IDX_SUFFIX).read_text()) for p in list_store(tmp_path)]
    assert any(i["truncated"] and not i["flows"] for i in idxs)
    res = export(tmp_path, Query(host="10.1.0.7"), tmp_path / "out.pcap")
    want = [(ts, f) for ts, f in frames if (a := addrs(f)) and "10.1.0.7" in a[:2]]
    assert dpkt_read(res["path"]) == want and want


def test_compiled_pcap_pack_equals_its_python_twin():
    from services.capture import recorder

    if recorder._c is None:
        pytest.skip("the compiled recorder step is not built (FT_PURE_PYTHON or no C compiler)")
    rnd = random.Random(12)
    recs = [(T0 + i * 0.3333337 + rnd.random() * 1e-6, os.urandom(rnd.choice([0, 1, 60, 1500, 9000]))) for i in range(400)]
    recs.append((T0 + 999.9999996, b"x" * 10))          # rounds up into the next second
    for start, room, until, max_rec in [(0, 1 << 30, float("inf"), 65536), (5, 20_000, T0 + 50, 65536),
                                        (0, 100_000, T0 + 1e9, 2000), (399, 100, T0, 65536), (0, 0, float("inf"), 65536),
                                        (400, 1 << 20, float("inf"), 65536)]:
        c = recorder._c.pcap_pack(recs, start, room, until, max_rec)
        py = recorder.pcap_pack_py(recs, start, room, until, max_rec)
        assert c == py, (start, room, until, max_rec)
    data, stop, _big, _last, npk = recorder.pcap_pack_py(recs, 0, 1 << 30, float("inf"), 65536)
    parsed = list(dpkt.pcap.Reader(io.BytesIO(recorder.pcap_header(1) + data)))
    assert len(parsed) == npk == len(recs) and parsed[-1][0] == pytest.approx(T0 + 1000.0)


def test_the_prefilter_changes_what_is_read_never_what_is_written(recorded, monkeypatch):
    """Exports with the substring/time prefilter equal exports that decode every packet read, for
    queries by host (v4, v6), port, a flow's 5-tuple, a time window and BPF; and it does skip records."""
    import services.capture.export as ex
    from services.capture.store_evidence import query_for_flow

    packets, store, flows, d = recorded
    f = next(x for x in flows if x.transport == "TCP" and x.phase == "start")
    queries = [Query(host="10.1.0.3"), Query(host="2001:db8::5"), Query(port=53), Query(port=8080, since=T0 + 100),
               Query(since=T0 + 1000, until=T0 + 1300), Query(host="10.1.0.4", bpf="tcp", until=T0 + 2000),
               query_for_flow("TCP", f.src_ip, f.src_port, f.dst_ip, f.dst_port, f.first_seen, None)]
    kept = []
    real = ex._prefilter
    for i, q in enumerate(queries):
        q.check()
        keep = real(q)
        with_pf = export(store, q, d / f"pf-{i}.pcap")
        monkeypatch.setattr(ex, "_prefilter", lambda _q: None)
        without = export(store, q, d / f"nopf-{i}.pcap")
        monkeypatch.setattr(ex, "_prefilter", real)
        assert with_pf["packets"] == without["packets"] > 0
        assert (d / f"pf-{i}.pcap").read_bytes() == (d / f"nopf-{i}.pcap").read_bytes()
        if keep is not None:
            kept.append(len(keep(packets)))
    assert kept and min(kept) < len(packets) // 4       # most records never reach the decoder


def test_index_summaries_follow_replaced_and_deleted_indexes(tmp_path):
    """The parsed indexes are cached by inode, mtime and size: an index replaced (the recorder renames
    each into place) or rewritten is read again, a deleted file drops out, and another store has its
    own entries."""
    import services.capture.export as ex
    from services.capture.export import select_files

    frames = traffic(n_flows=150, seed=12)
    store = tmp_path / "a"
    record(frames, store, file_bytes=32 * 1024)
    files = list_store(store)
    assert len(files) >= 4
    chosen, _ = select_files(store, Query(host="10.1.0.1"))
    p = chosen[0]
    ip = p.with_name(p.name + IDX_SUFFIX)
    idx = json.loads(ip.read_text())
    idx["hosts"] = ["192.0.2.77"]
    tmp = ip.with_name(ip.name + ".new")
    tmp.write_text(json.dumps(idx))
    os.replace(tmp, ip)                                     # a new inode, as the recorder writes it
    assert p in select_files(store, Query(host="192.0.2.77"))[0]
    assert p not in select_files(store, Query(host="10.1.0.1"))[0]
    idx["hosts"] = ["192.0.2.78", "192.0.2.79"]
    ip.write_text(json.dumps(idx))                          # rewritten in place (same inode): read again too
    assert p in select_files(store, Query(host="192.0.2.79"))[0]
    files[-1].unlink()
    files[-1].with_name(files[-1].name + IDX_SUFFIX).unlink()
    select_files(store, Query(host="10.1.0.1"))
    cached = ex._SUMMARIES[os.path.abspath(store)]
    assert files[-1].name + IDX_SUFFIX not in cached and len(cached) == len(files) - 1
    other = tmp_path / "b"
    record(traffic(n_flows=40, seed=13), other, file_bytes=32 * 1024)
    select_files(other, Query(host="10.1.0.1"))
    assert os.path.abspath(store) in ex._SUMMARIES and os.path.abspath(other) in ex._SUMMARIES


# ---------------------------------------------------------------- the writer (O_DIRECT where it is taken)
def _direct_taken(directory: Path) -> bool:
    """Whether this filesystem opens files with O_DIRECT (ext4 does; some tmpfs do not)."""
    probe = directory / "probe"
    probe.write_bytes(b"")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_DIRECT))
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


def _pieces(seed: int, n: int = 400) -> list[bytes]:
    rnd = random.Random(seed)
    return [os.urandom(rnd.choice([1, 15, 100, 1514, 4095, 4096, 4097, 9000, 70_000, 300_000])) for _ in range(n)]


def test_the_direct_writer_writes_exactly_the_bytes_and_a_sync_makes_them_readable(tmp_path):
    import mmap

    from services.capture import recorder as recmod

    buf = mmap.mmap(-1, recmod.BUF_BYTES, flags=mmap.MAP_PRIVATE)
    path = tmp_path / "f.pcap"
    w = recmod._Writer(path, buf)
    assert w.direct == _direct_taken(tmp_path)
    data = _pieces(1)
    for k, piece in enumerate(data):
        w.write(piece)
        if k == 150:                  # a barrier mid-file: everything so far is in the file
            w.sync()
            assert path.read_bytes() == b"".join(data[:151])
    w.sync()
    w.close()
    assert path.read_bytes() == b"".join(data)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    w2 = recmod._Writer(tmp_path / "g.pcap", buf)    # the buffer is the recorder's, reused file after file
    w2.write(b"x" * 5000)
    w2.close()
    assert (tmp_path / "g.pcap").read_bytes() == b"x" * 5000


@pytest.mark.parametrize("how", ["refused", "short"])
def test_a_direct_write_the_filesystem_refuses_falls_back_to_the_page_cache(tmp_path, monkeypatch, how):
    import errno
    import mmap

    from services.capture import recorder as recmod

    if not _direct_taken(tmp_path):
        pytest.fail("this test needs a filesystem that opens files with O_DIRECT (ext4, as CI's /tmp)")
    buf = mmap.mmap(-1, recmod.BUF_BYTES, flags=mmap.MAP_PRIVATE)
    path = tmp_path / "f.pcap"
    w = recmod._Writer(path, buf)
    data = _pieces(2)
    real = os.pwrite
    calls = {"direct": 0}

    def pwrite(fd, b, off):
        if fd == w.dfd:
            calls["direct"] += 1
            if calls["direct"] == 3:      # the third direct write fails
                if how == "refused":
                    raise OSError(errno.EINVAL, "Invalid argument")
                return real(fd, memoryview(b)[:4096], off)   # short: one block of it
        return real(fd, b, off)

    monkeypatch.setattr(recmod.os, "pwrite", pwrite)
    for piece in data:
        w.write(piece)
    w.close()
    assert calls["direct"] == 3 and not w.direct
    assert path.read_bytes() == b"".join(data)


@pytest.mark.parametrize("cutoff", [0, 3000])
def test_the_store_is_the_same_written_direct_or_through_the_page_cache_by_either_writer(tmp_path, cutoff):
    """The compiled writer (_recfast.Writer, where built: CI builds it) and the Python writer thread, each with
    O_DIRECT and without, write the same files byte for byte."""
    from services.capture import recorder as recmod

    frames = traffic(n_flows=300, seed=14, span_s=900)
    recs = {}
    for c_writer in (True, False):
        for direct in (True, False):
            name = f"{'c' if c_writer else 'py'}-{'direct' if direct else 'buffered'}"
            recs[name], _m, _ = record(frames, tmp_path / name, file_s=120.0, cutoff_bytes=cutoff, direct_io=direct,
                                       c_writer=c_writer)
    built = recmod._c is not None and hasattr(recmod._c, "Writer")
    assert recs["c-direct"]._use_c == built and not recs["py-direct"]._use_c
    for name, rec in recs.items():
        want_direct = rec.files_written if name.endswith("-direct") and _direct_taken(tmp_path) else 0
        assert rec.stats()["files_direct"] == want_direct, name
        assert rec.write_errors == 0 and rec.packets_written == recs["py-buffered"].packets_written > 0
    ref = list_store(tmp_path / "py-buffered")
    assert len(ref) >= 5
    for name in recs:
        got = list_store(tmp_path / name)
        assert [p.name for p in got] == [p.name for p in ref], name
        for p, q in zip(got, ref):
            assert p.read_bytes() == q.read_bytes(), (name, p.name)
            assert stat.S_IMODE(p.stat().st_mode) == 0o640


@pytest.mark.parametrize("c_writer", [True, False])
def test_a_store_whose_directory_vanishes_counts_write_errors_and_capture_goes_on(tmp_path, c_writer):
    import shutil

    frames = traffic(n_flows=200, seed=15, span_s=600)
    store = tmp_path / "store"
    sink = ListSink()
    meter = FlowMeter(CaptureSettings(verdict_wait_s=0), sink, source="eth7")
    meter.set_source("eth7", 1)
    rec = Recorder(store, meter=meter, file_s=60.0, c_writer=c_writer)
    sink.flow = rec.on_flow
    half = len(frames) // 2
    for i in range(0, len(frames), 256):
        part = frames[i:i + 256]
        if i <= half < i + 256:
            rec.flush()
            shutil.rmtree(store)          # the disk went away under the recorder
        meter.process_batch(part)
        rec.record(part, 1)
        rec.tick(part[-1][0])
    rec.close()
    meter.finish()
    st = rec.stats()
    assert st["write_errors"] > 0 and rec.packets_written == len(frames)   # counted as handed over, none lost in capture
    assert st["rotations"] > 5 and not store.exists()


def test_a_restart_reads_each_index_s_last_time_from_its_head(tmp_path):
    from services.capture import recorder as recmod

    hostile = tmp_path / "a.idx.json"
    # a source name cannot fake the key: JSON escapes its quotes
    hostile.write_bytes(recmod._dumps({"version": 1, "source": 'x","last_ts":5,"y":"', "first_ts": 1.5,
                                       "last_ts": 1700000123.25, "hosts": ["10.0.0.1"] * 2000}))
    assert recmod._index_last_ts(hostile) == 1700000123.25
    late = tmp_path / "b.idx.json"       # a key past the head: the whole file is parsed
    late.write_bytes(b'{"hosts": [' + b'"10.0.0.1",' * 1000 + b'"x"], "last_ts": 7.5}')
    assert recmod._index_last_ts(late) == 7.5
    bad = tmp_path / "c.idx.json"
    bad.write_bytes(b"{not json")
    assert recmod._index_last_ts(bad) is None and recmod._index_last_ts(tmp_path / "missing") is None


def test_the_compiled_writer_in_order_readable_after_sync_and_held_between_operations(tmp_path):
    from services.capture import recorder as recmod

    if recmod._c is None or not hasattr(recmod._c, "Writer"):
        pytest.fail("services.capture._recfast is not built (CI builds it: pip install -e .)")
    cw = recmod._c.Writer(direct=True, buf_bytes=1 << 20, flush_bytes=512 << 10, queue_bytes=4 << 20)
    path = tmp_path / "w.pcap"
    data = _pieces(3, 120)
    cw.open(str(path), data[0])
    for k in range(1, len(data)):
        cw.write(data[k] if k % 2 else [data[k]])     # bytes or a list of them
        if k == 60:
            assert cw.wait(cw.sync(), 10)
            assert path.read_bytes() == b"".join(data[:61])    # the direct buffer's partial block too
    cw.hold()                                          # stopped: what is queued now waits
    seq = cw.close_file()
    idx = tmp_path / "w.idx.json"
    cw.index(str(idx), str(tmp_path / "w.idx.json.tmp"), b'{"x": 1}')
    last = cw.unlink(str(tmp_path / "missing"))        # no error
    assert not cw.wait(seq, 0.2) and not idx.exists()
    cw.release()
    assert cw.wait(last, 10)
    assert path.read_bytes() == b"".join(data) and idx.read_bytes() == b'{"x": 1}'
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and stat.S_IMODE(idx.stat().st_mode) == 0o640
    errors, direct, _last_error, done = cw.stats()
    assert errors == 0 and direct == (1 if _direct_taken(tmp_path) else 0) and done == last
    cw.open(str(tmp_path / "no" / "such" / "dir.pcap"), b"h")
    cw.write(b"x" * 10)
    cw.shutdown()
    errors, _d, last_error, _done = cw.stats()
    assert errors == 2 and last_error.startswith("write")   # the open (no such directory), then the write to no file
    with pytest.raises(RuntimeError):
        cw.write(b"after")


def test_pcap_heads_gives_pcap_pack_s_records_split_in_headers_and_frames():
    from services.capture import recorder as recmod

    if recmod._c is None:
        pytest.fail("services.capture._recfast is not built (CI builds it: pip install -e .)")
    recs = [(T0 + k * 0.001, fr) for k, (_ts, fr) in enumerate(traffic(n_flows=40, seed=16))]
    recs[5] = (recs[5][0], b"\x00" * 70_000)                 # too big for max_rec: skipped by both
    for start, room, until, cut in ((0, 1 << 30, float("inf"), 0), (3, 50_000, T0 + 0.2, 0), (0, 1 << 30, T0 + 9, 128)):
        data, stop, big, last, npk = recmod._c.pcap_pack(recs, start, room, until, 65_536, cut, 1)
        heads, frames, nb, stop2, big2, last2, npk2 = recmod._c.pcap_heads(recs, start, room, until, 65_536, cut, 1)
        assert (stop, big, last, npk) == (stop2, big2, last2, npk2) and npk == len(frames) > 0
        assert nb == len(data) and b"".join(heads[16 * k:16 * k + 16] + f for k, f in enumerate(frames)) == data


def test_a_process_forked_after_the_writer_started_gets_its_own_and_never_waits_on_the_parent_s(tmp_path):
    """A fork copies the compiled writer but not its thread (nor a free mutex): the child must neither join
    nor lock it, and records into a writer of its own."""
    frames = traffic(n_flows=60, seed=17, span_s=120)
    sink = ListSink()
    meter = FlowMeter(CaptureSettings(verdict_wait_s=0), sink, source="eth7")
    meter.set_source("eth7", 1)
    rec = Recorder(tmp_path / "store", meter=meter, file_s=30.0)
    sink.flow = rec.on_flow
    half = len(frames) // 2
    meter.process_batch(frames[:half])
    rec.record(frames[:half], 1)
    pid = os.fork()
    if pid == 0:           # the child: its own writer, then out without the interpreter's teardown
        code = 1
        try:
            rec.record(frames[half:], 1)
            rec.barrier().wait(10)
            rec.close()
            code = 0 if rec._cw is None else 3
            # the file it was writing is its parent's: the writes to it fail in its own writer, counted
            code = code or (0 if rec.stats()["write_errors"] > 0 else 4)
        finally:
            os._exit(code)
    deadline = 100
    while deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        deadline -= 1
        threading.Event().wait(0.1)
    else:
        os.kill(pid, 9)
        pytest.fail("the forked child hung on its parent's writer")
    assert os.waitstatus_to_exitcode(status) == 0
    rec.record(frames[half:], 1)       # the parent goes on with its own
    rec.close()
    assert rec.write_errors == 0 and rec.packets_written == len(frames)


def test_a_recorder_closed_and_used_again_keeps_counting_from_a_new_writer(tmp_path):
    frames = traffic(n_flows=80, seed=18, span_s=300)
    half = len(frames) // 2
    sink = ListSink()
    meter = FlowMeter(CaptureSettings(verdict_wait_s=0), sink, source="eth7")
    meter.set_source("eth7", 1)
    rec = Recorder(tmp_path / "store", meter=meter, file_s=60.0)
    for part in (frames[:half], frames[half:]):
        meter.process_batch(part)
        rec.record(part, 1)
        rec.close()                          # the writer (thread) ends; the next batch starts another
        n = rec.stats()["files_direct"]
        assert n == (rec.files_written if _direct_taken(tmp_path) else 0)
    shutil_rm = __import__("shutil").rmtree
    shutil_rm(tmp_path / "store")
    rec.record(frames[:50], 1)               # the store's directory is gone: the new writer's errors count
    rec.close()
    assert rec.stats()["write_errors"] > 0 and rec.packets_written == len(frames) + 50
