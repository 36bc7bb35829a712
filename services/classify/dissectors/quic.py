"""QUIC: IETF v1 (RFC 9000/9001), v2 (RFC 9369), drafts, mvfst, and Google QUIC (Q0xx, T05x).

The client's Initial packets are protected with keys derived from the
Destination Connection ID of its first Initial (RFC 9001 section 5.2):

    initial_secret = HKDF-Extract(salt(version), DCID)
    client_secret  = HKDF-Expand-Label(initial_secret, "client in", "", 32)
    key/iv/hp      = HKDF-Expand-Label(client_secret, "quic key"/"quic iv"/"quic hp", "", 16/12/16)

Header protection (section 5.4) is removed with AES-ECB(hp, sample); the
payload is AES-128-GCM.  We decrypt GCM's keystream with AES-CTR and do not
check the tag, so an Initial truncated by the sampler still yields its first
bytes; a wrong key shows up as frames or a ClientHello that do not parse.
CRYPTO frames of all Initials are reassembled by offset and the TLS
ClientHello parsed for SNI, ALPN, JA4 and Chrome's user agent (transport
parameter google_user_agent).

Google QUIC before Q050 carries a clear-text CHLO message (tags SNI, UAID,
VER); Q050 has IETF-style protected Initials with a CHLO inside.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from functools import lru_cache

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from services.classify.dissectors.base import Dissector, Match
from services.classify.dissectors.tls_common import ja3, ja4, parse_client_hello, version_name
from shared.models import FlowSample, QuicInfo, Verdict

_NONZERO = re.compile(rb"[^\x00]")   # the end of a run of PADDING frames

SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
SALT_V2 = bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")
SALT_D22 = bytes.fromhex("7fbcdb0e7c66bbe9193a96cd21519ebd7a02644a")
SALT_D23 = bytes.fromhex("c3eef712c72ebb5a11a7d2432bb46365bef9f502")
SALT_D29 = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")
SALT_Q50 = bytes.fromhex("504574efd066fe2f9d945cfcdbd3a7f0d3b56b45")
SALT_T50 = bytes.fromhex("7ff579e5acd072915580304c43a2367c60488310")
SALT_T51 = bytes.fromhex("7a4edef4e7ccee5fa4506c19124fc8ccda6e033d")

V1, V2 = 0x00000001, 0x6B3343CF
Q050, T050, T051 = 0x51303530, 0x54303530, 0x54303531


def draft_number(version: int) -> int:
    """IETF draft number a version behaves like (v1 = 33), 0 when not an IETF-style version."""
    if version >> 8 == 0xFF0000:
        d = version & 0xFF
        return d if d <= 34 else 0          # drafts ended with draft-34 (then RFC 9000)
    if version == V1:
        return 33
    if version == 0xFACEB001:
        return 22
    if version in (0xFACEB002, 0xFACEB00E):
        return 27
    if version & 0xFFFFF000 == 0xFACEB000:
        return 29
    if version & 0x0F0F0F0F == 0x0A0A0A0A:
        return 29
    return 0


def is_gquic(version: int) -> bool:
    return (version >> 16 in (0x5130, 0x5430) and 0x30 <= (version >> 8) & 0xFF <= 0x39
            and 0x30 <= version & 0xFF <= 0x39)


def is_known_version(version: int) -> bool:
    return version == V2 or draft_number(version) > 0 or is_gquic(version)


def _salt(version: int) -> tuple[bytes, bool] | None:
    """(salt, is_v2) for a version with protected Initials."""
    if version == V2:
        return SALT_V2, True
    if version == Q050:
        return SALT_Q50, False
    if version == T050:
        return SALT_T50, False
    if version == T051:
        return SALT_T51, False
    d = draft_number(version)
    if not d:
        return None
    if d <= 22:
        return SALT_D22, False
    if d <= 28:
        return SALT_D23, False
    if d <= 32:
        return SALT_D29, False
    return SALT_V1, False


def _expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    full = b"tls13 " + label
    info = struct.pack(">HB", length, len(full)) + full + b"\x00"
    out, t, i = b"", b"", 1
    while len(out) < length:
        t = hmac.new(secret, t + info + bytes([i]), hashlib.sha256).digest()
        out += t
        i += 1
    return out[:length]


@lru_cache(maxsize=4096)
def initial_keys(version: int, dcid: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(key, iv, hp) protecting the client's Initial packets."""
    s = _salt(version)
    if s is None:
        return None
    salt, v2 = s
    initial = hmac.new(salt, dcid, hashlib.sha256).digest()
    client = _expand_label(initial, b"client in", 32)
    pre = b"quicv2 " if v2 else b"quic "
    return (_expand_label(client, pre + b"key", 16), _expand_label(client, pre + b"iv", 12),
            _expand_label(client, pre + b"hp", 16))


def read_varint(b: bytes, pos: int) -> tuple[int, int]:
    """(value, new position); raises IndexError when truncated."""
    first = b[pos]
    n = 1 << (first >> 6)
    if pos + n > len(b):
        raise IndexError
    v = first & 0x3F
    for i in range(1, n):
        v = (v << 8) | b[pos + i]
    return v, pos + n


def _ecb(key: bytes, block: bytes) -> bytes:
    e = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return e.update(block) + e.finalize()


def _ctr_decrypt(key: bytes, nonce: bytes, data: bytes) -> bytes:
    # AES-GCM encrypts with CTR starting at inc32(J0) = nonce || 0x00000002 (96-bit nonce)
    d = Cipher(algorithms.AES(key), modes.CTR(nonce + b"\x00\x00\x00\x02")).decryptor()
    return d.update(data) + d.finalize()


def _initial_type(version: int) -> int:
    return 1 if version == V2 else 0


def decrypt_initials(datagrams: list[bytes]) -> tuple[int, bytes, list[bytes]] | None:
    """(version, original DCID, plaintext payloads) of the client Initial packets in the datagrams."""
    version = 0
    dcid0 = b""
    out: list[bytes] = []
    for dg in datagrams[:8]:
        pos = 0
        while pos + 7 < len(dg):
            first = dg[pos]
            if not first & 0x80:
                break
            ver = int.from_bytes(dg[pos + 1:pos + 5], "big")
            if ver == 0:
                break                        # version negotiation
            p = pos + 5
            dl = dg[p]
            if dl > 20:
                return None if not out else (version, dcid0, out)
            dcid = dg[p + 1:p + 1 + dl]
            p += 1 + dl
            if p >= len(dg):
                break
            sl = dg[p]
            if sl > 20:
                break
            p += 1 + sl
            ptype = (first >> 4) & 3
            try:
                if ptype == _initial_type(ver):
                    tl, p = read_varint(dg, p)
                    p += tl
                length, p = read_varint(dg, p)
            except IndexError:
                break
            pkt_end = p + length
            if ptype != _initial_type(ver):
                pos = pkt_end
                continue
            if not version:
                version, dcid0 = ver, bytes(dcid)
            keys = initial_keys(version, dcid0)
            if keys is None or p + 20 > len(dg):
                break
            key, iv, hp = keys
            mask = _ecb(hp, dg[p + 4:p + 20])
            f0 = first ^ (mask[0] & 0x0F)
            pnl = (f0 & 3) + 1
            pn = 0
            for i in range(pnl):
                pn = (pn << 8) | (dg[p + i] ^ mask[1 + i])
            nonce = bytes(a ^ b for a, b in zip(iv, pn.to_bytes(12, "big")))
            body = dg[p + pnl:min(pkt_end - 16, len(dg))] if pkt_end - 16 <= len(dg) else dg[p + pnl:]
            out.append(_ctr_decrypt(key, nonce, body))
            pos = pkt_end
    if not out:
        return None
    return version, dcid0, out


@lru_cache(maxsize=1024)
def _decrypt_cached(datagrams: tuple[bytes, ...]):
    """decrypt_initials memoised on the client's datagrams (consecutive samples repeat them)."""
    return decrypt_initials(list(datagrams))


def crypto_stream(payloads: list[bytes], gquic: bool = False) -> bytes:
    """Contiguous CRYPTO data from offset 0, from the frames of decrypted Initial payloads.

    Google's Q050/T05x carry the handshake in frames of type 0x08 (offset, length, data).
    """
    frags: dict[int, bytes] = {}
    crypto_type = 0x08 if gquic else 0x06
    for pl in payloads:
        pos, end = 0, len(pl)
        try:
            while pos < end:
                ft = pl[pos]
                if ft == 0x00:                            # PADDING: the run of zeros at once (an Initial
                    m = _NONZERO.search(pl, pos)          # is padded to 1200 bytes, ~1,000 steps by the byte)
                    pos = m.start() if m is not None else end
                elif ft == 0x01:                          # PING
                    pos += 1
                elif ft == crypto_type:                   # CRYPTO
                    off, pos = read_varint(pl, pos + 1)
                    ln, pos = read_varint(pl, pos)
                    frags.setdefault(off, pl[pos:pos + ln])
                    pos += ln
                elif ft in (0x02, 0x03):                  # ACK
                    _, pos = read_varint(pl, pos + 1)
                    _, pos = read_varint(pl, pos)
                    n, pos = read_varint(pl, pos)
                    _, pos = read_varint(pl, pos)
                    for _ in range(min(n, 256)):
                        _, pos = read_varint(pl, pos)
                        _, pos = read_varint(pl, pos)
                    if ft == 0x03:
                        for _ in range(3):
                            _, pos = read_varint(pl, pos)
                elif ft in (0x1C, 0x1D):                  # CONNECTION_CLOSE
                    break
                else:
                    break                                 # unknown frame in an Initial: stop
        except IndexError:
            pass
    out = bytearray()
    while True:
        nxt = frags.get(len(out))
        if nxt is None:
            # fragments that overlap the end of what we have
            cand = [(o, f) for o, f in frags.items() if o < len(out) < o + len(f)]
            if not cand:
                break
            o, f = cand[0]
            nxt = f[len(out) - o:]
        if not nxt:
            break
        out += nxt
    return bytes(out)


def parse_chlo(data: bytes) -> dict[bytes, bytes]:
    """Tag/value map of a Google QUIC CHLO message found in data (empty when none)."""
    k = data.find(b"CHLO")
    if k < 0 or k + 8 > len(data):
        return {}
    n = int.from_bytes(data[k + 4:k + 6], "little")
    if n == 0 or n > 64:
        return {}
    base = k + 8 + 8 * n
    out: dict[bytes, bytes] = {}
    prev = 0
    for i in range(n):
        e = k + 8 + 8 * i
        if e + 8 > len(data):
            break
        tag = data[e:e + 4]
        end = int.from_bytes(data[e + 4:e + 8], "little")
        if end < prev:
            break
        out[tag] = data[base + prev:base + end]
        prev = end
    return out


def _quic_params_ua(params: bytes) -> str:
    """google_user_agent (0x3129) from QUIC transport parameters (varint-encoded, draft-27+)."""
    pos = 0
    try:
        while pos < len(params):
            pid, pos = read_varint(params, pos)
            ln, pos = read_varint(params, pos)
            if pid == 0x3129:
                return params[pos:pos + ln].decode("latin-1")
            pos += ln
    except IndexError:
        pass
    return ""


def _version_text(version: int) -> str:
    if version == V1:
        return "V-1"
    if version == V2:
        return "V-2"
    if is_gquic(version):
        return version.to_bytes(4, "big").decode("latin-1")
    if version >> 8 == 0xFF0000:
        return "Draft-%d" % (version & 0xFF)
    return "0x%08x" % version


def _long_header_version(d: bytes) -> int:
    if len(d) >= 7 and d[0] & 0x80:
        return int.from_bytes(d[1:5], "big")
    return -1


def _gquic_server_message(d: bytes) -> bool:
    """A Google QUIC server packet (public header without version) carrying a REJ or SHLO tag message."""
    if len(d) < 24 or d[0] & 0x80 or not d[0] & 0x08:
        return False
    for tag in (b"REJ\x00", b"SHLO"):
        k = d.find(tag, 9, 96)
        if k > 0 and k + 12 <= len(d):
            n = d[k + 4] | (d[k + 5] << 8)
            if 0 < n <= 64 and d[k + 6:k + 8] == b"\x00\x00" and d[k + 8:k + 11].isalnum():
                return True
    return False


def _gquic_public(d: bytes) -> int:
    """Version of a Google QUIC (<= Q043) public header with the version flag, else -1."""
    if len(d) >= 13 and not d[0] & 0x80 and d[0] & 0x01:
        off = 9 if d[0] & 0x08 else 1
        v = int.from_bytes(d[off:off + 4], "big")
        if is_gquic(v):
            return v
    return -1


class QuicDissector(Dissector):
    name = "QUIC"
    transports = frozenset({"UDP"})
    ports = frozenset({443})

    @staticmethod
    def _first_version(p: list[bytes]) -> int:
        if not p:
            return -1
        d = p[0]
        v = _long_header_version(d)
        if v > 0 and is_known_version(v):
            if not is_gquic(v):
                # IETF long header: fixed bit set, connection id lengths <= 20
                if not d[0] & 0x40 or d[5] > 20:
                    return -1
                # a reserved "?a?a?a?a" version only on a padded client Initial (>= 1200 bytes)
                if v & 0x0F0F0F0F == 0x0A0A0A0A and len(d) < 1200:
                    return -1
            return v
        return _gquic_public(d)

    def could_be(self, s: FlowSample) -> bool:
        if self._first_version(s.src_payloads) > 0 or self._first_version(s.dst_payloads) > 0:
            return True
        p = s.src_payloads or s.dst_payloads
        return bool(p) and _gquic_server_message(p[0])

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        cv = self._first_version(s.src_payloads)
        client = s.src_payloads
        if cv <= 0:
            cv = self._first_version(s.dst_payloads)
            client = s.dst_payloads
        if cv <= 0:
            p = s.src_payloads or s.dst_payloads
            if p and _gquic_server_message(p[0]):
                # only the server's side of a Google QUIC handshake was seen
                v.app_protocol = "QUIC"
                v.quic = QuicInfo()
                return Match.FINAL
            return Match.NO
        info = QuicInfo(version=_version_text(cv))
        v.app_protocol = "QUIC"
        v.quic = info
        got = False
        if is_gquic(cv) and cv != T050 and cv != T051 and cv != Q050:
            tags = {}
            for d in client[:4]:
                tags = parse_chlo(d)
                if tags:
                    break
            if tags:
                got = self._from_chlo(tags, info, v)
        else:
            dec = _decrypt_cached(tuple(client[:8]))
            cs = crypto_stream(dec[2], gquic=is_gquic(cv)) if dec is not None else b""
            if cs[:1] != b"\x01" and client is s.src_payloads and self._first_version(s.dst_payloads) > 0:
                # the capture saw the server's Initial first: the client's (keyed by its DCID) is dst's
                dec2 = _decrypt_cached(tuple(s.dst_payloads[:8]))
                cs2 = crypto_stream(dec2[2], gquic=is_gquic(cv)) if dec2 is not None else b""
                if cs2[:1] == b"\x01":
                    dec, cs = dec2, cs2
            if dec is not None:
                payloads = dec[2]
                if cs[:1] == b"\x01" and len(cs) >= 4:
                    ch = parse_client_hello(cs[4:4 + int.from_bytes(cs[1:4], "big")])
                    if ch is not None:
                        # FINAL only on a whole ClientHello: its extensions come in random order
                        # (Chrome), so the SNI may still be in an Initial not sampled yet
                        got = ch.complete
                        info.sni = ch.sni[:512]
                        info.alpn = [a[:64] for a in ch.alpn[:16]]
                        info.ja4 = ja4(ch, "q")
                        v.extra["ja3"] = ja3(ch)          # QuicInfo has no JA3 field; nDPI reports it too
                        if ch.sni:
                            v.host = ch.sni
                        if ch.quic_params:
                            ua = _quic_params_ua(ch.quic_params)
                            if ua:
                                info.user_agent = ua[:1024]
                        v.extra["tls_version"] = version_name(ch.version)
                else:
                    tags = parse_chlo(cs) or parse_chlo(b"".join(payloads))
                    if tags:
                        got = self._from_chlo(tags, info, v)
        if got:
            return Match.FINAL
        # a QUIC long header from the client and an answer from the server: QUIC even unreadable
        return Match.PARTIAL

    @staticmethod
    def _from_chlo(tags: dict[bytes, bytes], info: QuicInfo, v: Verdict) -> bool:
        sni = tags.get(b"SNI\x00", b"").decode("latin-1")
        ua = tags.get(b"UAID", b"").decode("latin-1")
        if sni:
            info.sni = sni[:512]
            v.host = sni
        if ua:
            info.user_agent = ua[:1024]
        return True
