"""The compiled meter loop (services/capture/_meter.c) and the pure-Python meter give identical results.

The same captures go through FlowMeter twice in one process: once with the
compiled loop, once with it switched off (``flows._run = None``: every record
through ``_process_py``, the reference).  Flow records, samples, packet
events, the meter's counters and the evidence rings must be equal, with
verdicts fed back (a final verdict for a third of the sampled flows) so that
stopped sampling is exercised too.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.capture import _meter, fastpath, flows
from services.capture.flows import FlowMeter, ListSink, PortTable
from services.capture.sources import CaptureFileError, FileSource
from shared.models import FlowRecord, FlowSample, HttpInfo, PacketEvent, TlsInfo, Verdict, batch_json
from shared.settings import CaptureSettings
from tests.conftest import CORPUS, SAMPLE_PCAP, need_corpus

pytestmark = pytest.mark.skipif(flows._run is None, reason="the compiled meter loop is not built (or FT_PURE_PYTHON=1)")


class VerdictSink(ListSink):
    """A sink that also takes the best verdict handed over with a classified flow's end record."""

    def __init__(self) -> None:
        super().__init__()
        self.verdicts: list = []

    def flow_verdict(self, v: Verdict) -> None:
        self.verdicts.append(v)


def port_guess(transport: str, sport: int, dport: int):
    """A port-guess hook with every kind of answer: a name, one to cut to 64 characters, none, a non-text,
    an exception (counted as port_guess_errors)."""
    k = (sport % 10) if dport != 53 else zlib.crc32(b"%d" % sport) % 5
    if k == 0:
        return transport.upper()
    if k == 1:
        return "P" * 70
    if k == 2:
        raise ValueError("a hook's bug")
    if k == 3:
        return 7
    return ""


#: samples the last run's sink took as their JSON (raw_samples)
RAW_SAMPLES = [0]
#: ... hot records
RAW_HOT = [0]
#: ... DNS and ARP packet events
RAW_PACKETS = [0]
#: packet events FlowMeter._dns and _non_ip made in the last compiled run (the rest: the loop wrote them as JSON)
PY_EVENTS = [0]


def as_sample(s: FlowSample | bytes) -> FlowSample:
    return FlowSample.model_validate_json(s) if type(s) is bytes else s


def as_record(r: FlowRecord | bytes) -> FlowRecord:
    return FlowRecord.model_validate_json(r) if type(r) is bytes else r


def as_packet(p: PacketEvent | bytes) -> PacketEvent:
    return PacketEvent.model_validate_json(p) if type(p) is bytes else p


#: flows the compiled loops (_meter.expire: closed, idle, at finish every one) ended in the last compiled run
C_ENDED = [0]


def meter(batches: list[tuple[int, list]], compiled: bool, monkeypatch: pytest.MonkeyPatch, vwait: float = 0,
          ev_mb: float = 128.0, raw: bool = False, flows_only: bool = False, guess: Any = port_guess,
          raw_samples: bool = False, raw_hot: bool = False) -> list:
    with monkeypatch.context() as mp:
        if compiled:
            PY_EVENTS[0] = 0
            for name in ("_dns", "_non_ip"):
                def counted(self, *a, _real=getattr(FlowMeter, name)):
                    n = len(self.sink.packets)
                    _real(self, *a)
                    PY_EVENTS[0] += len(self.sink.packets) - n

                mp.setattr(FlowMeter, name, counted)
        if not compiled:
            mp.setattr(flows, "_run", None)
            mp.setattr(flows, "_crecord", None)   # flow records built by FlowMeter._record's Python too
            mp.setattr(flows, "_csample", None)   # and samples built by FlowMeter._sample_event's
        elif flows._cexpire is not None:
            ended0 = _meter.ended_in_c()   # flows _meter.expire ended (called, or in the loop's housekeeping)
        # vwait > 0: ended flows with verdicts outstanding wait in closing (until flush_closing), and the
        # sink takes the best verdicts; a third of the sampled flows get a final verdict, a third one that
        # is not final, a third none
        sink = VerdictSink() if vwait else ListSink()
        if raw:   # the meter may put start and end records into sink.flows as their JSON, as capture's outbox
            sink.raw_records = sink.raw_live = sink.flows
        if raw_samples:   # ... and samples into sink.samples as their JSON, DNS/ARP packet events into sink.packets
            sink.raw_samples = sink.samples
            sink.raw_packets = sink.packets
        if raw_hot:   # ... and hot records into sink.hot_records
            sink.raw_hot = sink.hot_records
        m = FlowMeter(CaptureSettings(verdict_wait_s=vwait, evidence_packets=4, evidence_memory_mb=ev_mb), sink,
                      source="twin")
        m._prefix = "twin"
        m.port_guess = guess
        m.defer_samples = True
        m.record_cutoff = 3000   # the packet recorder's keep marks (FT_RECORD_CUTOFF_BYTES), compared too
        seen = 0
        marks = bytearray()
        clock = []   # the meter's clock after each batch (the loop's housekeeping sets it at the batch's end)
        for source, dlt, recs in batches:
            if source is not None:
                if m.table:
                    m.finish()
                m.set_source(source, dlt)
            # the compiled loop takes a file's raw batches (fastpath.RawBatch) as they come, the Python meter lists
            m.process_batch(recs if compiled else list(recs), dlt)
            clock.append((m._now, m._next_house, m._prev_ts))
            keep = m.take_keep()
            assert len(keep) == len(recs)
            marks += keep
            m.flush_samples()
            for s in sink.samples[seen:]:
                s = as_sample(s)
                third = zlib.crc32(s.flow_id.encode()) % 3
                if s.seq_no == 0 and third == 0:
                    m.on_verdict(Verdict(timestamp=s.timestamp, probe=s.probe, flow_id=s.flow_id, sample_seq_no=0,
                                         final=True, app_protocol="TLS", confidence="dpi", tls=TlsInfo(sni="a.example")))
                elif vwait and third == 1:
                    m.on_verdict(Verdict(timestamp=s.timestamp, probe=s.probe, flow_id=s.flow_id,
                                         sample_seq_no=s.seq_no, final=False, app_protocol="HTTP", confidence="dpi",
                                         http=HttpInfo(host="a.example")))
            seen = len(sink.samples)
        m.finish()
        m.flush_closing()
        if compiled and flows._cexpire is not None:
            C_ENDED[0] = _meter.ended_in_c() - ended0
        if flows_only:
            return sink.flows
        rings = {fid: m.evidence(fid) for fid in list(m._recent_ev)}
        RAW_SAMPLES[0] = sum(type(s) is bytes for s in sink.samples)
        RAW_HOT[0] = sum(type(r) is bytes for r in sink.hot_records)
        RAW_PACKETS[0] = sum(type(p) is bytes for p in sink.packets)
        return [
            [r.model_dump() for r in sink.flows],
            [as_sample(s).model_dump() for s in sink.samples],
            [as_packet(p).model_dump() for p in sink.packets],
            m.stats(),
            rings,
            bytes(marks),
            [orjson.dumps(r.__dict__) for r in sink.flows],   # the documents batch_json writes, byte for byte
            [batch_json([s]) for s in sink.samples],
            [v.model_dump() for v in getattr(sink, "verdicts", [])],
            [as_record(r).model_dump() for r in sink.hot_records],
            [batch_json([r]) for r in sink.hot_records],
            [batch_json([p]) for p in sink.packets],
            clock,
        ]


def batches_of(paths: list[Path], chunk: int = 256) -> list[tuple]:
    out: list[tuple] = []
    for p in paths:
        try:
            src = FileSource(p)
        except CaptureFileError:
            continue
        first = True
        for dlt, recs in src.batches(chunk):
            out.append((src.name if first else None, dlt, recs))
            if first:
                first = False
    return out


def assert_twins(batches: list, monkeypatch: pytest.MonkeyPatch, vwait: float = 0, ev_mb: float = 128.0,
                 guess: Any = port_guess, raw_samples: bool = False, raw_hot: bool = False) -> list:
    a = meter(batches, True, monkeypatch, vwait, ev_mb, guess=guess, raw_samples=raw_samples, raw_hot=raw_hot)
    raw_a, hot_a, pk_a = RAW_SAMPLES[0], RAW_HOT[0], RAW_PACKETS[0]
    b = meter(batches, False, monkeypatch, vwait, ev_mb, guess=guess, raw_samples=raw_samples, raw_hot=raw_hot)
    assert RAW_SAMPLES[0] == RAW_HOT[0] == RAW_PACKETS[0] == 0   # the pure-Python meter writes no JSON
    if raw_samples and flows._cemit is not None:
        assert raw_a == len(a[1]) > 0   # the compiled one wrote every sample as JSON
        # ... and the packet events of the DNS messages and ARP packets its loop metered (not those of
        # _process_py's packets)
        assert pk_a == len(a[2]) - PY_EVENTS[0] and (pk_a > 0 or not a[2])
    if raw_hot and flows._crecord_out is not None:
        assert hot_a == len(a[9])   # ... and every hot record
    names = ("flow records", "samples", "packet events", "stats", "evidence rings", "recorder keep marks",
             "flow records' documents", "samples' documents", "verdicts handed over", "hot records",
             "hot records' documents", "packet events' documents", "the meter's clock after each batch")
    for name, x, y in zip(names, a, b):
        if isinstance(x, list):
            assert len(x) == len(y), name
            for i, (u, v) in enumerate(zip(x, y)):
                assert u == v, f"{name}[{i}] differs"
        else:
            assert x == y, name
    assert a[0] and a[3]["packets"] > 0
    assert len(a) == len(names)
    return a


@pytest.mark.parametrize("raw_samples", [False, True])
def test_sample_capture_meters_the_same(raw_samples, monkeypatch):
    """raw_samples: the sink takes samples and hot records as their JSON (capture's outbox): the compiled
    meter writes them, byte for byte the documents of the pure-Python meter's objects."""
    assert_twins(batches_of([SAMPLE_PCAP]), monkeypatch, raw_samples=raw_samples, raw_hot=raw_samples)


def frame(src: int, dst: int, sp: int, dp: int, flags: int, seq: int, payload: bytes = b"", proto: int = 6) -> bytes:
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", sp, dp, seq, 0, 0x50, flags, 65535, 0, 0) + payload
    else:
        l4 = struct.pack("!HHHH", sp, dp, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0, 64, proto, 0, struct.pack("!I", src),
                     struct.pack("!I", dst)) + l4
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip


def test_timeouts_closes_reopens_and_dns_meter_the_same(monkeypatch):
    """Long flows (update records, active timeout), FIN/RST closes, a SYN on a closed key, DNS, duplicates."""
    recs = []
    t = 1000.0
    for i in range(400):
        c = 0x0A000001 + i % 7
        sp = 40000 + i % 5
        recs.append((t, frame(c, 0xC0A80001, sp, 443, 0x02, 1000)))
        recs.append((t + 0.001, frame(0xC0A80001, c, 443, sp, 0x12, 5000)))
        recs.append((t + 0.002, frame(c, 0xC0A80001, sp, 443, 0x18, 1001, b"x" * (i % 40))))
        recs.append((t + 0.002, recs[-1][1]))   # a duplicate frame
        if i % 3 == 0:
            recs.append((t + 0.003, frame(c, 0xC0A80001, sp, 443, 0x11, 1001 + i % 40)))
            recs.append((t + 0.004, frame(0xC0A80001, c, 443, sp, 0x11, 5001)))
        elif i % 3 == 1:
            recs.append((t + 0.003, frame(c, 0xC0A80001, sp, 443, 0x04, 1001 + i % 40)))
            recs.append((t + 0.0035, frame(c, 0xC0A80001, sp, 443, 0x02, 9000)))   # a SYN on the closed key
        recs.append((t + 0.005, frame(c, 0x08080808, 30000 + i % 3, 53, 0, 0, b"\x12\x34" + b"\x01\x00" + b"\x00" * 20, 17)))
        recs.append((t + 0.006, frame(0x0A0A0A0A, 0xC0A80002, 5555, 6666, 0, 0, b"k", 17)))   # one long flow
        t += 7.3   # ~49 minutes in all: update records and an active timeout with the defaults
    batches = [("synthetic", 1, recs[i:i + 100]) if i == 0 else (None, 1, recs[i:i + 100])
               for i in range(0, len(recs), 100)]
    settings_like = CaptureSettings(update_interval_s=60, active_timeout_s=1800)
    assert settings_like.update_interval_s < t - 1000.0
    a = assert_twins(batches, monkeypatch)
    assert C_ENDED[0] > 0 or flows._cexpire is None   # idle flows ended by the compiled loop too
    assert a[3]["counters"].get("port_guess_errors", 0) > 0
    guessed = {r["app_protocol"] for r in a[0] if r["confidence"] == "port"}
    assert "UDP" in guessed and "P" * 64 in guessed
    # a port table as the hook (flows.PortTable, as capture's classify ports), which the compiled loop reads
    # itself instead of calling it: the lower port's name first, a name that is '' passed over
    table = {("UDP", 53): "DNS", ("UDP", 30000): "HIGHER", ("UDP", 5555): "", ("UDP", 6666): "UDP6666",
             ("TCP", 443): "TLS"}
    b = assert_twins(batches, monkeypatch, guess=PortTable(table))
    named = {(r["transport"], r["src_port"], r["dst_port"]): r["app_protocol"] for r in b[0] if r["confidence"] == "port"}
    assert {"DNS", "UDP6666", "TLS"} <= set(named.values()) and not {"", "HIGHER"} & set(named.values())
    assert all(v == PortTable(table)(*k) for k, v in named.items())
    if flows._cexpire is not None:   # ... without calling it

        class Counting(PortTable):
            calls = [0]

            def __call__(self, transport, sport, dport):
                self.calls[0] += 1
                return super().__call__(transport, sport, dport)

        meter(batches, True, monkeypatch, guess=Counting(table))
        compiled_calls, Counting.calls[0] = Counting.calls[0], 0
        meter(batches, False, monkeypatch, guess=Counting(table))
        assert Counting.calls[0] > 0 and compiled_calls < Counting.calls[0] / 2
    # with verdicts: idle flows that got one end in the compiled loop too (the verdict handed over beside the
    # record), those still waiting for one go to closing through the meter's _end
    a = assert_twins(batches, monkeypatch, vwait=30.0)
    assert C_ENDED[0] > 0 or flows._cexpire is None
    assert a[8] and any(r["app_protocol"] == "TLS" and r["end_reason"] == "idle" for r in a[0])
    sink = ListSink()
    m = FlowMeter(CaptureSettings(verdict_wait_s=0), sink, source="twin")
    m.process_batch([r for b in batches for r in b[2]], 1)
    m.finish()
    reasons = {r.end_reason for r in sink.flows if r.phase == "end"}
    assert {"rst", "fin", "idle"} <= reasons or {"rst", "fin", "eof"} <= reasons, reasons
    assert any(r.phase == "update" for r in sink.flows) and "active" in reasons


@pytest.mark.parametrize("raw_samples", [False, True])
def test_a_flow_idle_with_its_sample_not_yet_sent_ends_the_same(raw_samples, monkeypatch):
    """A flow that times out within the batch that sampled it: its coalesced sample goes out before its end."""
    recs = []
    t = 1000.0
    for i in range(20):
        c = 0x0A000001 + i
        recs += [(t, frame(c, 0xC0A80001, 40000, 80, 0x02, 1000)),
                 (t + 0.001, frame(0xC0A80001, c, 80, 40000, 0x12, 5000)),
                 (t + 0.002, frame(c, 0xC0A80001, 40000, 80, 0x18, 1001, b"GET /%d HTTP/1.1\r\n\r\n" % i))]
        t += 30.0   # each flow idles out (120 s) a few flows later, in the same batch
    batches = [("dirty", 1, recs)]
    a = assert_twins(batches, monkeypatch, raw_samples=raw_samples)
    assert C_ENDED[0] > 0 or flows._cexpire is None
    idle = {r["flow_id"] for r in a[0] if r["end_reason"] == "idle"}
    sampled = {s["flow_id"] for s in a[1]}
    assert len(idle) >= 10 and idle <= sampled


@pytest.mark.parametrize("vwait", [0, 30.0])
def test_end_records_written_as_json_are_the_records_bytes(vwait, monkeypatch):
    """Where the sink takes raw records (capture's outbox with no recorder and no inline detectors), the
    compiled meter writes start records and idle flows' end records as their JSON: the batches published
    are byte for byte those of the records as objects, from the compiled meter and from the pure-Python one."""
    if flows._cexpire is None:
        pytest.skip("the compiled idle loop is not built")
    from shared.models import batch_json

    batches = batches_of([SAMPLE_PCAP])
    recs, _ = encapsulated_conversations()
    t = 1000.0
    for i in range(300):   # flows that idle out one after another, some with a hostile-looking payload
        c = 0x0A000001 + i % 50
        recs.append((t, frame(c, 0xC0A80001, 40000 + i, 80, 0x02, 1000)))
        recs.append((t + 0.001, frame(0xC0A80001, c, 80, 40000 + i, 0x12, 5000)))
        recs.append((t + 0.002, frame(c, 0xC0A80001, 40000 + i, 80, 0x18, 1001, b'GET /"\\x HTTP/1.1\r\n\r\n')))
        recs.append((t + 0.003, frame(c, 0x08080808, 30000 + i, 53, 0, 0, b"\x12\x34\x01\x00" + b"\x00" * 20, 17)))
        t += 3.7
    batches += [("idle", 1, recs[i:i + 200]) if i == 0 else (None, 1, recs[i:i + 200]) for i in range(0, len(recs), 200)]
    raw = meter(batches, True, monkeypatch, vwait, raw=True, flows_only=True)
    objs = meter(batches, True, monkeypatch, vwait, flows_only=True)
    pure = meter(batches, False, monkeypatch, vwait, raw=True, flows_only=True)   # the pure-Python loop writes no JSON
    assert sum(type(r) is bytes for r in raw) > 100 and not any(type(r) is bytes for r in pure)
    assert len(raw) == len(objs) == len(pure)
    for n in (len(raw), 7, 1):
        for i in range(0, len(raw), n):
            want = batch_json(pure[i:i + n])
            assert batch_json(raw[i:i + n]) == want, i
            assert batch_json(objs[i:i + n]) == want, i


@pytest.mark.corpus
@pytest.mark.parametrize("corpus", ["ndpi", "zeek"])
def test_dev_corpora_meter_the_same(corpus, monkeypatch):
    """Samples and hot records as their JSON (capture's outbox takes them so) from the compiled meter,
    objects from the pure-Python one: the same events and the same documents."""
    need_corpus()
    d = CORPUS.parents[1] / corpus / "dev"
    if not d.is_dir():
        pytest.skip(f"{d} not found")
    paths = sorted(p for p in d.iterdir() if p.is_file() and not p.name.endswith(".out"))
    batches = batches_of(paths)
    # the pcap files' batches reach the compiled loop as raw batches (records read where they are mapped)
    assert not fastpath.RAW or sum(type(r) is fastpath.RawBatch for _s, _d, r in batches) > len(batches) // 2
    a = assert_twins(batches, monkeypatch, raw_samples=True, raw_hot=True)
    assert a[9] or corpus != "ndpi"   # hot records (SYNs left unanswered) among them


@pytest.mark.corpus
def test_evidence_rings_at_their_byte_bound_meter_the_same(monkeypatch):
    """With the least evidence memory (1 MB: 256 bytes per ring) every ring is cut by bytes, its frames cut
    to the ring's share: the compiled loop's rings are still the Python meter's, byte for byte."""
    need_corpus()
    d = CORPUS.parents[1] / "ndpi" / "dev"
    paths = sorted(p for p in d.iterdir() if p.is_file() and not p.name.endswith(".out"))[:80]
    a = assert_twins(batches_of(paths), monkeypatch, ev_mb=1)
    rings = [r for r in a[4].values() if r]
    assert rings and all(sum(len(fr) for _ts, fr in r) <= 256 or len(r) == 1 for r in rings)
    assert any(len(fr) == 256 for r in rings for _ts, fr in r)   # a frame cut to the share


@pytest.mark.corpus
def test_flows_waiting_for_verdicts_end_the_same(monkeypatch):
    """Ended flows with verdicts outstanding (closing until flush_closing), non-final verdicts, best verdicts
    handed to the sink: the same with the compiled loop (its new flows, records and samples) as without."""
    need_corpus()
    d = CORPUS.parents[1] / "ndpi" / "dev"
    paths = sorted(p for p in d.iterdir() if p.is_file() and not p.name.endswith(".out"))[:60]
    a = assert_twins(batches_of(paths), monkeypatch, vwait=30.0)
    counters = a[3]["counters"]
    assert a[8] and counters.get("verdicts_waited_out", 0) > 0   # both branches were taken


# ---------------------------------------------------------------------------------------------------------------
# encapsulations the compiled loop meters itself (VLAN/QinQ, IPv6, IPv4 options) and the ones it hands to Python

ETH_MACS = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01"


def l4(proto: int, sp: int, dp: int, flags: int = 0, seq: int = 0, payload: bytes = b"", doff: int = 5) -> bytes:
    if proto == 6:
        return struct.pack("!HHIIBBHHH", sp, dp, seq, 7, doff << 4, flags, 65535, 0, 0) + b"\0" * (4 * doff - 20) + payload
    return struct.pack("!HHHH", sp, dp, 8 + len(payload), 0) + payload


def ip4(src: int, dst: int, proto: int, body: bytes, options: bytes = b"", tot: int | None = None, frag: int = 0,
        ipid: int = 0) -> bytes:
    ihl = 5 + len(options) // 4
    n = 4 * ihl + len(body) if tot is None else tot
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, n, ipid, frag, 64, proto, 0, struct.pack("!I", src),
                       struct.pack("!I", dst)) + options + body


def ip6(src: int, dst: int, nh: int, body: bytes, plen: int | None = None, ext: bytes = b"") -> bytes:
    a = b"\x20\x01\x0d\xb8" + b"\0" * 8 + struct.pack("!I", src)
    b = b"\x20\x01\x0d\xb8" + b"\0" * 8 + struct.pack("!I", dst)
    if ext:   # one hop-by-hop header in front of the transport header
        ext = bytes((nh, 0)) + ext[2:8]
        nh = 0
    n = len(ext) + len(body) if plen is None else plen
    return struct.pack("!IHBB", 0x60000000, n, nh, 64) + a + b + ext + body


def eth(ip: bytes, tags: tuple = (), v6: bool = False, tpid: int = 0x8100) -> bytes:
    out = ETH_MACS
    for i, vid in enumerate(tags):
        out += struct.pack("!H", 0x88A8 if tpid == "qinq" and i == 0 else (0x8100 if tpid == "qinq" else tpid))
        out += struct.pack("!H", vid)
    return out + struct.pack("!H", 0x86DD if v6 else 0x0800) + ip


#: well-formed ARP packets: a request in VLAN 9, a reply untagged (with padding), a request in QinQ
ARP_FRAMES = [
    ETH_MACS + b"\x81\x00\x00\x09\x08\x06" + b"\x00\x01\x08\x00\x06\x04\x00\x01" + b"\x02" * 20,
    ETH_MACS + b"\x08\x06\x00\x01\x08\x00\x06\x04\x00\x02" + bytes(range(0xA0, 0xA6)) + bytes((10, 0, 0, 255))
    + bytes(range(0xF0, 0xF6)) + bytes((192, 168, 1, 7)) + b"\0" * 18,
    ETH_MACS + b"\x88\xa8\x00\x64\x81\x00\x00\xc8\x08\x06\x00\x01\x08\x00\x06\x04\x00\x01" + b"\xff" * 20,
]


def encapsulated_conversations() -> tuple[list, int]:
    """TCP, UDP (with DNS) and ICMP conversations in every encapsulation, then odd frames (fragments, protocols
    without ports, PPPoE, LLC and other non-IP frames, malformed ones); returns (records, frames the loop hands
    to Python)."""
    recs: list = []
    t = 5000.0
    shapes = [
        ((), False, 0x8100, b""), ((10,), False, 0x8100, b""), ((0, 20), False, 0x8100, b""),
        ((100, 200), False, "qinq", b""), ((7,), False, 0x9100, b""), ((1, 2, 3, 4), False, 0x8100, b""),
        ((), False, 0x8100, b"\x01\x01\x01\x00"), ((30,), False, 0x8100, b"\x94\x04\x00\x00"),
        ((), True, 0x8100, b""), ((40,), True, 0x8100, b""), ((50, 60), True, "qinq", b""),
    ]
    for k, (tags, v6, tpid, opts) in enumerate(shapes):
        c, s = 0x0A000001 + k, 0xC0A80001 + k
        def pkt(a, b, proto, body):
            return eth(ip6(a, b, proto, body) if v6 else ip4(a, b, proto, body, opts), tags, v6, tpid)

        for j in range(3):   # three connections per shape, one reset; payload both ways (samples)
            sp = 41000 + j
            conv = [pkt(c, s, 6, l4(6, sp, 443, 0x02, 100)), pkt(s, c, 6, l4(6, 443, sp, 0x12, 900)),
                    pkt(c, s, 6, l4(6, sp, 443, 0x18, 101, b"\x16\x03\x01" + bytes([k, j]) * 30)),
                    pkt(s, c, 6, l4(6, 443, sp, 0x18, 901, b"\x16\x03\x03" + bytes([j]) * 50)),
                    pkt(c, s, 6, l4(6, sp, 443, 0x14 if j == 2 else 0x11, 164)),
                    pkt(s, c, 6, l4(6, 443, sp, 0x11, 954)),
                    pkt(c, s, 17, l4(17, 30000 + j, 53, payload=b"\xab\xcd\x01\x00\x00\x01" + b"\0" * 6 + b"\x01a\x00\x00\x01\x00\x01")),
                    pkt(s, c, 17, l4(17, 53, 30000 + j, payload=b"\xab\xcd\x81\x80\x00\x01" + b"\0" * 6 + b"\x01a\x00\x00\x01\x00\x01")),
                    pkt(c, s, 17, l4(17, 5000 + j, 6000, payload=b"q" * (j + 1))),
                    # an ICMP / ICMPv6 echo and its reply (the loop keys them without ports, as decode())
                    pkt(c, s, 58 if v6 else 1, bytes((128 if v6 else 8, 0, 0, 0, 0, j, 0, 1)) + b"ping" * j),
                    pkt(s, c, 58 if v6 else 1, bytes((129 if v6 else 0, 0, 0, 0, 0, j, 0, 1)) + b"ping" * j)]
            if j == 0 and not v6:   # a fragmented ping: its first fragment, then its last (the ping's flow)
                conv.insert(9, eth(ip4(c, s, 1, bytes((8, 0, 0, 0, 0, 9, 0, 1)) + b"big" * 20, opts, frag=0x2000,
                                       ipid=77 + k), tags, v6, tpid))
                conv.insert(10, eth(ip4(c, s, 1, b"end" * 4, opts, frag=9, ipid=77 + k), tags, v6, tpid))
            for fr in conv:
                recs.append((t, fr))
                t += 0.01
            recs.append((t, conv[2]))   # a duplicate frame
            t += 0.5
    # frames the loop leaves to decode(): 5 tags, IPv6 with a zero payload length or a fragment header, a bad
    # TCP header, a short UDP datagram, a tunnel port, non-IP (ARP), a short ICMP header, MPLS, IP in SNAP,
    # a short SCTP header, a short PPPoE or LLC header
    odd = [
        eth(ip4(1, 2, 6, l4(6, 1, 2, 0x02)), (1, 2, 3, 4, 5)),
        eth(ip6(1, 3, 17, l4(17, 1, 2, payload=b"z"), plen=0), (), True),
        eth(ip6(1, 2, 44, b"\x11\x00\x00\x01\x00\x00\x00\x05" + l4(17, 1, 2, payload=b"f6")), (), True),
        eth(ip4(1, 2, 6, l4(6, 1, 2, 0x10, doff=4)), (9,)),
        eth(ip4(1, 2, 17, b"\0\1\0"), (9,)),
        eth(ip4(1, 2, 17, l4(17, 1, 4789, payload=b"\0" * 16)), (9,)),
        eth(ip4(1, 2, 6, l4(6, 1, 2, 0x10)), (9,))[:30],
        *ARP_FRAMES,
        ETH_MACS + b"\x08\x06" + b"\x00\x06\x08\x00\x06\x04\x00\x01" + b"\x02" * 20,   # not Ethernet/IPv4: bad_arp
        ETH_MACS + b"\x08\x06" + b"\x00\x01\x08\x00\x06\x04\x00\x01" + b"\x02" * 19,   # one byte short: bad_arp
        eth(ip4(1, 2, 1, b"\x08\x00\x00"), (9,)),
        eth(ip4(1, 2, 6, l4(6, 1, 2, 0x10), options=b"\x01\x01\x01\x00", tot=22), ()),
        ETH_MACS + b"\x88\x47\x00\x01\x01\x40" + ip4(1, 2, 17, l4(17, 1, 2, payload=b"mpls")),
        ETH_MACS + struct.pack("!H", 60) + b"\xaa\xaa\x03\x00\x00\x00\x08\x00" + ip4(1, 2, 17, l4(17, 1, 2)),
        eth(ip4(1, 2, 132, b"\0" * 11), ()),
        ETH_MACS + b"\x88\x64\x11\x00\x00\x01\x00",
        ETH_MACS + b"\x00\x10\x42\x42",
    ]
    # frames the loop meters or counts itself: an IPv6 extension header (and a datagram cut by one byte, clamped
    # to the capture); fragments (a UDP datagram's first and last, a later one of no datagram seen, a first one on
    # a tunnel port, which is not decapsulated, and a GRE packet's, which is not either); protocols without ports
    # (IGMP with IP options, PIM, SCTP, ESP in a VLAN, OSPF over IPv6); PPPoE sessions' IPv4 and IPv6, a PPPoE
    # control frame; LLC (STP, other), SNAP (CDP, Cisco's other), LLDP, an unknown ethertype
    pppoe = ETH_MACS + b"\x88\x64\x11\x00\x00\x01"
    ours = [
        eth(ip4(1, 2, 47, b"\x00\x00\x08\x00" + ip4(5, 6, 17, l4(17, 7, 8, payload=b"gre"))), ()),   # GRE (and its flow)
        eth(ip6(1, 2, 6, l4(6, 1, 2, 0x02), ext=b"\0" * 8), (), True),
        eth(ip6(1, 2, 17, l4(17, 1, 2, payload=b"z")), (9,), True)[:-1],
        eth(ip4(1, 2, 17, l4(17, 1, 2, payload=b"frag"), frag=0x2000, ipid=5), (9,)),
        eth(ip4(1, 2, 17, b"ment", frag=2, ipid=5), (9,)),
        eth(ip4(1, 2, 17, b"lost", frag=2, ipid=6), (9,)),
        eth(ip4(3, 4, 17, l4(17, 1, 4789, payload=b"\0" * 16), frag=0x2000, ipid=7), ()),
        eth(ip4(3, 4, 47, b"\x00\x00\x08\x00" + b"\0" * 20, frag=0x2000, ipid=8), ()),
        eth(ip4(1, 5, 2, b"\x16\x00\xfa\x04\xef\x01\x01\x01", options=b"\x94\x04\x00\x00"), ()),
        eth(ip4(1, 5, 2, b"\x16\x00\xfa\x04\xef\x01\x01\x01", options=b"\x94\x04\x00\x00"), ()),
        eth(ip4(1, 6, 103, b"\x20\x00\x00\x00" + b"\0" * 8), ()),
        eth(ip4(1, 7, 132, b"\0" * 12 + b"chunk"), ()),
        eth(ip4(1, 8, 50, b"\0\0\0\1\0\0\0\1" + b"esp" * 5), (9,)),
        eth(ip6(1, 9, 89, b"\x03\x01" + b"\0" * 30), (), True),
        pppoe + struct.pack("!H", 2 + 40) + b"\x00\x21" + ip4(1, 2, 6, l4(6, 1, 2, 0x02)),
        pppoe + struct.pack("!H", 2 + 48) + b"\x00\x57" + ip6(1, 2, 17, l4(17, 1, 53, payload=b"\0" * 12)),
        pppoe + struct.pack("!H", 6) + b"\xc0\x21\x01\x01\x00\x04",
        ETH_MACS + struct.pack("!H", 39) + b"\x42\x42\x03" + b"\0" * 36,
        ETH_MACS + struct.pack("!H", 3) + b"\xf0\xf0\x03",
        ETH_MACS + struct.pack("!H", 40) + b"\xaa\xaa\x03\x00\x00\x0c\x20\x00" + b"\x02" * 32,
        ETH_MACS + struct.pack("!H", 40) + b"\xaa\xaa\x03\x00\x00\x0c\x20\x03" + b"\x01" * 32,
        ETH_MACS + b"\x88\xcc" + b"\x02\x07\x04" + b"\0" * 30,
        ETH_MACS + b"\x12\x34" + b"\0" * 46,
    ]
    for fr in odd + ours:
        recs.append((t, fr))
        t += 0.01
    return recs, len(odd)


@pytest.mark.parametrize("raw_samples", [False, True])
def test_encapsulations_meter_the_same(raw_samples, monkeypatch):
    """raw_samples: the sink takes samples, hot records and packet events as their JSON (capture's outbox):
    DNS messages and ARP packets are then the loop's too."""
    recs, _ = encapsulated_conversations()
    batches = [("encaps", 1, recs[i:i + 64]) if i == 0 else (None, 1, recs[i:i + 64]) for i in range(0, len(recs), 64)]
    a = assert_twins(batches, monkeypatch, raw_samples=raw_samples, raw_hot=raw_samples)
    arp = [p for p in a[2] if p["kind"] == "arp"]
    assert len(arp) == 3 and a[3]["counters"]["arp_packets"] == 3 and a[3]["counters"]["bad_arp"] == 2
    assert {(p["vlan_id"], tuple(p["vlan_ids"])) for p in arp} == {(9, (9,)), (0, ()), (100, (100, 200))}
    # the odd frames' counts (the twins agree on them: these say what both do)
    c = a[3]["counters"]
    assert c["ip_fragments"] == 9 and c["ip_fragments_orphan"] == 1   # 8 pings' last fragments and a datagram's
    assert (c["igmp_flows"], c["pim_flows"], c["ospf_flows"], c["pppoe_control"]) == (1, 1, 1, 1)
    assert (c["stp"], c["llc"], c["cdp"], c["cisco_l2"], c["lldp"], c["ethertype"]) == (1, 1, 1, 1, 1, 1)
    assert a[3]["unsupported_packets"] == 1
    ends = {(r["transport"], r["src_ip"], r["src_port"], r["dst_port"], r["vlan_id"]): r
            for r in a[0] if r["phase"] == "end"}
    assert ends[("IGMP", "0.0.0.1", 0, 0, 0)]["src2dst_packets"] == 2
    assert ("ESP", "0.0.0.1", 0, 0, 9) in ends and ("SCTP", "0.0.0.1", 0, 0, 0) in ends
    # the fragmented datagram: one flow of two packets; a first fragment on a tunnel port is not decapsulated
    assert ends[("UDP", "0.0.0.1", 1, 2, 9)]["src2dst_packets"] == 2
    assert ends[("UDP", "0.0.0.3", 1, 4789, 0)]["tunnel"] == ""
    assert any(p["src_ip"] == p["arp"]["sender_ip"] == "10.0.0.255" and p["dst_ip"] == "192.168.1.7"
               and p["arp"]["sender_mac"] == "a0:a1:a2:a3:a4:a5" and p["arp"]["operation"] == 2 for p in arp)
    sink = ListSink()
    m = FlowMeter(CaptureSettings(verdict_wait_s=0), sink, source="encaps")
    m.process_batch(recs, 1)
    m.finish()
    ends = [r for r in sink.flows if r.phase == "end"]
    assert {r.vlan_id for r in ends} >= {10, 0, 100, 7, 1, 30, 40, 50}
    assert {r.ip_version for r in ends} == {4, 6}
    assert any(p.kind == "dns" and p.vlan_ids == [100, 200] for p in sink.packets)
    assert any(s.vlan_ids == [0, 20] for s in sink.samples)


def metered_in_python(recs: list, monkeypatch: pytest.MonkeyPatch, raw: bool = False) -> tuple[list, int, FlowMeter]:
    """Meter ``recs`` with the compiled loop: (the records it handed to _process_py, the flows _new_flow made,
    the meter); raw: into a sink that takes packet events as their JSON."""
    seen: list = []
    made = [0]
    process_py, new_flow = FlowMeter._process_py, FlowMeter._new_flow

    def counting(self, rs, dl, *a):
        seen.extend(rs)
        return process_py(self, rs, dl, *a)

    def making(self, *a, **k):
        made[0] += 1
        return new_flow(self, *a, **k)

    monkeypatch.setattr(FlowMeter, "_process_py", counting)
    monkeypatch.setattr(FlowMeter, "_new_flow", making)
    sink = ListSink()
    if raw:
        sink.raw_packets = sink.packets
    m = FlowMeter(CaptureSettings(verdict_wait_s=0), sink, source="loop")
    m.process_batch(recs, 1)
    return seen, made[0], m


def test_the_loop_meters_vlan_ipv6_and_ip_options_itself(monkeypatch):
    """Only the frames the loop does not take reach the pure-Python meter."""
    recs, to_python = encapsulated_conversations()
    seen, _made, _m = metered_in_python(recs, monkeypatch)
    assert len(seen) == to_python, [fr[12:16].hex() for _ts, fr in seen]
    # where the sink takes packet events as their JSON, the loop writes ARP's itself
    seen, _made, m = metered_in_python(recs, monkeypatch, raw=True)
    assert len(seen) == to_python - len(ARP_FRAMES), [fr[12:16].hex() for _ts, fr in seen]
    assert m.counters["arp_packets"] == len(ARP_FRAMES)


def test_compiled_base64_arrays_are_pydantic_s():
    """_meter.b64_json (samples' payloads in batch_json) writes what pydantic writes for bytes, every length
    and byte value; registered with shared.models when flows is imported."""
    import random

    from services.capture import _meter
    from shared import models
    from shared.models import FlowSample

    assert models._b64_json is _meter.b64_json
    rnd = random.Random(12)
    payloads = [bytes(range(256)), b"\xfb\xff\xfe", b""] + [rnd.randbytes(n) for n in range(70) for _ in range(3)]
    s = FlowSample(timestamp=1.0, probe="p", transport="UDP", src_ip="a", dst_ip="b", first_seen=1.0,
                   src_payloads=payloads)
    want = orjson.loads(s.model_dump_json())["src_payloads"]
    assert orjson.loads(_meter.b64_json(payloads)) == want == models._b64_texts_py(payloads)
    assert _meter.b64_json([]) == b"[]"
    with pytest.raises(TypeError):
        _meter.b64_json([b"ok", "not bytes"])


def gtp(inner: bytes, flags: int = 0x30, ext: bytes = b"", mtype: int = 0xFF) -> bytes:
    """A GTP-U header (version 1, flags 0x30 = G-PDU without options) and its payload; with the E, S or PN
    flags the 4 optional bytes (next extension type last) and the extension headers ``ext``."""
    opt = b""
    if flags & 7:
        opt = b"\0\1\0" + bytes((0x85 if ext else 0,))   # sequence number, N-PDU number, next extension type
    return struct.pack("!BBHI", flags, mtype, len(opt) + len(ext) + len(inner), 0x1234) + opt + ext + inner


#: the MACs of VXLAN's inner frames (the inner flows take theirs, not the outer frame's)
INNER_MACS = b"\x0a\x00\x00\x00\x00\x0b\x0c\x00\x00\x00\x00\x0d"


def vxlan(frame: bytes, vni: int = 0x123456, flags: int = 0x08, sport: int = 54321) -> bytes:
    """A UDP datagram to VXLAN's port carrying an Ethernet frame (the I flag set: a valid VNI)."""
    return l4(17, sport, 4789, payload=bytes((flags, 0, 0, 0)) + vni.to_bytes(3, "big") + b"\0" + frame)


def gre(ptype: int, payload: bytes, key: int | None = None, seq: int | None = None, csum: bool = False,
        ver: int = 0) -> bytes:
    """A GRE header (checksum, key and sequence number as asked) and its payload."""
    f0 = (0x80 if csum else 0) | (0x20 if key is not None else 0) | (0x10 if seq is not None else 0)
    h = struct.pack("!BBH", f0, ver, ptype) + (b"\0" * 4 if csum else b"")
    h += (struct.pack("!I", key) if key is not None else b"") + (struct.pack("!I", seq) if seq is not None else b"")
    return h + payload


#: ERSPAN type II's header, and type III's with its optional platform sub-header (the O bit in its last byte)
ERSPAN2 = b"\x10\x05\x00\x07\x00\x00\x00\x00"
ERSPAN3 = b"\x20\x05\x00\x07" + b"\0" * 7 + b"\x01" + b"\0" * 8


def inner_eth(ip: bytes, tags: tuple = (), v6: bool = False) -> bytes:
    return INNER_MACS + eth(ip, tags, v6)[len(ETH_MACS):]


def tunnelled_conversations() -> tuple[list, int]:
    """TCP (closed, then a new connection on the same key), DNS, UDP and ICMP conversations inside GTP-U,
    IP-in-IP and VXLAN tunnels over every outer layout; returns (records, frames the loop hands to Python)."""
    recs: list = []
    t = 9000.0
    # one GTP extension header (length 1 = 4 bytes, its last byte the next type: none)
    ext1 = b"\x01\xaa\xbb\x00"

    def udp_gtp(inner: bytes, **kw) -> bytes:
        return l4(17, 2152, 2152, payload=gtp(inner, **kw))

    wrappers = [   # (name, outer frame around an inner IP packet, the inner is IPv6)
        ("gtp4", lambda ip, v6: eth(ip4(0x64000001, 0x64000002, 17, udp_gtp(ip))), False),
        ("gtp4v6", lambda ip, v6: eth(ip4(0x64000001, 0x64000002, 17, udp_gtp(ip)), (12,)), True),
        ("gtp6seq", lambda ip, v6: eth(ip6(0x64, 0x65, 17, udp_gtp(ip, flags=0x32)), (), True), False),
        ("gtp6ext", lambda ip, v6: eth(ip6(0x64, 0x65, 17, udp_gtp(ip, flags=0x34, ext=ext1)), (13, 14), True), True),
        ("ipip", lambda ip, v6: eth(ip4(0x64000003, 0x64000004, 4, ip)), False),
        ("6in4", lambda ip, v6: eth(ip4(0x64000003, 0x64000004, 41, ip), (15,)), True),
        ("6in6", lambda ip, v6: eth(ip6(0x66, 0x67, 41, ip), (), True), True),
        ("4in6", lambda ip, v6: eth(ip6(0x66, 0x67, 4, ip), (16,), True), False),
        ("vxlan4", lambda ip, v6: eth(ip4(0x64000005, 0x64000006, 17, vxlan(inner_eth(ip, (), v6)))), False),
        ("vxlan4tags", lambda ip, v6: eth(ip4(0x64000005, 0x64000006, 17, vxlan(inner_eth(ip, (21, 22), v6))), (20,)),
         True),
        ("vxlan6", lambda ip, v6: eth(ip6(0x68, 0x69, 17, vxlan(inner_eth(ip, (23,), v6))), (), True), False),
        ("gre4", lambda ip, v6: eth(ip4(0x64000007, 0x64000008, 47, gre(0x86DD if v6 else 0x0800, ip, key=0xABCD)),
                                     (26,)), True),
        ("gre6eth", lambda ip, v6: eth(ip6(0x6A, 0x6B, 47, gre(0x6558, inner_eth(ip, (24,), v6), csum=True)), (), True),
         False),
        ("erspan2", lambda ip, v6: eth(ip4(0x64000009, 0x6400000A, 47, gre(0x88BE, ERSPAN2 + inner_eth(ip, (), v6),
                                                                            seq=9)), (25,)), False),
        ("erspan3", lambda ip, v6: eth(ip4(0x64000009, 0x6400000A, 47, gre(0x22EB, ERSPAN3 + inner_eth(ip, (27,), v6),
                                                                            seq=1))), True),
    ]
    for k, (_name, wrap, v6) in enumerate(wrappers):
        c, s = 0x0A100001 + k, 0xC0A81001 + k

        def pkt(a, b, proto, body):
            return wrap(ip6(a, b, proto, body) if v6 else ip4(a, b, proto, body), v6)

        for j in range(2):
            sp = 42000 + j
            conv = [pkt(c, s, 6, l4(6, sp, 80, 0x02, 100)), pkt(s, c, 6, l4(6, 80, sp, 0x12, 900)),
                    pkt(c, s, 6, l4(6, sp, 80, 0x18, 101, b"GET / HTTP/1.1\r\nHost: t%d\r\n\r\n" % k)),
                    pkt(s, c, 6, l4(6, 80, sp, 0x18, 901, b"HTTP/1.1 200 OK\r\n\r\n" + bytes([j]) * 40)),
                    pkt(c, s, 6, l4(6, sp, 80, 0x11, 140)), pkt(s, c, 6, l4(6, 80, sp, 0x11, 960)),
                    # a new connection on the closed one's key (ends it, then a new tunnelled flow)
                    pkt(c, s, 6, l4(6, sp, 80, 0x02, 5000)), pkt(s, c, 6, l4(6, 80, sp, 0x12, 7000)),
                    # its last segment cut by the capture, the tunnel padded after it: the sample's next sequence
                    # number counts what was cut off the outermost IP packet (as _wire_payload)
                    wrap((ip6 if v6 else ip4)(s, c, 6, l4(6, 80, sp, 0x18, 7001, b"more" * 30)) + b"\0" * 6, v6)[:-25],
                    pkt(c, s, 17, l4(17, 31000 + j, 53, payload=b"\xab\xcd\x01\x00\x00\x01" + b"\0" * 6 + b"\x01b\x00\x00\x01\x00\x01")),
                    pkt(s, c, 17, l4(17, 53, 31000 + j, payload=b"\xab\xcd\x81\x80\x00\x01" + b"\0" * 6 + b"\x01b\x00\x00\x01\x00\x01")),
                    pkt(c, s, 17, l4(17, 7000 + j, 7001, payload=b"u" * (j + 3))),
                    # a connection first seen at its SYN-ACK (the flow, its tunnel's endpoints turned round)
                    pkt(s, c, 6, l4(6, 8080, 43000 + j, 0x12, 50)), pkt(c, s, 6, l4(6, 43000 + j, 8080, 0x10, 51)),
                    pkt(c, s, 58 if v6 else 1, bytes((128 if v6 else 8, 0, 0, 0, 0, j, 0, 1)) + b"pong"),
                    pkt(s, c, 58 if v6 else 1, bytes((129 if v6 else 0, 0, 0, 0, 0, j, 0, 1)) + b"pong")]
            for fr in conv:
                recs.append((t, fr))
                t += 0.01
            t += 0.5
    inner = ip4(0x0A200001, 0x0A200002, 6, l4(6, 1, 2, 0x02))
    odd = [   # frames the loop leaves to decode()
        eth(ip4(0x64000001, 0x64000002, 17, udp_gtp(inner, mtype=1))),            # a GTP-U echo, not a G-PDU
        eth(ip4(0x64000001, 0x64000002, 17, udp_gtp(inner, flags=0x34, ext=b"\x00\x00\x00\x00"))),  # ext length 0
        eth(ip4(0x64000001, 0x64000002, 17, udp_gtp(b"\x50" + inner[1:]))),       # inner IP version 5
        eth(ip4(0x64000001, 0x64000002, 17, udp_gtp(ip4(1, 2, 17, udp_gtp(inner))))),   # GTP in GTP
        eth(ip4(0x64000001, 0x64000002, 17, udp_gtp(ip4(1, 2, 4, inner)))),       # IP-in-IP in GTP
        eth(ip4(0x64000003, 0x64000004, 4, ip4(1, 2, 17, l4(17, 1, 2, payload=b"x"), frag=0x2000))),  # inner fragment
        eth(ip4(0x64000003, 0x64000004, 4, ip6(1, 2, 6, l4(6, 1, 2, 0x02)))),    # proto 4 carrying IPv6
        eth(ip4(0x64000001, 0x64000002, 17, l4(17, 2152, 2152, payload=b"\x30\xff\x00\x00\x00\x00"))),  # short
        eth(ip4(0x64000005, 0x64000006, 17, vxlan(inner_eth(inner), flags=0))),                # VXLAN without I flag
        eth(ip4(0x64000005, 0x64000006, 17, vxlan(ARP_FRAMES[1]))),                           # VXLAN carrying ARP
        eth(ip4(0x64000005, 0x64000006, 17, vxlan(inner_eth(inner, (1, 2, 3, 4, 5))))),       # 5 inner tags
        eth(ip4(0x64000005, 0x64000006, 17, vxlan(inner_eth(ip4(1, 2, 17, b"f", frag=0x2000))))),  # inner fragment
        eth(ip4(0x64000005, 0x64000006, 17, vxlan(inner_eth(inner)[:20]))),                   # inner frame cut
        eth(ip4(0x64000007, 0x64000008, 47, gre(0x880B, b"\xff\x03\x00\x21" + inner, ver=1))),  # PPTP
        eth(ip4(0x64000007, 0x64000008, 47, gre(0x8847, b"\x00\x01\x01\x40" + inner))),          # MPLS in GRE
        eth(ip4(0x64000007, 0x64000008, 47, gre(0x22EB, b"\0" * 10))),                            # ERSPAN III short
        eth(ip4(0x64000007, 0x64000008, 47, gre(0x0800, b"\x50" + inner[1:]))),                  # IP version 5
        eth(ip4(0x64000007, 0x64000008, 47, gre(0x1234, inner))),                                # other payload
    ]
    ours = [   # the loop's: an inner IPv6 packet with an extension header
        eth(ip4(0x64000003, 0x64000004, 41, ip6(1, 2, 6, l4(6, 1, 2, 0x02), ext=b"\0" * 8)), (15,)),
        # VXLAN from UDP port 53: its own flow has no DNS messages (decode() does not look into it)
        eth(ip4(0x64000005, 0x64000006, 17, vxlan(inner_eth(ip4(1, 2, 17, l4(17, 5, 6, payload=b"in53"))), sport=53))),
        # an inner packet claiming 10 bytes more than the tunnel carries, the outer frame padded: the inner
        # packet ends with the outer one (its payload is 3 bytes, not the padding)
        eth(ip4(0x64000005, 0x64000006, 17, vxlan(inner_eth(ip4(1, 2, 17, l4(17, 5, 7, payload=b"pad"), tot=41)))))
        + b"\xee" * 16,
    ]
    for fr in odd + ours:
        recs.append((t, fr))
        t += 0.01
    return recs, len(odd)


def test_tunnels_meter_the_same(monkeypatch):
    recs, _ = tunnelled_conversations()
    batches = [("tun", 1, recs[i:i + 50]) if i == 0 else (None, 1, recs[i:i + 50]) for i in range(0, len(recs), 50)]
    a = assert_twins(batches, monkeypatch)
    ends = [r for r in a[0] if r["phase"] == "end"]
    tunnels = {(r["tunnel"], r["tunnel_src_ip"], r["ip_version"], r["transport"]) for r in ends}
    assert {("GTP", "100.0.0.1", 4, "TCP"), ("GTP", "100.0.0.1", 6, "UDP"), ("GTP", "2001:db8::64", 4, "ICMP"),
            ("GTP", "2001:db8::64", 6, "ICMPV6"), ("IP-in-IP", "100.0.0.3", 4, "TCP"),
            ("IP-in-IP", "100.0.0.3", 6, "UDP"), ("IP-in-IP", "2001:db8::66", 6, "TCP"),
            ("IP-in-IP", "2001:db8::66", 4, "UDP")} <= tunnels
    # the closed connection and the new one on its key: two flows per key, both tunnelled
    http = [r for r in ends if r["transport"] == "TCP" and r["dst_port"] == 80 and r["tunnel"] == "GTP"]
    assert len(http) == 2 * 2 * 4
    assert any(p["kind"] == "dns" and p["vlan_ids"] == [13, 14] for p in a[2])
    # the flow first seen at its SYN-ACK: the client is the SYN-ACK's receiver, on both tunnel sides
    turned = [r for r in ends if r["dst_port"] == 8080 and r["tunnel"] == "GTP" and r["ip_version"] == 4]
    assert turned and all(r["src_ip"].startswith("10.16.") and r["tunnel_src_ip"] in ("100.0.0.2", "2001:db8::65")
                          for r in turned)
    assert {r["tunnel_id"] for r in ends if r["tunnel"] == "GTP"} == {0x1234}
    # VXLAN: the inner flows (their own MACs and VLANs, the outer endpoints and the VNI), and the tunnel's own
    # UDP flows (as NFStream and Zeek report them)
    vx = [r for r in ends if r["tunnel"] == "VXLAN"]
    assert {(r["tunnel_src_ip"], r["ip_version"], r["transport"]) for r in vx} >= {
        ("100.0.0.5", 4, "TCP"), ("100.0.0.5", 6, "UDP"), ("2001:db8::68", 4, "ICMP")}
    assert {r["tunnel_id"] for r in vx} == {0x123456}
    assert {r["vlan_id"] for r in vx} == {0, 21, 23, 1}   # 1: the inner frame with 5 tags (Python's)
    assert {(r["src_mac"], r["dst_mac"]) for r in vx if r["dst_port"] == 80} == {("0c:00:00:00:00:0d", "0a:00:00:00:00:0b")}
    outer = [r for r in ends if r["dst_port"] == 4789 and r["tunnel"] == "" and r["src_port"] == 54321]
    assert {r["src_ip"] for r in outer} >= {"100.0.0.5", "2001:db8::68"} and all(r["src2dst_packets"] > 10 for r in outer)
    assert a[3]["counters"]["tunnel_vxlan_flows"] == len(vx)
    # GRE (IP, Ethernet) and ERSPAN II and III: the inner flows and the tunnels' own GRE flows
    gr = [r for r in ends if r["tunnel"] in ("GRE", "ERSPAN")]
    assert {(r["tunnel"], r["tunnel_src_ip"], r["ip_version"]) for r in gr} >= {   # (and swapped: SYN-ACK first)
        ("GRE", "100.0.0.7", 6), ("GRE", "2001:db8::6a", 4), ("ERSPAN", "100.0.0.9", 4), ("ERSPAN", "100.0.0.9", 6)}
    assert {r["tunnel_id"] for r in gr if r["tunnel_src_ip"] in ("100.0.0.7", "100.0.0.8")} == {0xABCD}
    assert {r["vlan_id"] for r in gr} == {26, 24, 0, 27}   # GRE's inner IP keeps the outer tags; frames their own
    assert {r["src_mac"] for r in gr if r["tunnel"] == "ERSPAN" and r["dst_port"] == 80} == {"0c:00:00:00:00:0d"}
    own = {r["src_ip"]: r["src2dst_packets"] for r in ends if r["transport"] == "GRE" and r["tunnel"] == ""}
    assert own.keys() >= {"100.0.0.7", "2001:db8::6a", "100.0.0.9"} and own["100.0.0.9"] > 20
    assert a[3]["counters"]["tunnel_erspan_flows"] == sum(r["tunnel"] == "ERSPAN" for r in gr)


def test_the_loop_meters_gtp_and_ip_in_ip_itself(monkeypatch):
    """Only the odd tunnelled frames reach the pure-Python meter, and the loop makes the tunnelled flows."""
    recs, to_python = tunnelled_conversations()
    seen, made, m = metered_in_python(recs, monkeypatch)
    assert len(seen) == to_python
    assert m.stats()["counters"]["tunnel_gtp_flows"] > 0 and m.stats()["counters"]["tunnel_ip-in-ip_flows"] > 0
    assert m.stats()["counters"]["tunnel_vxlan_flows"] > 0 and m.stats()["counters"]["tunnel_erspan_flows"] > 0
    assert made <= to_python   # only the odd frames' flows are made by _new_flow


def test_new_flows_texts_made_in_the_loop_as_the_meter_makes_them(monkeypatch):
    """The loop makes a new flow's address and MAC texts itself (IPv4, IPv6, MACs), cached as _ip_text and
    _mac_text cache them (the cache emptied when full); a meter whose class replaces those methods gets its
    own texts."""
    from services.capture.decode import format_ip

    recs, _ = encapsulated_conversations()

    def records(compiled: bool, cls: type = FlowMeter) -> tuple[list, FlowMeter]:
        with monkeypatch.context() as mp:
            if not compiled:
                mp.setattr(flows, "_run", None)
            sink = ListSink()
            m = cls(CaptureSettings(verdict_wait_s=0), sink, source="texts")
            m._prefix = "texts"
            m._text_cache_max = 5
            m.process_batch(recs, 1)
            m.finish()
            return [r.model_dump() for r in sink.flows], m

    a, ma = records(True)
    b, _mb = records(False)
    assert a == b and len(ma._text_cache) <= 5
    # 40 hosts, every flow the loop's: the cache is emptied when full, as _ip_text empties it
    m = FlowMeter(CaptureSettings(verdict_wait_s=0), ListSink(), source="texts")
    m._text_cache_max = 5
    m.process_batch([(100.0 + i, frame(0x0A000001 + i, 0x0A0000FF, 5000, 53, 0, 0, b"x", 17)) for i in range(40)], 1)
    assert 0 < len(m._text_cache) <= 5 and "10.0.0.40" in m._text_cache.values()
    assert any(":" in r["src_ip"] for r in a) and any(r["src_mac"] == "02:00:00:00:00:01" for r in a)

    class Shouting(FlowMeter):
        def _ip_text(self, addr: bytes) -> str:   # its own texts, not cached
            return "ip-" + format_ip(addr)

    c, _mc = records(True, Shouting)
    assert c and all(r["src_ip"].startswith("ip-") for r in c if r["transport"] != "ARP")


def test_a_full_fragment_cache_drops_its_oldest_datagram_the_same(monkeypatch):
    """The cache of first fragments' ports is bounded (_FRAG_CACHE_MAX): when full, the oldest datagram's entry
    goes, and that datagram's later fragments are orphans; the loop (bound with the same bound) drops the same."""
    monkeypatch.setattr(flows, "_FRAG_CACHE_MAX", 4)
    flows._bind_decode()
    try:
        recs, t = [], 7000.0
        for i in range(6):   # six datagrams' first fragments, then their last ones
            recs.append((t, eth(ip4(1, 2, 17, l4(17, 100 + i, 200, payload=b"first"), frag=0x2000, ipid=i), (9,))))
            t += 0.01
        for i in range(6):
            recs.append((t, eth(ip4(1, 2, 17, b"last", frag=3, ipid=i), (9,))))
            t += 0.01
        a = assert_twins([("frags", 1, recs)], monkeypatch)
    finally:
        monkeypatch.undo()
        flows._bind_decode()
    c = a[3]["counters"]
    assert c["ip_fragments"] == 4 and c["ip_fragments_orphan"] == 2
    ends = sorted((r["src_port"], r["src2dst_packets"]) for r in a[0] if r["phase"] == "end")
    assert ends == [(100, 1), (101, 1), (102, 2), (103, 2), (104, 2), (105, 2)]
