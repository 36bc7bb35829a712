"""`flowtarget analyze` keeps malformed DNS messages: a record with the reason in dns.jsonl and the
count and reasons in the summary (issue 13 item 9: they vanished, counted only in a classify metric)."""

from __future__ import annotations

import struct

import dpkt

from tests.flowtarget.test_analyze import analyze, read_jsonl
from tests.services.capture.test_flows import MAC_C, MAC_S, C, S, udpf

NAME = b"\x03www\x07example\x03com\x00"


def header(txid, flags=0x0100, qd=1, an=0):
    return struct.pack(">HHHHHH", txid, flags, qd, an, 0, 0)


def test_malformed_dns_is_logged_with_the_reason_and_summarised(tmp_path):
    good_q = header(1) + NAME + b"\x00\x01\x00\x01"
    good_r = header(1, 0x8180, 1, 1) + NAME + b"\x00\x01\x00\x01" + b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes(4)
    bad = {
        "name longer than 255 bytes": header(2) + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01",
        "compression loop": header(3) + b"\xc0\x0c\x00\x01\x00\x01",
        "label type 0x41": header(4) + b"\x41abc\x00\x00\x01\x00\x01",
    }
    pcap = tmp_path / "dns.pcap"
    with open(pcap, "wb") as fh:
        w = dpkt.pcap.Writer(fh)
        w.writepkt(udpf(C, 5000, S, 53, good_q), ts=1000.0)
        w.writepkt(udpf(S, 53, C, 5000, good_r, smac=MAC_S, dmac=MAC_C), ts=1000.004)
        for i, msg in enumerate(bad.values()):
            w.writepkt(udpf(C, 5001 + i, S, 53, msg), ts=1001.0 + i)
    out = tmp_path / "out"
    proc = analyze(str(pcap), "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    dns = read_jsonl(out / "dns.jsonl")
    errors = sorted(d.get("error", "") for d in dns if d.get("error"))
    assert errors == sorted(bad), dns
    resp = [d for d in dns if d["kind"] == "response"]
    assert len(resp) == 1 and abs(resp[0]["rtt_ms"] - 4.0) < 0.01
    assert "malformed (logged with the reason): 3" in proc.stdout, proc.stdout
    for reason in bad:
        assert reason in proc.stdout
