"""Original lengths of cut frames in the pcaps capture writes.

A frame cut by the capture's snap length, or to an evidence ring's share, used to be written with its
cut length as its original length: a reader saw a malformed packet (an IP header claiming more than the
frame holds), not one "limited during capture".  Evidence pcaps, ``ft.ctl`` recordings, the packet
store and its exports now give such a frame the length its IP header gives (``evidence.wire_len``, and
its compiled twin in ``_recfast``); a frame shorter than the cut length keeps its own length, also when
its IP header claims more (that one is malformed, and stays so).
"""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.capture.evidence import wire_len
from services.capture.flows import FlowMeter, ListSink
from services.capture.recorder import pcap_pack_py
from shared.settings import CaptureSettings

_recfast = pytest.importorskip("services.capture._recfast")
ROOT = Path(__file__).resolve().parents[3]
MACS = b"\x02" * 6 + b"\x04" * 6


def ip4(payload_len: int, proto: int = 17, src: int = 0x0A000001, dst: int = 0x0A000002) -> bytes:
    body = struct.pack("!HHHH", 5000, 6000, 8 + payload_len, 0) + bytes(i & 0xFF for i in range(payload_len))
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 64, proto, 0, struct.pack("!I", src),
                       struct.pack("!I", dst)) + body


def ip6(payload_len: int) -> bytes:
    body = struct.pack("!HHHH", 5000, 6000, 8 + payload_len, 0) + b"x" * payload_len
    return struct.pack("!IHBB", 6 << 28, len(body), 17, 64) + b"\x20\x01\x0d\xb8" + b"\0" * 11 + b"\x01" \
        + b"\x20\x01\x0d\xb8" + b"\0" * 11 + b"\x02" + body


# (link type, whole frame) for each link header wire_len reads
WHOLE = {
    "ethernet": (1, MACS + b"\x08\x00" + ip4(1400)),
    "802.1q": (1, MACS + b"\x81\x00\x00\x05\x08\x00" + ip4(1400)),
    "qinq": (1, MACS + b"\x88\xa8\x00\x07\x81\x00\x00\x05\x86\xdd" + ip6(1400)),
    "ethernet-ipv6": (1, MACS + b"\x86\xdd" + ip6(9000)),
    "raw": (101, ip4(3000)),
    "raw-ipv6": (229, ip6(3000)),
    "linux-cooked": (113, b"\0\0\0\x01\0\x06" + b"\x02" * 6 + b"\0\0" + b"\x08\x00" + ip4(1400)),
    "linux-cooked-v2": (276, b"\x86\xdd\0\0" + b"\0\0\0\x02\0\x01\0\x06" + b"\x02" * 6 + b"\0\0" + ip6(1400)),
    "loopback": (0, struct.pack("<I", 2) + ip4(1400)),
}


@pytest.mark.parametrize("name", sorted(WHOLE))
@pytest.mark.parametrize("cut", [64, 96, 1000])
def test_a_cut_frame_gets_its_whole_length(name, cut):
    dlt, whole = WHOLE[name]
    fr = whole[:cut]
    assert wire_len(fr, dlt, cut) == len(whole)
    assert _recfast.wire_len(fr, dlt, cut) == len(whole)
    # a frame below the cut length was not cut: its own length
    assert wire_len(whole, dlt, len(whole) + 1) == len(whole)
    assert wire_len(fr, dlt, cut + 1) == cut
    assert wire_len(fr, dlt, 0) == cut            # 0: the source never cuts
    assert wire_len(whole, dlt, 64) == len(whole)  # whole frames stay as they are


def test_frames_that_were_not_cut_keep_their_length():
    arp = MACS + b"\x08\x06" + b"\0" * 100
    short = MACS + b"\x08\x00" + ip4(1400)[:80]      # an IP header claiming 1,428 bytes in an 94-byte frame
    jumbo = MACS + b"\x86\xdd" + struct.pack("!IHBB", 6 << 28, 0, 0, 64) + b"\0" * 80   # length in a hop-by-hop header
    pppoe = MACS + b"\x88\x64" + b"\x11\0\0\x01\x05\xdc\x00\x21" + ip4(1400)[:80]
    padded = MACS + b"\x08\x00" + ip4(4) + b"\0" * 14  # Ethernet padding: the frame holds more than its IP packet
    for fr in (arp, jumbo, pppoe, padded):
        assert wire_len(fr, 1, 64) == len(fr) == _recfast.wire_len(fr, 1, 64)
    assert wire_len(short, 1, 120) == len(short)     # shorter than the snap length: not cut, malformed
    assert wire_len(short, 1, 94) == 14 + 1428
    assert wire_len(b"\x45\0", 101, 1) == 2 and wire_len(MACS, 1, 1) == 12   # too short to tell
    assert wire_len(whole_of("ethernet")[:96], 147, 96) == 96                  # a link type it does not read


def whole_of(name: str) -> bytes:
    return WHOLE[name][1]


headers = st.sampled_from([b"", MACS + b"\x08\x00", MACS + b"\x86\xdd", MACS + b"\x81\x00\x00\x01\x08\x00",
                           MACS + b"\x88\xa8\x00\x01\x81\x00\x00\x02\x81\x00\x00\x03\x91\x00\x00\x04\x86\xdd",
                           b"\0" * 14 + b"\x08\x00", b"\x86\xdd" + b"\0" * 18, struct.pack("<I", 2)])


@settings(max_examples=500, deadline=None)
@given(headers, st.binary(max_size=120), st.sampled_from([0, 1, 12, 14, 101, 108, 113, 147, 228, 229, 276]),
       st.integers(0, 200))
def test_the_compiled_twin_gives_the_same_lengths(head, rest, dlt, cut):
    fr = head + rest
    n = wire_len(fr, dlt, cut)
    assert _recfast.wire_len(fr, dlt, cut) == n
    assert n >= len(fr) and (n == len(fr) or len(fr) >= cut > 0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(1e9, 2e9), st.sampled_from(sorted(WHOLE)), st.integers(40, 2000)), max_size=30),
       st.sampled_from([0, 64, 96, 1500]))
def test_the_recorder_s_records_carry_the_original_lengths(pk, cut):
    recs = [(ts, WHOLE[name][1][:n]) for ts, name, n in pk]
    dlts = {WHOLE[name][0] for _ts, name, _n in pk}
    dlt = dlts.pop() if len(dlts) == 1 else 1
    got = pcap_pack_py(recs, 0, 1 << 30, 3e9, 1 << 30, cut, dlt)
    assert _recfast.pcap_pack(recs, 0, 1 << 30, 3e9, 1 << 30, cut, dlt) == got
    assert _recfast.pcap_pack(recs, 0, 1 << 30, 3e9, 1 << 30) == pcap_pack_py(recs, 0, 1 << 30, 3e9, 1 << 30)
    data, pos = got[0], 0
    for _ts, fr in recs:
        cap, orig = struct.unpack_from("<II", data, pos + 8)
        assert cap == len(fr) and orig == wire_len(fr, dlt, cut)
        pos += 16 + cap


def records(path: Path) -> tuple[int, list[tuple[int, int, bytes]]]:
    """(snap length, [(captured length, original length, frame)]) of a little-endian microsecond pcap."""
    data = path.read_bytes()
    assert struct.unpack_from("<I", data)[0] == 0xA1B2C3D4
    snap = struct.unpack_from("<I", data, 16)[0]
    out, pos = [], 24
    while pos < len(data):
        cap, orig = struct.unpack_from("<II", data, pos + 8)
        out.append((cap, orig, data[pos + 16:pos + 16 + cap]))
        pos += 16 + cap
    return snap, out


def udp_flow(k: int, size: int) -> bytes:
    return MACS + b"\x08\x00" + ip4(size, src=0x0A000001, dst=0x0A000002 + 0 * k)


def test_evidence_of_frames_cut_to_the_ring_s_share_or_by_the_snap_length(tmp_path):
    # 1 MiB over the rings: each ring's share is 256 bytes, so it keeps the last 1,442-byte frame cut to it
    m = FlowMeter(CaptureSettings(verdict_wait_s=0, evidence_memory_mb=1), ListSink(), source="t")
    m.set_source("t", 1)
    frames = [(1.7e9 + k, udp_flow(k, 1400)) for k in range(5)]
    m.process_batch(frames, 1)
    (f, _fwd), = {id(v[0]): v for v in m.table.values()}.values()
    snap, got = records(Path(m.write_evidence(f.flow_id, str(tmp_path / "a"))))
    assert [(c, o) for c, o, _fr in got] == [(256, 1442)] and got[0][2] == frames[-1][1][:256]
    assert snap >= 256

    # a source that cut its frames at 128 bytes (the snap length it gives set_source)
    m = FlowMeter(CaptureSettings(verdict_wait_s=0), ListSink(), source="t")
    m.set_source("t", 1, 128)
    m.process_batch([(ts, fr[:128]) for ts, fr in frames] + [(1.7e9 + 9, udp_flow(9, 20))], 1)
    (f, _fwd), = {id(v[0]): v for v in m.table.values()}.values()
    snap, got = records(Path(m.write_evidence(f.flow_id, str(tmp_path / "b"))))
    assert snap == 128 and [(c, o) for c, o, _fr in got] == [(128, 1442)] * 5 + [(62, 62)]

    # the ring's file that comes first when the incident's evidence is cut from the packet store
    from services.capture.evidence import EvidenceLimits
    from services.capture.store_evidence import StoreEvidence

    st = CaptureSettings(record_dir=tmp_path / "store", evidence_dir=tmp_path / "ev")
    se = StoreEvidence(st, None, EvidenceLimits.from_settings(st), m)
    try:
        se._write_ring(tmp_path / "ring.pcap", f.flow_id)
    finally:
        se.close()
    assert [(c, o) for c, o, _fr in records(tmp_path / "ring.pcap")[1]] == [(128, 1442)] * 5 + [(62, 62)]

    # an ft.ctl recording of the same source
    rec = m.start_recording("", 60.0, str(tmp_path / "c"))
    m.process_batch([(1.7e9 + 10, frames[0][1][:128]), (1.7e9 + 11, udp_flow(0, 30))], 1)
    (done,) = m.finished_recordings(force=True)
    assert [(c, o) for c, o, _fr in records(Path(done.path))[1]] == [(128, 1442), (72, 72)]
    assert rec is done

    # a recording that started before the source turned out to cut its frames (a file whose header does
    # not say its snap length): the replay tells the meter, which tells the recordings running
    m = FlowMeter(CaptureSettings(verdict_wait_s=0), ListSink(), source="t")
    m.set_source("t", 1, 0)
    rec = m.start_recording("", 60.0, str(tmp_path / "d"))
    m.process_batch([(1.7e9, frames[0][1][:128])], 1)
    m.set_cut_at(128)
    m.process_batch([(1.7e9 + 1, frames[1][1][:128])], 1)
    (done,) = m.finished_recordings(force=True)
    assert [(c, o) for c, o, _fr in records(Path(done.path))[1]] == [(128, 128), (128, 1442)]


def write_cut_pcap(path: Path, frames: list[tuple[float, bytes]], snap: int, header_snap: int = 0,
                   fmt: str = "pcap") -> Path:
    """A capture as tcpdump -s SNAP writes it: frames cut to the snap length, their original length kept;
    its header says ``header_snap`` (default: the snap length), as some tools' files do not."""
    from services.capture.export import pcapng_header, pcapng_packet

    hs = header_snap if header_snap >= 0 else snap
    with open(path, "wb") as fh:
        if fmt == "pcapng":
            fh.write(pcapng_header(1, snaplen=hs))
        else:
            fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, hs, 1))
        for ts, fr in frames:
            if fmt == "pcapng":
                fh.write(pcapng_packet(ts, fr[:snap], olen=len(fr)))
                continue
            sec, us = divmod(int(round(ts * 1e6)), 1000000)
            fh.write(struct.pack("<IIII", sec, us, min(len(fr), snap), len(fr)) + fr[:snap])
    return path


@pytest.mark.parametrize("fmt,header_snap", [("pcap", -1), ("pcap", 262144), ("pcapng", 0)])
def test_a_replay_of_cut_frames_recorded_and_exported_keeps_their_original_lengths(nats_server, tmp_path, fmt,
                                                                                   header_snap):
    """A file captured with a snap length of 128, replayed by the capture service (real nats-server) with
    the packet recorder on: the store and `flowtarget pcap` give every frame its original length.  Also
    when the file's header does not say the snap length (262,144 in a pcap, none in a pcapng): the
    records that hold less than their packet tell it."""
    from services.capture import service
    from shared.bus import Bus

    t0 = 1.7e9
    frames = []
    for k in range(40):
        size = 50 + 97 * k                        # 104- to 3,879-byte frames: both sides of the snap length
        frames.append((t0 + k * 0.01, MACS + b"\x08\x00" + ip4(size, src=0x0A000001 + k % 3)))
        frames.append((t0 + k * 0.01 + 0.001, MACS + b"\x86\xdd" + ip6(size)))
    src = write_cut_pcap(tmp_path / f"cut.{fmt}", frames, 128, header_snap, fmt)
    store = tmp_path / "store"

    async def main() -> None:
        s = CaptureSettings(nats_url=nats_server.url, probe="cut", pcap=[src], verdict_wait_s=0,
                            replay_max_pending=0, stream_storage="memory", record_dir=store,
                            record_max_bytes=4 << 20, record_file_bytes=4096)
        stop = asyncio.Event()
        bus = await Bus.connect(s, "capture", stop)
        await service.main(s, bus, stop)
        await bus.close()

    asyncio.run(main())
    want = [(min(len(fr), 128), len(fr), fr[:128]) for _ts, fr in frames]
    stored = []
    from services.capture.recorder import list_store
    files = list_store(store)
    assert len(files) > 2
    for p in files:
        snap, got = records(p)
        assert snap == 128
        stored += got
    assert stored == want
    out = tmp_path / "out.pcap"
    r = subprocess.run([sys.executable, "-m", "flowtarget", "pcap", "--dir", str(store), "--host", "10.0.0.2",
                        "-o", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert records(out)[1] == want[0::2]
    # what a reader makes of it: dpkt reads every exported frame (its IP header intact)
    with open(out, "rb") as fh:
        assert len(list(dpkt.pcap.Reader(fh))) == 40
    r = subprocess.run([sys.executable, "-m", "flowtarget", "pcap", "--dir", str(store), "--host", "2001:db8::2",
                        "--format", "pcapng", "-o", str(tmp_path / "out.pcapng")], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    ng = (tmp_path / "out.pcapng").read_bytes()
    pos, epb = 0, []
    while pos < len(ng):
        btype, blen = struct.unpack_from("<II", ng, pos)
        if btype == 6:
            epb.append(struct.unpack_from("<II", ng, pos + 20))
        pos += blen
    assert epb == [(c, o) for c, o, _fr in want[1::2]]


def tcp_frame(seq: int, flags: int, payload: bytes, v6: bool = False, vlan: bool = False) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, 80, seq & 0xFFFFFFFF, 7, 5 << 4, flags, 65535, 0, 0) + payload
    if v6:
        ip = struct.pack("!IHBB", 6 << 28, len(tcp), 6, 64) + b"\x20\x01\x0d\xb8" + b"\0" * 11 + b"\x01" \
            + b"\x20\x01\x0d\xb8" + b"\0" * 11 + b"\x02" + tcp
    else:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, b"\x0a\0\0\x01", b"\x0a\0\0\x02") + tcp
    return MACS + (b"\x81\x00\x00\x09" if vlan else b"") + (b"\x86\xdd" if v6 else b"\x08\x00") + ip


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("shape", ["plain", "vlan-ipv6"])
def test_segments_cut_by_the_snap_length_keep_the_stream_s_sequence(compiled, shape, monkeypatch):
    """A capture with a snap length of 128 (or GRO's large frames under the default one) cuts every data
    segment.  The sender's next sequence number (what block's resets and pages take) is past the whole
    segment, not past the bytes the frame holds: a reset at the cut point lands inside the data, and the
    receiver answers it with a challenge ACK instead of closing.  The next segment continues the stream:
    the sample takes it at once, holding nothing back as if it came after a gap."""
    from services.capture import flows

    if not compiled:
        monkeypatch.setattr(flows, "_run", None)
    v6 = vlan = shape == "vlan-ipv6"
    m = FlowMeter(CaptureSettings(verdict_wait_s=0), ListSink(), source="t")
    m.set_source("t", 1, 128)
    m.defer_samples = True
    isn, size = 1000, 700
    segs = [tcp_frame(isn, 0x02, b"", v6, vlan)] + [
        tcp_frame(isn + 1 + k * size, 0x18, bytes([65 + k]) * size, v6, vlan) for k in range(4)]
    m.process_batch([(1.7e9 + k * 0.01, fr[:128]) for k, fr in enumerate(segs)], 1)
    m.flush_samples()
    s = m.sink.samples[-1]
    held = [(f.sd.ooo or {}) for f, fwd in m.table.values() if fwd and f.sd is not None]
    assert held == [{}]
    assert s.src2dst_next_seq == isn + 1 + 4 * size
    head = 128 - (len(segs[1]) - size)
    assert s.src_payloads == [bytes([65 + k]) * head for k in range(4)]
