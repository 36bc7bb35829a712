"""STUN/TURN, SIP, RTP/RTCP and other real-time dissectors (voip.py) from bytes built per their RFCs."""

from __future__ import annotations

import struct

from services.classify.engine import Engine
from tests.services.classify.flowsample import sampler

ENGINE = Engine(port_guess=False, final_memo=0)
COOKIE = b"\x21\x12\xa4\x42"


_s = sampler("UDP")


def stun(mtype: int, attrs: bytes = b"", tid: bytes = b"T" * 12) -> bytes:
    return struct.pack("!HH", mtype, len(attrs)) + COOKIE + tid + attrs


def attr(t: int, val: bytes) -> bytes:
    return struct.pack("!HH", t, len(val)) + val + b"\x00" * (-len(val) % 4)


def rtp(seq: int, ssrc: int = 0x11223344, pt: int = 0) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, seq * 160, ssrc) + b"\xd5" * 160


def test_stun_binding_with_realm_host():
    req = stun(0x0001)
    resp = stun(0x0113, attr(0x0009, b"\x00\x00\x04\x01") + attr(0x0014, b"turn.example.org"))
    v = ENGINE.classify(_s(src=[req], dst=[resp], dport=3478, dirs="sd"))
    assert v.app_protocol == "STUN" and v.host == "turn.example.org"


def test_stun_over_tcp_rfc4571_framing():
    msg = stun(0x0003, attr(0x0019, b"\x11\x00\x00\x00"))
    assert ENGINE.classify(_s("TCP", src=[struct.pack("!H", len(msg)) + msg], dport=443)).app_protocol == "STUN"


def test_stun_then_dtls_is_dtls_as_ndpi_says():
    hello = b"\x16\xfe\xfd" + b"\x00" * 8 + struct.pack("!H", 20) + b"\x01" + b"\x00" * 19
    s = _s(src=[stun(0x0001), hello], dst=[stun(0x0101)], dport=19305, dirs="sds")
    assert ENGINE.classify(s).app_protocol == "DTLS"


def test_length_mismatch_is_not_stun():
    bad = stun(0x0001)[:-1] + b"\x00\x00"
    assert ENGINE.classify(_s(src=[bad], dport=3478)).app_protocol != "STUN"


def test_sip_invite_and_response_with_user_agent():
    inv = (b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060\r\n"
           b"User-Agent: softphone 1.0\r\n\r\n")
    v = ENGINE.classify(_s(src=[inv], dst=[b"SIP/2.0 100 Trying\r\n\r\n"], sport=5060, dport=5060))
    assert v.app_protocol == "SIP" and v.extra["sip_user_agent"] == "softphone 1.0"
    assert ENGINE.classify(_s(src=[b"INVITE http://x/ HTTP/1.1\r\n\r\n"], dport=5060)).app_protocol != "SIP"


def test_rtp_needs_two_packets_of_one_stream():
    assert ENGINE.classify(_s(src=[rtp(7), rtp(8)], sport=16384, dport=16386)).app_protocol == "RTP"
    assert ENGINE.classify(_s(src=[rtp(7), rtp(900, ssrc=5)], sport=16384, dport=16386)).app_protocol != "RTP"


def test_rtcp_sender_report():
    sr = struct.pack("!BBHI", 0x80, 200, 6, 0x11223344) + b"\x00" * 20
    assert ENGINE.classify(_s(src=[sr], sport=16385, dport=16387)).app_protocol == "RTCP"


def test_discord_ip_discovery():
    req = struct.pack("!HHI", 1, 70, 0x4B18) + b"\x00" * 66
    assert ENGINE.classify(_s(src=[req], dport=50004)).app_protocol == "Discord"


def test_h323_q931_in_tpkt_and_megaco():
    q931 = b"\x08\x02\x77\xf4\x05\x04\x03\x80\x90\xa5"
    assert ENGINE.classify(_s("TCP", src=[b"\x03\x00" + struct.pack("!H", 4 + len(q931)) + q931], dport=1720)).app_protocol == "H323"
    assert ENGINE.classify(_s(src=[b"MEGACO/1 [10.0.0.1]:2944\nT=1{C=-{}}"], dport=2944)).app_protocol == "Megaco"


def test_iax2_new_and_skinny_register():
    iax = struct.pack("!HHIBBBB", 0x8004, 0, 1, 0, 0, 6, 1) + b"\x0b\x02\x00\x02"
    assert ENGINE.classify(_s(src=[iax], dport=4569)).app_protocol == "IAX"
    skinny = struct.pack("<III", 4 + 8, 0, 0x0001) + b"SEP0001\x00"
    assert ENGINE.classify(_s("TCP", src=[skinny], dport=2000)).app_protocol == "CiscoSkinny"


def test_discord_keepalive():
    assert ENGINE.classify(_s(src=[b"\x13\x37\xca\xfe\x00\x00\x00\x01"], dport=50010)).app_protocol == "Discord"


def srtp(seq: int, ssrc: int = 0x51672B2B, pt: int = 120, ext: bool = True) -> bytes:
    """An SRTP packet (RFC 3711 3.1): the RTP header in clear (RFC 3550 5.1, here with a one-word
    header extension, RFC 8285), an encrypted payload, a 10-byte authentication tag."""
    hdr = struct.pack("!BBHII", 0x90 if ext else 0x80, pt, seq, seq * 960, ssrc)
    if ext:
        hdr += struct.pack("!HH", 0xBEDE, 1) + b"\x10\x33\x00\x00"
    return hdr + bytes(range(7, 7 + 60)) + b"\xa5" * 10


def test_media_on_a_call_services_stun_flow_is_srtp():
    """nDPI (stun.c): a STUN flow whose call service is known (STUN/<app>) that carries RTP within
    the packets it still reads becomes SRTP/<app>; without a known service it stays STUN (STUN/RTP)."""
    wa_req = stun(0x0001, attr(0x4000, b"\x00\x01\x00\x00"))          # WhatsApp's STUN attribute
    wa_resp = stun(0x0101, attr(0x0020, b"\x00\x01\x11\x11\x0a\x00\x00\x01"))
    s = _s(src=[wa_req, srtp(1), srtp(2)], dst=[wa_resp, srtp(40, ssrc=7)], sport=49526, dport=41107, dirs="sdssd")
    v = ENGINE.classify(s)
    assert (v.app_protocol, v.application) == ("SRTP", "WhatsAppCall") and v.final
    # WhatsApp's own STUN message types (0x0800-0x0805) name the service as well
    wa_own = struct.pack("!HH", 0x0801, 0) + COOKIE + b"W" * 12
    v = ENGINE.classify(_s(src=[wa_own, srtp(1)], dst=[stun(0x0101)], dport=3478, dirs="sds"))
    assert (v.app_protocol, v.application) == ("SRTP", "WhatsAppCall")
    # the same media after a STUN exchange that names no service: STUN (nDPI's STUN/RTP)
    s = _s(src=[stun(0x0001), srtp(1), srtp(2)], dst=[stun(0x0101), srtp(40, ssrc=7)], sport=49526, dport=41107,
           dirs="sdssd")
    assert ENGINE.classify(s).app_protocol == "STUN"
    # media only after nDPI stopped reading (more than 6 packets after the first STUN message)
    late = [wa_req] + [stun(0x0001, tid=bytes([i]) * 12) for i in range(6)] + [srtp(1), srtp(2)]
    v = ENGINE.classify(_s(src=late, dst=[wa_resp], dport=3478, dirs="s" * 7 + "d" + "ss"))
    assert (v.app_protocol, v.application) == ("STUN", "WhatsAppCall")
    # not RTP for nDPI: an RTCP-range payload type, a CSRC count the packet cannot hold
    bad = struct.pack("!BBHII", 0x80, 200, 1, 0, 1) + b"\x00" * 20
    short = struct.pack("!BBHII", 0x8F, 0, 1, 0, 1) + b"\x00" * 20
    for p in (bad, short):
        assert ENGINE.classify(_s(src=[wa_req, p], dst=[wa_resp], dport=3478, dirs="sds")).app_protocol == "STUN"


def test_plain_rtp_stays_rtp():
    """An RTP flow nDPI's RTP dissector finds (no STUN) is RTP, encrypted or not: nDPI says SRTP only
    when a call service's STUN flow announced it."""
    s = _s(src=[srtp(1), srtp(2), srtp(3)], dst=[srtp(80, ssrc=9)], sport=40000, dport=40002, dirs="sdss")
    assert ENGINE.classify(s).app_protocol == "RTP"
