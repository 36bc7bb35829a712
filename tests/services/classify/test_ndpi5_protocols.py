"""Protocols nDPI 5.0 names that classify learnt (ndpi5.py, http.py), from bytes built per their
specifications: each message type the test names, both directions, either side first, and several
messages in one segment where the protocol allows it."""

from __future__ import annotations

import struct

import pytest

from services.classify.engine import Engine
from tests.services.classify.flowsample import sample

ENGINE = Engine(port_guess=False, final_memo=0)


def both_ways(transport, a, b, port, name, **kw):
    """The flow seen with a first (client side), then with b first (server side seen first)."""
    v1 = ENGINE.classify(sample(transport, src=a, dst=b, dport=port, dirs="s" * len(a) + "d" * len(b), **kw))
    v2 = ENGINE.classify(sample(transport, src=a, dst=b, dport=port, dirs="d" * len(b) + "s" * len(a), **kw))
    assert v1.app_protocol == name, v1.app_protocol
    assert v2.app_protocol == name, v2.app_protocol


def eth_arp() -> bytes:
    return b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x06" + b"\x00\x01\x08\x00\x06\x04\x00\x01" + b"\x00" * 20


def test_vxlan_rfc7348():
    hdr = b"\x08\x00\x00\x00" + (5000).to_bytes(3, "big") + b"\x00"
    both_ways("UDP", [hdr + eth_arp()], [hdr + eth_arp()], 4789, "VXLAN")
    assert ENGINE.classify(sample("UDP", src=[hdr + eth_arp()], dport=4789)).app_protocol == "VXLAN"   # one way
    bad = b"\x08\x00\x00\x01" + hdr[4:] + eth_arp()          # reserved bits set
    assert ENGINE.classify(sample("UDP", src=[bad], dport=4789)).app_protocol != "VXLAN"
    assert ENGINE.classify(sample("UDP", src=[hdr + eth_arp()], dport=9999)).app_protocol != "VXLAN"


def test_stomp_frames():
    connect = b"CONNECT\naccept-version:1.2\nhost:broker.example\n\n\x00"
    connected = b"CONNECTED\nversion:1.2\nserver:x/1\n\n\x00"
    both_ways("TCP", [connect], [connected], 61613, "STOMP")
    both_ways("TCP", [b"STOMP\r\naccept-version:1.1,1.2\r\nhost:h\r\n\r\n\x00"], [connected], 12345, "STOMP")
    # a SEND in the same segment as the CONNECT
    both_ways("TCP", [connect + b"SEND\ndestination:/q/a\n\nhi\x00"], [], 61613, "STOMP")


def hislip(msg_type: int, control: int, param: int, payload: bytes = b"") -> bytes:
    return b"HS" + bytes([msg_type, control]) + struct.pack("!IQ", param, len(payload)) + payload


def test_hislip_initialize_and_data():
    init = hislip(0, 0, (1 << 16) | 0x1234, b"hislip0")       # Initialize: version 1.0, vendor, sub-address
    resp = hislip(1, 0, (1 << 16) | 7)                         # InitializeResponse: session id 7
    both_ways("TCP", [init], [resp], 4880, "HiSLIP")
    data = hislip(7, 0, 1, b"*IDN?\n")                         # DataEnd
    both_ways("TCP", [data + hislip(6, 0, 2, b"x")], [hislip(7, 0, 1, b"ACME,1,2,3\n")], 4880, "HiSLIP")
    assert ENGINE.classify(sample(src=[b"HS" + b"\x00" * 5], dport=4880)).app_protocol != "HiSLIP"


def openwire_info() -> bytes:
    body = b"\x01" + b"ActiveMQ" + struct.pack("!I", 12) + b"\x01" + b"\x00" * 20
    return struct.pack("!I", len(body)) + body


def test_openwire_wireformat_info():
    both_ways("TCP", [openwire_info()], [openwire_info()], 61616, "OpenWire")
    both_ways("TCP", [openwire_info()], [], 5555, "OpenWire")


def trdp_pd(kind: bytes, data: bytes = b"\x00" * 8) -> bytes:
    hdr = struct.pack("!IH", 1, 0x0100) + kind + struct.pack("!IIII", 1000, 0, 0, len(data)) + b"\x00" * 16
    return hdr + data


def test_trdp_process_and_message_data():
    both_ways("UDP", [trdp_pd(b"Pr")], [trdp_pd(b"Pp")], 17224, "TRDP")
    both_ways("UDP", [trdp_pd(b"Pd")], [], 17224, "TRDP")
    md = struct.pack("!IH", 1, 0x0100) + b"Mr" + b"\x00" * 108
    both_ways("UDP", [md], [struct.pack("!IH", 1, 0x0100) + b"Mp" + b"\x00" * 108], 17225, "TRDP")
    assert ENGINE.classify(sample("UDP", src=[struct.pack("!IH", 1, 0x0200) + b"Pd" + b"\x00" * 40],
                                  dport=17224)).app_protocol != "TRDP"


def nano(msg: int, network: bytes = b"C") -> bytes:
    return b"R" + network + bytes([19, 19, 18, msg]) + b"\x00\x00" + b"\x00" * 64


def test_nano_node_messages():
    both_ways("UDP", [nano(2)], [nano(2)], 7075, "Nano")                  # keepalive
    both_ways("TCP", [nano(0x0A, b"X")], [nano(0x0A, b"X")], 7075, "Nano")  # node_id_handshake
    assert ENGINE.classify(sample("UDP", src=[b"R" + b"C" + bytes([18, 19, 17, 2]) + b"\x00" * 10],
                                  dport=7075)).app_protocol != "Nano"      # using > max


def test_lustre_lnet_hello():
    hello = struct.pack("<IHH", 0xEEBC0DED, 1, 0) + b"\x00" * 24
    both_ways("TCP", [hello], [hello], 988, "Lustre")
    acceptor = struct.pack("<II", 0xACCE7100, 1) + b"\x00" * 8
    both_ways("TCP", [acceptor + hello], [hello], 988, "Lustre")


def varint_str(b: bytes) -> bytes:
    return bytes([len(b)]) + b


def test_clickhouse_native_hello():
    client = b"\x00" + varint_str(b"ClickHouse client") + b"\x18\x0a\xb1\xa9\x03" + varint_str(b"default") + b"\x00" + b"\x00"
    server = b"\x00" + varint_str(b"ClickHouse") + b"\x18\x08\xb1\xa9\x03" + varint_str(b"UTC")
    both_ways("TCP", [client], [server], 9000, "ClickHouse")
    both_ways("TCP", [client], [], 19000, "ClickHouse")


def w3gs(msg_id: int, body: bytes) -> bytes:
    return bytes([0xF7, msg_id]) + struct.pack("<H", 4 + len(body)) + body


def test_warcraft3_w3gs():
    both_ways("TCP", [w3gs(0x1E, b"\x00" * 20)], [w3gs(0x04, b"\x01" * 12)], 6112, "Warcraft3")
    both_ways("TCP", [w3gs(0x42, b"\x00" * 4) + w3gs(0x44, b"\x00" * 6)], [], 6112, "Warcraft3")   # two in one segment
    assert ENGINE.classify(sample(src=[bytes([0xF7, 0x1E, 0x40, 0x00]) + b"\x00" * 4], dport=6112)).app_protocol != "Warcraft3"


def test_mumble_udp_ping():
    ts = struct.pack("!Q", 123456789)
    ping = b"\x00\x00\x00\x00" + ts
    pong = b"\x00\x01\x04\x05" + ts + struct.pack("!III", 3, 100, 72000)
    both_ways("UDP", [ping], [pong], 64738, "Mumble")
    assert ENGINE.classify(sample("UDP", src=[ping], dst=[b"\x00" * 24], dport=64738)).app_protocol != "Mumble"


def test_i3d_and_discord_are_told_apart():
    disc = struct.pack("!HHI", 1, 70, 0x0003CFA8) + b"\x00" * 66
    both_ways("UDP", [disc], [struct.pack("!HHI", 2, 70, 0x0003CFA8) + b"10.0.0.1".ljust(66, b"\x00")], 50004, "i3D")
    other = struct.pack("!HHI", 1, 70, 0x00001234) + b"\x00" * 66          # Discord's IP discovery, another SSRC
    assert ENGINE.classify(sample("UDP", src=[other], dport=50004)).app_protocol == "Discord"


def test_atg_tank_gauge_commands():
    both_ways("TCP", [b"\x01I20100\r\n"], [b"\nI20100\n08/19/2024 02:52\n\nIN-TANK INVENTORY\n"], 10001, "ATG")
    both_ways("TCP", [b"\x01s10100\r\n"], [], 10001, "ATG")
    assert ENGINE.classify(sample(src=[b"\x01X20100\r\n"], dport=10001)).app_protocol != "ATG"


def test_soap_xml_stream_after_four_packets():
    x = b'<?xml version="1.0" encoding="UTF-8"?>\r\n<Envelope/>'
    v = ENGINE.classify(sample(src=[x], dport=8000))
    assert v.app_protocol == "SOAP" and not v.final          # PARTIAL until nDPI's fourth packet
    v = ENGINE.classify(sample(src=[x, b"more"], dst=[x, b"more"], dport=8000))
    assert v.app_protocol == "SOAP" and v.final


def test_zoom_peer_to_peer_first_packet():
    ip, uuid = b"192.0.2.10", b"AF065D88-AA9B-4A81-80A4-B85CD341B921"
    pkt = b"\x1f\x02\x01" + b"\x00" * 21 + struct.pack("!I", len(ip)) + ip + struct.pack("!I", len(uuid)) + uuid + b"\x00" * 4
    both_ways("UDP", [pkt], [pkt], 46757, "Zoom")
    assert ENGINE.classify(sample("UDP", src=[pkt + b"\x00" * 4], dport=46757)).app_protocol != "Zoom"   # lengths disagree


@pytest.mark.parametrize("req,resp,app", [
    (b"PROPFIND /dav/ HTTP/1.1\r\nHost: files.example\r\nDepth: 1\r\n\r\n", b"HTTP/1.1 207 Multi-Status\r\n\r\n", "WebDAV"),
    (b"MKCOL /dav/new/ HTTP/1.1\r\nHost: files.example\r\n\r\n", b"HTTP/1.1 201 Created\r\n\r\n", "WebDAV"),
    (b"RPC_IN_DATA /rpc/rpcproxy.dll?ex.example:6001 HTTP/1.1\r\nHost: mail.example\r\n\r\n",
     b"HTTP/1.1 200 Success\r\n\r\n", "MS-RPCH"),
    (b"GET /live/index.m3u8 HTTP/1.1\r\nHost: cdn.example\r\n\r\n",
     b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.apple.mpegurl\r\n\r\n#EXTM3U\n", "HLS"),
    (b"GET /stream HTTP/1.1\r\nHost: radio.example\r\nIcy-MetaData: 1\r\n\r\n", b"ICY 200 OK\r\nicy-name: R\r\n\r\n", "IceCast"),
    (b"GET /stream HTTP/1.0\r\nHost: radio.example\r\n\r\n",
     b"HTTP/1.0 200 OK\r\nServer: Icecast 2.4.4\r\nContent-Type: audio/mpeg\r\n\r\n", "IceCast"),
])
def test_applications_over_http(req, resp, app):
    for dirs in ("sd", "ds"):
        v = ENGINE.classify(sample(src=[req], dst=[resp], dport=80, dirs=dirs))
        assert v.app_protocol == "HTTP" and v.application == app, (v.app_protocol, v.application)


@pytest.mark.parametrize("host,app", [
    ("zattoo.com", "Zattoo"), ("www.gitlab.com", "GitLab"), ("api.likee.video", "Likee"),
    ("www.hotspotshield.com", "HotspotShield"), ("one.ubuntu.com", "UbuntuONE"), ("cloud.tencent.com", "Tencent"),
    ("www.forticlient.com", "FortiClient"), ("account.elderscrollsonline.com", "TES_Online"),
    ("www.truphone.com", "TruPhone"), ("www.dofus.com", "Dofus"), ("www.guildwars2.com", "Guildwars"),
])
def test_applications_nDPI_names_by_host(host, app):
    """Applications nDPI 5.0 names by the services' public domains (HTTP Host here; TLS SNI and DNS
    names go through the same lookup)."""
    req = b"GET / HTTP/1.1\r\nHost: " + host.encode() + b"\r\n\r\n"
    v = ENGINE.classify(sample(src=[req], dst=[b"HTTP/1.1 200 OK\r\n\r\n"], dport=80))
    assert v.app_protocol == "HTTP" and v.application == app


def test_kakaotalk_call_media():
    from services.classify.apps import default_apps

    assert default_apps().voip_apps.get("KakaoTalk") == "KakaoTalk_Voice"


def test_json_rpc_over_tcp():
    req = b'{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}\n'
    resp = b'{"jsonrpc": "2.0", "result": 19, "id": 1}\n'
    both_ways("TCP", [req], [resp], 4444, "JSON-RPC")
    both_ways("TCP", [b"[" + req.strip() + b"," + req.strip() + b"]"], [], 4444, "JSON-RPC")   # a batch
    assert ENGINE.classify(sample(src=[b'{"jsonrpc": "1.0", "method": "x"}'], dport=4444)).app_protocol != "JSON-RPC"
    assert ENGINE.classify(sample(src=[b'{"name": "jsonrpc", "method": "x"}'], dport=4444)).app_protocol != "JSON-RPC"
