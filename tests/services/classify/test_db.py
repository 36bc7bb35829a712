"""Database and broker dissectors (db.py) from bytes built per their wire-protocol documents."""

from __future__ import annotations

import struct

import pytest

from services.classify.engine import Engine
from tests.services.classify.flowsample import sample

ENGINE = Engine(port_guess=False, final_memo=0)


_s = sample


def mysql_greeting(version: bytes) -> bytes:
    body = b"\x0a" + version + b"\x00" + struct.pack("<I", 8) + b"abcdefgh\x00" + b"\xff\xf7\x21\x02\x00\xff\x81\x15" + b"\x00" * 10
    return len(body).to_bytes(3, "little") + b"\x00" + body


def kafka_request(api: int, client: bytes) -> bytes:
    body = struct.pack("!hhih", api, 3, 7, len(client)) + client + b"\x00" * 4
    return struct.pack("!I", len(body)) + body


def mongo_msg() -> bytes:
    body = struct.pack("<I", 0) + b"\x00" + struct.pack("<I", 5) + b"\x00"
    return struct.pack("<iiii", 16 + len(body), 1, 0, 2013) + body


def test_mysql_server_greeting_gives_version():
    v = ENGINE.classify(_s(dst=[mysql_greeting(b"8.0.36")], dport=3306, dirs="d"))
    assert v.app_protocol == "MySQL" and v.extra["mysql_version"] == "8.0.36"


def test_postgres_startup_and_ssl_request():
    params = b"user\x00alice\x00database\x00db\x00\x00"
    start = struct.pack("!II", 8 + len(params), 0x00030000) + params
    assert ENGINE.classify(_s(src=[start], dport=5432)).app_protocol == "PostgreSQL"
    ssl = struct.pack("!II", 8, 80877103)
    assert ENGINE.classify(_s(src=[ssl], dst=[b"N"], dport=5432)).app_protocol == "PostgreSQL"


@pytest.mark.parametrize("src,dst,port,name", [
    ([b"*1\r\n$4\r\nPING\r\n"], [b"+PONG\r\n"], 6379, "RESP"),
    ([mongo_msg()], [], 27017, "MongoDB"),
    ([b"stats\r\n"], [b"STAT pid 1\r\nEND\r\n"], 11211, "Memcached"),
    ([b"ES" + struct.pack("!I", 13) + b"\x00" * 13], [], 9300, "Elasticsearch"),
    ([kafka_request(18, b"console-producer")], [], 9092, "Kafka"),
    ([b'CONNECT {"verbose":false}\r\n'], [b'INFO {"server_id":"X"}\r\n'], 4222, "Nats"),
    ([b"AMQP\x00\x00\x09\x01"], [], 5672, "AMQP"),
    ([b"\x10\x11\x00\x04MQTT\x04\x02\x00\x3c\x00\x05Bus41"], [b"\x20\x02\x00\x00"], 1883, "MQTT"),
])
def test_brokers_and_caches(src, dst, port, name):
    assert ENGINE.classify(_s(src=src, dst=dst, dport=port)).app_protocol == name


def test_drda_excsat():
    ddm = struct.pack("!HBBHHH", 16, 0xD0, 0x41, 1, 10, 0x1041) + b"\x00" * 6
    assert ENGINE.classify(_s(src=[ddm], dport=50000)).app_protocol == "DRDA"


def test_kafka_rejects_binary_client_id():
    assert ENGINE.classify(_s(src=[kafka_request(18, b"\x01\x02\x03")], dport=9092)).app_protocol != "Kafka"


def test_mqtt_session_joined_midway_by_ping():
    assert ENGINE.classify(_s(src=[b"\xc0\x00"], dst=[b"\xd0\x00"], dport=17501)).app_protocol == "MQTT"
    assert ENGINE.classify(_s(src=[b"\xc0\x00"], dst=[b"\xd1\x00"], dport=17501)).app_protocol != "MQTT"


def _resp_array(*words: bytes) -> bytes:
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)


@pytest.mark.parametrize("first", ["client", "server"])
@pytest.mark.parametrize("port", [6379, 10625])
def test_resp_requests_from_the_spec(first, port):
    """RESP (nDPI 5.0: RESP, formerly Redis): a client array of bulk strings, whichever side the
    capture saw first, on the standard or another port; several commands in one segment; RESP3."""
    req = _resp_array(b"SET", b"key", b"value") + _resp_array(b"GET", b"key")
    dirs = "sd" if first == "client" else "ds"
    assert ENGINE.classify(_s(src=[req], dst=[b"+OK\r\n$5\r\nvalue\r\n"], dport=port, dirs=dirs)).app_protocol == "RESP"
    hello = _resp_array(b"HELLO", b"3")
    assert ENGINE.classify(_s(src=[hello], dst=[b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n"], dport=port)).app_protocol == "RESP"
    # retransmitted request segment
    assert ENGINE.classify(_s(src=[req, req], dst=[b"+OK\r\n"], dport=port)).app_protocol == "RESP"
    # the server side alone: a RESP3 map or a bulk string reply with its exact length
    assert ENGINE.classify(_s(dst=[b"%2\r\n+a\r\n:1\r\n+b\r\n:2\r\n"], dport=port, dirs="d")).app_protocol == "RESP"


def test_resp_is_not_pop3_and_not_fooled_by_text():
    # a Redis server answers "+OK" like a POP3 greeting: the client's RESP array decides
    v = ENGINE.classify(_s(src=[_resp_array(b"AUTH", b"secret")], dst=[b"+OK\r\n"], dport=6379))
    assert v.app_protocol == "RESP"
    # POP3 proper still is POP3
    v = ENGINE.classify(_s(src=[b"USER bob\r\n"], dst=[b"+OK POP3 server ready\r\n"], dport=110, dirs="ds"))
    assert v.app_protocol == "POP3"
    # a '*' line that is no RESP array (no CRLF after a short count, or a wrong bulk length)
    for junk in (b"*hello world\r\n", b"$5\r\nabc\r\nxx", b"*12345\r\n$1\r\na\r\n"):
        assert ENGINE.classify(_s(src=[junk], dport=7000)).app_protocol != "RESP"


@pytest.mark.parametrize("op", [b"PUB foo 5\r\nhello\r\n", b"SUB foo 1\r\n", b"UNSUB 1\r\n", b"PING\r\n",
                                b'CONNECT {"verbose":false}\r\n'])
def test_nats_client_operations(op):
    """NATS client protocol operations (docs.nats.io, client protocol), client first or server first."""
    assert ENGINE.classify(_s(src=[op], dport=4222)).app_protocol == "Nats"
    assert ENGINE.classify(_s(src=[op], dst=[b'INFO {"server_id":"N"}\r\n'], dport=4222, dirs="ds")).app_protocol == "Nats"
    assert ENGINE.classify(_s(src=[op], dst=[b"MSG foo 1 5\r\nhello\r\n"], dport=14222)).app_protocol == "Nats"
    assert ENGINE.classify(_s(src=[op.split(b"\r\n")[0]], dport=14222)).app_protocol != "Nats"   # no CRLF: not yet
