"""Real-time media and signalling: STUN/TURN, DTLS, SIP, RTP, RTCP, IAX2, H.323,
Megaco (H.248 text), Cisco Skinny, BFCP, Zoom and Discord media.

References: RFC 5389/8489 (STUN header, magic cookie), RFC 3489 (classic
STUN), RFC 8656 (TURN ChannelData), RFC 4571 (framing over TCP), RFC 6347/9147
(DTLS record layer), RFC 3261 (SIP request/status lines), RFC 3550 (RTP and
RTCP headers), RFC 5456 (IAX2 full frames), ITU-T H.225.0/Q.931 over TPKT
(RFC 1006), RFC 3525 (Megaco text encoding), RFC 8855 (BFCP common header),
Discord's voice documentation (IP discovery packet).
"""

from __future__ import annotations

from shared.models import FlowSample, Verdict
from services.classify.dissectors.base import Dissector, Match
from services.classify.dissectors.breadth_util import TCP, TCP_UDP, UDP, Simple, ordered, printable, u16, u32, u32le

_COOKIE = b"\x21\x12\xa4\x42"
_CLASSIC_TYPES = {0x0001, 0x0101, 0x0111, 0x0002, 0x0102, 0x0112}


def stun_ok(p: bytes) -> bool:
    """A STUN message (RFC 5389 6) filling the datagram: 20-byte header, length a multiple of 4."""
    if len(p) < 20 or p[0] & 0xC0:
        return False
    ln = u16(p, 2)
    if ln + 20 != len(p) or ln & 3:
        return False
    if p[4:8] == _COOKIE:
        return True
    return u16(p, 0) in _CLASSIC_TYPES


def stun_tcp_ok(p: bytes) -> bool:
    """STUN over TCP: bare (RFC 5389 7.2.2, messages may be coalesced) or RFC 4571 framed."""
    if len(p) >= 20 and not p[0] & 0xC0 and p[4:8] == _COOKIE and u16(p, 2) + 20 <= len(p) and not u16(p, 2) & 3:
        return True
    if len(p) >= 22 and p[6:10] == _COOKIE and u16(p, 0) >= 20 and not p[2] & 0xC0:
        return True
    return False


def dtls_ok(p: bytes) -> bool:
    """A DTLS record header (RFC 6347 4.1): content type, version, epoch, sequence, length."""
    if len(p) < 13:
        return False
    ct = p[0]
    if ct not in (20, 21, 22, 23, 25):
        return False
    ver = u16(p, 1)
    if ver not in (0xFEFF, 0xFEFD, 0xFEFC, 0x0100):
        return False
    return 13 + u16(p, 11) <= len(p)


def dtls13_unified(p: bytes) -> bool:
    """DTLS 1.3 unified header (RFC 9147 4): 001CSLEE."""
    return len(p) >= 4 and (p[0] & 0xE0) == 0x20


def rtp_ok(p: bytes) -> bool:
    """An RTP header (RFC 3550 5.1) with version 2 and a media payload type."""
    if len(p) < 12 or (p[0] & 0xC0) != 0x80:
        return False
    pt = p[1] & 0x7F
    if 72 <= pt <= 76:      # RTCP range (RFC 5761 4)
        return False
    cc = p[0] & 0x0F
    return len(p) >= 12 + 4 * cc


def ndpi_rtp(p: bytes) -> bool:
    """An RTP packet as nDPI's is_rtp_or_rtcp() takes one (RFC 3550 5.1): version 2, a static
    (0-34) or dynamic (96-127) payload type, room for the fixed header, the CSRC list and the
    header extension its length field announces.  (Padding is not checked: SRTP encrypts it.)"""
    if len(p) < 12 or (p[0] & 0xC0) != 0x80:
        return False
    pt = p[1] & 0x7F
    if not (pt <= 34 or 96 <= pt <= 127):
        return False
    need = 12 + 4 * (p[0] & 0x0F)
    if p[0] & 0x10:
        if need + 4 > len(p):
            return False
        need += 4 + 4 * u16(p, need + 2)
    return need <= len(p)


def rtcp_ok(p: bytes) -> bool:
    """An RTCP packet (RFC 3550 6.4): version 2, PT 192..207, length within the datagram."""
    if len(p) < 8 or (p[0] & 0xC0) != 0x80:
        return False
    if not 192 <= p[1] <= 207:
        return False
    return (u16(p, 2) + 1) * 4 <= len(p)


class STUN(Dissector):
    """STUN/TURN; a STUN flow that turns into DTLS is reported as DTLS, as nDPI does."""

    name = "STUN"
    transports = TCP_UDP
    ports = frozenset({3478, 3479, 5349, 19302, 19305})

    def could_be(self, s: FlowSample) -> bool:
        for lst in (s.src_payloads, s.dst_payloads):
            if lst and len(lst[0]) >= 20 and (lst[0][0] < 0x40 or s.transport == "TCP"):
                return True
        return False

    @staticmethod
    def _realm(s: FlowSample, tcp: bool) -> str:
        """The REALM attribute (0x0014) of the first message carrying one, as nDPI reports it as the host."""
        for _src, p in ordered(s, 8):
            if tcp and len(p) >= 22 and p[6:10] == _COOKIE and p[4:8] != _COOKIE:   # RFC 4571 framing
                p = p[2:]
            if len(p) < 20 or p[0] & 0xC0:
                continue
            for t, val in stun_attrs(p):
                if t == 0x0014 and val:
                    return printable(val, 255)
        return ""

    @staticmethod
    def _call_app(s: FlowSample, tcp: bool, limit: int = 8) -> str:
        """The call service the STUN attributes name, as nDPI reads them (first telling attribute
        wins): Zoom's 0x0101/0x0103, WhatsApp's 0x4000-0x4004/0x4007, the REALM's domain (Google,
        Signal, Facebook Messenger, Telegram), Microsoft's (Skype/Teams, MS-TURN) and Google's 0xFF03."""
        realm_seen = False
        for _src, p in ordered(s, limit):
            if tcp and len(p) >= 22 and p[6:10] == _COOKIE and p[4:8] != _COOKIE:   # RFC 4571 framing
                p = p[2:]
            if len(p) < 20 or p[0] & 0xC0:
                continue
            if u16(p, 0) in _WA_MSG_TYPES and p[4:8] == _COOKIE:
                return "WhatsAppCall"       # WhatsApp's own message types (nDPI's is_stun)
            for t, val in stun_attrs(p):
                app = _STUN_ATTR_APPS.get(t)
                if app:
                    return app
                if t == 0x0014 and val and not realm_seen:
                    realm_seen = True
                    r = val.lower()
                    for needle, app in _REALM_APPS:
                        if needle in r:
                            return app
        return ""

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        tcp = s.transport == "TCP"
        stun = 0
        dtls = False
        n = 0
        first = rtp_at = 0          # (1-based) positions of the first STUN message and first RTP packet
        for _src, p in ordered(s, 16):
            n += 1
            if (stun_tcp_ok(p) if tcp else stun_ok(p)):
                stun += 1
                first = first or n
            elif stun and dtls_ok(p) and p[0] == 22:
                dtls = True
                break
            elif not stun and n >= 4:
                return Match.NO
            elif stun and not rtp_at and not tcp and n - first <= _STUN_EXTRA and ndpi_rtp(p):
                rtp_at = n
        if not stun:
            return Match.NO
        if dtls:
            v.app_protocol = "DTLS"
            return Match.FINAL
        v.app_protocol = self.name
        if not v.host:
            realm = self._realm(s, tcp)
            if realm:
                v.host = realm
        if rtp_at:
            # nDPI (stun.c): media on a STUN flow whose call service is already known is that
            # service's encrypted media, SRTP/<service>; without one it stays STUN (STUN/RTP)
            app = self._call_app(s, tcp, rtp_at - 1)
            if app:
                v.app_protocol = "SRTP"
                v.application = v.application or app
                return Match.FINAL
        if not v.application:
            app = self._call_app(s, tcp)
            if app:
                v.application = app
        return Match.FINAL if n >= 12 else Match.PARTIAL


# nDPI reads a STUN flow for 6 more packets after the one that classified it (stun.c,
# "max_packets_extra_dissection"): media within them can change the classification
_STUN_EXTRA = 6


_WA_MSG_TYPES = frozenset({0x0800, 0x0801, 0x0802, 0x0804, 0x0805})
_STUN_ATTR_APPS = {0x0101: "Zoom", 0x0103: "Zoom", 0xFF03: "GoogleCall"}
_STUN_ATTR_APPS.update({t: "WhatsAppCall" for t in (0x4000, 0x4001, 0x4002, 0x4003, 0x4004, 0x4007)})
# Microsoft's STUN/TURN extensions (MS-TURN, MS-ICE2: candidate identifier, implementation version,
# service quality, multiplexed TURN session id, ...) on Skype and Teams calls
_STUN_ATTR_APPS.update({t: "Skype_TeamsCall" for t in (0x8054, 0x24DF, 0x3802, 0x8036, 0x8095, 0x0800, 0x8006,
                                                       0x8070, 0x8055)})
_REALM_APPS = ((b"google.com", "GoogleCall"), (b"whispersystems.org", "SignalVoip"), (b"signal.org", "SignalVoip"),
               (b"facebook", "FacebookVoip"), (b"telegram", "TelegramVoip"))


_SIP_METHODS = (b"INVITE ", b"REGISTER ", b"OPTIONS ", b"ACK ", b"BYE ", b"CANCEL ", b"NOTIFY ",
                b"SUBSCRIBE ", b"MESSAGE ", b"INFO ", b"PRACK ", b"UPDATE ", b"REFER ", b"PUBLISH ")


def sip_ok(p: bytes) -> bool:
    if p.startswith(b"SIP/2.0 ") and len(p) > 12 and p[8:11].isdigit():
        return True
    for m in _SIP_METHODS:
        if p.startswith(m):
            rest = p[len(m):len(m) + 5].lower()
            return rest.startswith((b"sip:", b"sips:", b"tel:", b"urn:")) or b" SIP/2.0" in p[:300]
    return False


def stun_attrs(p: bytes):
    """(type, value) of the attributes of one STUN message (RFC 5389 15), bounds-checked."""
    o = 20
    end = min(len(p), 20 + u16(p, 2))
    n = 0
    while o + 4 <= end and n < 40:
        t, ln = u16(p, o), u16(p, o + 2)
        yield t, p[o + 4:o + 4 + ln]
        o += 4 + ((ln + 3) & ~3)
        n += 1


class SIP(Dissector):
    name = "SIP"
    transports = TCP_UDP
    ports = frozenset({5060, 5061})
    first_bytes = {"TCP": b"IRAOBCNSMPU\r\n", "UDP": b"IRAOBCNSMPU\r\n"}   # could_be's first bytes

    def could_be(self, s: FlowSample) -> bool:
        for lst in (s.src_payloads, s.dst_payloads):
            if lst and lst[0][:1] in b"IRAOBCNSMPU\r\n" and lst[0][:1]:
                return True
        return False

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        for _src, p in ordered(s, 3):
            q = p.lstrip(b"\r\n")
            if sip_ok(q):
                v.app_protocol = self.name
                line = q.split(b"\r\n", 1)[0]
                v.extra["sip_line"] = printable(line, 200)
                for hdr in q[:2000].split(b"\r\n")[1:]:
                    low = hdr[:12].lower()
                    if low.startswith(b"user-agent:"):
                        v.extra["sip_user_agent"] = printable(hdr[11:].strip(), 200)
                        break
                return Match.FINAL
        return Match.NO


class RTPRTCP(Dissector):
    """RTP media (needs two packets of one stream: same SSRC, sequence moving
    forward by a little) and RTCP reports."""

    name = "RTP"
    transports = UDP
    ports = frozenset()

    def could_be(self, s: FlowSample) -> bool:
        p = s.src_payloads[0] if s.src_payloads else (s.dst_payloads[0] if s.dst_payloads else b"")
        return len(p) >= 8 and (p[0] & 0xC0) == 0x80

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        last: dict[bool, tuple[int, int]] = {}
        rtcp = 0
        for src, p in ordered(s, 10):
            if rtcp_ok(p):
                rtcp += 1
                if rtcp >= 1 and (len(p) >= 28 or rtcp >= 2):
                    v.app_protocol = "RTCP"
                    # settled after three packets (as nDPI's DPI window): a call service's own
                    # packets (Discord's keep-alive, ...) may still come and name the flow
                    return Match.FINAL if len(s.src_payloads) + len(s.dst_payloads) >= 3 else Match.PARTIAL
                continue
            if not rtp_ok(p):
                return Match.NO
            ssrc, seq = u32(p, 8), u16(p, 2)
            prev = last.get(src)
            if prev is not None and prev[0] == ssrc and 0 < ((seq - prev[1]) & 0xFFFF) < 16:
                v.app_protocol = "RTP"
                return Match.FINAL
            last[src] = (ssrc, seq)
        return Match.NO


class Discord(Simple):
    """Discord voice IP discovery (74 bytes: type 1 request / 2 response, length 70, SSRC, address)."""

    name = "Discord"
    transports = UDP
    ports = frozenset({50001, 50002, 50003, 50004})

    def could_be(self, s: FlowSample) -> bool:
        # the discovery or a keep-alive, from either side (a capture may start mid-call)
        for lst in (s.src_payloads, s.dst_payloads):
            for p in lst[:4]:
                if len(p) in (8, 74):
                    return True
        return False

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) == 8:
            return p[:4] == b"\x13\x37\xca\xfe"      # voice keep-alive
        return len(p) == 74 and u16(p, 0) in (1, 2) and u16(p, 2) == 70


class IAX(Simple):
    """IAX2 full frame (RFC 5456 8.1.1): F bit set, frame type 6 (IAX control) with a known subclass."""

    name = "IAX"
    transports = UDP
    ports = frozenset({4569})
    port_gate = True

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 12 and p[0] & 0x80 and p[10] == 6 and 1 <= p[11] <= 0x26 and (4569 in (s.src_port, s.dst_port) or p[11] == 1)


class H323(Simple):
    """H.225.0 call signalling: TPKT (version 3) carrying Q.931 (protocol discriminator 8), H.245 in TPKT
    (its object identifier 0.0.8.245), and RAS on UDP (the H.225.0 identifier 0.0.8.2250.0.x)."""

    name = "H323"
    transports = TCP_UDP
    ports = frozenset({1719, 1720})

    def could_be(self, s: FlowSample) -> bool:
        p = s.src_payloads[0] if s.src_payloads else (s.dst_payloads[0] if s.dst_payloads else b"")
        return len(p) >= 8 and (s.transport == "UDP" or p[:2] == b"\x03\x00")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if s.transport == "TCP":
            if len(p) < 8 or p[0] != 3 or p[1] != 0 or u16(p, 2) < 8:
                return False
            if p[4] == 8 and u16(p, 2) == len(p):
                return True
            return b"\x06\x00\x08\x81\x75\x00" in p[4:40]
        return len(p) >= 12 and b"\x06\x00\x08\x91\x4a\x00" in p[:16]

class Megaco(Simple):
    """H.248/Megaco text encoding: 'MEGACO/1 ' or the compact '!/1 ' header."""

    name = "Megaco"
    transports = UDP
    ports = frozenset({2944, 2945})
    magic = (b"MEGACO/", b"!/")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return p.startswith((b"MEGACO/1 ", b"!/1 ", b"MEGACO/2 ", b"!/2 "))


class CiscoSkinny(Simple):
    """SCCP (Skinny): little-endian length, header version 0/0x11/0x12/0x14/0x16, message id."""

    name = "CiscoSkinny"
    transports = TCP
    ports = frozenset({2000})
    port_gate = True

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 12:
            return False
        ln = u32le(p, 0)
        ver = u32le(p, 4)
        mid = u32le(p, 8)
        return ln + 8 <= len(p) and ln >= 4 and ver in (0, 0x11, 0x12, 0x14, 0x15, 0x16, 0x17) and mid < 0x200 and 2000 in (s.src_port, s.dst_port)


class BFCP(Simple):
    """BFCP common header (RFC 8855 5.1): version 1 or 2, primitive 1..17, length in 4-byte words."""

    name = "BFCP"
    transports = TCP_UDP
    ports = frozenset()
    magic = (b"\x20", b"\x40")

    @staticmethod
    def _hdr(p: bytes) -> bool:
        if len(p) < 12 or (p[0] >> 5) not in (1, 2) or p[0] & 0x07 or not 1 <= p[1] <= 17:
            return False
        # payload length counts 4-octet units after the 12-byte common header
        return 12 + 4 * u16(p, 2) >= len(p) and (len(p) - 12) % 4 == 0 and u32(p, 4) != 0

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        a = s.src_payloads[0] if s.src_payloads else b""
        b = s.dst_payloads[0] if s.dst_payloads else b""
        if not self._hdr(a):
            return Match.NO
        if b:
            # the answer is a BFCP message of the same conference and transaction
            ok = self._hdr(b) and b[4:10] == a[4:10]
        else:
            ok = 12 + 4 * u16(a, 2) == len(a)
        if ok:
            v.app_protocol = self.name
            return Match.FINAL
        return Match.NO


class NOE(Simple):
    """Alcatel-Lucent NOE signalling over UDP: 5/12-byte 0x07 0x00 x 0x00 messages, or 0x0006 'bl' frames."""

    name = "NOE"
    transports = UDP
    ports = frozenset({32512})

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) in (5, 12) and p[0] == 7 and p[1] == 0 and p[2] != 0 and p[3] == 0:
            return True
        return len(p) >= 25 and p[:4] == b"\x00\x06\x62\x6c"


class Zoom(Simple):
    """Zoom media/control on 8801-8810: its own 'SFU' framing (type 1..5 then a 16-byte id)."""

    name = "Zoom"
    transports = UDP
    ports = frozenset({8801, 8802, 8803, 8804, 8805, 8806, 8807, 8808, 8809, 8810})

    def could_be(self, s: FlowSample) -> bool:
        if s.dst_port in self.ports or s.src_port in self.ports:
            return True
        return any(lst and lst[0][:3] == b"\x1f\x02\x01" for lst in (s.src_payloads, s.dst_payloads))

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) >= 8 and p[0] in (1, 2, 3, 4, 5) and p[1] == 0 and (s.dst_port in self.ports or s.src_port in self.ports):
            return True
        return self.p2p(p)

    @staticmethod
    def p2p(p: bytes) -> bool:
        """A peer-to-peer call's first packet: media encapsulation type 0x1f, a 24-byte header, then
        length-prefixed attributes (the peer's address as text, a UUID) and 4 zero bytes."""
        if len(p) <= 36 or p[:3] != b"\x1f\x02\x01" or p[-4:] != b"\x00\x00\x00\x00":
            return False
        ip_len = u32(p, 24)
        if ip_len < 0 or 24 + 4 + ip_len + 4 >= len(p):
            return False
        return len(p) == 24 + 4 + ip_len + 4 + u32(p, 28 + ip_len) + 4


DISSECTORS = [STUN(), SIP(), Discord(), IAX(), H323(), Megaco(), CiscoSkinny(), BFCP(), NOE(), Zoom(), RTPRTCP()]
