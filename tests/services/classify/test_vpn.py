"""OpenVPN, WireGuard, IPsec/IKE, SOCKS and tinc dissectors (vpn.py) from bytes built per their documents."""

from __future__ import annotations

import struct

from services.classify.engine import Engine
from tests.services.classify.flowsample import sampler

ENGINE = Engine(port_guess=False, final_memo=0)


_s = sampler("UDP")


def ovpn(op: int, sid: bytes) -> bytes:
    return bytes([op << 3]) + sid + b"\x00" + b"\x00\x00\x00\x00"


def test_openvpn_udp_reset_pair_and_plain_client_reset():
    s = _s(src=[ovpn(7, b"A" * 8)], dst=[ovpn(8, b"B" * 8)], dport=1194)
    assert ENGINE.classify(s).app_protocol == "OpenVPN"
    assert ENGINE.classify(_s(src=[ovpn(7, b"A" * 8)], dport=443)).app_protocol == "OpenVPN"


def test_openvpn_tcp_length_prefix():
    c, d = ovpn(7, b"A" * 8), ovpn(8, b"B" * 8)
    s = _s("TCP", src=[struct.pack("!H", len(c)) + c], dst=[struct.pack("!H", len(d)) + d], dport=1194)
    assert ENGINE.classify(s).app_protocol == "OpenVPN"


def test_wireguard_handshake_sizes():
    init = b"\x01\x00\x00\x00" + b"\x11" * 144
    resp = b"\x02\x00\x00\x00" + b"\x22" * 88
    assert ENGINE.classify(_s(src=[init], dst=[resp], dport=51820)).app_protocol == "WireGuard"
    assert ENGINE.classify(_s(src=[b"\x01\x00\x00\x00" + b"\x11" * 100], dport=51820)).app_protocol != "WireGuard"


def test_ike_v2_sa_init_and_nat_t_marker():
    hdr = b"I" * 8 + b"\x00" * 8 + bytes([33, 0x20, 34, 0x08]) + struct.pack("!I", 0)
    ike = hdr + struct.pack("!I", 28 + 8) + b"\x00" * 8
    assert ENGINE.classify(_s(src=[ike], sport=500, dport=500)).app_protocol == "IPSec"
    nat_t = b"\x00\x00\x00\x00" + hdr + struct.pack("!I", 28 + 8) + b"\x00" * 8
    assert ENGINE.classify(_s(src=[nat_t], sport=4500, dport=4500)).app_protocol == "IPSec"


def test_esp_and_ah_transports():
    """nDPI 5.0 names the IP protocols ESP (50) and AH (51) themselves; IPSec is IKE."""
    assert ENGINE.classify(_s("ESP", src=[b"\x00\x00\x01\x00" * 8], sport=0, dport=0)).app_protocol == "ESP"
    assert ENGINE.classify(_s("50", src=[b"\x00\x00\x01\x00" * 8], sport=0, dport=0)).app_protocol == "ESP"
    assert ENGINE.classify(_s("AH", src=[b"\x01\x04\x00\x00" * 6], sport=0, dport=0)).app_protocol == "AH"
    assert ENGINE.classify(_s("51", dst=[b"\x01\x04\x00\x00" * 6], sport=0, dport=0)).app_protocol == "AH"


def test_socks5_method_negotiation_and_socks4_connect():
    assert ENGINE.classify(_s("TCP", src=[b"\x05\x02\x00\x01"], dst=[b"\x05\x00"], dport=1080)).app_protocol == "SOCKS"
    s4 = b"\x04\x01\x00\x50\x0a\x00\x00\x01user\x00"
    assert ENGINE.classify(_s("TCP", src=[s4], dst=[b"\x00\x5a" + b"\x00" * 6], dport=1080)).app_protocol == "SOCKS"
    assert ENGINE.classify(_s("TCP", src=[b"\x05\x02\x00\x01"], dst=[b"HTTP/1.1 400"], dport=1080)).app_protocol != "SOCKS"


def test_tinc_id_request():
    assert ENGINE.classify(_s("TCP", src=[b"0 node_a 17.7\n"], dport=655)).app_protocol == "TINC"


def test_cisco_vpn_and_ayiya():
    assert ENGINE.classify(_s(src=[b"\xfe\x57\x7e\x2b" + b"\x00" * 40], sport=10000, dport=10000)).app_protocol == "CiscoVPN"
    s = _s(src=[b"\x11\x52\x29\x00" + struct.pack("!I", 1_000_000) + b"\x00" * 40], sport=5072, dport=5072)
    s.first_seen = 1_000_100.0
    assert ENGINE.classify(s).app_protocol == "Ayiya"
    s.first_seen = 1_000_000.0 + 86400 * 365 * 6
    assert ENGINE.classify(s).app_protocol != "Ayiya"


def test_openvpn_server_side_only_never_raises():
    from services.classify.dissectors.vpn import OpenVPN
    from shared.models import Verdict
    s = _s(src=[], dst=[ovpn(8, b"B" * 8)], dport=1194)
    d = OpenVPN()
    assert d.could_be(s)
    assert d.dissect(s, Verdict(timestamp=0, probe="t")) == 0


def test_ultrasurf_marker():
    assert ENGINE.classify(_s("TCP", src=[b"\xcc\x1c\x30\x41\x5b\xa4\x38\x66" + b"\x99" * 100], dport=37898)).app_protocol == "UltraSurf"
