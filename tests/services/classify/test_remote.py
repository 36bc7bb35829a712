"""Remote access and RPC dissectors (remote.py) from bytes built per their specifications."""

from __future__ import annotations

import struct

import pytest

from services.classify.engine import Engine
from tests.services.classify.flowsample import sample

ENGINE = Engine(port_guess=False, final_memo=0)


_s = sample


def x224_cr(var: bytes) -> bytes:
    cotp = bytes([6 + len(var), 0xE0, 0, 0, 0, 0, 0]) + var
    return b"\x03\x00" + struct.pack("!H", 4 + len(cotp)) + cotp


def test_rdp_connection_request_with_cookie():
    v = ENGINE.classify(_s(src=[x224_cr(b"Cookie: mstshash=alice\r\n\x01\x00\x08\x00\x03\x00\x00\x00")], dport=3389))
    assert v.app_protocol == "RDP" and v.extra["rdp_cookie"] == "alice"


def test_iso_tsap_connection_request_is_not_rdp():
    cr = x224_cr(b"\xc1\x02\x01\x00\xc2\x02\x01\x02\xc0\x01\x0a")
    dt = b"\x03\x00\x00\x1f\x02\xf0\x80\x32\x01\x00\x00\x00\x00\x00\x0e\x00\x00\x04\x01\x12\x0a\x10\x02\x00\x01\x00\x00\x81\x00\x00\x00"
    v = ENGINE.classify(_s(src=[cr, dt], dport=102))
    assert v.app_protocol == "S7Comm"


def test_rdp_udp_syn():
    syn = b"\xff\xff\xff\xff" + struct.pack("!HH", 64, 0x0001) + b"\x00" * 1224
    assert ENGINE.classify(_s("UDP", src=[syn], dport=3389)).app_protocol == "RDP"


@pytest.mark.parametrize("src,dst,port,name", [
    ([b"RFB 003.008\n"], [b"RFB 003.008\n"], 5900, "VNC"),
    ([b"\xff\xfd\x03\xff\xfb\x18"], [b"\xff\xfd\x25"], 23, "Telnet"),
    ([b"\x7f\x7fICA\x00"], [b"\x7f\x7fICA\x00"], 1494, "Citrix"),
    ([b"\x12\x34\x00\x01\x0a"], [b"AB\x00\x01\x09"], 8009, "AJP"),
    ([b"GIOP\x01\x02\x00\x00" + struct.pack("!I", 4) + b"\x00" * 4], [], 2809, "Corba"),
    ([b"NICK alice\r\nUSER alice 0 * :Alice\r\n"], [b":irc.example NOTICE * :hi\r\n"], 6667, "IRC"),
    ([b"MODE READER\r\n"], [b"200 news.example NNTP ready\r\n"], 119, "Usenet"),
    ([b"ceph v027"], [b"ceph v027"], 6789, "Ceph"),
    ([b"1022\x00", b"alice\x00alice\x00ls -l\x00"], [], 514, "RSH"),
])
def test_text_and_magic_protocols(src, dst, port, name):
    assert ENGINE.classify(_s(src=src, dst=dst, dport=port)).app_protocol == name


def test_dcerpc_bind_over_tcp():
    bind = struct.pack("<BBBB4sHHI", 5, 0, 11, 3, b"\x10\x00\x00\x00", 72, 0, 1) + b"\x00" * 56
    assert ENGINE.classify(_s(src=[bind], dport=135)).app_protocol == "DCERPC"


def test_xdmcp_query():
    assert ENGINE.classify(_s("UDP", src=[b"\x00\x01\x00\x02\x00\x01\x00"], dport=177)).app_protocol == "XDMCP"


def test_afp_dsi_open_session():
    dsi = struct.pack("!BBHIII", 0, 4, 1, 0, 6, 0) + b"\x01\x04\x00\x00\x04\x00"
    assert ENGINE.classify(_s(src=[dsi], dport=548)).app_protocol == "AFP"


def test_proxy_protocol_v1_and_v2():
    v1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 52176 443\r\n\x16\x03\x01\x00\x05hello"
    assert ENGINE.classify(_s(src=[v1], dport=443)).app_protocol == "HAProxy"
    v2 = b"\r\n\r\n\x00\r\nQUIT\n" + b"\x21\x11\x00\x0c" + b"\x00" * 12
    assert ENGINE.classify(_s(src=[v2], dport=443)).app_protocol == "HAProxy"
    assert ENGINE.classify(_s(src=[b"PROXY HTTP/1.1 nonsense\r\n"], dport=443)).app_protocol != "HAProxy"
