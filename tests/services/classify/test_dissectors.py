"""Dissectors of the core protocols, from crafted bytes built as the specifications say."""

from __future__ import annotations

import hashlib
import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.classify.dissectors.base import Match
from services.classify.dissectors.dns import DnsDissector, parse_message
from services.classify.dissectors.http import HttpDissector
from services.classify.dissectors.quic import QuicDissector, crypto_stream, decrypt_initials, initial_keys
from services.classify.dissectors.ssh import SshDissector
from services.classify.dissectors.tls import DtlsDissector, TlsDissector
from services.classify.dissectors.tls_common import cert_names, ja3_string, parse_client_hello
from services.classify.engine import Engine
from shared.models import FlowSample, Verdict
from tests.services.classify.flowsample import sampler

sample = sampler(dport=443, flow_id="f")


def verdict(s: FlowSample) -> Verdict:
    return Engine(registry=[], port_guess=False).new_verdict(s)


# --------------------------------------------------------------------------- TLS builders (RFC 8446)

def ext(t: int, body: bytes) -> bytes:
    return struct.pack(">HH", t, len(body)) + body


def client_hello(sni="www.example.org", alpn=("h2", "http/1.1"), tls13=True, grease=True) -> bytes:
    ciphers = ([0x0A0A] if grease else []) + [0x1301, 0x1302, 0xC02B, 0xC02F]
    exts = b""
    if grease:
        exts += ext(0x1A1A, b"")
    if sni:
        name = sni.encode()
        exts += ext(0, struct.pack(">HBH", len(name) + 3, 0, len(name)) + name)
    exts += ext(10, struct.pack(">H", 4) + struct.pack(">HH", 0x001D, 0x0017))
    exts += ext(11, b"\x01\x00")
    exts += ext(13, struct.pack(">H", 4) + struct.pack(">HH", 0x0403, 0x0804))
    if alpn:
        lst = b"".join(bytes([len(a)]) + a.encode() for a in alpn)
        exts += ext(16, struct.pack(">H", len(lst)) + lst)
    if tls13:
        exts += ext(43, b"\x04\x03\x04\x03\x03")
    body = (b"\x03\x03" + os.urandom(32) + b"\x20" + os.urandom(32)
            + struct.pack(">H", 2 * len(ciphers)) + b"".join(struct.pack(">H", c) for c in ciphers)
            + b"\x01\x00" + struct.pack(">H", len(exts)) + exts)
    return b"\x01" + len(body).to_bytes(3, "big") + body


def server_hello(tls13=True) -> bytes:
    exts = ext(43, b"\x03\x04") if tls13 else b""
    body = (b"\x03\x03" + os.urandom(32) + b"\x20" + os.urandom(32) + b"\x13\x01\x00"
            + struct.pack(">H", len(exts)) + exts)
    return b"\x02" + len(body).to_bytes(3, "big") + body


def record(hs: bytes, ct=22) -> bytes:
    return bytes([ct, 3, 1]) + struct.pack(">H", len(hs)) + hs


def test_tls_client_hello_sni_alpn_versions_fingerprints():
    ch = client_hello()
    s = sample(src=[record(ch)], dst=[record(server_hello())])
    v = verdict(s)
    assert TlsDissector().dissect(s, v) == Match.FINAL
    assert v.app_protocol == "TLS" and v.host == "www.example.org"
    assert v.tls.sni == "www.example.org" and v.tls.alpn == ["h2", "http/1.1"]
    assert v.tls.version == "TLSv1.3" and v.tls.cipher == "TLS_AES_128_GCM_SHA256"
    h = parse_client_hello(ch[4:])
    # GREASE values are left out of JA3; the string is hashed with MD5
    assert ja3_string(h) == "771,4865-4866-49195-49199,0-10-11-13-16-43,29-23,0"
    assert v.tls.ja3 == hashlib.md5(ja3_string(h).encode()).hexdigest()
    # JA4: t, 13, d (SNI), 04 ciphers, 06 extensions (GREASE excluded), h2
    assert v.tls.ja4.startswith("t13d0406h2_")
    assert v.tls.ja4.split("_")[1] == hashlib.sha256(b"1301,1302,c02b,c02f").hexdigest()[:12]


def test_tls_client_hello_fragmented_over_records_and_segments():
    ch = client_hello(sni="split.example.net")
    recs = record(ch[:50]) + record(ch[50:])          # handshake split over two records
    s = sample(src=[recs[:7], recs[7:60], recs[60:]])  # and over three TCP segments
    v = verdict(s)
    assert TlsDissector().dissect(s, v) == Match.PARTIAL
    assert v.host == "split.example.net"


def test_tls_truncated_client_hello_still_gives_sni():
    s = sample(src=[record(client_hello(sni="trunc.example"))[:120]])
    v = verdict(s)
    assert TlsDissector().dissect(s, v) != Match.NO
    assert v.host == "trunc.example"


def test_tls_port_names_and_mid_session_records():
    s = sample(src=[record(client_hello())], dport=993)
    v = verdict(s)
    TlsDissector().dissect(s, v)
    assert v.app_protocol == "IMAPS"
    app = bytes([23, 3, 3, 0, 4]) + b"abcd"
    s = sample(src=[app + app], dst=[app], dport=5223)
    v = verdict(s)
    assert TlsDissector().dissect(s, v) == Match.PARTIAL and v.app_protocol == "TLS"


def test_tls_after_starttls_is_smtps():
    s = sample(src=[b"EHLO x\r\n", b"STARTTLS\r\n", record(client_hello(sni="mx.example"))],
               dst=[b"220 mx ESMTP\r\n", b"220 go ahead\r\n"], dport=25)
    v = verdict(s)
    assert TlsDissector().could_be(s)
    assert TlsDissector().dissect(s, v) != Match.NO
    assert v.app_protocol == "SMTPS" and v.host == "mx.example"


def test_tls_hostile_bytes_never_raise():
    d = TlsDissector()
    for i in range(300):
        junk = bytes([22, 3, 1]) + os.urandom(i % 90)
        s = sample(src=[junk], dst=[os.urandom(i % 17)])
        d.dissect(s, verdict(s))


def test_dtls_client_hello():
    ch = client_hello(sni="dtls.example", tls13=False)
    body = ch[4:]
    # DTLS ClientHello: cookie after the session id; 12-byte handshake header
    sid_end = 2 + 32 + 1 + body[34]
    dbody = body[:sid_end] + b"\x00" + body[sid_end:]
    hs = b"\x01" + len(dbody).to_bytes(3, "big") + b"\x00\x00" + b"\x00\x00\x00" + len(dbody).to_bytes(3, "big") + dbody
    rec = b"\x16\xfe\xfd" + b"\x00\x00" + b"\x00" * 6 + struct.pack(">H", len(hs)) + hs
    s = sample("UDP", src=[b"\x00\x01\x00\x00" + os.urandom(16), rec], dport=3478)
    v = verdict(s)
    assert DtlsDissector().could_be(s)
    assert DtlsDissector().dissect(s, v) == Match.PARTIAL
    assert v.app_protocol == "DTLS" and v.host == "dtls.example" and v.tls.ja4.startswith("d12d")


def test_certificate_names_from_der():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import datetime

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.com")])
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Example CA")])
    now = datetime.datetime(2025, 1, 1)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer).public_key(key.public_key())
            .serial_number(7).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=9))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("example.com"), x509.DNSName("a.example.com")]), False)
            .sign(key, hashes.SHA256()))
    from cryptography.hazmat.primitives.serialization import Encoding
    der = cert.public_bytes(Encoding.DER)
    names, iss = cert_names(der)
    assert names == ["www.example.com", "example.com", "a.example.com"] and iss == "Example CA"
    # a TLS 1.2 server flight carries it: the verdict shows the server's names
    cmsg = b"\x0b" + (len(der) + 6).to_bytes(3, "big") + (len(der) + 3).to_bytes(3, "big") + len(der).to_bytes(3, "big") + der
    s = sample(src=[record(client_hello(tls13=False))], dst=[record(server_hello(False) + cmsg)])
    v = verdict(s)
    assert TlsDissector().dissect(s, v) == Match.FINAL
    assert v.tls.server_names[0] == "www.example.com" and v.tls.issuer == "Example CA"
    assert v.tls.version == "TLSv1.2" and v.tls.ja3s


# --------------------------------------------------------------------------- QUIC (RFC 9001)

def test_quic_initial_keys_rfc9001_appendix_a():
    key, iv, hp = initial_keys(1, bytes.fromhex("8394c8f03e515708"))
    assert key.hex() == "1f369613dd76d5467730efcbe3b1a22d"
    assert iv.hex() == "fa044b2f42a3fd3b46fb255c"
    assert hp.hex() == "9f50449e04a0e810283a1e9933adedd2"


def varint(n: int) -> bytes:
    if n < 64:
        return bytes([n])
    if n < 16384:
        return struct.pack(">H", 0x4000 | n)
    return struct.pack(">I", 0x80000000 | n)


def protect_initial(version: int, dcid: bytes, frames: bytes, pn: int = 0) -> bytes:
    """Build a client Initial as RFC 9001 section 5 says (the inverse of what the dissector does)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key, iv, hp = initial_keys(version, dcid)
    ptype = 1 if version == 0x6B3343CF else 0
    first = 0xC0 | (ptype << 4) | 0x03               # 4-byte packet number
    payload_len = 4 + len(frames) + 16
    header = bytes([first]) + struct.pack(">I", version) + bytes([len(dcid)]) + dcid + b"\x00" + b"\x00"
    header += struct.pack(">H", 0x4000 | payload_len) + struct.pack(">I", pn)
    nonce = bytes(a ^ b for a, b in zip(iv, pn.to_bytes(12, "big")))
    ct = AESGCM(key).encrypt(nonce, frames, header)
    pn_off = len(header) - 4
    enc = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    mask = enc.update(ct[:16]) + enc.finalize()
    out = bytearray(header + ct)
    out[0] ^= mask[0] & 0x0F
    for i in range(4):
        out[pn_off + i] ^= mask[1 + i]
    return bytes(out)


def test_quic_crypto_stream_across_padding_runs_and_pings():
    """PADDING runs (skipped at once) before, between and after CRYPTO frames, PINGs among them, a payload
    of padding alone, and a run that ends the payload: the stream is the CRYPTO data in offset order."""
    data = bytes(range(1, 200))
    f1 = b"\x06" + varint(0) + varint(120) + data[:120]
    f2 = b"\x06" + varint(120) + varint(len(data) - 120) + data[120:]
    p1 = b"\x00" * 37 + f1 + b"\x00" * 5 + b"\x01\x01" + b"\x00" + b"\x01"
    p2 = b"\x01" + b"\x00" * 300 + f2 + b"\x00" * 700
    assert crypto_stream([p1, p2]) == data
    assert crypto_stream([p2, b"\x00" * 1200, p1]) == data
    assert crypto_stream([b"\x00" * 1200]) == b""
    # a frame after a padding run is still read as a frame: an unknown type ends the payload there
    assert crypto_stream([b"\x00" * 10 + b"\x1f" + f1]) == b""


@pytest.mark.parametrize("version", [0x00000001, 0x6B3343CF, 0xFF00001D, 0xFF000017])
def test_quic_initial_decrypted_and_client_hello_read(version):
    ch = client_hello(sni="quic.example.com", alpn=("h3",))
    dcid = os.urandom(8)
    # the ClientHello spans two Initial packets, second part first (out of order)
    f1 = b"\x06" + varint(0) + varint(100) + ch[:100]
    f2 = b"\x06" + varint(100) + varint(len(ch) - 100) + ch[100:]
    d1 = protect_initial(version, dcid, f2 + b"\x00" * 40, pn=1)
    d2 = protect_initial(version, dcid, b"\x01" + f1 + b"\x00" * 40, pn=0)
    dec = decrypt_initials([d1, d2])
    assert dec is not None and dec[0] == version
    assert crypto_stream(dec[2]) == ch
    s = sample("UDP", src=[d1, d2], dst=[b"\xc0" + os.urandom(40)], dport=443)
    v = verdict(s)
    q = QuicDissector()
    assert q.could_be(s)
    assert q.dissect(s, v) == Match.FINAL
    assert v.app_protocol == "QUIC" and v.host == "quic.example.com"
    assert v.quic.alpn == ["h3"] and v.quic.ja4.startswith("q13d") and len(v.extra["ja3"]) == 32


def test_quic_truncated_initial_and_garbage():
    ch = client_hello(sni="t.example")
    pkt = protect_initial(1, os.urandom(8), b"\x06\x00" + varint(len(ch)) + ch + b"\x00" * 900)
    s = sample("UDP", src=[pkt[:400]], dport=443)     # the sampler kept only 400 bytes
    v = verdict(s)
    QuicDissector().dissect(s, v)
    assert v.host == "t.example"
    q = QuicDissector()
    for i in range(200):
        junk = bytes([0xC0]) + b"\x00\x00\x00\x01" + os.urandom(i % 120)
        s = sample("UDP", src=[junk])
        q.dissect(s, verdict(s))


def test_gquic_chlo_tags():
    tags = [(b"SNI\x00", b"www.google.com"), (b"UAID", b"Chrome/90"), (b"VER\x00", b"Q043")]
    vals = b""
    index = b""
    for t, val in tags:
        vals += val
        index += t + struct.pack("<I", len(vals))
    chlo = b"CHLO" + struct.pack("<HH", len(tags), 0) + index + vals
    pkt = b"\x0d" + os.urandom(8) + b"Q043" + b"\x01" + os.urandom(12) + b"\xa0\x01\x00" + chlo
    s = sample("UDP", src=[pkt], dport=443)
    v = verdict(s)
    assert QuicDissector().dissect(s, v) == Match.FINAL
    assert v.host == "www.google.com" and v.quic.user_agent == "Chrome/90" and v.quic.version == "Q043"


# --------------------------------------------------------------------------- HTTP (RFC 9112)

def test_http_request_and_response():
    req = b"GET /index.html?a=1 HTTP/1.1\r\nHost: www.example.com:8080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/html\r\n\r\n<html>"
    s = sample(src=[req[:20], req[20:]], dst=[resp], dport=80)
    v = verdict(s)
    assert HttpDissector().dissect(s, v) == Match.FINAL
    assert v.app_protocol == "HTTP" and v.host == "www.example.com"
    h = v.http
    assert (h.method, h.url, h.user_agent, h.status_code, h.server, h.content_type) == (
        "GET", "/index.html?a=1", "curl/8.5.0", 200, "nginx", "text/html")


def test_http_connect_proxy_h2_and_not_rtsp():
    d = HttpDissector()
    s = sample(src=[b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n"], dport=8080)
    v = verdict(s)
    d.dissect(s, v)
    assert v.app_protocol == "HTTP_Connect" and v.host == "example.org"
    s = sample(src=[b"GET http://proxied.example/ HTTP/1.1\r\nHost: proxied.example\r\n\r\n"], dport=3128)
    v = verdict(s)
    d.dissect(s, v)
    assert v.app_protocol == "HTTP_Proxy" and v.host == "proxied.example"
    s = sample(src=[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"], dport=80)
    v = verdict(s)
    assert d.dissect(s, v) == Match.FINAL and v.app_protocol == "HTTP2"
    s = sample(src=[b"OPTIONS rtsp://cam/ RTSP/1.0\r\nCSeq: 1\r\n\r\n"], dport=554)
    assert d.dissect(s, verdict(s)) == Match.NO


def test_http_response_only_flow():
    s = sample(src=[b"HTTP/1.1 404 Not Found\r\nServer: x\r\n\r\n"], dport=80)
    v = verdict(s)
    assert HttpDissector().dissect(s, v) != Match.NO
    assert v.app_protocol == "HTTP" and v.http.status_code == 404


# --------------------------------------------------------------------------- DNS (RFC 1035)

def dns_query(name: str, qtype=1, txid=0x1234) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    return struct.pack(">HHHHHH", txid, 0x0100, 1, 0, 0, 0) + q + struct.pack(">HH", qtype, 1)


def dns_response(name: str, txid=0x1234) -> bytes:
    q = dns_query(name, txid=txid)[12:]
    ans = b"\xc0\x0c" + struct.pack(">HHIH", 5, 1, 60, 2) + b"\xc0\x0c"                     # CNAME (to itself)
    ans += b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 300, 4) + bytes([93, 184, 216, 34])      # A
    ans += b"\xc0\x0c" + struct.pack(">HHIH", 28, 1, 300, 16) + bytes(15) + b"\x01"         # AAAA
    return struct.pack(">HHHHHH", txid, 0x8180, 1, 3, 0, 0) + q + ans


def test_dns_query_response():
    s = sample("UDP", src=[dns_query("www.example.com")], dst=[dns_response("www.example.com")], dport=53)
    v = verdict(s)
    assert DnsDissector().dissect(s, v) == Match.FINAL
    assert v.app_protocol == "DNS" and v.host == "www.example.com"
    assert v.extra["dns_rcode"] == "NOERROR" and "93.184.216.34" in v.extra["dns_answers"]
    m = parse_message(dns_response("www.example.com"))
    assert [(a.rtype, a.data) for a in m.answers] == [
        ("CNAME", "www.example.com"), ("A", "93.184.216.34"), ("AAAA", "::1")]


def test_mdns_llmnr_names_and_tcp():
    d = DnsDissector()
    s = sample("UDP", src=[dns_query("_raop._tcp.local", 12)], sport=5353, dport=5353)
    v = verdict(s)
    d.dissect(s, v)
    assert v.app_protocol == "MDNS" and v.host == "_raop._tcp.local"
    s = sample("UDP", src=[dns_query("wpad")], dport=5355)
    v = verdict(s)
    d.dissect(s, v)
    assert v.app_protocol == "LLMNR" and v.host == "wpad"
    q = dns_query("tcp.example")
    s = sample("TCP", src=[struct.pack(">H", len(q)) + q], dport=53)
    v = verdict(s)
    assert d.dissect(s, v) == Match.PARTIAL and v.host == "tcp.example"


def test_dns_non_standard_port_needs_a_pair_and_garbage_is_none():
    d = DnsDissector()
    s = sample("UDP", src=[dns_query("x.example")], dport=40000)
    assert d.dissect(s, verdict(s)) == Match.NO
    s = sample("UDP", src=[dns_query("x.example")], dst=[dns_response("x.example")], dport=40000)
    assert d.dissect(s, verdict(s)) == Match.FINAL
    for i in range(500):
        parse_message(os.urandom(i % 80))
    # a compression loop ends, it does not hang
    loop = struct.pack(">HHHHHH", 1, 0, 1, 0, 0, 0) + b"\xc0\x0c"
    assert parse_message(loop) is None


# --------------------------------------------------------------------------- SSH (RFC 4253)

def kexinit(lists: list[str]) -> bytes:
    payload = b"\x14" + os.urandom(16) + b"".join(struct.pack(">I", len(x)) + x.encode() for x in lists) + b"\x00" + b"\x00" * 4
    pad = 8 - (len(payload) + 5) % 8 + 8
    return struct.pack(">IB", len(payload) + pad + 1, pad) + payload + b"\x00" * pad


def test_ssh_banners_and_hassh():
    lists = ["curve25519-sha256", "ssh-ed25519", "aes128-ctr", "aes256-ctr", "hmac-sha2-256", "hmac-sha1",
             "none", "zlib", "", ""]
    c = b"SSH-2.0-OpenSSH_9.6\r\n" + kexinit(lists)
    srv = b"SSH-2.0-OpenSSH_8.4p1 Debian\r\n" + kexinit(lists)
    s = sample(src=[c[:30], c[30:]], dst=[srv], dport=22)
    v = verdict(s)
    assert SshDissector().dissect(s, v) == Match.FINAL
    assert v.app_protocol == "SSH" and v.host == "SSH-2.0-OpenSSH_9.6"
    assert v.ssh.server_banner == "SSH-2.0-OpenSSH_8.4p1 Debian"
    assert v.ssh.hassh_client == hashlib.md5(b"curve25519-sha256;aes128-ctr;hmac-sha2-256;none").hexdigest()
    assert v.ssh.hassh_server == hashlib.md5(b"curve25519-sha256;aes256-ctr;hmac-sha1;zlib").hexdigest()


def test_quic_no_false_positive_on_lookalike_headers():
    q = QuicDissector()
    switch_discovery = b"\xff\xff\x00\x00\xa0\x00" + os.urandom(60)      # "version" 0xff0000a0: no such draft
    fuzz = b"\xaa" * 40                                                  # reserved version, not a padded Initial
    for d in (switch_discovery, fuzz):
        assert not q.could_be(sample("UDP", src=[d], dport=62976))


def test_mdns_reads_on_until_a_response():
    d = DnsDissector()
    qs = [dns_query("_raop._tcp.local", 12, txid=0), dns_query("_homekit._tcp.local", 12, txid=0)]
    s = sample("UDP", src=qs, sport=5353, dport=5353)
    v = verdict(s)
    assert d.dissect(s, v) == Match.PARTIAL and v.host == "_homekit._tcp.local"    # the latest query so far
    resp = dns_response("_airplay._tcp.local", txid=0)
    s = sample("UDP", src=qs + [resp, dns_query("_later._tcp.local", 12, txid=0)], sport=5353, dport=5353)
    v = verdict(s)
    assert d.dissect(s, v) == Match.FINAL and v.host == "_airplay._tcp.local"      # the first response


def test_gquic_server_rejection_only():
    rej = b"REJ\x00" + struct.pack("<HH", 2, 0) + b"STK\x00" + struct.pack("<I", 4) + b"SNO\x00" + struct.pack("<I", 8) + b"x" * 8
    pkt = b"\x08" + os.urandom(8) + b"\x01" + os.urandom(12) + b"\xff\x01\x00" + rej
    s = sample("UDP", src=[pkt], sport=443, dport=60524)
    v = verdict(s)
    assert QuicDissector().could_be(s) and QuicDissector().dissect(s, v) == Match.FINAL and v.app_protocol == "QUIC"
    s = sample("UDP", src=[b"\x08" + os.urandom(60)], sport=443, dport=60524)
    assert not QuicDissector().could_be(s)


def test_quic_partial_client_hello_is_not_final():
    ch = client_hello(sni="late.example", alpn=("h3",))
    dcid = os.urandom(8)
    first = protect_initial(1, dcid, b"\x06" + varint(0) + varint(60) + ch[:60] + b"\x00" * 40)
    s = sample("UDP", src=[first], dport=443)
    v = verdict(s)
    assert QuicDissector().dissect(s, v) == Match.PARTIAL and v.app_protocol == "QUIC"
    second = protect_initial(1, dcid, b"\x06" + varint(60) + varint(len(ch) - 60) + ch[60:] + b"\x00" * 40, pn=1)
    s = sample("UDP", src=[first, second], dport=443)
    v = verdict(s)
    assert QuicDissector().dissect(s, v) == Match.FINAL and v.host == "late.example"


def test_mutated_messages_give_valid_verdicts():
    """Every core message above, mutated byte by byte: no exception, and every verdict is a valid event."""
    import random

    rnd = random.Random(1234)
    ch = client_hello()
    seeds = [
        sample(src=[record(ch)], dst=[record(server_hello())]),
        sample("UDP", src=[protect_initial(1, b"\x01" * 8, b"\x06\x00" + varint(len(ch)) + ch + b"\x00" * 300)], dport=443),
        sample("UDP", src=[dns_query("www.example.com")], dst=[dns_response("www.example.com")], dport=53),
        sample(src=[b"GET / HTTP/1.1\r\nHost: a.example\r\nUser-Agent: x\r\n\r\n"], dst=[b"HTTP/1.1 200 OK\r\nServer: s\r\n\r\n"], dport=80),
        sample(src=[b"SSH-2.0-x\r\n" + kexinit(["a"] * 10)], dst=[b"SSH-2.0-y\r\n" + kexinit(["b"] * 10)], dport=22),
    ]
    e = Engine(port_guess=True, final_memo=0)
    for _ in range(600):
        s = rnd.choice(seeds)

        def mut(lst):
            out = []
            for p in lst:
                b = bytearray(p)
                for _ in range(rnd.randint(1, 8)):
                    b[rnd.randrange(len(b))] = rnd.choice([0, 10, 13, 32, 45, 58, 255, rnd.randrange(256)])
                if rnd.random() < 0.3:
                    b = b[:rnd.randrange(1, len(b) + 1)]
                out.append(bytes(b))
            return out

        t = s.model_copy(update=dict(src_payloads=mut(s.src_payloads), dst_payloads=mut(s.dst_payloads)))
        v = e.classify(t)
        Verdict.model_validate_json(v.model_dump_json())
    assert not e.errors, dict(e.errors)
