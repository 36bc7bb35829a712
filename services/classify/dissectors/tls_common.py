"""TLS handshake parsing shared by TLS, DTLS and QUIC (RFC 8446, RFC 5246, RFC 6347, RFC 9147).

Everything here works on possibly truncated input (a flow sample keeps only
the first few KB): parsers read what is there and never raise on short or
hostile bytes — they return None or partial results.

Fingerprints:
- JA3 / JA3S (Salesforce): decimal fields joined by '-', groups by ',', MD5.
- JA4 (FoxIO): ``<t|q|d><version><d|i><#ciphers><#exts><alpn>_<sha256 ciphers>_<sha256 exts+sigalgs>``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache

TLS_VERSIONS = {
    0x0300: "SSLv3", 0x0301: "TLSv1", 0x0302: "TLSv1.1", 0x0303: "TLSv1.2", 0x0304: "TLSv1.3",
    0xFEFF: "DTLSv1.0", 0xFEFD: "DTLSv1.2", 0xFEFC: "DTLSv1.3",
}
_JA4_VERSION = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3",
                0xFEFF: "d1", 0xFEFD: "d2", 0xFEFC: "d3"}


# IANA TLS cipher suite names of the suites seen in practice (others are shown as hex)
CIPHER_NAMES = {
    0x1301: "TLS_AES_128_GCM_SHA256", 0x1302: "TLS_AES_256_GCM_SHA384", 0x1303: "TLS_CHACHA20_POLY1305_SHA256",
    0x1304: "TLS_AES_128_CCM_SHA256", 0x1305: "TLS_AES_128_CCM_8_SHA256",
    0xC02B: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", 0xC02C: "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    0xC02F: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", 0xC030: "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    0xCCA8: "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", 0xCCA9: "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    0xCCAA: "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    0xC009: "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", 0xC00A: "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    0xC013: "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", 0xC014: "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    0xC023: "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256", 0xC024: "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384",
    0xC027: "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256", 0xC028: "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384",
    0x009C: "TLS_RSA_WITH_AES_128_GCM_SHA256", 0x009D: "TLS_RSA_WITH_AES_256_GCM_SHA384",
    0x009E: "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256", 0x009F: "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
    0x002F: "TLS_RSA_WITH_AES_128_CBC_SHA", 0x0035: "TLS_RSA_WITH_AES_256_CBC_SHA",
    0x003C: "TLS_RSA_WITH_AES_128_CBC_SHA256", 0x003D: "TLS_RSA_WITH_AES_256_CBC_SHA256",
    0x0033: "TLS_DHE_RSA_WITH_AES_128_CBC_SHA", 0x0039: "TLS_DHE_RSA_WITH_AES_256_CBC_SHA",
    0x000A: "TLS_RSA_WITH_3DES_EDE_CBC_SHA", 0x0005: "TLS_RSA_WITH_RC4_128_SHA", 0x0004: "TLS_RSA_WITH_RC4_128_MD5",
    0x00FF: "TLS_EMPTY_RENEGOTIATION_INFO_SCSV",
}


def cipher_name(c: int) -> str:
    return CIPHER_NAMES.get(c, "0x%04x" % c)


def is_grease(v: int) -> bool:
    """RFC 8701 GREASE values: 0x?a?a with both bytes equal."""
    return (v & 0x0F0F) == 0x0A0A and (v >> 8) == (v & 0xFF)


def version_name(v: int) -> str:
    return TLS_VERSIONS.get(v, "") or ("0x%04x" % v if v else "")


@dataclass
class Hello:
    """Fields of a ClientHello or ServerHello (what could be read)."""

    legacy_version: int = 0
    ciphers: list[int] = field(default_factory=list)
    extensions: list[int] = field(default_factory=list)
    sni: str = ""
    alpn: list[str] = field(default_factory=list)
    sni_raw: bytes = b""            # the server_name and ALPN bytes as sent (for the TLS log's text)
    alpn_raw: list[bytes] = field(default_factory=list)
    supported_versions: list[int] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    point_formats: list[int] = field(default_factory=list)
    sig_algs: list[int] = field(default_factory=list)
    quic_params: bytes = b""
    complete: bool = False          # the whole message was present

    @property
    def version(self) -> int:
        """Highest non-GREASE supported_versions entry, else the legacy version."""
        sv = [v for v in self.supported_versions if not is_grease(v)]
        return max(sv) if sv else self.legacy_version


def _parse_extensions(b: bytes, pos: int, end: int, h: Hello, client: bool) -> None:
    while pos + 4 <= end:
        et = (b[pos] << 8) | b[pos + 1]
        el = (b[pos + 2] << 8) | b[pos + 3]
        pos += 4
        h.extensions.append(et)
        ext = b[pos:min(pos + el, end)]
        pos += el
        try:
            if et == 0 and client:                  # server_name (RFC 6066)
                if len(ext) >= 5 and ext[2] == 0:
                    n = (ext[3] << 8) | ext[4]
                    h.sni_raw = ext[5:5 + n]
                    h.sni = h.sni_raw.decode("ascii", "replace")
            elif et == 16:                          # ALPN (RFC 7301)
                i, e = 2, min(len(ext), 2 + ((ext[0] << 8) | ext[1]) if len(ext) >= 2 else 0)
                while i < e:
                    n = ext[i]
                    h.alpn_raw.append(ext[i + 1:i + 1 + n])
                    h.alpn.append(h.alpn_raw[-1].decode("ascii", "replace"))
                    i += 1 + n
            elif et == 43:                          # supported_versions
                if client:
                    if ext:
                        n = ext[0]
                        h.supported_versions = [(ext[i] << 8) | ext[i + 1] for i in range(1, min(1 + n, len(ext) - 1), 2)]
                elif len(ext) >= 2:
                    h.supported_versions = [(ext[0] << 8) | ext[1]]
            elif et == 10 and client:               # supported_groups
                if len(ext) >= 2:
                    n = (ext[0] << 8) | ext[1]
                    h.groups = [(ext[i] << 8) | ext[i + 1] for i in range(2, min(2 + n, len(ext) - 1), 2)]
            elif et == 11:                          # ec_point_formats
                if ext:
                    h.point_formats = list(ext[1:1 + ext[0]])
            elif et == 13 and client:               # signature_algorithms
                if len(ext) >= 2:
                    n = (ext[0] << 8) | ext[1]
                    h.sig_algs = [(ext[i] << 8) | ext[i + 1] for i in range(2, min(2 + n, len(ext) - 1), 2)]
            elif et in (0x39, 0xFFA5):              # quic_transport_parameters (v1, draft)
                h.quic_params = bytes(ext)
        except IndexError:
            return


def parse_client_hello(body: bytes, dtls: bool = False) -> Hello | None:
    """Parse a ClientHello body (after the 4-byte handshake header); None if it is not one."""
    b = body
    end = len(b)
    if end < 38:
        return None
    h = Hello(legacy_version=(b[0] << 8) | b[1])
    if b[0] != 3 and b[0] != 0xFE:
        return None
    pos = 34                                           # version + random
    pos += 1 + b[pos]                                  # session id
    if dtls:
        if pos >= end:
            return h
        pos += 1 + b[pos]                              # cookie
    if pos + 2 > end:
        return h
    n = (b[pos] << 8) | b[pos + 1]
    pos += 2
    ce = min(pos + n, end)
    h.ciphers = [(b[i] << 8) | b[i + 1] for i in range(pos, ce - 1, 2)]
    pos += n
    if pos >= end:
        return h
    pos += 1 + b[pos]                                  # compression methods
    if pos + 2 > end:
        h.complete = pos == end
        return h
    n = (b[pos] << 8) | b[pos + 1]
    pos += 2
    h.complete = pos + n <= end
    _parse_extensions(b, pos, min(pos + n, end), h, True)
    return h


def parse_server_hello(body: bytes, dtls: bool = False) -> Hello | None:
    b = body
    end = len(b)
    if end < 38 or (b[0] != 3 and b[0] != 0xFE):
        return None
    h = Hello(legacy_version=(b[0] << 8) | b[1])
    pos = 34
    pos += 1 + b[pos]
    if pos + 3 > end:
        return h
    h.ciphers = [(b[pos] << 8) | b[pos + 1]]
    pos += 3                                           # cipher + compression
    if pos + 2 > end:
        h.complete = pos == end
        return h
    n = (b[pos] << 8) | b[pos + 1]
    pos += 2
    h.complete = pos + n <= end
    _parse_extensions(b, pos, min(pos + n, end), h, False)
    return h


def tls_records(stream: bytes, max_records: int = 64) -> tuple[bytes, int, bool]:
    """Concatenate the handshake records at the start of a TLS byte stream.

    Returns (handshake bytes, records seen, saw a non-handshake record).
    Stops at the first thing that is not a TLS record header.
    """
    out = []
    pos, n, other = 0, 0, False
    end = len(stream)
    while pos + 5 <= end and n < max_records:
        ct = stream[pos]
        if ct < 20 or ct > 24 or stream[pos + 1] != 3 or stream[pos + 2] > 4:
            break
        ln = (stream[pos + 3] << 8) | stream[pos + 4]
        if ct == 22:
            out.append(stream[pos + 5:pos + 5 + ln])
        else:
            other = True
            if ct == 23:
                break
        pos += 5 + ln
        n += 1
    return b"".join(out), n, other


def handshake_messages(hs: bytes, dtls: bool = False):
    """Yield (type, body) of the handshake messages; the last body may be truncated.

    DTLS messages carry a 12-byte header; a fragmented message yields its fragment.
    """
    pos, end = 0, len(hs)
    if dtls:
        while pos + 12 <= end:
            flen = (hs[pos + 9] << 16) | (hs[pos + 10] << 8) | hs[pos + 11]
            yield hs[pos], hs[pos + 12:pos + 12 + flen]
            pos += 12 + flen
        return
    while pos + 4 <= end:
        t = hs[pos]
        ln = (hs[pos + 1] << 16) | (hs[pos + 2] << 8) | hs[pos + 3]
        yield t, hs[pos + 4:pos + 4 + ln]
        pos += 4 + ln


# --------------------------------------------------------------------------- fingerprints


def ja3_string(h: Hello) -> str:
    return "%d,%s,%s,%s,%s" % (
        h.legacy_version,
        "-".join(str(c) for c in h.ciphers if not is_grease(c)),
        "-".join(str(e) for e in h.extensions if not is_grease(e)),
        "-".join(str(g) for g in h.groups if not is_grease(g)),
        "-".join(str(p) for p in h.point_formats),
    )


def ja3(h: Hello) -> str:
    return hashlib.md5(ja3_string(h).encode()).hexdigest()


def ja3s(h: Hello) -> str:
    s = "%d,%s,%s" % (h.legacy_version, "-".join(str(c) for c in h.ciphers),
                      "-".join(str(e) for e in h.extensions if not is_grease(e)))
    return hashlib.md5(s.encode()).hexdigest()


def _alpn_code(alpn: list[str]) -> str:
    if not alpn or not alpn[0]:
        return "00"
    a = alpn[0]
    first, last = a[0], a[-1]
    if first.isascii() and first.isalnum() and last.isascii() and last.isalnum():
        return first + last
    hx = a.encode("utf-8", "replace").hex()
    return hx[0] + hx[-1]


def ja4(h: Hello, proto: str = "t") -> str:
    """JA4 of a ClientHello; proto is 't' (TCP), 'q' (QUIC) or 'd' (DTLS)."""
    ciphers = [c for c in h.ciphers if not is_grease(c)]
    exts = [e for e in h.extensions if not is_grease(e)]
    a = "%s%s%s%02d%02d%s" % (
        proto, _JA4_VERSION.get(h.version, "00"), "d" if (h.sni or 0 in h.extensions) else "i",
        min(len(ciphers), 99), min(len(exts), 99), _alpn_code(h.alpn))
    if ciphers:
        b = hashlib.sha256(",".join("%04x" % c for c in sorted(ciphers)).encode()).hexdigest()[:12]
    else:
        b = "000000000000"
    ex = [e for e in exts if e not in (0, 16)]
    if ex:
        s = ",".join("%04x" % e for e in sorted(ex))
        sig = [x for x in h.sig_algs if not is_grease(x)]
        if sig:
            s += "_" + ",".join("%04x" % x for x in sig)
        c = hashlib.sha256(s.encode()).hexdigest()[:12]
    else:
        c = "000000000000"
    return "%s_%s_%s" % (a, b, c)


# --------------------------------------------------------------------------- certificates


def _der(b: bytes, pos: int) -> tuple[int, int, int] | None:
    """(tag, content start, content end) of the DER element at pos; None if malformed/truncated header."""
    if pos + 2 > len(b):
        return None
    tag = b[pos]
    ln = b[pos + 1]
    pos += 2
    if ln & 0x80:
        k = ln & 0x7F
        if k == 0 or k > 4 or pos + k > len(b):
            return None
        ln = int.from_bytes(b[pos:pos + k], "big")
        pos += k
    return tag, pos, pos + ln


_OID_CN = bytes.fromhex("550403")
_OID_SAN = bytes.fromhex("551d11")


def cert_names(cert: bytes) -> tuple[list[str], str]:
    """Subject CN and dNSName SANs of a DER certificate (tolerates truncation), and the issuer CN."""
    names: list[str] = []
    issuer = ""
    # walk: Certificate SEQ -> TBSCertificate SEQ -> [0] version?, serial, sigalg, issuer, validity, subject, spki, [3] exts
    top = _der(cert, 0)
    if not top or top[0] != 0x30:
        return names, issuer
    tbs = _der(cert, top[1])
    if not tbs or tbs[0] != 0x30:
        return names, issuer
    pos = tbs[1]
    fields = []
    while pos < min(tbs[2], len(cert)) and len(fields) < 10:
        e = _der(cert, pos)
        if not e:
            break
        fields.append(e)
        pos = e[2]
    idx = 1 if fields and fields[0][0] == 0xA0 else 0
    # idx: serial, +1 sigalg, +2 issuer, +3 validity, +4 subject
    if len(fields) > idx + 2:
        i = fields[idx + 2]
        cn = _find_cn(cert[i[1]:i[2]])
        issuer = cn
    if len(fields) > idx + 4:
        s = fields[idx + 4]
        cn = _find_cn(cert[s[1]:s[2]])
        if cn:
            names.append(cn)
    for f in fields:
        if f[0] == 0xA3:
            blob = cert[f[1]:f[2]]
            k = blob.find(_OID_SAN)
            if k >= 0:
                names.extend(n for n in _san_dns(blob, k + 3) if n not in names)
    return names, issuer


def _find_cn(name: bytes) -> str:
    k = name.find(_OID_CN)
    if k < 0:
        return ""
    e = _der(name, k + 3)
    if not e:
        return ""
    from shared.text import represent

    return represent(name[e[1]:e[2]])


def _san_dns(blob: bytes, pos: int) -> list[str]:
    from shared.text import represent

    out: list[str] = []
    e = _der(blob, pos)
    if e and e[0] == 0x01:          # critical BOOLEAN
        e = _der(blob, e[2])
    if not e or e[0] != 0x04:
        return out
    seq = _der(blob, e[1])
    if not seq or seq[0] != 0x30:
        return out
    pos, end = seq[1], min(seq[2], len(blob))
    steps = 0
    while pos < end and len(out) < 64 and steps < 256:
        steps += 1
        g = _der(blob, pos)
        if not g:
            break
        if g[0] == 0x82:
            out.append(represent(blob[g[1]:g[2]]))
        pos = g[2]
    return out


@lru_cache(maxsize=1024)
def parse_certificate_msg(body: bytes, tls13: bool = False) -> tuple[list[str], str]:
    """Names from the first certificate of a Certificate handshake message (memoised: the
    same certificate comes again in every later sample of the flow)."""
    pos = 0
    if tls13:
        if not body:
            return [], ""
        pos = 1 + body[0]
    if pos + 6 > len(body):
        return [], ""
    pos += 3                         # certificate_list length
    ln = int.from_bytes(body[pos:pos + 3], "big")
    pos += 3
    return cert_names(body[pos:pos + ln])


# --------------------------------------------------------------------------- certificate details (the TLS log)

_RDN_NAMES = {
    bytes.fromhex("550403"): "CN", bytes.fromhex("550406"): "C", bytes.fromhex("550407"): "L",
    bytes.fromhex("550408"): "ST", bytes.fromhex("55040a"): "O", bytes.fromhex("55040b"): "OU",
    bytes.fromhex("550409"): "STREET", bytes.fromhex("550405"): "serialNumber",
    bytes.fromhex("0992268993f22c640119"): "DC", bytes.fromhex("2a864886f70d010901"): "emailAddress",
}


def _rfc4514_value(v: str) -> str:
    out = []
    for i, ch in enumerate(v):
        if ch in ',+"\\<>;=' or (ch == "#" and i == 0) or (ch == " " and i in (0, len(v) - 1)):
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def name_text(blob: bytes) -> str:
    """An X.501 Name (the content of its SEQUENCE) as RFC 4514 text, most specific RDN first
    (as OpenSSL's ``-nameopt RFC2253`` and Zeek's x509 log write it).  Values are represented
    text (shared/text.py); tolerates truncation."""
    from shared.text import represent

    rdns: list[str] = []
    pos, end = 0, len(blob)
    while pos < end and len(rdns) < 64:
        s = _der(blob, pos)
        if not s or s[0] != 0x31:
            break
        parts = []
        p2 = s[1]
        while p2 < min(s[2], end):
            atv = _der(blob, p2)
            if not atv or atv[0] != 0x30:
                break
            oid = _der(blob, atv[1])
            if not oid or oid[0] != 0x06:
                break
            val = _der(blob, oid[2])
            if not val:
                break
            key = _RDN_NAMES.get(blob[oid[1]:oid[2]])
            if key is None:
                key = "#" + blob[oid[1]:oid[2]].hex()
            raw = blob[val[1]:min(val[2], end)]
            if val[0] == 0x1E:                       # BMPString
                text = raw.decode("utf-16-be", "surrogatepass") if len(raw) % 2 == 0 else raw.hex()
                text = represent(text)
            else:
                text = represent(raw)
            parts.append(f"{key}={_rfc4514_value(text)}")
            p2 = atv[2]
        if parts:
            rdns.append("+".join(parts))
        pos = s[2]
    return ",".join(reversed(rdns))


def _der_time(tag: int, raw: bytes) -> float:
    """UTCTime (0x17) / GeneralizedTime (0x18) as Unix seconds, 0.0 when unreadable."""
    import calendar

    try:
        t = raw.decode("ascii").rstrip("Z")
        if tag == 0x17:
            yy = int(t[0:2])
            year = 1900 + yy if yy >= 50 else 2000 + yy
            rest = t[2:]
        else:
            year = int(t[0:4])
            rest = t[4:]
        mo, d, h, mi = int(rest[0:2]), int(rest[2:4]), int(rest[4:6]), int(rest[6:8])
        sec = int(rest[8:10]) if len(rest) >= 10 else 0
        return float(calendar.timegm((year, mo, d, h, mi, sec, 0, 0, 0)))
    except (ValueError, IndexError, UnicodeDecodeError, OverflowError):
        return 0.0


def cert_details(cert: bytes) -> tuple[str, str, str, float, float]:
    """(subject, issuer, serial hex, not before, not after) of a DER certificate; "" / 0.0 for
    what is missing or cut off."""
    top = _der(cert, 0)
    if not top or top[0] != 0x30:
        return "", "", "", 0.0, 0.0
    tbs = _der(cert, top[1])
    if not tbs or tbs[0] != 0x30:
        return "", "", "", 0.0, 0.0
    pos = tbs[1]
    fields = []
    while pos < min(tbs[2], len(cert)) and len(fields) < 7:
        e = _der(cert, pos)
        if not e:
            break
        fields.append(e)
        pos = e[2]
    idx = 1 if fields and fields[0][0] == 0xA0 else 0
    serial = issuer = subject = ""
    nb = na = 0.0
    if len(fields) > idx and fields[idx][0] == 0x02:
        f = fields[idx]
        serial = cert[f[1]:min(f[2], len(cert))].hex().upper()
    if len(fields) > idx + 2 and fields[idx + 2][0] == 0x30:
        f = fields[idx + 2]
        issuer = name_text(cert[f[1]:min(f[2], len(cert))])
    if len(fields) > idx + 3 and fields[idx + 3][0] == 0x30:
        f = fields[idx + 3]
        a = _der(cert, f[1])
        if a:
            nb = _der_time(a[0], cert[a[1]:a[2]])
            b = _der(cert, a[2])
            if b:
                na = _der_time(b[0], cert[b[1]:b[2]])
    if len(fields) > idx + 4 and fields[idx + 4][0] == 0x30:
        f = fields[idx + 4]
        subject = name_text(cert[f[1]:min(f[2], len(cert))])
    return subject, issuer, serial, nb, na


@lru_cache(maxsize=1024)
def certificate_msg_details(body: bytes) -> tuple[str, str, str, float, float]:
    """``cert_details`` of the first certificate of a (TLS <= 1.2) Certificate message."""
    if len(body) < 6:
        return "", "", "", 0.0, 0.0
    ln = int.from_bytes(body[3:6], "big")
    return cert_details(body[6:6 + ln])
