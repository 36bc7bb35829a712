"""TLS over TCP (RFC 8446, RFC 5246) and DTLS over UDP (RFC 6347, RFC 9147).

The ClientHello gives SNI, ALPN, offered versions, JA3 and JA4; the
ServerHello the negotiated version, cipher and JA3S; for TLS <= 1.2 the
Certificate message (still in clear) the server's names and issuer.  Records
may be fragmented: handshake bytes of consecutive records are joined first.
"""

from __future__ import annotations

from services.classify.dissectors.base import Dissector, Match
from services.classify.dissectors.tls_common import (
    Hello, handshake_messages, is_grease, ja3, ja3s, ja4, parse_certificate_msg,
    parse_client_hello, parse_server_hello, tls_records, version_name,
)
from shared.models import FlowSample, TlsInfo, Verdict

# TLS directly on these ports is the mail protocol's implicit-TLS variant (nDPI names)
_TLS_PORT_NAMES = {465: "SMTPS", 993: "IMAPS", 995: "POPS"}


def _looks_tls(p: list[bytes]) -> bool:
    if not p:
        return False
    b = p[0]
    return len(b) >= 3 and b[0] == 0x16 and b[1] == 3 and b[2] <= 4


def _client_and_server(c_stream: bytes, s_stream: bytes, dtls: bool = False):
    """(ClientHello, ServerHello, cert names, issuer, saw CCS/appdata) from the two directions."""
    ch = sh = None
    names: list[str] = []
    issuer = ""
    tls13 = False
    if dtls:
        c_hs, s_hs = _dtls_handshake(c_stream), _dtls_handshake(s_stream)
    else:
        c_hs = tls_records(c_stream)[0]
        s_hs = tls_records(s_stream)[0]
    for t, body in handshake_messages(c_hs, dtls):
        if t == 1:
            ch = parse_client_hello(body, dtls)
            break
    for t, body in handshake_messages(s_hs, dtls):
        if t == 2 and sh is None:
            sh = parse_server_hello(body, dtls)
            if sh is not None:
                tls13 = sh.version == 0x0304
                if tls13:
                    break
        elif t == 11 and sh is not None and not tls13:
            names, issuer = parse_certificate_msg(body)
            break
    return ch, sh, names, issuer


def _dtls_handshake(datagrams: bytes | list[bytes]) -> bytes:
    """Handshake bytes of the epoch-0 DTLS records of a list of datagrams (message headers kept)."""
    out = []
    for d in datagrams if isinstance(datagrams, list) else [datagrams]:
        pos, end = 0, len(d)
        while pos + 13 <= end:
            ct = d[pos]
            ln = (d[pos + 11] << 8) | d[pos + 12]
            if ct == 22 and d[pos + 3] == 0 and d[pos + 4] == 0:
                out.append(d[pos + 13:pos + 13 + ln])
            pos += 13 + ln
    return b"".join(out)


def fill_tls(v: Verdict, ch: Hello | None, sh: Hello | None, names: list[str], issuer: str, proto: str) -> TlsInfo:
    info = v.tls or TlsInfo()
    if ch is not None:
        info.sni = ch.sni[:512]
        info.alpn = [a[:64] for a in ch.alpn[:16]]
        info.ja3 = ja3(ch)
        info.ja4 = ja4(ch, proto)
        info.version = version_name(ch.version)
        if ch.sni:
            v.host = ch.sni
    if sh is not None:
        info.version = version_name(sh.version)
        info.ja3s = ja3s(sh)
        if sh.ciphers:
            info.cipher = "0x%04x" % sh.ciphers[0]
        if sh.alpn and not info.alpn:
            info.alpn = [a[:64] for a in sh.alpn[:16]]
    if names:
        info.server_names = [n[:256] for n in names[:32]]
    if issuer:
        info.issuer = issuer[:512]
    v.tls = info
    return info


class TlsDissector(Dissector):
    name = "TLS"
    transports = frozenset({"TCP"})
    ports = frozenset({443, 8443})

    def could_be(self, s: FlowSample) -> bool:
        return _looks_tls(s.src_payloads) or _looks_tls(s.dst_payloads)

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        a = b"".join(s.src_payloads)
        b = b"".join(s.dst_payloads)
        ch, sh, names, issuer = _client_and_server(a, b)
        if ch is None and sh is None:
            # maybe we joined the flow the other way round (first packet seen was the server's)
            ch2, sh2, names2, issuer2 = _client_and_server(b, a)
            if ch2 is not None or sh2 is not None:
                ch, sh, names, issuer = ch2, sh2, names2, issuer2
        if ch is None and sh is None:
            return Match.NO
        fill_tls(v, ch, sh, names, issuer, "t")
        port = s.dst_port if s.dst_port in _TLS_PORT_NAMES else s.src_port
        v.app_protocol = _TLS_PORT_NAMES.get(port, "TLS")
        if ch is not None and sh is not None and (sh.version == 0x0304 or names or len(b) >= 3000):
            return Match.FINAL
        return Match.PARTIAL


class DtlsDissector(Dissector):
    name = "DTLS"
    transports = frozenset({"UDP"})
    ports = frozenset()

    @staticmethod
    def _looks(p: list[bytes]) -> bool:
        if not p:
            return False
        d = p[0]
        return len(d) >= 13 and d[0] in (20, 21, 22, 23) and d[1] == 0xFE and d[2] in (0xFF, 0xFD, 0xFC)

    def could_be(self, s: FlowSample) -> bool:
        return self._looks(s.src_payloads) or self._looks(s.dst_payloads)

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        a, b = s.src_payloads, s.dst_payloads
        ch, sh, names, issuer = _client_and_server(a, b, dtls=True)   # type: ignore[arg-type]
        if ch is None and sh is None:
            ch, sh, names, issuer = _client_and_server(b, a, dtls=True)  # type: ignore[arg-type]
        if ch is None and sh is None:
            # a DTLS record header on both sides is enough (nDPI does the same)
            if self._looks(a) and (self._looks(b) or not b):
                v.app_protocol = "DTLS"
                return Match.PARTIAL
            return Match.NO
        fill_tls(v, ch, sh, names, issuer, "d")
        v.app_protocol = "DTLS"
        return Match.FINAL if ch is not None and sh is not None else Match.PARTIAL


__all__ = ["TlsDissector", "DtlsDissector", "fill_tls", "is_grease"]
