"""The sample fast path's name extraction: HTTP Host and TLS SNI from real client bytes, junk never raises."""

from __future__ import annotations

import ssl

from hypothesis import given, settings
from hypothesis import strategies as st

from services.block.fastpath import client_name, http_host, tls_sni


def _client_hello(sni: str) -> bytes:
    ctx = ssl.create_default_context()
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def test_tls_sni_from_a_real_client_hello_whole_and_split():
    hello = _client_hello("secure.block.test")
    assert tls_sni(hello) == "secure.block.test"
    assert client_name(hello) == ("TLS", "secure.block.test")
    # the same handshake message split over two TLS records
    body = hello[5:]
    split = b"\x16\x03\x01" + (100).to_bytes(2, "big") + body[:100] + b"\x16\x03\x01" + \
        (len(body) - 100).to_bytes(2, "big") + body[100:]
    assert tls_sni(split) == "secure.block.test"
    assert tls_sni(hello[:40]) is None


def test_http_host():
    req = b"GET /x HTTP/1.1\r\nUser-Agent: curl\r\nhost: Www.Example.test\r\nAccept: */*\r\n\r\n"
    assert http_host(req) == "Www.Example.test"
    assert client_name(req) == ("HTTP", "Www.Example.test")
    assert http_host(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n") is None
    assert http_host(b"SSH-2.0-OpenSSH\r\n") is None
    assert http_host(b"GET / HTTP/1.0\r\n\r\n") is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_junk_never_raises(data):
    client_name(data)
    client_name(b"\x16\x03\x01" + data)
    client_name(b"\x16\x03\x01\x00\x50\x01" + data)
