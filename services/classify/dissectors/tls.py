"""TLS over TCP (RFC 8446, RFC 5246) and DTLS over UDP (RFC 6347, RFC 9147).

The ClientHello gives SNI, ALPN, offered versions, JA3 and JA4; the
ServerHello the negotiated version, cipher and JA3S; for TLS <= 1.2 the
Certificate message (still in clear) the server's names and issuer.  Records
may be fragmented: handshake bytes of consecutive records are joined first.
"""

from __future__ import annotations

from functools import lru_cache

from services.classify.dissectors.base import Dissector, Match
from services.classify.dissectors.mail import greeting_host
from services.classify.dissectors.tls_common import (
    Hello, certificate_msg_details, cipher_name, handshake_messages, is_grease, ja3, ja3s, ja4, parse_certificate_msg,
    parse_client_hello, parse_server_hello, tls_records, version_name,
)
from shared.models import FlowSample, TlsInfo, Verdict
from shared.text import wire_text

# TLS directly on these ports is the mail protocol's implicit-TLS variant (nDPI names)
_TLS_PORT_NAMES = {465: "SMTPS", 993: "IMAPS", 995: "POPS"}


def _looks_tls(p: list[bytes]) -> bool:
    if not p:
        return False
    b = p[0]
    return len(b) >= 3 and 0x14 <= b[0] <= 0x17 and b[1] == 3 and b[2] <= 4


def _record_chain(data: bytes) -> bool:
    """True when data is a run of well-formed TLS records (at least one complete)."""
    pos, n, end = 0, 0, len(data)
    while pos + 5 <= end and n < 16:
        if not 0x14 <= data[pos] <= 0x17 or data[pos + 1] != 3 or data[pos + 2] > 4:
            return False
        ln = (data[pos + 3] << 8) | data[pos + 4]
        if ln == 0 or ln > 18432:
            return False
        pos += 5 + ln
        n += 1
    return n > 0 and (pos >= end or n >= 2)


@lru_cache(maxsize=2048)
def _client_side(hs: bytes, dtls: bool) -> tuple[Hello, str, str] | None:
    """ClientHello of a handshake byte string, with its JA3 and JA4 (cached: samples repeat)."""
    for t, body in handshake_messages(hs, dtls):
        if t == 1:
            ch = parse_client_hello(body, dtls)
            if ch is None:
                return None
            return ch, ja3(ch), ja4(ch, "d" if dtls else "t")
        return None
    return None


@lru_cache(maxsize=2048)
def _server_side(hs: bytes, dtls: bool) -> tuple[Hello, str, tuple[str, ...], str] | None:
    """ServerHello, JA3S, certificate names and issuer of the server's handshake bytes (cached)."""
    sh = None
    for t, body in handshake_messages(hs, dtls):
        if t == 3 and dtls:
            continue                      # HelloVerifyRequest
        if t == 2 and sh is None:
            sh = parse_server_hello(body, dtls)
            if sh is None:
                return None
            if sh.version == 0x0304:
                break
        elif t == 11 and sh is not None:
            names, issuer = parse_certificate_msg(body)
            return sh, ja3s(sh), tuple(names), issuer, certificate_msg_details(body)
        elif sh is None:
            return None
    if sh is None:
        return None
    return sh, ja3s(sh), (), "", None


def _client_and_server(c_stream, s_stream, dtls: bool = False):
    """(client side, server side) parsed from the two directions' bytes (or datagram lists for DTLS)."""
    if dtls:
        c_hs, s_hs = _dtls_handshake(c_stream), _dtls_handshake(s_stream)
    else:
        c_hs = tls_records(c_stream)[0]
        s_hs = tls_records(s_stream)[0]
    return (_client_side(c_hs, dtls) if c_hs else None), (_server_side(s_hs, dtls) if s_hs else None)


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


def fill_tls(v: Verdict, cs, ss) -> None:
    kw: dict = {}
    if cs is not None:
        ch, j3, j4 = cs
        kw = dict(sni=wire_text(ch.sni_raw, 512) if ch.sni_raw else ch.sni[:512],
                  alpn=[wire_text(a, 64) for a in ch.alpn_raw[:16]] if ch.alpn_raw else [a[:64] for a in ch.alpn[:16]],
                  ja3=j3, ja4=j4,
                  version=version_name(ch.version))
        if ch.sni:
            v.host = ch.sni
    if ss is not None:
        sh, j3s, names, issuer, details = ss
        kw["version"] = version_name(sh.version)
        kw["ja3s"] = j3s
        if sh.ciphers:
            kw["cipher"] = cipher_name(sh.ciphers[0])
        if sh.alpn and not kw.get("alpn"):
            kw["alpn"] = [wire_text(a, 64) for a in sh.alpn_raw[:16]] if sh.alpn_raw else [a[:64] for a in sh.alpn[:16]]
        if names:
            kw["server_names"] = [n[:256] for n in names[:32]]
        if issuer:
            kw["issuer"] = issuer[:512]
        if details is not None:
            from shared.text import truncate

            subject, cissuer, serial, nb, na = details
            kw.update(cert_subject=truncate(subject, 1024), cert_issuer=truncate(cissuer, 1024),
                      cert_serial=serial[:128], cert_not_before=nb, cert_not_after=na)
    v.tls = TlsInfo(**kw)


def _upgrade_start(p: list[bytes]) -> int:
    """Index of the first payload that starts a TLS handshake after clear-text ones (STARTTLS, RDP), -1 if none."""
    for i in range(1, min(len(p), 12)):
        d = p[i]
        if len(d) >= 6 and d[0] == 0x16 and d[1] == 3 and d[2] <= 4 and d[5] in (1, 2):
            return i
    return -1


def _upgraded_name(clear: bytes, s: FlowSample) -> tuple[str, str] | None:
    """(protocol, application) of a connection upgraded to TLS, from its clear-text start.

    None when the clear-text part is another protocol's own negotiation (RDP's X.224,
    PostgreSQL's SSLRequest, SOCKS, Gnutella, ...): nDPI names those by that protocol,
    so the TLS dissector leaves them to the others.
    """
    if clear.startswith(b"PROXY ") or clear.startswith(b"\r\n\r\n\x00\r\nQUIT\n"):
        return "HAProxy", ""                      # PROXY protocol v1/v2 header in front of TLS
    if clear.startswith(b"CONNECT "):
        return "HTTP_Connect", ""                 # TLS through an HTTP proxy tunnel
    ports = (s.src_port, s.dst_port)
    up = clear.upper()
    if b"STLS" in up and (110 in ports or up.startswith(b"+OK")):
        return "POPS", ""
    if b"STARTTLS" in up:
        if 143 in ports or b"* OK" in up[:8] or b"IMAP" in up:
            return "IMAPS", ""
        if b"EHLO" in up or b"HELO" in up or up.startswith(b"220"):
            return "SMTPS", ""
    if b"AUTH TLS" in up or b"AUTH SSL" in up:
        return "FTPS", ""
    return None


class TlsDissector(Dissector):
    name = "TLS"
    transports = frozenset({"TCP"})
    ports = frozenset({443, 8443})

    def could_be(self, s: FlowSample) -> bool:
        if _looks_tls(s.src_payloads) or _looks_tls(s.dst_payloads):
            return True
        p = s.src_payloads
        if len(p) > 1 and p[1][:1] == b"\x16":
            return True
        return len(p) > 2 and b"\x16\x03" in [x[:2] for x in p[2:12]]

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        if not (_looks_tls(s.src_payloads) or _looks_tls(s.dst_payloads)):
            return self._upgraded(s, v)
        a = b"".join(s.src_payloads)
        b = b"".join(s.dst_payloads)
        cs, ss = _client_and_server(a, b)
        if cs is None and ss is None:
            # maybe we joined the flow the other way round (first packet seen was the server's)
            cs, ss = _client_and_server(b, a)
            if cs is None and ss is None:
                # joined mid-session: application data records in both (or the only) direction(s)
                if (a or b) and (not a or _record_chain(a)) and (not b or _record_chain(b)):
                    port = s.dst_port if s.dst_port in _TLS_PORT_NAMES else s.src_port
                    v.app_protocol = _TLS_PORT_NAMES.get(port, "TLS")
                    return Match.PARTIAL
                return Match.NO
        fill_tls(v, cs, ss)
        port = s.dst_port if s.dst_port in _TLS_PORT_NAMES else s.src_port
        v.app_protocol = _TLS_PORT_NAMES.get(port, "TLS")
        if cs is not None and ss is not None and (ss[0].version == 0x0304 or ss[2] or len(b) >= 3000):
            return Match.FINAL
        return Match.PARTIAL


    def _upgraded(self, s: FlowSample, v: Verdict) -> Match:
        i = _upgrade_start(s.src_payloads)
        if i < 0:
            return Match.NO
        j = _upgrade_start(s.dst_payloads)
        a = b"".join(s.src_payloads[i:])
        b = b"".join(s.dst_payloads[j:]) if j >= 0 else b""
        cs, ss = _client_and_server(a, b)
        if cs is None:
            return Match.NO
        clear = b"".join(s.src_payloads[:i]) + b"\n" + (b"".join(s.dst_payloads[:j]) if j > 0 else b"")
        named = _upgraded_name(clear, s)
        if named is None:
            return Match.NO
        proto, app = named
        fill_tls(v, cs, ss)
        v.app_protocol = proto
        if app:
            v.application = app
        if not v.host and proto == "SMTPS" and j > 0:
            # no SNI: the server's greeting names it ("220 mx.example.org ESMTP ...")
            v.host = greeting_host(s.dst_payloads[:j])
        return Match.FINAL if ss is not None else Match.PARTIAL


class DtlsDissector(Dissector):
    name = "DTLS"
    transports = frozenset({"UDP"})
    ports = frozenset()

    @staticmethod
    def _is_record(d: bytes) -> bool:
        """A datagram that starts with a DTLS record which fits in it (and is followed by nothing or
        another record): content type 20..25, version DTLS 1.0/1.2/1.3 or OpenSSL's pre-RFC 0x0100."""
        if len(d) < 13 or not 20 <= d[0] <= 25:
            return False
        if not ((d[1] == 0xFE and d[2] in (0xFF, 0xFD, 0xFC)) or (d[1] == 1 and d[2] == 0)):
            return False
        end = 13 + ((d[11] << 8) | d[12])
        return end == len(d) or (end < len(d) and 20 <= d[end] <= 25)

    def _looks(self, p: list[bytes]) -> bool:
        for d in p[:4]:
            if self._is_record(d):
                return True
        return False

    def could_be(self, s: FlowSample) -> bool:
        return self._looks(s.src_payloads) or self._looks(s.dst_payloads)

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        a = [d for d in s.src_payloads if self._is_record(d)]
        b = [d for d in s.dst_payloads if self._is_record(d)]
        cs, ss = _client_and_server(a, b, dtls=True)
        if cs is None and ss is None:
            cs, ss = _client_and_server(b, a, dtls=True)
        if cs is None and ss is None:
            # DTLS record headers (e.g. a session joined midway) are enough, as for nDPI
            if a or b:
                v.app_protocol = "DTLS"
                return Match.PARTIAL
            return Match.NO
        fill_tls(v, cs, ss)
        v.app_protocol = "DTLS"
        return Match.FINAL if cs is not None and ss is not None else Match.PARTIAL


__all__ = ["TlsDissector", "DtlsDissector", "fill_tls", "is_grease"]
