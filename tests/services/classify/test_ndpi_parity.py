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


def dns_error(name: str, txid: int, rcode: int = 3, authority: bool = False) -> bytes:
    """A reply with an error rcode (RFC 1035 4.1.1; 3 = NXDOMAIN), optionally with the zone's SOA
    in the authority section (RFC 2308 2.1), no answers."""
    q = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\x00" + struct.pack("!HH", 12, 1)
    soa = b""
    if authority:
        rdata = b"\x02ns\xc0\x0c\x04host\xc0\x0c" + struct.pack("!IIIII", 1, 7200, 3600, 1209600, 300)
        soa = b"\xc0\x0c" + struct.pack("!HHIH", 6, 1, 300, len(rdata)) + rdata
    return struct.pack("!HHHHHH", txid, 0x8180 | rcode, 1, 0, 1 if authority else 0, 0) + q + soa


def test_dns_name_is_the_last_message_read_before_ndpi_stops():
    """nDPI reads a DNS flow packet by packet: every valid message names it again (the question of
    a query or a reply); a reply that carries a record, or a NOERROR reply, ends the reading, as
    does the sixth datagram read.  Reverse lookups sent back to back before their replies are
    named by the last one read."""
    names = ["%d.1.168.192.in-addr.arpa" % i for i in (1, 50, 61, 69, 71, 72, 80)]
    qs = [dns_query(n, txid=i, qtype=12) for i, n in enumerate(names)]
    nx = [dns_error(n, i) for i, n in enumerate(names)]
    # seven queries, then seven NXDOMAIN replies without records: nDPI stopped at the sixth query
    v = ENGINE.classify(sample("UDP", src=qs, dst=nx, dport=53, dirs="s" * 7 + "d" * 7))
    assert v.app_protocol == "DNS" and v.host == "72.1.168.192.in-addr.arpa" and v.final
    # three queries; an NXDOMAIN reply without records does not stop nDPI, the next one (with the
    # zone's SOA) does: its question names the flow, whatever comes after
    src = qs[:3] + [dns_query("later.example", txid=99)]
    dst = [dns_error(names[2], 2), dns_error(names[1], 1, authority=True), dns_error(names[0], 0)]
    v = ENGINE.classify(sample("UDP", src=src, dst=dst, dport=53, dirs="sssddsd"))
    assert v.host == names[1] and v.final
    # before anything stops it, the verdict is not final (the next packet may rename the flow)
    v = ENGINE.classify(sample("UDP", src=qs[:3], dst=[dns_error(names[2], 2)], dport=53, dirs="sssd"))
    assert v.host == names[2] and not v.final
    # a NOERROR reply ends the reading even without records (NODATA)
    nodata = dns_query("www.example.com", txid=7)
    nodata = nodata[:2] + b"\x81\x80" + nodata[4:]
    v = ENGINE.classify(sample("UDP", src=[dns_query("www.example.org", txid=8)], dst=[nodata], dport=53, dirs="ds"))
    assert v.host == "www.example.com" and v.final


def test_llmnr_is_named_by_its_first_packet():
    """nDPI never reads an LLMNR flow (RFC 4795, UDP 5355) past the packet that classified it."""
    qs = [dns_query("wpad", txid=1, flags=0), dns_query("printer", txid=2, flags=0)]
    v = ENGINE.classify(sample("UDP", src=qs, sport=50000, dport=5355))
    assert (v.app_protocol, v.host) == ("LLMNR", "wpad") and v.final


def test_dns_host_keeps_the_last_79_characters():
    """nDPI's host buffer holds 79 characters; a longer name keeps its end (the DNS log has it all)."""
    long_name = "x" * 60 + ".a234567890123456789." + "example.com"
    assert len(long_name) > 79
    v = ENGINE.classify(sample("UDP", src=[dns_query(long_name)], dst=[dns_reply(long_name)], dport=53))
    assert v.host == long_name[-79:] and len(v.host) == 79
    short = "short.example.com"
    assert ENGINE.classify(sample("UDP", src=[dns_query(short)], dst=[dns_reply(short)], dport=53)).host == short


def test_greeting_host_as_ndpi_reads_220_lines():
    """RFC 5321 4.2 / RFC 959: "220 <domain> <text>".  nDPI names the flow from the first 220 line
    that gives a name: the word after "220 " or "220-" when more text follows it on the line."""
    from services.classify.dissectors.mail import greeting_host

    assert greeting_host([b"220 mx.example.org ESMTP Postfix\r\n"]) == "mx.example.org"
    assert greeting_host([b"220 ProFTPD Server In Example\r\n"]) == "proftpd"
    assert greeting_host([b"220 lonely.example.org\r\n"]) == ""            # one word: no name
    assert greeting_host([b"220 (vsFTPd 3.0.3)\r\n"]) == ""                # "(" after the code: no name
    # a multi-line greeting whose first lines start with spaces: the first line that names something
    banner = [b"220-     Welcome to FTP.EXAMPLE.net,\r\n", b"220- \r\n", b"220-   Located here.\r\n",
              b"220 FTP server ready.\r\n"]
    assert greeting_host(banner) == "ftp"
    assert greeting_host([b"".join(banner)]) == "ftp"                     # several lines in one segment
    assert greeting_host([b"220-mail.example.com ESMTP\r\n220 ready\r\n"]) == "mail.example.com"
    # through the engine: an FTP control connection and an SMTP one, greeting first
    v = ENGINE.classify(sample(src=[b"USER anonymous\r\n"], dst=banner, dport=21, dirs="dddds"))
    assert v.app_protocol == "FTP_CONTROL" and v.host == "ftp"
    v = ENGINE.classify(sample(src=[b"EHLO client.example\r\n"], dst=[b"220 MX.Example.ORG ESMTP ready\r\n"],
                               dport=25, dirs="ds"))
    assert v.app_protocol == "SMTP" and v.host == "mx.example.org"
    # hostile bytes in a greeting become '?' and never exceed nDPI's 79 characters
    assert greeting_host([b"220 a\x00\x1bb" + b"c" * 200 + b" x\r\n"]) == ("c" * 79)
    assert greeting_host([b"220 a\x00\x1bb x\r\n"]) == "a??b"
