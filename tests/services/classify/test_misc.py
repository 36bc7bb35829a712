"""Magic-number, game, messaging and media dissectors (misc.py, games.py, messaging.py, media.py)."""

from __future__ import annotations

import struct

import pytest

from services.classify.engine import Engine
from shared.models import FlowSample
from tests.services.classify.flowsample import sampler

ENGINE = Engine(port_guess=False, final_memo=0)


_s = sampler("UDP")


def tplink(js: bytes) -> bytes:
    key, out = 171, bytearray()
    for c in js:
        key ^= c
        out.append(key)
    return bytes(out)


RAKNET_MAGIC = b"\x00\xff\xff\x00\xfe\xfe\xfe\xfe\xfd\xfd\xfd\xfd\x12\x34\x56\x78"

CASES = [
    ("UDP", [b"\x32\xff\x00\x04" + b"\x00" * 4 + b"\x11\x22\x33\x44"], [], 2152, "GTP"),
    ("UDP", [b"SpotUdp0" + b"\x00" * 36], [], 57621, "Spotify"),
    ("UDP", [tplink(b'{"system":{"get_sysinfo":{}}}')], [], 9999, "TPLINK_SHP"),
    ("TCP", [struct.pack("!I", 29) + tplink(b'{"system":{"get_sysinfo":{}}}')], [], 9999, "TPLINK_SHP"),
    ("UDP", [b"\x01\x00\x00\x00"], [], 10001, "UBNTAC2"),
    ("UDP", [b"BJNP\x02\x01\x00\x00\x17\xa4" + b"\x00" * 6], [], 8612, "BJNP"),
    ("UDP", [struct.pack("<IBBHIII", 10, 81, 0, 128, 1, 0, 0) + struct.pack("<I", 4) + b"abcd"], [], 8000, "KCP"),
    ("TCP", [b"NOSA" + struct.pack("!H", 16) + b"\x01\x01" + b"\x00" * 8], [], 80, "AVAST"),
    ("UDP", [b"\xff\xff\xff\xffTSource Engine Query\x00"], [], 27015, "Source_Engine"),
    ("UDP", [b"\x05" + RAKNET_MAGIC + b"\x0a" + b"\x00" * 40], [], 19132, "RakNet"),
    ("TCP", [b"<?xml version='1.0'?><stream:stream to='example.com' xmlns='jabber:client'>"], [], 5222, "Jabber"),
    ("TCP", [b"WA\x02\x05" + b"\x00" * 20], [], 443, "WhatsApp"),
    ("UDP", [b"T" * 16 + b"\xff" * 8 + b"\x00" * 16], [], 533, "Telegram"),
    ("TCP", [b"OPTIONS rtsp://10.0.0.2:8554/ RTSP/1.0\r\nCSeq: 1\r\n\r\n"], [b"RTSP/1.0 200 OK\r\n\r\n"], 8554, "RTSP"),
    ("TCP", [b"\x03" + b"\x00" * 1536], [], 1935, "RTMP"),
    ("UDP", [(b"\x47" + b"\x00" * 187) * 7], [], 1234, "MPEG_TS"),
    ("UDP", [b"TS\xf0\x9f\x92\xac" + b"\x00" * 50], [], 41641, "Tailscale"),
    ("TCP", [struct.pack("!IIII", 16, 0x00000015, 0, 1)], [], 2775, "SMPP"),
]


@pytest.mark.parametrize("transport,src,dst,port,name", CASES)
def test_signatures(transport, src, dst, port, name):
    assert ENGINE.classify(_s(transport, src=src, dst=dst, dport=port)).app_protocol == name


def test_sd_rtn_gives_edge_host():
    edge = b"104-166-161-75.edge.agora.io"
    p = b"\x00\x60\x2d\x94\x00\x00\x21\x00\x00\x00\x00\x00\x04SNI\x00" + struct.pack("<H", len(edge)) + edge + b"\x00" * 8
    v = ENGINE.classify(_s(src=[p], dport=8130))
    assert v.app_protocol == "SD-RTN" and v.host == edge.decode()


def test_websocket_frames_need_consistent_lengths():
    ok = [b"\x81\x05hello", b"\x81\x85abcd" + b"12345"]
    assert ENGINE.classify(_s("TCP", src=ok[:1], dst=ok[1:], dport=12345)).app_protocol == "WebSocket"
    assert ENGINE.classify(_s("TCP", src=[b"\x81\x05hel"], dst=[b"\x81\x05hello"], dport=12345)).app_protocol != "WebSocket"


def test_tplink_needs_json_after_decryption():
    assert ENGINE.classify(_s(src=[tplink(b"<xml/>")], dport=9999)).app_protocol != "TPLINK_SHP"


@pytest.mark.parametrize("payload,name", [
    (b"\x32\xab\x98\x64\x02\x00\x00\x00" + b"\x11" * 68, "Nintendo"),
    (b"\xff\xff\xff\xff\x21\x4c\x5f\xa0\x16\x00\x00\x00" + b"\x08" * 28, "Steam"),
    (b"\x01\x81sdping" + b"\x00" * 92, "SteamDatagramRelay"),
])
def test_game_platform_magics(payload, name):
    assert ENGINE.classify(_s(src=[payload], dport=27036)).app_protocol == name


def test_threema_handshake_sizes():
    s = FlowSample(timestamp=1.0, probe="t", transport="TCP", src_ip="10.0.0.1", src_port=50484, dst_ip="10.0.0.2",
                   dst_port=5222, first_seen=1.0, src_payloads=[b"\x01" * 48, b"\x02" * 191], dst_payloads=[b"\x03" * 80],
                   payload_dirs="sds")
    assert ENGINE.classify(s).app_protocol == "Threema"
    s.src_payloads = [b"\x01" * 48, b"\x02" * 190]
    assert ENGINE.classify(s).app_protocol != "Threema"


@pytest.mark.parametrize("transport,payload,name", [
    ("UDP", b"\x11" * 40 + b"\xaa\xaa\xaa\xaa\xbb\xbb\xbb\xbb", "RiotGames"),
    ("UDP", b"\x01\x02\xc8\x41" + b"\x00" * 14 + b"\x41\x30\x42\x31", "LoLWildRift"),
    ("TCP", b"\x00\x00" + struct.pack("!H", 60) + b"\x78\x01" + b"\x00" * 58, "TencentGames"),
    ("UDP", b"embeddedupdater.start,env=production,circuit=1" + b"x" * 60, "GaijinEntertainment"),
    ("UDP", b"\xb3\xaf\x8d\xe8" + b"\x00" * 30, "NetEaseGames"),
    ("UDP", b"\x40\x04\x00\x07\x0a\x00\x00\x01\x96\xf4\xc3\x04\x00\x6a\x18\x00\x04\x01\x00\x00\x0a\x00\x00\x02", "UFTP"),
])
def test_vendor_game_and_transfer_patterns(transport, payload, name):
    assert ENGINE.classify(_s(transport, src=[payload], dport=30000)).app_protocol == name


def test_world_of_warcraft_greeting_and_raknet_magic_deeper():
    wow = b"\x30\x00WORLD OF WARCRAFT CONNECTION - CLIENT TO SERVER\x00"
    assert ENGINE.classify(_s("TCP", src=[wow], dport=3724)).app_protocol == "WorldOfWarcraft"
    roblox = b"\x01\x00\x00\x1f" + b"\x11" * 29 + RAKNET_MAGIC + b"\x00" * 40
    assert ENGINE.classify(_s(src=[roblox], dport=53385)).app_protocol == "RakNet"


def test_rtmp_handshake_but_not_tpkt():
    c0c1 = b"\x03" + b"\x00" * 4 + b"\x09\x00\x7c\x02" + b"\x11" * 1528
    assert ENGINE.classify(_s("TCP", src=[c0c1[:1348], c0c1[1348:]], dport=6002)).app_protocol == "RTMP"
    tpkt = b"\x03\x00\x00\x13\x0e\xe0\x00\x00\x00\x00\x00\x01\x00\x08\x00\x0b\x00\x00\x00"
    assert ENGINE.classify(_s("TCP", src=[tpkt, b"\x16" * 1600], dport=6002)).app_protocol != "RTMP"


def test_protobuf_fields_and_imo():
    msg = b"\x12\x03bla" + b'"\t\x08\x01\x12\x05test1' * 8 + b"\x2d\xf3\x23\xa7\x44"
    assert ENGINE.classify(_s("TCP", src=[msg], dport=12345)).app_protocol == "Protobuf"
    assert ENGINE.classify(_s("TCP", src=[b"\x12\x03bla\x0f\xff\xff"], dport=12345)).app_protocol != "Protobuf"
    assert ENGINE.classify(_s(src=[b"\x07", b"\x07"], dport=57604)).app_protocol == "IMO"


def test_halflife2_needs_both_directions_and_xbox_marker():
    req = b"\xff\xff\xff\xffqconnect 0x01234567 000\x00"
    assert ENGINE.classify(_s(src=[req], dst=[b"\xff\xff\xff\xffAchallenge 0x7654321 000\x00"], dport=27005)).app_protocol == "HalfLife2"
    assert ENGINE.classify(_s(src=[req], dport=27005)).app_protocol != "HalfLife2"
    xbox = b"\x00\x00\x00\x00\x0c\x58\x76\x00\x00\x00" + b"\x01" * 10
    assert ENGINE.classify(_s(src=[xbox], dport=3074)).app_protocol == "Xbox"


def test_viber_tcp_frames():
    frame = struct.pack("<H", 24) + b"\x00" * 4 + b"\xfc\xff\x05\x80" + b"\x00" * 14
    assert ENGINE.classify(_s("TCP", src=[frame], dport=5242)).app_protocol == "Viber"
    assert ENGINE.classify(_s("TCP", src=[frame[:-1]], dport=5242)).app_protocol != "Viber"


def test_path_of_exile_flute_and_bt_lsd():
    poe = b"\x00\x03\x00\x37\x75\x60\x00\x02\x00\x09nDPI_Test\xec\x8f\xec\xf2" + b"\x00\x00\x00\x00\x40\x00\x00\x01"
    assert ENGINE.classify(_s("TCP", src=[poe], dport=6112)).app_protocol == "PathofExile"
    lct = b"\x10\x10\x08\x00" + b"\x00" * 28       # 8 words of LCT header
    fdt = lct + b'\x00\x00\x00\x00<?xml version="1.0" encoding="UTF-8"?><FDT-Instance Expires="1">' + b" " * 200
    assert ENGINE.classify(_s(src=[fdt], dport=40085)).app_protocol == "FLUTE"
    lsd = b"BT-SEARCH * HTTP/1.1\r\nHost: 239.192.152.143:6771\r\nPort: 6881\r\nInfohash: " + b"a" * 40 + b"\r\n\r\n"
    assert ENGINE.classify(_s(src=[lsd], dport=6771)).app_protocol == "BitTorrent"


def test_crynetwork_markers():
    p = bytes([26]) + b"\x00\x00\x08\xed" + b"\x00" * 11 + b"\x01\x00\x00\x00\x07\x00\x00\x00\x03\x07" + b"\x00" * 10
    assert len(p) == 36
    assert ENGINE.classify(_s(src=[p], dport=64090)).app_protocol == "CryNetwork"


def xiaomi_msg(fields: bytes) -> bytes:
    """A Xiaomi push message: magic 0xC2FE0005, the length of what follows the 12-byte header,
    0x00020016, four more header bytes, then one-byte-type/one-byte-length fields."""
    body = b"\x00\x00\x00\xaf" + fields
    return struct.pack("!III", 0xC2FE0005, len(body), 0x00020016) + body


def xf(t: int, val: bytes) -> bytes:
    return bytes([t, len(val)]) + val


def test_xiaomi_client_message_names_the_server():
    client = xiaomi_msg(b"\x08\x00" + xf(0x1A, b"xiaomi.com") + xf(0x2A, b"CONN") + xf(0x12, b"Redmi Note 8T")
                        + b"\x28\x2e" + xf(0x32, b"wifi") + xf(0x3A, b"Push.Example.NET:5222") + xf(0x42, b"ru_RU")
                        + b"\x00\x00")
    server = xiaomi_msg(xf(0x1A, b"xiaomi.com") + xf(0x3A, b"other.example") + b"\x00\x00")
    v = ENGINE.classify(_s("TCP", src=[client], dst=[server], sport=45106, dport=5222))
    assert (v.app_protocol, v.host) == ("Xiaomi", "push.example.net")
    # the server's fields are not read (nDPI: its field types mean other things)
    v = ENGINE.classify(_s("TCP", src=[server], dst=[client], sport=5222, dport=45106))
    assert (v.app_protocol, v.host) == ("Xiaomi", "")
    # a length field that does not match the message: Xiaomi, no fields read
    bad = client[:4] + b"\x00\x00\x00\x01" + client[8:]
    v = ENGINE.classify(_s("TCP", src=[bad], sport=45106, dport=5222))
    assert (v.app_protocol, v.host) == ("Xiaomi", "")
    # a field running past the end is not read
    trunc = xiaomi_msg(xf(0x1A, b"xiaomi.com") + bytes([0x3A, 200]) + b"cut.example")
    assert ENGINE.classify(_s("TCP", src=[trunc], sport=45106, dport=5222)).host == ""


def fcgi(rtype: int, content: bytes, req: int = 1, pad: int = 0) -> bytes:
    """A FastCGI record (FastCGI 1.0, 3.3): version 1, type, request id, content length, padding."""
    return struct.pack("!BBHHBB", 1, rtype, req, len(content), pad, 0) + content + b"\x00" * pad


def nv(name: bytes, value: bytes) -> bytes:
    """A name-value pair with one-byte lengths (FastCGI 1.0, 3.4: lengths below 128)."""
    return bytes([len(name), len(value)]) + name + value


def test_fastcgi_host_from_http_host_param():
    begin = fcgi(1, struct.pack("!HB5x", 1, 0))                    # FCGI_BEGIN_REQUEST, role RESPONDER
    params = fcgi(4, nv(b"SCRIPT_URL", b"/api/0.6/map") + nv(b"HTTP_HOST", b"API.Example.ORG")
                  + nv(b"REQUEST_METHOD", b"GET"))
    end = fcgi(4, b"")
    s = _s("TCP", src=[begin, params, end, fcgi(5, b"")], dst=[fcgi(6, b"Status: 200\r\n\r\n")], dport=9000,
           dirs="ssssd")
    v = ENGINE.classify(s)
    assert (v.app_protocol, v.host) == ("FastCGI", "api.example.org") and v.final
    # only the BEGIN_REQUEST so far: FastCGI, not final (the parameters come next)
    v = ENGINE.classify(_s("TCP", src=[begin], dport=9000))
    assert v.app_protocol == "FastCGI" and not v.final
    # a PARAMS record whose pairs do not fill it (nDPI reads one-byte lengths only): no host
    long_ua = struct.pack("!BI", 15, 0x80000000 | 200) + b"HTTP_USER_AGENT" + b"u" * 200
    odd = fcgi(4, nv(b"HTTP_HOST", b"a.example") + long_ua)
    v = ENGINE.classify(_s("TCP", src=[begin, odd, end], dport=9000))
    assert (v.app_protocol, v.host) == ("FastCGI", "")
