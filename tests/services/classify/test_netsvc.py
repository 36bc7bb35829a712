"""Network-service dissectors (netsvc.py, netbios.py, ipproto.py) from bytes built as their RFCs describe."""

from __future__ import annotations

import struct

import pytest

from services.classify.engine import Engine
from shared.models import FlowSample
from tests.services.classify.flowsample import sampler

_s = sampler("UDP")


ENGINE = Engine(port_guess=False, final_memo=0)


def proto(s: FlowSample) -> str:
    return ENGINE.classify(s).app_protocol


def dhcp_discover(hostname: bytes) -> bytes:
    fixed = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, 0x1234, 0, 0x8000, b"\0" * 4, b"\0" * 4,
                        b"\0" * 4, b"\0" * 4, b"\x00\x11\x22\x33\x44\x55" + b"\0" * 10, b"\0" * 64, b"\0" * 128)
    opts = b"\x63\x82\x53\x63" + b"\x35\x01\x01" + b"\x0c" + bytes([len(hostname)]) + hostname + b"\xff"
    return fixed + opts


def nb_name(name: str) -> bytes:
    raw = name.upper().ljust(15).encode()[:15] + b"\x00"
    return b"\x20" + bytes(c for b in raw for c in (0x41 + (b >> 4), 0x41 + (b & 0xF))) + b"\x00"


def test_dhcp_with_hostname_option():
    v = ENGINE.classify(_s(src=[dhcp_discover(b"printer-7")], sport=68, dport=67))
    assert v.app_protocol == "DHCP" and v.host == "printer-7" and v.extra["dhcp_message_type"] == "1"
    broken = dhcp_discover(b"x")[:236] + b"\x00\x00\x00\x00"        # no magic cookie
    assert proto(_s(src=[broken], sport=68, dport=67)) != "DHCP"


def test_dhcpv6_solicit():
    solicit = b"\x01\x12\x34\x56" + struct.pack("!HH", 8, 2) + b"\x00\x00"      # elapsed-time option
    assert proto(_s(src=[solicit], sport=546, dport=547)) == "DHCPV6"


def test_ntp_client_and_mode_6():
    client = bytes([0x23]) + b"\x00" * 47                  # LI 0, VN 4, mode 3
    assert proto(_s(src=[client], sport=123, dport=123)) == "NTP"
    assert proto(_s(src=[bytes([0x16, 0x01]) + b"\x00" * 10], dport=123)) == "NTP"
    assert proto(_s(src=[client], sport=5000, dport=5001)) != "NTP"


def test_netbios_name_query_sets_host():
    q = struct.pack("!HHHHHH", 0x8A51, 0x0110, 1, 0, 0, 0) + nb_name("WORKGROUP") + b"\x00\x20\x00\x01"
    v = ENGINE.classify(_s(src=[q], sport=137, dport=137))
    assert v.app_protocol == "NetBIOS" and v.host.lower() == "workgroup"


def test_smb_over_direct_tcp_is_netbios_with_smb_application():
    smb2 = b"\xfeSMB" + struct.pack("<HHIHH", 64, 0, 0, 0, 0) + b"\x00" * 52
    v = ENGINE.classify(_s("TCP", src=[struct.pack("!I", len(smb2)) + smb2], dport=445))
    assert (v.app_protocol, v.application) == ("NetBIOS", "SMBv23")
    smb1 = b"\xffSMBr" + b"\x00" * 27
    v = ENGINE.classify(_s("TCP", src=[struct.pack("!I", len(smb1)) + smb1], dport=445))
    assert (v.app_protocol, v.application) == ("NetBIOS", "SMBv1")


def test_snmp_v2c_get_request():
    pdu = bytes.fromhex("a01c020101020100020100301130" "0f060b2b060102010101000000000500")
    body = b"\x02\x01\x01" + b"\x04\x06public" + pdu
    assert proto(_s(src=[b"\x30" + bytes([len(body)]) + body], dport=161)) == "SNMP"


def test_syslog_udp_and_octet_counted_tcp():
    assert proto(_s(src=[b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed"], dport=514)) == "Syslog"
    assert proto(_s("TCP", src=[b"60 <165>1 2003-10-11T22:14:15.003Z host app - ID47 - message"], dport=601)) == "Syslog"
    assert proto(_s(src=[b"<999>x"], dport=514)) != "Syslog"


def test_ssdp_notify_host_header():
    p = b"NOTIFY * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nNT: upnp:rootdevice\r\nSERVER: Linux UPnP/1.0\r\n\r\n"
    v = ENGINE.classify(_s(src=[p], dport=1900))
    assert v.app_protocol == "SSDP" and v.host == "239.255.255.250:1900"


def test_kerberos_as_req_udp_and_tcp():
    body = b"\x30\x0f\xa1\x03\x02\x01\x05\xa2\x03\x02\x01\x0a\xa3\x03\x02\x01\x00"
    asreq = b"\x6a" + bytes([len(body)]) + body
    assert proto(_s(src=[asreq], dport=88)) == "Kerberos"
    assert proto(_s("TCP", src=[struct.pack("!I", len(asreq)) + asreq], dport=88)) == "Kerberos"


def test_ldap_bind_request():
    bind = b"\x60\x07\x02\x01\x03\x04\x00\x80\x00"
    msg = b"\x02\x01\x01" + bind
    assert proto(_s("TCP", src=[b"\x30" + bytes([len(msg)]) + msg], dport=389)) == "LDAP"


def test_tftp_read_request_and_data_ack():
    assert proto(_s(src=[b"\x00\x01boot.img\x00octet\x00"], dport=69)) == "TFTP"
    data = b"\x00\x03\x00\x01" + b"x" * 512
    assert proto(_s(src=[data], dst=[b"\x00\x04\x00\x01"], sport=3445, dport=50618)) == "TFTP"


def test_nfs_rpc_call():
    call = struct.pack("!IIIIII", 0x5E1D0B94, 0, 2, 100003, 3, 1) + b"\x00" * 16
    assert proto(_s(src=[call], sport=1023, dport=2049)) == "NFS"
    assert proto(_s("TCP", src=[struct.pack("!I", 0x80000000 | len(call)) + call], dport=2049)) == "NFS"


def test_bgp_open_and_zabbix():
    op = b"\xff" * 16 + struct.pack("!HB", 29, 1) + b"\x04\xfd\xe8\x00\xb4\x0a\x00\x00\x01\x00"
    assert proto(_s("TCP", src=[op], dport=179)) == "BGP"
    assert proto(_s("TCP", src=[b"ZBXD\x01" + struct.pack("<Q", 2) + b"{}"], dport=10051)) == "Zabbix"


def cd_part(t: int, value: bytes) -> bytes:
    """A collectd binary-protocol part: type, length (header included), value."""
    return struct.pack("!HH", t, 4 + len(value)) + value


def test_collectd_parts_give_host():
    """collectd's network protocol: string parts end with NUL, numbers are 64-bit, values carry a
    count, their data-source types and the values.  nDPI reads at most five parts and needs three."""
    host = cd_part(0x0000, b"Sensor1.LAN\x00")
    parts = [host, cd_part(0x0008, struct.pack("!Q", 1 << 40)), cd_part(0x0009, struct.pack("!Q", 10 << 30)),
             cd_part(0x0002, b"cpu\x00"), cd_part(0x0004, b"cpu\x00"),
             cd_part(0x0006, struct.pack("!HB", 1, 2) + struct.pack("!Q", 12345))]
    v = ENGINE.classify(_s(src=[b"".join(parts)], sport=36064, dport=25826))
    assert v.app_protocol == "collectd" and v.host == "sensor1.lan" and v.final
    # parts after the fifth are not read: an unknown type there does not matter
    odd = b"".join(parts[:5]) + cd_part(0xFFFF, b"cpu\x00") + parts[5]
    assert ENGINE.classify(_s(src=[odd], dport=25826)).host == "sensor1.lan"
    # ... but within the first three it ends the reading: too few parts
    bad = parts[0] + cd_part(0xFFFF, b"cpu\x00") + b"".join(parts[1:])
    assert proto(_s(src=[bad], dport=25826)) != "collectd"
    assert proto(_s(src=[b"".join(parts[:2])], dport=25826)) != "collectd"
    # a part longer than the datagram
    assert proto(_s(src=[host + struct.pack("!HH", 2, 400) + b"cpu\x00"], dport=25826)) != "collectd"
    # an encrypted datagram: one AES-256 part (user name, IV, ciphertext) filling it
    user = b"admin"
    body = struct.pack("!H", len(user)) + user + bytes(16) + bytes(range(40))
    v = ENGINE.classify(_s(src=[cd_part(0x0210, body)], dport=25826))
    assert v.app_protocol == "collectd" and v.host == ""


@pytest.mark.parametrize("transport,name", [("ICMP", "ICMP"), ("ICMPV6", "ICMPV6"), ("IGMP", "IGMP"), ("58", "ICMPV6")])
def test_ip_protocols(transport, name):
    assert proto(_s(transport, src=[b"\x08\x00"], sport=0, dport=0)) == name
