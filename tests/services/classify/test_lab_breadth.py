"""Breadth dissectors on traffic made here and now by real clients in the namespace lab: Python's
smtplib against an SMTP server, util-linux logger sending RFC 5424 syslog, and curl through a SOCKS5
proxy.  The probe's tcpdump capture goes through capture's FlowMeter and the engine, as in production."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.lab import lab_fixture, servers
from tests.conftest import classify_capture
from tests.lab.tools import start_tcpdump, wait_pcap_settled

pytestmark = [pytest.mark.root, pytest.mark.slow]

lab = lab_fixture(scope="module", mode="hub", net=75)

# a minimal SOCKS5 server (RFC 1928: no-auth method, CONNECT to an IPv4 address), relaying one connection
SOCKS_SERVER = r'''
import socket, sys, threading
def pipe(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
    except OSError:
        pass
    finally:
        b.close()
def handle(c):
    c.recv(262)
    c.sendall(b"\x05\x00")
    req = c.recv(262)
    host = socket.inet_ntoa(req[4:8]); port = int.from_bytes(req[8:10], "big")
    u = socket.create_connection((host, port))
    c.sendall(b"\x05\x00\x00\x01" + socket.inet_aton(host) + port.to_bytes(2, "big"))
    threading.Thread(target=pipe, args=(u, c), daemon=True).start()
    pipe(c, u)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 1080)); s.listen(8)
print("READY", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
'''

SMTP_CLIENT = r'''
import smtplib, sys
s = smtplib.SMTP(sys.argv[1], 25, local_hostname="client.lab.test", timeout=10)
s.ehlo("client.lab.test")
s.sendmail("alice@lab.test", ["bob@lab.test"], "Subject: lab\r\n\r\nhello\r\n")
s.quit()
'''


@pytest.fixture(scope="module")
def verdicts(lab, tmp_path_factory):
    work = tmp_path_factory.mktemp("labbreadth")
    srv = lab.server.ip
    servers.start_http(lab)
    smtpd = lab.popen("server", sys.executable, "-W", "ignore", "-m", "smtpd", "-n", "-c", "DebuggingServer",
                      f"{srv}:25", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.wait_listening("server", 25)
    (work / "socks.py").write_text(SOCKS_SERVER)
    socks = lab.popen("server", sys.executable, str(work / "socks.py"), srv, stdout=subprocess.PIPE,
                      stderr=subprocess.DEVNULL, text=True)
    assert socks.stdout.readline().strip() == "READY"
    lab.wait_listening("server", 1080)
    pcap = work / "lab.pcap"
    dump = start_tcpdump(lab, "probe", lab.probe_iface, pcap)
    (work / "smtp_client.py").write_text(SMTP_CLIENT)
    lab.run("client", sys.executable, str(work / "smtp_client.py"), srv, check=True)
    lab.run("client", "logger", "--rfc5424", "-n", srv, "-P", "514", "-d", "-t", "ftlab", "breadth lab message",
            check=True)
    lab.run("client", "curl", "-s", "--max-time", "10", "--socks5", f"{srv}:1080", f"http://{srv}/", check=True)
    wait_pcap_settled(pcap)
    dump.terminate()
    dump.wait(timeout=10)
    smtpd.terminate()
    socks.terminate()
    return classify_capture(pcap, probe="lab")


def _only(verdicts, **kw):
    got = [v for v in verdicts if all(getattr(v, k) == val for k, val in kw.items())]
    assert len(got) == 1, (kw, [(v.app_protocol, v.dst_port) for v in verdicts])
    return got[0]


def test_smtp_session(verdicts):
    v = _only(verdicts, dst_port=25)
    assert v.app_protocol == "SMTP"
    assert v.extra["smtp_helo"] == "client.lab.test" and v.extra["smtp_mail_from"] == "<alice@lab.test>"
    assert v.extra["smtp_rcpt_to"] == "<bob@lab.test>"


def test_syslog_rfc5424(verdicts):
    v = _only(verdicts, dst_port=514, transport="UDP")
    assert v.app_protocol == "Syslog"


def test_socks5_proxy(verdicts):
    v = _only(verdicts, dst_port=1080)
    assert v.app_protocol == "SOCKS"
