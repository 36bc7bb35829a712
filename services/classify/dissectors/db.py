"""Databases and message brokers: MySQL, PostgreSQL, RESP (Redis), MongoDB, Memcached,
Elasticsearch (transport), Kafka, NATS, DRDA (DB2), AMQP, MQTT.

References: MySQL client/server protocol (initial handshake v10), PostgreSQL
frontend/backend protocol (StartupMessage 3.0, SSLRequest 80877103), RESP
(Redis serialization protocol), MongoDB wire protocol (standard message
header and opcodes), memcached protocol.txt and the binary protocol magic,
Elasticsearch transport header ("ES" + length), Kafka protocol request
header v1, NATS client protocol (INFO/CONNECT), DRDA DDM header (0xD0
magic, EXCSAT), AMQP 0-9-1 (protocol header and frame end 0xCE), MQTT 3.1.1
and 5.0 CONNECT.
"""

from __future__ import annotations

from shared.models import FlowSample, Verdict
from services.classify.dissectors.base import Match
from services.classify.dissectors.breadth_util import TCP, TCP_UDP, Simple, printable, u16, u32, u32le


class MySQL(Simple):
    name = "MySQL"
    transports = TCP
    ports = frozenset({3306})

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        # server greeting: 3-byte LE length, sequence 0, protocol 10, NUL-terminated version "x.y..."
        if len(p) < 20 or p[3] != 0 or p[4] != 10:
            return False
        if int.from_bytes(p[:3], "little") + 4 != len(p):
            return False
        end = p.find(b"\x00", 5, 70)
        return end > 6 and p[5:6].isdigit() and b"." in p[5:end]

    def result(self, s: FlowSample, v: Verdict) -> str:
        for p in s.dst_payloads[:1] + s.src_payloads[:1]:
            end = p.find(b"\x00", 5, 70)
            if end > 5:
                v.extra["mysql_version"] = printable(p[5:end], 64)
                break
        return self.name


class PostgreSQL(Simple):
    name = "PostgreSQL"
    transports = TCP
    ports = frozenset({5432})
    magic = (b"\x00",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        # the frontend's first message, from either side (the capture may have seen the server's packet first)
        if len(p) < 8 or u32(p, 0) != len(p):
            return False
        code = u32(p, 4)
        answers = s.dst_payloads if from_src else s.src_payloads
        if code in (80877103, 80877104) and len(p) == 8:     # SSLRequest / GSSENCRequest
            return not answers or answers[0][:1] in (b"S", b"N", b"G")
        if code == 80877102:                                  # CancelRequest
            return len(p) == 16
        return code in (0x00030000, 0x00020000) and p.endswith(b"\x00") and b"user\x00" in p


def resp_start(p: bytes) -> bool:
    """RESP (Redis serialization protocol, RESP2 and RESP3): an aggregate or bulk-string header --
    ``*`` array, ``$`` bulk string, ``~`` set, ``%`` map, ``>`` push -- with a decimal count of at most
    three digits (or -1, the null value) ended by CRLF, and something after it."""
    if len(p) < 5 or p[0] not in b"*$~%>":
        return False
    i = p.find(b"\r\n", 1, 6)
    if i < 2:
        return False
    n = p[1:i]
    if not (n.isdigit() or n == b"-1"):
        return False
    if p[0] == 0x24:        # $<len>\r\n<data>\r\n: the length is exact when the string is all here
        ln = int(n)
        return ln < 0 or len(p) < i + 4 + ln or p[i + 2 + ln:i + 4 + ln] == b"\r\n"
    # an aggregate: its first element starts with a RESP type byte (or the aggregate is empty)
    return len(p) > i + 2 and p[i + 2] in b"*$:+-_#,(!=%~>|" or n in (b"0", b"-1")


class RESP(Simple):
    """Redis serialization protocol (nDPI 5.0 name RESP, formerly Redis): requests are RESP arrays of
    bulk strings (https://redis.io/docs/latest/develop/reference/protocol-spec/).  Inline commands
    (``PING\\r\\n``) are not told from NATS text commands; nDPI names them Nats (see ``Nats``)."""

    name = "RESP"
    transports = TCP
    ports = frozenset({6379})
    magic = (b"*", b"$", b"~", b"%", b">")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 10 and resp_start(p)


class MongoDB(Simple):
    name = "MongoDB"
    transports = TCP
    ports = frozenset({27017, 27018, 27019})

    def could_be(self, s: FlowSample) -> bool:
        for lst in (s.src_payloads, s.dst_payloads):
            if lst and len(lst[0]) >= 16 and lst[0][13] == 0x07 or lst and len(lst[0]) >= 16 and lst[0][12] == 1 and lst[0][13] == 0:
                return True
        return False

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 16 or u32le(p, 0) != len(p) and not (u32le(p, 0) > len(p) and len(p) >= 1400):
            return False
        op = u32le(p, 12)
        if op not in (1, 2001, 2002, 2004, 2005, 2006, 2007, 2010, 2011, 2012, 2013):
            return False
        # a request (responseTo 0), or a reply; a reply from src (the capture saw the server first) whole
        return u32le(p, 8) in (0, 0xFFFFFFFF) or not from_src or op in (1, 2013) and u32le(p, 0) == len(p)


class Memcached(Simple):
    name = "Memcached"
    transports = TCP_UDP
    ports = frozenset({11211})
    port_gate = True

    _cmds = (b"get ", b"gets ", b"set ", b"add ", b"replace ", b"append ", b"prepend ", b"cas ", b"delete ",
             b"incr ", b"decr ", b"touch ", b"gat ", b"gats ", b"stats", b"version\r\n", b"flush_all", b"verbosity ", b"mg ", b"ms ")
    _replies = (b"STAT ", b"VALUE ", b"STORED\r\n", b"NOT_STORED\r\n", b"END\r\n", b"DELETED\r\n", b"NOT_FOUND\r\n", b"VERSION ")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if s.transport == "UDP":
            if len(p) < 9 or p[4:6] != b"\x00\x00" and u16(p, 4) >= u16(p, 6):
                return False
            p = p[8:]
        if len(p) >= 24 and p[0] in (0x80, 0x81) and p[1] <= 0x48 and p[5] == 0:     # binary protocol
            return 11211 in (s.src_port, s.dst_port)
        # a command or a reply, from either side: the capture may have seen the server's packet first
        return p.startswith(self._cmds) and p.endswith(b"\r\n") or p.startswith(self._replies)


class Elasticsearch(Simple):
    name = "Elasticsearch"
    transports = TCP
    ports = frozenset({9300})
    magic = (b"ES",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 19 and p[:2] == b"ES" and (u32(p, 2) + 6 == len(p) or u32(p, 2) + 6 > len(p) >= 1200 or u32(p, 2) == 0xFFFFFFFF)


class Kafka(Simple):
    name = "Kafka"
    transports = TCP
    ports = frozenset({9092})
    magic = (b"\x00",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if not from_src or len(p) < 14 or u32(p, 0) + 4 != len(p):
            return False
        api, ver = u16(p, 4), u16(p, 6)
        if api > 80 or ver > 20:
            return False
        cid_len = u16(p, 12)
        if cid_len == 0xFFFF:
            return True
        if 14 + cid_len > len(p):
            return False
        return all(32 <= c < 127 for c in p[14:14 + cid_len])


class Nats(Simple):
    """NATS client protocol (https://docs.nats.io/reference/reference-protocols/nats-protocol): text
    operations INFO, CONNECT, PUB, SUB, UNSUB, MSG, PING, PONG, each ended by CRLF, from either side."""

    name = "Nats"
    transports = TCP
    ports = frozenset({4222})
    magic = (b"INFO {", b"CONNECT {", b"PUB ", b"SUB ", b"UNSUB ", b"MSG ", b"PING", b"PONG")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) > 4 and p.startswith(self.magic) and b"\r\n" in p


class DRDA(Simple):
    name = "DRDA"
    transports = TCP
    ports = frozenset({446, 50000})
    port_gate = True

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 10 or p[2] != 0xD0:
            return False
        ln = u16(p, 0)
        return 10 <= ln <= len(p) and u16(p, 6) + 6 == ln and (p[3] & 0x0F) in (1, 2, 3, 4, 5)


class AMQP(Simple):
    name = "AMQP"
    transports = TCP
    ports = frozenset({5672, 5671})
    magic = (b"AMQP", b"\x01", b"\x02", b"\x03", b"\x08")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if p.startswith(b"AMQP") and len(p) == 8:
            return True
        # a 0-9-1 frame: type, channel, size, payload, frame-end 0xCE
        if len(p) >= 8 and p[0] in (1, 2, 3, 8) and u32(p, 3) + 8 <= len(p) and p[u32(p, 3) + 7] == 0xCE:
            if p[0] == 1:
                return u16(p, 7) in (10, 20, 40, 50, 60, 85, 90)
            return True
        return False


class MQTT(Simple):
    name = "MQTT"
    transports = TCP
    ports = frozenset({1883, 8883})
    magic = (b"\x10", b"\xc0\x00", b"\x20")

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        # a session joined after CONNECT: PINGREQ (C0 00) answered by PINGRESP (D0 00)
        if s.src_payloads and s.src_payloads[0] == b"\xc0\x00":
            if any(q == b"\xd0\x00" for q in s.dst_payloads[:3]):
                v.app_protocol = self.name
                return Match.FINAL
            return Match.NO
        m = Simple.dissect(self, s, v)
        if m == Match.NO and self._after_connect(s):
            v.app_protocol = self.name
            return Match.FINAL
        return m

    @staticmethod
    def _whole(p: bytes) -> bool:
        """One or more whole MQTT control packets: remaining-length varints that add up to the segment."""
        i = 0
        while i < len(p):
            if p[i] >> 4 == 0 or p[i] >> 4 == 15:      # reserved / AUTH-less v3 types
                return False
            o, n, mul = i + 1, 0, 1
            for _ in range(4):
                if o >= len(p):
                    return False
                n += (p[o] & 0x7F) * mul
                mul *= 128
                o += 1
                if not p[o - 1] & 0x80:
                    break
            i = o + n
        return i == len(p)

    def _after_connect(self, s: FlowSample) -> bool:
        """A session met after its CONNECT (MQTT 3.1.1 3.2 / 5.0 3.2): one side's first segment is a CONNACK
        (2 bytes of flags and return code, 3+ with v5 properties) and the other side's is whole control
        packets -- SUBSCRIBE (0x82), PUBLISH (0x3_), PINGREQ or DISCONNECT."""
        for a, b in ((s.src_payloads, s.dst_payloads), (s.dst_payloads, s.src_payloads)):
            if not a or not b:
                continue
            ack, nxt = a[0], b[0]
            if not (len(ack) >= 4 and ack[0] == 0x20 and ack[1] + 2 == len(ack) and ack[2] <= 1
                    and (ack[3] <= 5 or ack[3] >= 0x80)):
                continue
            if nxt[0] in (0x82, 0xC0, 0xE0) or nxt[0] >> 4 == 3:
                if self._whole(nxt) and (nxt[0] != 0x82 or len(nxt) >= 8):
                    return True
        return False

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 12 or p[0] != 0x10:
            return False
        o = 1
        for _ in range(4):      # remaining length varint
            if o >= len(p):
                return False
            if not p[o] & 0x80:
                break
            o += 1
        o += 1
        return p[o:o + 6] == b"\x00\x04MQTT" and p[o + 6:o + 7] in (b"\x03", b"\x04", b"\x05") or p[o:o + 8] == b"\x00\x06MQIsdp"


DISSECTORS = [MySQL(), PostgreSQL(), RESP(), MongoDB(), Memcached(), Elasticsearch(), Kafka(), Nats(), DRDA(), AMQP(), MQTT()]
