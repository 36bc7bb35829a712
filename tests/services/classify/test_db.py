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
