"""Hostile bytes never raise from the core parsers (property-based)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.classify.dissectors.dns import parse_message
from services.classify.dissectors.quic import crypto_stream, decrypt_initials, parse_chlo
from services.classify.dissectors.tls_common import (
    cert_names, handshake_messages, parse_certificate_msg, parse_client_hello, parse_server_hello, tls_records,
)

blob = st.binary(max_size=600)


@settings(max_examples=300, deadline=None)
@given(blob)
def test_dns_parser_total(b):
    m = parse_message(b)
    if m is not None:
        for a in m.answers:
            a.as_model()


@settings(max_examples=300, deadline=None)
@given(blob, st.booleans())
def test_tls_parsers_total(b, dtls):
    parse_client_hello(b, dtls)
    parse_server_hello(b, dtls)
    hs, _, _ = tls_records(b)
    list(handshake_messages(hs, dtls))
    cert_names(b)
    parse_certificate_msg(b)
    parse_certificate_msg(b, tls13=True)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=4), blob)
def test_quic_parsers_total(dgs, b):
    decrypt_initials([bytes([0xC0]) + b"\x00\x00\x00\x01" + d for d in dgs])
    decrypt_initials(dgs)
    crypto_stream([b], gquic=False)
    crypto_stream([b], gquic=True)
    parse_chlo(b"CHLO" + b)
