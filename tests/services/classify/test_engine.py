"""Engine: safecall, envelope, application layer, port guess, DNS records."""

from __future__ import annotations

import logging
import os
import struct

from services.classify.apps import Apps, default_apps
from services.classify.dissectors.base import Dissector, Match
from services.classify.engine import Engine
from shared.models import FlowSample, PacketEvent, Verdict


def sample(**kw) -> FlowSample:
    base = dict(timestamp=5.0, probe="p1", flow_id="abc", transport="TCP", src_ip="10.0.0.1", src_port=40000,
                dst_ip="10.0.0.2", dst_port=9999, first_seen=4.0, seq_no=3, vlan_id=7, trigger_time=4.5,
                src_mac="02:00:00:00:00:01", dst_mac="02:00:00:00:00:02", vlan_ids=[7],
                src2dst_next_seq=100, src2dst_ack=200, dst2src_next_seq=300, dst2src_ack=400,
                src_payloads=[b"hello"], payload_dirs="s")
    base.update(kw)
    return FlowSample(**base)


class Boom(Dissector):
    name = "Boom"

    def could_be(self, s):
        return True

    def dissect(self, s, v):
        raise ValueError("bug")


class Fixed(Dissector):
    def __init__(self, name, match, host=""):
        self.name, self.match, self.host = name, match, host

    def could_be(self, s):
        return True

    def dissect(self, s, v):
        if self.match != Match.NO:
            v.app_protocol = self.name
            v.host = self.host or v.host
        return self.match


def test_envelope_copied_and_final():
    e = Engine(registry=[Fixed("HTTP", Match.FINAL, "h.example")], apps=Apps({}), port_guess=False)
    v = e.classify(sample())
    assert isinstance(v, Verdict)
    assert (v.timestamp, v.probe, v.flow_id, v.transport, v.src_ip, v.src_port, v.dst_ip, v.dst_port, v.vlan_id) == (
        5.0, "p1", "abc", "TCP", "10.0.0.1", 40000, "10.0.0.2", 9999, 7)
    assert (v.sample_seq_no, v.trigger_time, v.src_mac, v.dst_mac, v.vlan_ids) == (3, 4.5, "02:00:00:00:00:01", "02:00:00:00:00:02", [7])
    assert (v.src2dst_next_seq, v.src2dst_ack, v.dst2src_next_seq, v.dst2src_ack) == (100, 200, 300, 400)
    assert v.final and v.confidence == "dpi" and v.app_protocol == "HTTP"


def test_safecall_counts_and_goes_on(caplog):
    e = Engine(registry=[Boom(), Fixed("SSH", Match.PARTIAL)], apps=Apps({}), port_guess=False)
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            v = e.classify(sample())
    assert v.app_protocol == "SSH" and not v.final
    assert e.errors["Boom"] == 5
    assert sum("Boom" in r.getMessage() for r in caplog.records) == 1     # rate limited
    assert e.classify(sample(final=True)).final                          # capture's last sample


def test_first_partial_kept_final_wins():
    e = Engine(registry=[Fixed("A", Match.PARTIAL), Fixed("B", Match.PARTIAL)], apps=Apps({}), port_guess=False)
    assert e.classify(sample()).app_protocol == "A"
    e = Engine(registry=[Fixed("A", Match.PARTIAL), Fixed("B", Match.FINAL)], apps=Apps({}), port_guess=False)
    assert e.classify(sample()).app_protocol == "B"


def test_port_guess_marked_and_ip_match():
    apps = Apps({"Example": {"category": "Web", "ips": ["192.0.2.0/24"]}}, {"TCP/9999": "Guessed"})
    e = Engine(registry=[], apps=apps)
    v = e.classify(sample())
    assert (v.app_protocol, v.confidence, v.extra.get("guess")) == ("Guessed", "port", "port")
    v = e.classify(sample(dst_port=1234, dst_ip="192.0.2.9"))
    assert (v.app_protocol, v.application, v.category, v.confidence) == ("Example", "Example", "Web", "ip")
    v = e.classify(sample(dst_port=1234))
    assert (v.app_protocol, v.confidence) == ("Unknown", "unknown")


def test_host_patterns_application_category():
    apps = Apps({
        "GoogleServices": {"category": "Web", "hosts": ["googleapis.com"]},
        "YouTube": {"category": "Media", "hosts": ["youtube.googleapis.com", "ytimg.com", "*youtube*"]},
        "Amazon": {"category": "Shopping", "hosts": ["amazon.*"]},
        "Exact": {"category": "X", "hosts": ["=only.example"]},
    })
    assert apps.lookup_host("www.googleapis.com") == ("GoogleServices", "Web")
    assert apps.lookup_host("youtube.googleapis.com") == ("YouTube", "Media")
    assert apps.lookup_host("i.ytimg.com.") == ("YouTube", "Media")
    assert apps.lookup_host("m.youtube-ui.example") == ("YouTube", "Media")
    assert apps.lookup_host("www.amazon.co.uk") == ("Amazon", "Shopping")
    assert apps.lookup_host("amazon.example.org") is None
    assert apps.lookup_host("only.example") == ("Exact", "X")
    assert apps.lookup_host("sub.only.example") is None
    e = Engine(registry=[Fixed("TLS", Match.FINAL, "rr1.sn-x.googlevideo.com")], port_guess=False)
    v = e.classify(sample())
    assert (v.application, v.category) == ("YouTube", "Media")      # from the shipped data files


def test_shipped_data_loads():
    apps = default_apps()
    assert apps.lookup_host("www.netflix.com")[0] == "NetFlix"
    assert apps.lookup_host("scontent.xx.fbcdn.net")[0] == "Facebook"
    assert apps.lookup_ip("8.8.8.8")[0] == "Google"
    assert apps.ports[("TCP", 443)] == "TLS"
    assert apps.proto_categories["DNS"] == "Network"
    assert apps.voip_apps["Telegram"] == "TelegramVoip" and "STUN" in apps.voip_protocols


def test_media_flow_application_is_the_call_service():
    apps = Apps({"Telegram": {"category": "Chat", "ips": ["203.0.113.0/24"]}}, {},
                {}, {"protocols": ["STUN"], "apps": {"Telegram": "TelegramVoip"}})
    e = Engine(registry=[Fixed("STUN", Match.FINAL)], apps=apps, port_guess=False)
    v = e.classify(sample(transport="UDP", dst_ip="203.0.113.7"))
    assert (v.app_protocol, v.application) == ("STUN", "TelegramVoip")


def test_hostile_host_is_cleaned():
    e = Engine(registry=[Fixed("HTTP", Match.FINAL, "evil\nhost\x00" + "a" * 2000)], apps=Apps({}))
    v = e.classify(sample())
    assert len(v.host) == 512 and "\n" not in v.host and "\x00" not in v.host
    Verdict.model_validate_json(v.model_dump_json())          # still a valid message


def test_real_registry_never_raises_on_garbage():
    e = Engine()
    for i in range(300):
        t = "TCP" if i % 2 else "UDP"
        blobs = [os.urandom((i * 7) % 300) for _ in range(i % 4)]
        s = sample(transport=t, src_payloads=blobs, payload_dirs="s" * len(blobs), dst_port=[53, 443, 80, 22, 5353][i % 5])
        e.classify(s)
    assert not e.errors, dict(e.errors)


def packet(payload: bytes, transport="UDP") -> PacketEvent:
    return PacketEvent(timestamp=1.0, probe="p1", flow_id="x", transport=transport, src_ip="10.0.0.1", src_port=5300,
                       dst_ip="10.0.0.53", dst_port=53, kind="dns", payload=payload)


def test_dns_record_and_garbage():
    name = b"\x03www\x07example\x03com\x00"
    resp = struct.pack(">HHHHHH", 0xBEEF, 0x8183, 1, 1, 0, 0) + name + struct.pack(">HH", 1, 1)
    resp += b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 1])
    e = Engine(registry=[], apps=Apps({}))
    r = e.dns_record(packet(resp))
    assert (r.transaction_id, r.is_response, r.query_name, r.query_type, r.rcode) == (0xBEEF, True, "www.example.com", "A", "NXDOMAIN")
    assert [(a.name, a.rtype, a.ttl_s, a.data) for a in r.answers] == [("www.example.com", "A", 60, "192.0.2.1")]
    r = e.dns_record(packet(struct.pack(">H", len(resp)) + resp, "TCP"))
    assert r.query_name == "www.example.com"
    bad = e.dns_record(packet(b"\x01\x02"))
    assert bad.error == "shorter than a DNS header" and e.counters["dns_malformed"] == 1
    assert e.dns_record(packet(b"")) is None
    for i in range(200):
        e.dns_record(packet(os.urandom(i)))
    assert e.counters["dns_bad"] >= 1 and not e.errors


class Counting(Dissector):
    name = "HTTP"

    def __init__(self):
        self.calls = 0

    def could_be(self, s):
        return True

    def dissect(self, s, v):
        self.calls += 1
        v.app_protocol = "HTTP"
        v.host = "memo.example"
        v.extra["k"] = "v"
        return Match.FINAL if len(s.src_payloads) >= 2 else Match.PARTIAL


def test_final_verdict_memo_answers_later_samples_of_the_flow():
    d = Counting()
    e = Engine(registry=[d], apps=Apps({}), port_guess=False, final_memo=2)
    assert not e.classify(sample(src_payloads=[b"a"], payload_dirs="s", seq_no=0)).final
    v1 = e.classify(sample(src_payloads=[b"a", b"b"], payload_dirs="ss", seq_no=1))
    assert v1.final and d.calls == 2
    v2 = e.classify(sample(src_payloads=[b"a", b"b", b"c"], payload_dirs="sss", seq_no=2, src2dst_next_seq=999))
    assert d.calls == 2 and e.counters["memo"] == 1                        # no DPI for an in-flight sample
    assert (v2.app_protocol, v2.host, v2.final, v2.sample_seq_no, v2.src2dst_next_seq) == ("HTTP", "memo.example", True, 2, 999)
    v2.extra["k"] = "changed"
    assert v1.extra["k"] == "v"                                              # no shared mutable state
    for i in range(3):                                                       # bounded: oldest flows forgotten
        e.classify(sample(flow_id="f%d" % i, src_payloads=[b"a", b"b"], payload_dirs="ss"))
    assert len(e._finals) == 2
    off = Engine(registry=[d], apps=Apps({}), port_guess=False, final_memo=0)
    off.classify(sample(src_payloads=[b"a", b"b"], payload_dirs="ss"))
    off.classify(sample(src_payloads=[b"a", b"b"], payload_dirs="ss"))
    assert off.counters["memo"] == 0


def test_application_from_certificate_names_without_sni():
    from shared.models import TlsInfo

    class CertOnly(Dissector):
        name = "TLS"

        def could_be(self, s):
            return True

        def dissect(self, s, v):
            v.app_protocol = "TLS"
            v.tls = TlsInfo(server_names=["*.waze.com", "waze.com"])
            return Match.FINAL

    apps = Apps({"Waze": {"category": "Web", "hosts": ["waze.com"]}})
    v = Engine(registry=[CertOnly()], apps=apps, port_guess=False).classify(sample())
    assert (v.app_protocol, v.application, v.host) == ("TLS", "Waze", "")


def test_payload_metadata_has_no_control_characters():
    from shared.models import HttpInfo

    class Evil(Dissector):
        name = "HTTP"

        def could_be(self, s):
            return True

        def dissect(self, s, v):
            v.app_protocol = "HTTP"
            v.http = HttpInfo(url="/\x1b[2J\n", user_agent="ua\r\nX-Injected: 1")
            v.extra["banner"] = "a\x00b"
            return Match.FINAL

    v = Engine(registry=[Evil()], apps=Apps({}), port_guess=False).classify(sample())
    assert v.http.url.isprintable() and v.http.user_agent.isprintable() and v.extra["banner"] == "a\\x00b"
    # represented text: the original is recoverable (docs/storage.md)
    from shared.text import unrepresent

    assert unrepresent(v.http.url) == "/\x1b[2J\n" and unrepresent(v.http.user_agent) == "ua\r\nX-Injected: 1"


def test_sloppy_dissector_output_is_repaired():
    class Sloppy(Dissector):
        name = "X"

        def could_be(self, s):
            return True

        def dissect(self, s, v):
            v.__dict__["host"] = None           # bypassing validation, as a buggy dissector could
            v.__dict__["app_protocol"] = "X"
            v.extra["n"] = 5
            return Match.FINAL

    v = Engine(registry=[Sloppy()], apps=Apps({}), port_guess=False).classify(sample())
    assert (v.app_protocol, v.host, v.extra["n"]) == ("X", "", "5")
    Verdict.model_validate_json(v.model_dump_json())


def test_declared_gates_skip_calls_without_changing_answers():
    from services.classify.dissectors import breadth_util as bu

    calls = []

    class Magic(bu.Simple):
        name = "Magic"
        transports = bu.TCP_UDP
        magic = (b"MAG",)

        def check(self, p, from_src, s):
            calls.append(self.name)
            return p.startswith(b"MAG")

    class Gated(bu.Simple):
        name = "Gated"
        transports = bu.TCP_UDP
        ports = frozenset({7777})
        port_gate = True

        def check(self, p, from_src, s):
            calls.append(self.name)
            return True

    e = Engine(registry=[bu.PortHint("Hint", [9999]), Magic(), Gated()], apps=Apps({}))
    assert len(e._dissectors_for("TCP")) == 2                      # the PortHint is never called
    v = e.classify(sample(src_payloads=[b"xyz"], payload_dirs="s"))
    assert calls == [] and (v.app_protocol, v.confidence) == ("Hint", "port")   # neither gate opened
    v = e.classify(sample(src_payloads=[b"MAGIC"], payload_dirs="s", dst_port=7777))
    assert v.app_protocol == "Magic" and calls == ["Magic"]
    v = e.classify(sample(flow_id="other", src_payloads=[b"zzz"], payload_dirs="s", dst_port=7777))
    assert v.app_protocol == "Gated"


def _lead_dissectors():
    from services.classify.dissectors import REGISTRY

    return [(d, t, n, first) for d in REGISTRY for t, (n, first) in (getattr(d, "lead", None) or {}).items()]


def test_lead_gates_are_declared_where_they_hold():
    """The registry's declared lead gates exist (the engine's skip is used) and each names its transport."""
    gates = _lead_dissectors()
    assert {d.name for d, *_ in gates} >= {"Munin", "RTSP", "Gnutella", "BitTorrent", "FTP_DATA", "SSDP"}
    for d, t, n, first in gates:
        assert t in d.transports and n > 0 and first


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


import pytest  # noqa: E402


@pytest.mark.parametrize("gate", _lead_dissectors(), ids=lambda g: f"{g[0].name}-{g[1]}")
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_lead_gate_holds_for_payloads_without_the_lead_bytes(gate, data):
    """Dissector.lead is a promise: without one of those first bytes in the first n payloads (arrival order)
    the dissector says NO and leaves the verdict as it was, so the engine may skip it.  Payloads from the
    dissector's own vocabulary with the first byte changed, and random ones; later payloads anything."""
    from services.classify.dissectors import breadth_util as bu

    d, t, n, first = gate
    words = [b"RTSP/1.0 200 OK\r\n", b"OPTIONS rtsp://x/ RTSP/1.0\r\n", b"# munin node at h\n", b"GNUTELLA CONNECT/0.6",
             b"\x13BitTorrent protocol" + bytes(40), b"type=file;size=1; a\r\n", b"-rw-r--r-- 1 a b " + b"x" * 40,
             b"M-SEARCH * HTTP/1.1\r\nHOST: x\r\n", b"NOTIFY * HTTP/1.1\r\n", b"HTTP/1.1 200 OK\r\nST: x\r\n"]
    bad = st.one_of(st.sampled_from(words), st.binary(max_size=60))
    bad = bad.map(lambda p: p if not p or p[0] not in first else bytes([(p[0] + 1) % 256 if (p[0] + 1) % 256 not in first
                                                                        else 0x7f if 0x7f not in first else 0x01]) + p[1:])
    bad = bad.filter(lambda p: not p or p[0] not in first)
    head = data.draw(st.lists(st.tuples(st.booleans(), bad), min_size=1, max_size=n))
    tail = data.draw(st.lists(st.tuples(st.booleans(), st.one_of(st.binary(max_size=40), st.sampled_from(words))),
                              max_size=3)) if len(head) == n else []
    items = head + tail
    port = data.draw(st.sampled_from(sorted(d.ports) + [40001]))
    s = sample(transport=t, dst_port=port, src_payloads=[p for f, p in items if f],
               dst_payloads=[p for f, p in items if not f], payload_dirs="".join("s" if f else "d" for f, _ in items))
    assert list(bu.ordered(s, n)) == items[:n]
    v = Engine(registry=[], apps=Apps({})).new_verdict(s)
    before = v.model_dump()
    assert d.dissect(s, v) == Match.NO
    assert v.model_dump() == before


def test_engine_skips_a_dissector_by_its_lead_gate():
    calls = []

    class Lead(Dissector):
        name = "Lead"
        transports = frozenset({"TCP"})
        lead = {"TCP": (2, b"L")}

        def could_be(self, s):
            calls.append("could_be")
            return True

        def dissect(self, s, v):
            calls.append("dissect")
            v.app_protocol = self.name
            return Match.FINAL

    e = Engine(registry=[Lead()], apps=Apps({}), port_guess=False)
    assert e.classify(sample(src_payloads=[b"xx", b"yy", b"Lz"], payload_dirs="sss")).app_protocol == "Unknown"
    assert calls == []                                              # L only third: skipped
    v = e.classify(sample(flow_id="f2", src_payloads=[b"xx"], dst_payloads=[b"Lz"], payload_dirs="sd"))
    assert v.app_protocol == "Lead" and calls == ["could_be", "dissect"]
    calls.clear()
    assert e.classify(sample(flow_id="f3", transport="UDP", src_payloads=[b"xx"])).app_protocol == "Unknown"
    assert calls == []                                              # not on UDP: not a candidate at all
