"""Behaviours nDPI 5.0 defines and classify follows, from crafted bytes (RFC 1035 messages etc.)."""

from __future__ import annotations

import struct

from services.classify.engine import Engine
from tests.services.classify.flowsample import sample

ENGINE = Engine(port_guess=False, final_memo=0)


def dns_query(name: str, txid: int = 0x1234, flags: int = 0x0100, qd: int = 1, qtype: int = 1) -> bytes:
    q = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\x00" + struct.pack("!HH", qtype, 1)
    return struct.pack("!HHHHHH", txid, flags, qd, 0, 0, 0) + q


def dns_reply(name: str, addr: bytes = b"\x0a\x00\x00\x01", txid: int = 0x1234) -> bytes:
    q = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\x00" + struct.pack("!HH", 1, 1)
    ans = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + addr
    return struct.pack("!HHHHHH", txid, 0x8180, 1, 1, 0, 0) + q + ans


def test_dns_query_without_reply_is_named_by_the_last_query():
    """nDPI re-reads the name from each query until a reply comes; datagrams it does not accept as
    a query header (QR set, no or too many questions) are skipped."""
    qs = [dns_query("first.example"), dns_query("second.example"), dns_query("bad.example", qd=0x7300),
          dns_query("third.example")]
    v = ENGINE.classify(sample("UDP", src=qs, dport=53))
    assert v.app_protocol == "DNS" and v.host == "third.example"
    # with a reply, the reply's question names the flow (the first reply ends nDPI's inspection)
    v = ENGINE.classify(sample("UDP", src=[dns_query("a.example")], dst=[dns_reply("a.example")], dport=53))
    assert v.host == "a.example" and v.final
    # retransmissions of one query: that name
    q = dns_query("same.example")
    assert ENGINE.classify(sample("UDP", src=[q, q, q], dport=53)).host == "same.example"


def test_dns_short_first_datagram_does_not_hide_the_next():
    qs = [dns_query("x.example")[:9], dns_query("next.example")]
    v = ENGINE.classify(sample("UDP", src=qs, dport=53))
    assert v.app_protocol == "DNS" and v.host == "next.example"
    # the reply alone (the query was not captured): its question names the flow
    v = ENGINE.classify(sample("UDP", src=[dns_query("y.example")[:9]], dst=[dns_reply("1.0.0.127.in-addr.arpa")],
                               dport=53))
    assert v.host == "1.0.0.127.in-addr.arpa"


def test_host_names_are_lower_case_as_ndpi_reports_them():
    v = ENGINE.classify(sample("UDP", src=[dns_query("WWW.Example.COM")], dst=[dns_reply("WWW.Example.COM")], dport=53))
    assert v.host == "www.example.com"
    req = b"GET / HTTP/1.1\r\nHost: MiXeD.Example.org\r\nUser-Agent: t\r\n\r\n"
    assert ENGINE.classify(sample(src=[req], dport=80)).host == "mixed.example.org"
    # an SSH software version is not a host name: its case stays
    v = ENGINE.classify(sample(src=[b"SSH-2.0-OpenSSH_9.6 Ubuntu\r\n"], dst=[b"SSH-2.0-OpenSSH_9.6\r\n"], dport=22))
    assert v.app_protocol == "SSH"
    assert v.host == "" or v.host != v.host.lower()


def test_dnscrypt_certificate_query_names_no_host():
    q = dns_query("2.dnscrypt-cert.example.net", qtype=16)
    r = q[:2] + b"\x81\x80" + q[4:6] + b"\x00\x01" + q[8:]
    v = ENGINE.classify(sample("UDP", src=[q], dst=[r], dport=443))
    assert v.app_protocol == "DNScrypt" and v.host == ""


def test_overruled_dissector_leaves_no_host_behind():
    """An HTTP request answered by an SSH server: HTTP (the first claim) with the request's Host,
    not the SSH banner the SSH dissector read on the way."""
    req = b"GET / HTTP/1.1\r\nHost: 192.0.2.7\r\nUser-Agent: curl/8\r\n\r\n"
    v = ENGINE.classify(sample(src=[req], dst=[b"SSH-2.0-OpenSSH_8.7\r\n"], dport=22))
    assert v.app_protocol == "HTTP" and v.host == "192.0.2.7"


def test_protobuf_fallback_waits_for_the_protocols_before_it():
    """A bare protobuf-looking datagram is only a PARTIAL answer until the flow has shown four
    payload packets (so an RTP stream's first packet does not settle it as Protobuf)."""
    msg = bytes([0x08, 0x01, 0x10, 0x02, 0x18, 0x03, 0x20, 0x04, 0x28, 0x05, 0x30, 0x06, 0x38, 0x07,
                 0x42, 0x03]) + b"abc"
    v = ENGINE.classify(sample("UDP", src=[msg], dport=30000))
    assert v.app_protocol == "Protobuf" and not v.final
    v = ENGINE.classify(sample("UDP", src=[msg, msg], dst=[msg, msg], dport=30000))
    assert v.app_protocol == "Protobuf" and v.final


def test_cloudflare_warp_handshake():
    init = b"\xc1\x00\x00\x00" + b"\x11" * 144
    resp = b"\xc2\x00\x00\x00" + b"\x22" * 88
    for dirs in ("sd", "ds"):
        v = ENGINE.classify(sample("UDP", src=[init], dst=[resp], dport=2408, dirs=dirs))
        assert v.app_protocol == "CloudflareWarp" and v.final
    v = ENGINE.classify(sample("UDP", src=[init], dport=2408))        # the initiation alone: not yet final
    assert v.app_protocol == "CloudflareWarp" and not v.final
    wg = b"\x01\x00\x00\x00" + b"\x11" * 144                   # plain WireGuard is not WARP
    assert ENGINE.classify(sample("UDP", src=[wg], dport=2408)).app_protocol != "CloudflareWarp"


def test_ftp_security_extensions_are_ftps():
    """RFC 2228: AUTH accepted (234) or its ADAT exchange begun (334) makes the control channel FTPS;
    a refused AUTH (504) leaves it FTP_CONTROL."""
    greet = b"220 ftp.example FTP server ready.\r\n"
    for mech, reply in ((b"AUTH TLS\r\n", b"234 Proceed with negotiation.\r\n"),
                        (b"AUTH GSSAPI\r\n", b"334 Using authentication type; ADAT must follow.\r\n")):
        v = ENGINE.classify(sample(src=[mech, b"ADAT abc\r\n", b"PBSZ 0\r\n"], dst=[greet, reply], dport=2811, dirs="dsdss"))
        assert v.app_protocol == "FTPS", mech
    v = ENGINE.classify(sample(src=[b"AUTH TLS\r\n", b"USER a\r\n", b"PASS b\r\n"],
                               dst=[greet, b"504 Not implemented.\r\n"], dport=21, dirs="dsdss"))
    assert v.app_protocol == "FTP_CONTROL"


def test_discord_call_joined_mid_flow():
    """A capture that starts mid-call: RTCP reports first, then Discord's 8-byte keep-alive from the
    server; RTCP is only a PARTIAL answer until three packets, so the keep-alive names the flow."""
    rtcp = bytes([0x81, 0xC9, 0x00, 0x07]) + b"\x00\x16\x2f\xfd" + b"\x11" * 24 + b"\x00" * 16
    keep = b"\x13\x37\xca\xfe\xa9\x01\x00\x00"
    v = ENGINE.classify(sample("UDP", src=[rtcp], dport=54935, sport=50001))
    assert v.app_protocol == "RTCP" and not v.final
    v = ENGINE.classify(sample("UDP", src=[rtcp, rtcp], dst=[keep], dport=54935, sport=50001, dirs="ssd"))
    assert v.app_protocol == "Discord"
    v = ENGINE.classify(sample("UDP", src=[rtcp, rtcp, rtcp], dport=40000, sport=40002))
    assert v.app_protocol == "RTCP" and v.final
