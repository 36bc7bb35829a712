"""Peer-to-peer and crypto-currency dissectors (p2p.py) from bytes built per BEPs and protocol notes."""

from __future__ import annotations

import struct

from services.classify.dissectors.p2p import dnscrypt_app
from services.classify.engine import Engine
from tests.services.classify.flowsample import sample

ENGINE = Engine(port_guess=False, final_memo=0)


_s = sample


def test_bittorrent_handshake_gives_info_hash():
    hs = b"\x13BitTorrent protocol" + b"\x00" * 8 + bytes(range(20)) + b"-XX0001-" + b"1" * 12
    v = ENGINE.classify(_s(src=[hs], dport=51413))
    assert v.app_protocol == "BitTorrent" and v.extra["bittorrent_info_hash"] == bytes(range(20)).hex()


def test_bittorrent_dht_and_utp_syn():
    ping = b"d1:ad2:id20:" + b"a" * 20 + b"e1:q4:ping1:t2:aa1:y1:qe"
    assert ENGINE.classify(_s("UDP", src=[ping], dport=6881)).app_protocol == "BitTorrent"
    syn = bytes([0x41, 0]) + b"\x12\x34" + b"\x00" * 16
    assert ENGINE.classify(_s("UDP", src=[syn], dport=6881)).app_protocol == "BitTorrent"


def test_gnutella_tcp_and_udp_descriptor():
    assert ENGINE.classify(_s(src=[b"GNUTELLA CONNECT/0.6\r\n\r\n"], dport=6346)).app_protocol == "Gnutella"
    ping = b"G" * 16 + bytes([0x00, 1, 0]) + struct.pack("<I", 0)
    assert ENGINE.classify(_s("UDP", src=[ping], dport=6346)).app_protocol == "Gnutella"


def test_bitcoin_version_and_monero_levin():
    btc = b"\xf9\xbe\xb4\xd9version\x00\x00\x00\x00\x00" + struct.pack("<I", 0) + b"\x5d\xf6\xe0\xe2"
    assert ENGINE.classify(_s(src=[btc], dport=8333)).app_protocol == "BITCOIN"
    levin = b"\x01\x21\x01\x01\x01\x01\x01\x01" + b"\x00" * 25
    assert ENGINE.classify(_s(src=[levin], dport=18080)).app_protocol == "Monero"


def test_stratum_mining_and_ethereum_rlpx_auth():
    sub = b'{"id": 1, "method": "mining.subscribe", "params": []}\n'
    assert ENGINE.classify(_s(src=[sub], dport=3333)).app_protocol == "Mining"
    auth = struct.pack("!H", 300) + b"\x04" + b"\x55" * 299
    assert ENGINE.classify(_s(src=[auth], dport=30303)).app_protocol == "ETHEREUM"


def test_dnscrypt_resolver_magic_and_names():
    q = b"\x11" * 8 + b"\x22" * 56
    assert ENGINE.classify(_s("UDP", src=[q], dst=[b"r6fnvWj8" + b"\x00" * 40], dport=443)).app_protocol == "DNScrypt"
    assert dnscrypt_app("2.dnscrypt-cert.example.net") == "DNScrypt"
    assert dnscrypt_app("2.sEcUREdNS.AVASt.coM") == "AVASTSecureDNS"
    assert dnscrypt_app("www.example.com") == ""


def test_syncthing_discovery_and_dropbox_lan_sync():
    assert ENGINE.classify(_s("UDP", src=[b"\x2e\xa7\xd9\x0b" + b"\x0a\x20" + b"x" * 40], dport=21027)).app_protocol == "Syncthing"
    lan = b'{"host_int": 1, "version": [2, 0], "displayname": "", "port": 17500, "namespaces": []}'
    assert ENGINE.classify(_s("UDP", src=[lan], sport=17500, dport=17500)).app_protocol == "Dropbox"


def test_utp_data_with_extension_carrying_the_handshake():
    from services.classify.dissectors.p2p import utp_header_len
    base = bytes([0x01, 2]) + b"\x12\x34" + b"\x00" * 16            # ST_DATA, first extension: selective ack
    ext = bytes([0, 4]) + b"\x00\x00\x00\x00"                        # last extension, 4-byte bitmask
    pkt = base + ext + b"\x13BitTorrent protocol" + b"\x00" * 48
    assert utp_header_len(pkt) == 26
    assert ENGINE.classify(_s("UDP", src=[pkt], dport=51413)).app_protocol == "BitTorrent"
    assert utp_header_len(bytes([0x01, 9]) + b"\x00" * 30) == 0      # unknown extension type
