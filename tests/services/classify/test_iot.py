"""Industrial and IoT dissectors (iot.py) from bytes built per their standards."""

from __future__ import annotations

import struct

import pytest

from services.classify.engine import Engine
from tests.services.classify.flowsample import sample

ENGINE = Engine(port_guess=False, final_memo=0)


_s = sample


def enip(cmd: int, data: bytes = b"") -> bytes:
    return struct.pack("<HHII8sI", cmd, len(data), 0, 0, b"\x00" * 8, 0) + data


CASES = [
    ("UDP", [b"\x81\x0b\x00\x0c\x01\x20\xff\xff\x00\xff\x10\x08"], 47808, "BACnet"),
    ("TCP", [struct.pack("!HHHBBHH", 1, 0, 6, 1, 3, 0, 10)], 502, "Modbus"),
    ("TCP", [b"\x05\x64\x05\xc0\x01\x00\x00\x04\xe9\x21"], 20000, "DNP3"),
    ("TCP", [enip(0x0065, b"\x01\x00\x00\x00")], 44818, "EthernetIP"),
    ("TCP", [b"\x7e\xa0\x07\x03\x21\x93\x0f\x01\x7e"], 4059, "IEC62056"),
    ("TCP", [struct.pack("!BBBBHH", 1, 0, 0, 0, 2, 13) + b"\x01\x00\x00\x75\x30"], 5094, "HART-IP"),
    ("UDP", [b"\x80\x00\x02\x00\x00\x00\x00\x00\x00\x7a\x01\x01\x00\xcc"], 9600, "FINS"),
    ("TCP", [b"\xaa\x41\x00\x12\x00\xf1\x00\x00\x00\x00\x00\x00\x00\x00\x00\x05\xd7\xd0"], 4712, "IEEE-C37118"),
    ("UDP", [b"\x40\x01\x95\x22\xb7storage"], 5683, "COAP"),
    ("UDP", [b"RTPS\x02\x03\x01\x0f" + b"\x00" * 12], 7400, "RTPS"),
    ("TCP", [b"\x04\x00\x00\x08\x00\x00\x00\x01"], 6653, "OpenFlow"),
    ("UDP", [b"\x20\x01\x00\x08\x00\x00\x01\x00\x60\x00\x04\x00"], 8805, "PFCP"),
]


@pytest.mark.parametrize("transport,src,port,name", CASES)
def test_industrial_headers(transport, src, port, name):
    assert ENGINE.classify(_s(transport, src=src, dport=port)).app_protocol == name


def test_s7commplus_and_mms_after_cotp():
    dt = b"\x03\x00\x00\x0d\x02\xf0\x80"
    assert ENGINE.classify(_s(src=[dt + b"\x72\x01\x00\x00\x00\x00"], dport=102)).app_protocol == "S7CommPlus"
    assert ENGINE.classify(_s(src=[dt + b"\x0d\x05\x06\x01\x00\x00"], dport=102)).app_protocol == "ISO9506-1-MMS"


def test_modbus_umas_application():
    v = ENGINE.classify(_s(src=[struct.pack("!HHHBB", 0, 0, 4, 0, 0x5A) + b"\x00\x02"], dport=502))
    assert (v.app_protocol, v.application) == ("Modbus", "UMAS")


def test_modbus_length_must_agree():
    assert ENGINE.classify(_s(src=[struct.pack("!HHHBBHH", 1, 0, 9, 1, 3, 0, 10)], dport=502)).app_protocol != "Modbus"


def test_ether_s_bus_crc_ethersio_and_dlep():
    from services.classify.dissectors.iot import crc16_xmodem
    assert crc16_xmodem(b"123456789") == 0x31C3        # the CRC-16/XMODEM check value
    frame = struct.pack("!I", 16) + b"\x01\x00" + b"\x01\x02\x03\x04\x05\x06\x07\x08"
    frame += struct.pack("!H", crc16_xmodem(frame))
    assert ENGINE.classify(_s("UDP", src=[frame], dport=5050)).app_protocol == "Ether-S-Bus"
    bad = frame[:-1] + bytes([frame[-1] ^ 1])
    assert ENGINE.classify(_s("UDP", src=[bad], dport=5050)).app_protocol != "Ether-S-Bus"
    assert ENGINE.classify(_s("UDP", src=[b"ESIO\x00\x01\x00" + b"\x00" * 13], dport=6060)).app_protocol == "EtherSIO"
    assert ENGINE.classify(_s("UDP", src=[b"DLEP" + b"\x00" * 28], dport=854)).app_protocol == "DLEP"
