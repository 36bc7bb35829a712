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
