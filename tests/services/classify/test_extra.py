"""Header-defined protocols of extra.py (TDS, TNS, CQL, PPTP, L2TP, RADIUS, Diameter, IEC 104, OPC UA, ...)."""

from __future__ import annotations

import struct

import pytest

from services.classify.engine import Engine
from tests.services.classify.flowsample import sample

ENGINE = Engine(port_guess=False, final_memo=0)


_s = sample


def tds_prelogin() -> bytes:
    body = b"\x00\x00\x06\x00\x06\xff" + b"\x0f\x00\x07\xd0\x00\x00"
    return struct.pack("!BBHHBB", 0x12, 1, 8 + len(body), 0, 0, 0) + body


def tns_connect() -> bytes:
    data = b"(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=orcl)))"
    return struct.pack("!HHBBH", 8 + len(data), 0, 1, 0, 0) + data


CASES = [
    ("TCP", [tds_prelogin()], [], 1433, "MsSQL-TDS"),
    ("TCP", [tns_connect()], [], 1521, "Oracle"),
    ("TCP", [struct.pack("!BBhBI", 4, 0, 0, 5, 0)], [], 9042, "Cassandra"),
    ("TCP", [b"002egit-upload-pack /project.git\x00host=example\x00"], [], 9418, "Git"),
    ("TCP", [b"@RSYNCD: 31.0\n"], [], 873, "RSYNC"),
    ("TCP", [struct.pack("!HHI", 156, 1, 0x1A2B3C4D) + b"\x00" * 148], [], 1723, "PPTP"),
    ("UDP", [struct.pack("!HHHH", 0xC802, 12, 0, 0) + b"\x00" * 4], [], 1701, "L2TP"),
    ("UDP", [struct.pack("!BBH", 1, 7, 20) + b"\x00" * 16], [], 1812, "Radius"),
    ("TCP", [b"\x01" + (20).to_bytes(3, "big") + b"\x80" + (257).to_bytes(3, "big") + b"\x00" * 12], [], 3868, "Diameter"),
    ("TCP", [b"\x68\x04\x07\x00\x00\x00"], [], 2404, "IEC60870"),
    ("TCP", [b"HELF" + struct.pack("<I", 12) + b"\x00" * 4], [], 4840, "OPC-UA"),
    ("UDP", [b"\x06\x10\x02\x01" + struct.pack("!H", 14) + b"\x08\x01\x0a\x00\x00\x01\x0e\x57"], [], 3671, "KNXnet_IP"),
    ("UDP", [b"RQNT 1201 aaln/1@rgw.example.net MGCP 1.0\r\nX: 0123\r\n"], [], 2427, "MGCP"),
    ("UDP", [b"TS3INIT1\x00\x65\x88\x06\x00\x00\x00"], [], 9987, "TeamSpeak"),
    ("TCP", [b"8=FIX.4.2\x019=65\x0135=A\x01"], [], 9876, "FIX"),
    ("TCP", [b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f\x03\x00"], [], 5555, "ZeroMQ"),
]


@pytest.mark.parametrize("transport,src,dst,port,name", CASES)
def test_headers(transport, src, dst, port, name):
    assert ENGINE.classify(_s(transport, src=src, dst=dst, dport=port)).app_protocol == name


def test_whois_query_is_the_host():
    v = ENGINE.classify(_s(src=[b"example.com\r\n"], dst=[b"Domain Name: EXAMPLE.COM\r\n"], dport=43))
    assert v.app_protocol == "Whois-DAS" and v.host == "example.com"


def test_radius_length_must_match_and_oracle_needs_a_descriptor():
    assert ENGINE.classify(_s("UDP", src=[struct.pack("!BBH", 1, 7, 99) + b"\x00" * 16], dport=1812)).app_protocol != "Radius"
    bad = struct.pack("!HHBBH", 12, 0, 1, 0, 0) + b"junk"
    assert ENGINE.classify(_s(src=[bad], dport=1521)).app_protocol != "Oracle"


def test_eaq_probe_sequence_counts_up():
    probes = [bytes([0, 0, 1, d]) + b"\x00" * 12 for d in (1, 1, 2, 3)]
    assert ENGINE.classify(_s("UDP", src=probes, dport=6000)).app_protocol == "EAQ"
    jumbled = [bytes([0, 0, 1, d]) + b"\x00" * 12 for d in (1, 7, 2, 3)]
    assert ENGINE.classify(_s("UDP", src=jumbled, dport=6000)).app_protocol != "EAQ"


@pytest.mark.parametrize("transport,src,port,name", [
    ("UDP", [b"tivoconnect=1\nswversion=1\nmethod=broadcast\nmachine=Den\nplatform=pc\n"], 2190, "TiVoConnect"),
    ("UDP", [b"\x00\x0b\x00\x00\x00\x04\x00\x08\x00\x01\x00\x02\x00\x00\x00\x00"], 4534, "Armagetron"),
    ("UDP", [b"\xc7\xd9\x19\x99\x02\x00" + b"\x00" * 16 + b"\x7d\x00\x00"], 12060, "Crossfire"),
    ("UDP", [b"\x02\x00\x02\x80\x08\x00\x01\x00\x00\x00\x01\x00\x00\x00\xb1\x00\x04\x00\x01\x00\x00\x00"], 2222, "CIP"),
])
def test_nDPI_named_udp_protocols(transport, src, port, name):
    assert ENGINE.classify(_s(transport, src=src, dport=port)).app_protocol == name


@pytest.mark.parametrize("transport,src,port,name", [
    ("UDP", [b"\x00\x00\x55\xaa" + struct.pack("!I", 20) + b"\x00" * 8 + b"\x00\x00\xaa\x55"], 6667, "TuyaLP"),
    ("UDP", [b"\x06\x00\xff\x06" + b"\x00" * 8], 623, "RMCP"),
    ("TCP", [b"\x80\x01\x00\x01" + struct.pack("!I", 4) + b"ping" + b"\x00\x00\x00\x01\x00"], 9090, "Thrift"),
    ("TCP", [b"\x01\x00" + struct.pack("!I", 68) + b"\x00\x01\x00\x00" + b"ANY-SCP".ljust(16) + b"ECHOSCU".ljust(16) + b"\x00" * 32], 104, "DICOM"),
    ("TCP", [b"\x00REQ" + struct.pack("!II", 1, 4) + b"func"], 4730, "Gearman"),
    ("UDP", [b"\x00\x00\x00\xff\x00\x00\x00\x00\x00\x00\x00\x00\x49\x96\x02\xd2\xff\xff\xff\xff"], 22101, "GenshinImpact"),
])
def test_more_ndpi_protocols(transport, src, port, name):
    assert ENGINE.classify(_s(transport, src=src, dport=port)).app_protocol == name


def test_glbp_needs_both_ports_3222():
    hello = b"\x01\x00\x00\x01" + b"\x00" * 16
    assert ENGINE.classify(_s("UDP", src=[hello], sport=3222, dport=3222)).app_protocol == "GLBP"
    assert ENGINE.classify(_s("UDP", src=[hello], sport=5000, dport=3222)).app_protocol != "GLBP"


def test_jrmi_lotus_notes_vmware():
    assert ENGINE.classify(_s(src=[b"JRMI\x00\x02\x4b"], dport=1099)).app_protocol == "JRMI"
    nrpc = b"\x10\x00\x00\x00\x00\x00" + b"\x00\x00\x02\x00\x00\x40\x02\x0f" + b"\x00" * 8
    assert ENGINE.classify(_s(src=[nrpc], dport=1352)).app_protocol == "LotusNotes"
    assert ENGINE.classify(_s("UDP", src=[b"\xa4" + b"\x00" * 65], dport=902)).app_protocol == "VMware"
    assert ENGINE.classify(_s("UDP", src=[b"\xa4" + b"\x00" * 64], dport=902)).app_protocol != "VMware"


def test_ookla_hi_with_guid():
    s = _s(src=[b"HI 8e17cb65-c6b5-4b39-adcc-97006a1e4537\n"], dst=[b"HELLO 2.9 (2.9.2) 2021-11-30.2159.ffae0e0\n"], dport=8080)
    assert ENGINE.classify(s).app_protocol == "Ookla"
