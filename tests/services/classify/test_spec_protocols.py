"""Dissector answers built from protocol specifications (crafted bytes), positive and near-miss
negative: where two protocols can read the same bytes, the one nDPI picks."""

from __future__ import annotations

import struct

from services.classify.engine import Engine
from shared.models import FlowSample
from tests.services.classify.flowsample import sample

ENGINE = Engine(port_guess=False, final_memo=0)


def dns_query(txid: int, name: str, qtype: int = 12) -> bytes:
    q = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\x00"
    return struct.pack("!HHHHHH", txid, 0, 1, 0, 0, 0) + q + struct.pack("!HH", qtype, 1)


def test_llmnr_query_whose_id_reads_as_a_raknet_frame_set_is_llmnr():
    # RFC 4795: an LLMNR query to 224.0.0.252:5355; transaction IDs are random, so one in
    # 0x80..0x8D makes the datagram start like a RakNet frame set (and retransmissions repeat it)
    q = dns_query(0x85A8, "10.112.31.172.in-addr.arpa")
    for src in ([q], [q, q]):
        v = ENGINE.classify(sample("UDP", src=src, sport=60000, dport=5355))
        assert (v.app_protocol, v.host) == ("LLMNR", "10.112.31.172.in-addr.arpa")
        assert ENGINE.classify(sample("UDP", src=src, sport=60000, dport=53)).app_protocol == "DNS"
    # near miss: the same bytes on RakNet's port are a RakNet frame set, not DNS
    assert ENGINE.classify(sample("UDP", src=[q], sport=60000, dport=19132)).app_protocol == "RakNet"


def test_raknet_offline_message_is_raknet_even_on_a_name_service_port():
    magic = bytes.fromhex("00ffff00fefefefefdfdfdfd12345678")
    ping = b"\x01" + struct.pack("!Q", 1234) + magic + struct.pack("!Q", 99)
    assert ENGINE.classify(sample("UDP", src=[ping], sport=5355, dport=19132)).app_protocol == "RakNet"


def _by_ip(dst_ip: str) -> tuple[str, str]:
    s = FlowSample(timestamp=1.0, probe="t", flow_id="", transport="UDP", src_ip="192.168.1.2", src_port=40000,
                   dst_ip=dst_ip, dst_port=50000, first_seen=1.0, src_payloads=[b"\x00\x01\x02\x03"],
                   dst_payloads=[], payload_dirs="s")
    v = Engine(port_guess=False, final_memo=0).classify(s)
    return v.app_protocol, v.confidence


def test_azure_datacenter_ranges_are_azure_and_office_ranges_microsoft():
    # Microsoft publishes Azure's datacenter prefixes (service tags) apart from Microsoft 365's
    # endpoints; nDPI names the former Azure and the latter Microsoft
    assert _by_ip("20.40.1.1") == ("Azure", "ip")
    assert _by_ip("13.70.1.1") == ("Azure", "ip")
    assert _by_ip("52.97.1.1") == ("Microsoft", "ip")
    assert _by_ip("131.253.1.1") == ("Microsoft", "ip")


# ----------------------------------------------------------------- STUN: which call service

COOKIE = b"\x21\x12\xa4\x42"


def stun_msg(mtype: int, attrs: list[tuple[int, bytes]], tid: bytes = b"\x01" * 12) -> bytes:
    """An RFC 8489 message: header, then TLV attributes padded to 4 bytes."""
    body = b"".join(struct.pack("!HH", t, len(v)) + v + b"\x00" * (-len(v) % 4) for t, v in attrs)
    return struct.pack("!HH", mtype, len(body)) + COOKIE + tid + body


def _stun(src, dst=(), dport=3478):
    return ENGINE.classify(sample("UDP", src=list(src), dst=list(dst), sport=50000, dport=dport))


def test_stun_call_service_from_its_attributes():
    soft = (0x8022, b"client 1.0")                   # SOFTWARE says nothing about the service
    # WhatsApp's proprietary attributes (0x4000..0x4004, 0x4007)
    for t in (0x4000, 0x4002, 0x4007):
        v = _stun([stun_msg(0x0001, [soft, (t, b"\x00\x01\x02\x03")])], [stun_msg(0x0101, [])])
        assert (v.app_protocol, v.application, v.category) == ("STUN", "WhatsAppCall", "VoIP")
    # Facebook Messenger calls: a REALM of Facebook's names FacebookVoip (not WhatsAppCall)
    alloc = stun_msg(0x0003, [(0x0014, b"facebook.com"), (0x0015, b"nonce-1")])
    v = _stun([stun_msg(0x0003, [(0x0019, b"\x11\x00\x00\x00")])], [stun_msg(0x0113, [(0x0014, b"facebook.com")]), alloc])
    assert (v.app_protocol, v.application, v.host) == ("STUN", "FacebookVoip", "facebook.com")
    # other realms and vendor attributes
    assert _stun([stun_msg(0x0001, [(0x0014, b"turn.telegram.org")])]).application == "TelegramVoip"
    assert _stun([stun_msg(0x0001, [(0x0014, b"signal.org")])]).application == "SignalVoip"
    assert _stun([stun_msg(0x0001, [(0x8070, b"\x00\x00\x00\x06")])]).application == "Skype_TeamsCall"
    assert _stun([stun_msg(0x0001, [(0x0101, b"\x00" * 4)])]).application == "Zoom"
    # the first telling attribute wins: WhatsApp's before a later Facebook realm
    v = _stun([stun_msg(0x0001, [(0x4001, b"\x00" * 4), (0x0014, b"facebook.com")])])
    assert v.application == "WhatsAppCall"
    # near misses: plain STUN to an unknown address names no service; a realm of some other domain neither
    assert _stun([stun_msg(0x0001, [soft])]).application == ""
    v = _stun([stun_msg(0x0001, [(0x0014, b"example.org")])])
    assert (v.app_protocol, v.application, v.host) == ("STUN", "", "example.org")


def test_http_request_without_a_target_still_gives_its_host():
    # "GET HTTP/1.1": the request target is missing; the header lines are still read
    req = b"GET HTTP/1.1\r\nUser-Agent: Wget/1.14\r\nAccept: */*\r\nHost: www.Example.org\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    v = ENGINE.classify(sample("TCP", src=[req], dst=[resp], dport=80))
    assert (v.app_protocol, v.host) == ("HTTP", "www.example.org")
    # near miss: a request line of another protocol with the same shape is not HTTP's
    v = ENGINE.classify(sample("TCP", src=[b"GET RTSP/1.0\r\nCSeq: 1\r\n\r\n"], dport=8554))
    assert v.host != "www.example.org" and v.app_protocol != "HTTP"


# ----------------------------------------------------------------- protocols nDPI 5.0 names

def _tcp(src, dst=(), dport=9, dirs=None):
    return ENGINE.classify(sample("TCP", src=list(src), dst=list(dst), sport=40000, dport=dport, dirs=dirs))


def raft(mtype: int, body: bytes) -> bytes:
    return struct.pack("<QQ", mtype, len(body)) + body


def test_raft_messages():
    ae = raft(1, struct.pack("<QQQQ", 7, 3, 2, 0))                # append entries: term, prev index/term, n entries
    ae_res = raft(2, struct.pack("<QQQ", 7, 0, 4))
    vote = raft(3, struct.pack("<QQQQ", 8, 2, 4, 7))
    vote_res = raft(4, struct.pack("<QQ", 8, 1))
    for a, b in ((ae, ae_res), (vote, vote_res)):
        assert _tcp([a], [b], dport=9001).app_protocol == "Raft"
        assert _tcp([a], [b], dport=9001, dirs="ds").app_protocol == "Raft"      # reply seen first
    assert _tcp([ae + vote]).app_protocol == "Raft"                              # two messages in one segment
    assert _tcp([raft(6, b"\x00" * 24)]).app_protocol == "Raft"                 # timeout now, one way
    # a large install-snapshot split over segments: known once three segments open with headers
    big = struct.pack("<QQ", 5, 100000) + b"\x00" * 1000
    assert _tcp([big]).app_protocol != "Raft"
    assert _tcp([big, big, big]).app_protocol == "Raft"
    # near misses: type 7, a length that does not match, a non-zero high byte of the type
    assert _tcp([raft(7, b"\x00" * 16)]).app_protocol != "Raft"
    assert _tcp([struct.pack("<QQ", 1, 40) + b"\x00" * 16]).app_protocol != "Raft"
    assert _tcp([b"\x01\x00\x00\x00\x00\x00\x00\x01" + struct.pack("<Q", 8) + b"\x00" * 8]).app_protocol != "Raft"


def test_ms_rpch_v1_direct_connection():
    bind = bytes([5, 0, 11, 3]) + b"\x10\x00\x00\x00" + struct.pack("<HHI", 72, 0, 1) + b"\x00" * 56
    v = _tcp([bind], [b"ncacn_http/1.0"], dport=593, dirs="ds")                  # the server speaks first
    assert v.app_protocol == "MS-RPCH"
    assert _tcp([bind], [b"ncacn_http/1.0"], dport=593, dirs="sd").app_protocol == "MS-RPCH"
    assert _tcp([bind], [b"ncacn_http/x.y"], dport=593).app_protocol != "MS-RPCH"
    # RPC over HTTP v2: the RPC_IN_DATA / RPC_OUT_DATA methods (HTTP, application MS-RPCH)
    req = b"RPC_IN_DATA /rpc/rpcproxy.dll?exch.example:6001 HTTP/1.1\r\nHost: mail.example.org\r\nContent-Length: 1073741824\r\n\r\n"
    v = _tcp([req], dport=80)
    assert (v.app_protocol, v.application) == ("HTTP", "MS-RPCH")


def test_vhua_and_world_of_kung_fu_signatures():
    pre = bytes.fromhex("05143a0508f8a1b103")
    v = ENGINE.classify(sample("UDP", src=[pre + b"\x10\x20\x30\x40"], dst=[b"\x01\x02"], sport=50000, dport=50001))
    assert v.app_protocol == "VHUA"
    v = ENGINE.classify(sample("UDP", src=[pre[:8] + b"\x04" + b"\x10\x20"], sport=50000, dport=50001))
    assert v.app_protocol != "VHUA"                                             # last preamble byte differs
    login = bytes.fromhex("0c000000d2000c00" "0016" "0000" "1234" "0000")
    assert _tcp([login], dport=7000).app_protocol == "WorldOfKungFu"
    assert _tcp([b"\x00" * 4], [login], dport=7000).app_protocol == "WorldOfKungFu"   # either side
    assert _tcp([login + b"\x00"], dport=7000).app_protocol != "WorldOfKungFu"        # 16 bytes exactly
    assert _tcp([login[:9] + b"\x17" + login[10:]], dport=7000).app_protocol != "WorldOfKungFu"


def test_sap_is_a_port_guess_only():
    e = Engine(final_memo=0)
    v = e.classify(sample("TCP", src=[b"\x00\x00\x00\x10" + b"\x07" * 16], sport=40000, dport=3201))
    assert (v.app_protocol, v.confidence) == ("SAP", "port")
    assert e.guess("TCP", 40000, 3201) == "SAP" and e.guess("UDP", 40000, 3201) != "SAP"


# ----------------------------------------------------------------- WhatsApp's chat protocol vs XMPP

def test_whatsapp_chat_vs_xmpp_on_port_5222():
    # WhatsApp's chat protocol (FunXMPP, now Noise Pipes) opens with "WA", a protocol major version
    # and the dictionary version; or the "ED" edge routing preamble.  XMPP (RFC 6120) opens with an
    # XML stream header.  Both use TCP 5222.
    wa = b"WA\x06\x03" + b"\x00\x00\x29" + b"\x1a\x27" + b"\x11" * 39
    ed = b"ED\x00\x01" + b"\x00\x00\x08" + b"\x08\x02\x10\x01" + b"WA\x06\x03"
    xmpp = (b"<?xml version='1.0'?><stream:stream to='example.org' xmlns='jabber:client' "
            b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
    xmpp_reply = b"<?xml version='1.0'?><stream:stream from='example.org' id='x1' version='1.0'>"
    assert _tcp([wa], [b"\x00\x01\x2c" + b"\x22" * 40], dport=5222).app_protocol == "WhatsApp"
    assert _tcp([ed], dport=5222).app_protocol == "WhatsApp"
    assert _tcp([xmpp], [xmpp_reply], dport=5222).app_protocol == "Jabber"
    assert _tcp([b"<presence/>"], dport=5222).app_protocol == "Jabber"
    # near misses: "WA" with no valid version is not WhatsApp; an XML document elsewhere is not XMPP
    assert _tcp([b"WA\x00\xff" + b"\x00" * 20], dport=5222).app_protocol != "WhatsApp"
    assert _tcp([b"<?xml version='1.0'?><note>hi</note>"], dport=8081).app_protocol != "Jabber"
    assert _tcp([wa], dport=5222).app_protocol != "Jabber" and _tcp([xmpp], dport=5222).app_protocol != "WhatsApp"
