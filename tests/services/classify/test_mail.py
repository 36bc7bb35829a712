"""SMTP/POP3/IMAP/FTP control dissector (mail.py): greetings, commands, STARTTLS upgrades, metadata."""

from __future__ import annotations

from services.classify.engine import Engine
from shared.models import FlowSample

ENGINE = Engine(port_guess=False, final_memo=0)


def _s(src=(), dst=(), dport=25, dirs=None) -> FlowSample:
    src, dst = list(src), list(dst)
    if dirs is None:   # server greets first, then client/server alternate
        dirs = "".join("d" + ("s" if i < len(src) else "") for i in range(len(dst))) + "s" * max(0, len(src) - len(dst))
    return FlowSample(timestamp=1.0, probe="t", transport="TCP", src_ip="10.0.0.1", src_port=40000,
                      dst_ip="10.0.0.2", dst_port=dport, first_seen=1.0, src_payloads=src, dst_payloads=dst,
                      payload_dirs=dirs)


def test_smtp_session_metadata():
    s = _s(src=[b"EHLO client.example\r\n", b"MAIL FROM:<a@example.com>\r\n", b"RCPT TO:<b@example.org>\r\n"],
           dst=[b"220 mx.example.org ESMTP ready\r\n", b"250-mx.example.org\r\n250 SIZE\r\n", b"250 OK\r\n"])
    v = ENGINE.classify(s)
    assert v.app_protocol == "SMTP" and v.host == "mx.example.org"
    assert v.extra["smtp_mail_from"] == "<a@example.com>" and v.extra["smtp_rcpt_to"] == "<b@example.org>"
    assert v.extra["commands"].startswith("EHLO,MAIL,RCPT")


def test_smtp_starttls_is_smtps():
    s = _s(src=[b"EHLO c\r\n", b"STARTTLS\r\n", b"\x16\x03\x01\x00\x05hello"],
           dst=[b"220 mx ESMTP\r\n", b"250 STARTTLS\r\n", b"220 2.0.0 Ready to start TLS\r\n"])
    assert ENGINE.classify(s).app_protocol == "SMTPS"


def test_pop3_and_stls():
    s = _s(src=[b"USER alice\r\n", b"PASS x\r\n", b"STAT\r\n"], dst=[b"+OK POP3 ready\r\n", b"+OK\r\n", b"+OK\r\n"], dport=110)
    v = ENGINE.classify(s)
    assert v.app_protocol == "POP3" and v.extra["user"] == "alice"
    s = _s(src=[b"CAPA\r\n", b"STLS\r\n", b"\x16\x03\x01"], dst=[b"+OK ready\r\n", b"+OK\r\nSTLS\r\n.\r\n", b"+OK Begin TLS\r\n"], dport=110)
    assert ENGINE.classify(s).app_protocol == "POPS"


def test_imap_and_starttls():
    s = _s(src=[b"a1 CAPABILITY\r\n", b"a2 LOGIN u p\r\n", b"a3 SELECT INBOX\r\n"],
           dst=[b"* OK IMAP4rev1 ready\r\n", b"* CAPABILITY IMAP4rev1\r\na1 OK\r\n", b"a2 OK\r\n"], dport=143)
    assert ENGINE.classify(s).app_protocol == "IMAP"
    s = _s(src=[b"a1 STARTTLS\r\n", b"\x16\x03\x01", b"\x16\x03\x01"], dst=[b"* OK ready\r\n", b"a1 OK Begin TLS\r\n"], dport=143)
    assert ENGINE.classify(s).app_protocol == "IMAPS"


def test_ftp_control_not_smtp():
    s = _s(src=[b"USER anonymous\r\n", b"PASS x@\r\n", b"SYST\r\n"],
           dst=[b"220 (vsFTPd 3.0.3)\r\n", b"331 Please specify the password.\r\n", b"230 Login successful.\r\n"], dport=21)
    v = ENGINE.classify(s)
    assert v.app_protocol == "FTP_CONTROL" and v.extra["user"] == "anonymous"


def test_ftp_data_listing():
    listing = b"-rw-r--r--    1 0        0        1073741824 Jan 01  2020 1GB.zip\r\n"
    s = FlowSample(timestamp=1.0, probe="t", transport="TCP", src_ip="10.0.0.1", src_port=40001, dst_ip="10.0.0.2",
                   dst_port=25685, first_seen=1.0, dst_payloads=[listing], payload_dirs="d")
    assert ENGINE.classify(s).app_protocol == "FTP_DATA"


def test_plain_text_that_is_not_mail():
    s = _s(src=[b"hello there\r\n"], dst=[b"welcome\r\n"], dport=4000)
    assert ENGINE.classify(s).app_protocol not in ("SMTP", "POP3", "IMAP", "FTP_CONTROL")
