"""Messaging: XMPP (Jabber), WhatsApp (Noise framing), Telegram voice relays,
Viber, and the length-framed push channels seen on 5222/5223.

References: RFC 6120 (XMPP stream opening), WhatsApp's Noise-pipes framing
("WA" + version, "ED" edge routing prefix), Telegram's tgcalls relay
packets (16-byte peer tag + 0xFF x 8), Viber's UDP header as documented by
open DPI projects.
"""

from __future__ import annotations

from shared.models import FlowSample, Verdict
from services.classify.dissectors.base import Dissector, Match
from services.classify.dissectors.breadth_util import TCP, TCP_UDP, UDP, Simple, ordered, u16, u16le

_XMPP_STARTS = (b"<?xml", b"<stream:stream", b"<presence", b"<iq ", b"<message ", b"<auth ", b"<starttls ")
_PUSH_PORTS = {5222, 5223, 5228}


class Jabber(Dissector):
    name = "Jabber"
    transports = TCP
    ports = frozenset({5222, 5269})

    def could_be(self, s: FlowSample) -> bool:
        return bool(s.src_payloads)

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        p = s.src_payloads[0]
        if p.startswith(_XMPP_STARTS):
            head = b"".join(s.src_payloads[:2])[:600]
            if b"jabber" in head or b"<stream:stream" in head or p.startswith((b"<presence", b"<iq ", b"<message ")) or \
                    ({s.src_port, s.dst_port} & {5222, 5269} and p.startswith(b"<?xml")):
                v.app_protocol = self.name
                return Match.FINAL
            return Match.NO
        if {s.src_port, s.dst_port} & _PUSH_PORTS and len(p) >= 8 and u16(p, 1) == len(p):
            if p[0] == 0x25 and p[3] == 0x14:
                v.app_protocol = self.name
                return Match.FINAL
            if p[0] == 0x16 and p[3] == 0x00:
                v.app_protocol = "HP_VIRTGRP"
                return Match.FINAL
        return Match.NO


class WhatsApp(Simple):
    name = "WhatsApp"
    transports = TCP
    ports = frozenset({5222})

    def could_be(self, s: FlowSample) -> bool:
        return bool(s.src_payloads) and s.src_payloads[0][:2] in (b"WA", b"ED")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if p[:2] == b"WA" and len(p) >= 4 and p[2] in (1, 2, 3, 4, 5, 6) and p[3] <= 10:
            return True
        return p[:4] == b"ED\x00\x01" and len(p) >= 12


class Telegram(Simple):
    name = "Telegram"
    transports = UDP
    ports = frozenset()

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 28 and p[16:24] == b"\xff" * 8


class Viber(Simple):
    name = "Viber"
    transports = TCP_UDP
    ports = frozenset({7985, 7987, 5242, 5243, 4244, 9785})

    def could_be(self, s: FlowSample) -> bool:
        return bool({s.src_port, s.dst_port} & self.ports)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 12:
            return False
        if s.transport == "TCP":
            # little-endian frame length, then 0xFFFC and a 0x80 flag byte
            return u16le(p, 0) == len(p) and p[6:8] == b"\xfc\xff" and p[9] == 0x80
        return (p[2:4] == b"\x01\x00" and p[4:6] == b"\x05\x00") or (p[2:4] == b"\x03\x00") or (len(p) == 20 and p[2:4] == b"\x09\x00")


class Threema(Dissector):
    """Threema's chat handshake on 5222: client hello 48 bytes, server hello 80, client login 191,
    then frames with a little-endian 16-bit length."""

    name = "Threema"
    transports = TCP
    ports = frozenset()

    def could_be(self, s: FlowSample) -> bool:
        return 5222 in (s.src_port, s.dst_port) and bool(s.src_payloads) and len(s.src_payloads[0]) == 48

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        sizes = [len(p) for _src, p in ordered(s, 5)]
        if sizes[:3] != [48, 80, 191][:len(sizes[:3])]:
            return Match.NO
        if len(sizes) >= 3:
            v.app_protocol = self.name
            return Match.FINAL
        return Match.NO


class IMO(Dissector):
    """imo.im calls: two consecutive one-byte datagrams with the same byte, or its fixed control datagrams."""

    name = "IMO"
    transports = UDP
    ports = frozenset()

    def could_be(self, s: FlowSample) -> bool:
        p = s.src_payloads[0] if s.src_payloads else b""
        return len(p) in (1, 10, 11, 1099) or bool(s.dst_payloads) and len(s.dst_payloads[0]) in (1, 10, 11)

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        prev = None
        for _src, p in ordered(s, 10):
            if len(p) == 1:
                if prev is not None and prev == p:
                    v.app_protocol = self.name
                    return Match.FINAL
                prev = p
                continue
            prev = None
            if (len(p) == 10 and p[:2] == b"\x09\x02") or (len(p) == 11 and p[:3] == b"\x00\x09\x03") or \
                    (len(p) == 1099 and p[:4] == b"\x88\x49\x1a\x00"):
                v.app_protocol = self.name
                return Match.FINAL
        return Match.NO


DISSECTORS = [Jabber(), Threema(), WhatsApp(), Telegram(), Viber(), IMO()]
