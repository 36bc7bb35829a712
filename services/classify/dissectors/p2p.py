"""Peer-to-peer and crypto-currency protocols: BitTorrent, Gnutella, eDonkey,
Ethereum, Bitcoin, Monero, crypto mining (Stratum), Syncthing, Dropbox LAN
sync, DNSCrypt.

References: BEP 3 (peer handshake), BEP 5 (DHT KRPC, bencoded), BEP 15 (UDP
tracker), BEP 29 (uTP header); Gnutella 0.6 (connection strings and the
23-byte descriptor header); the eDonkey/eMule protocol notes; devp2p RLPx
(EIP-8 auth size prefix, ECIES public key), Ethereum node discovery v4;
Bitcoin P2P message header; Monero levin header; Stratum mining JSON-RPC;
Syncthing BEP/local discovery magic; Dropbox LAN sync broadcast;
DNSCrypt v2 (certificate TXT query 2.dnscrypt-cert.<provider>, resolver magic
"r6fnvWj8", query padding to 64 bytes).
"""

from __future__ import annotations

from shared.models import FlowSample, Verdict
from services.classify.dissectors.base import Dissector, Match
from services.classify.dissectors.breadth_util import TCP, TCP_UDP, UDP, Simple, ordered, u16, u32, u32le


def utp_header_len(p: bytes) -> int:
    """Length of a uTP header (BEP 29: type/version, extension chain, 20-byte base), 0 when not one."""
    if len(p) < 20 or (p[0] & 0x0F) != 1 or (p[0] >> 4) > 4:
        return 0
    ext, o = p[1], 20
    n = 0
    while ext and n < 4:
        if ext not in (1, 2) or o + 2 > len(p):
            return 0
        ext, ln = p[o], p[o + 1]
        o += 2 + ln
        n += 1
    return o if o <= len(p) and not ext else 0


class BitTorrent(Dissector):
    name = "BitTorrent"
    transports = TCP_UDP
    ports = frozenset({6881, 6882, 6883, 6884, 6885, 6886, 6887, 6888, 6889, 51413})
    lead = {"TCP": (4, b"\x13")}    # TCP: the peer handshake at the start of one of the first 4 payloads

    def could_be(self, s: FlowSample) -> bool:
        return bool(s.src_payloads or s.dst_payloads)

    @staticmethod
    def _udp(p: bytes) -> bool:
        if p.startswith(b"BT-SEARCH * HTTP/1.1\r\n"):      # BEP 14 local service discovery
            return True
        if p.startswith(b"d1:") and (b"1:y1:" in p[:400] or p.startswith((b"d1:ad2:id20:", b"d1:rd2:id20:"))):
            return True
        if p.startswith(b"d2:ip") or p.startswith(b"d1:ed"):
            return b"1:y1:" in p[:400]
        # BEP 15 connect request
        if len(p) == 16 and p[:8] == b"\x00\x00\x04\x17\x27\x10\x19\x80" and u32(p, 8) == 0:
            return True
        # BEP 29 uTP: a SYN (type 4) without payload, or a data packet carrying the peer handshake
        hdr = utp_header_len(p)
        if hdr == 20 and p[0] == 0x41 and len(p) == 20:
            return True
        return hdr > 0 and p[0] in (0x01, 0x21) and p[hdr:hdr + 20] == b"\x13BitTorrent protocol"

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        tcp = s.transport == "TCP"
        for _src, p in ordered(s, 4):
            if tcp:
                if p.startswith(b"\x13BitTorrent protocol"):
                    v.app_protocol = self.name
                    if len(p) >= 48:
                        v.extra["bittorrent_info_hash"] = p[28:48].hex()
                    return Match.FINAL
            elif self._udp(p):
                v.app_protocol = self.name
                return Match.FINAL
        return Match.NO


_GNUTELLA_DESC = {0x00, 0x01, 0x02, 0x31, 0x32, 0x40, 0x41, 0x44, 0x80, 0x81}


class Gnutella(Dissector):
    name = "Gnutella"
    transports = TCP_UDP
    ports = frozenset({6346, 6347})
    lead = {"TCP": (3, b"G")}       # TCP: GNUTELLA..., GIV, GND at the start of one of the first 3 payloads

    def could_be(self, s: FlowSample) -> bool:
        return bool(s.src_payloads or s.dst_payloads)

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        for n, (_src, p) in enumerate(ordered(s, 3)):
            if s.transport == "UDP" and n > 0 and not p.startswith(b"GND"):
                continue        # a UDP descriptor decides on the flow's first datagram only
            if s.transport == "TCP":
                if p.startswith((b"GNUTELLA CONNECT/", b"GNUTELLA/0.6 ", b"GNUTELLA OK", b"GIV ", b"GND\x01")):
                    v.app_protocol = self.name
                    return Match.FINAL
            else:
                # descriptor header; pings/pongs with extensions are left alone (nDPI does not claim them)
                if len(p) >= 23 and p[16] in _GNUTELLA_DESC and u32le(p, 19) + 23 == len(p) and p[17] <= 7 and \
                        (p[16] not in (0x00, 0x01) or len(p) == 23):
                    v.app_protocol = self.name
                    return Match.FINAL
                if p.startswith(b"GND") and len(p) >= 8:
                    v.app_protocol = self.name
                    return Match.FINAL
        return Match.NO


class EDonkey(Simple):
    name = "eDonkey"
    transports = TCP_UDP
    ports = frozenset({4661, 4662, 4665, 4672})
    magic = (b"\xe3", b"\xc5", b"\xd4", b"\xe4")

    def could_be(self, s: FlowSample) -> bool:
        # TCP frames carry a length that must match; UDP's bare opcode is too weak off the well-known ports
        return Simple.could_be(self, s) and (s.transport == "TCP" or bool({s.src_port, s.dst_port} & self.ports))

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 6 or p[0] not in (0xE3, 0xC5, 0xD4, 0xE4):
            return False
        if s.transport == "TCP":
            return u32le(p, 1) + 5 == len(p) and p[5] in (0x01, 0x4C, 0x38, 0x40, 0x41, 0x46, 0x47, 0x58, 0x59, 0x14, 0x15, 0x16, 0x18, 0x19)
        return p[1] in (0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x90, 0x92, 0x94, 0xA2, 0xA3, 0x01, 0x02, 0x05, 0x06)


class Ethereum(Dissector):
    name = "ETHEREUM"
    transports = TCP_UDP
    ports = frozenset({30303})

    def could_be(self, s: FlowSample) -> bool:
        if s.transport == "UDP":
            return 30303 in (s.src_port, s.dst_port)
        p = s.src_payloads[0] if s.src_payloads else (s.dst_payloads[0] if s.dst_payloads else b"")
        return len(p) >= 200 and p[2] == 0x04

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        for _src, p in ordered(s, 2):
            if s.transport == "TCP":
                # RLPx EIP-8 handshake: 2-byte size prefix, ECIES message starting with an uncompressed point
                if 200 <= len(p) <= 1400 and u16(p, 0) + 2 == len(p) and p[2] == 0x04:
                    v.app_protocol = self.name
                    return Match.FINAL
            else:
                # discovery v4: hash(32) sig(65) type(1) rlp
                if len(p) >= 98 and 1 <= p[97] <= 6 and p[98:99] and 0xC0 <= p[98] and 30303 in (s.src_port, s.dst_port):
                    v.app_protocol = self.name
                    return Match.FINAL
        return Match.NO


_BTC_MAGIC = (b"\xf9\xbe\xb4\xd9", b"\x0b\x11\x09\x07", b"\xfa\xbf\xb5\xda", b"\x0a\x03\xcf\x40", b"\xfc\xc1\xb7\xdc")


class Bitcoin(Simple):
    name = "BITCOIN"
    transports = TCP
    ports = frozenset({8333, 18333})
    magic = _BTC_MAGIC

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 24 or p[:4] not in _BTC_MAGIC:
            return False
        cmd = p[4:16].rstrip(b"\x00")
        return cmd.isalpha() and cmd.islower()


class Monero(Simple):
    name = "Monero"
    transports = TCP
    ports = frozenset({18080, 18089})
    magic = (b"\x01\x21\x01\x01",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return p.startswith(b"\x01\x21\x01\x01\x01\x01\x01\x01")


class Mining(Simple):
    """Stratum and getwork-style mining JSON-RPC."""

    name = "Mining"
    transports = TCP
    ports = frozenset({3333})

    def could_be(self, s: FlowSample) -> bool:
        return bool(s.src_payloads) and s.src_payloads[0][:1] == b"{"

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if not p.startswith(b"{"):
            return False
        h = p[:400].replace(b" ", b"")
        return (b'"method":"mining.' in h or b'"method":"eth_submitLogin"' in h or b'"method":"login"' in h and b'"agent"' in h
                or b'"worker":"' in h and b'"method":"eth_' in h)


class Syncthing(Simple):
    name = "Syncthing"
    transports = TCP_UDP
    ports = frozenset({21027, 22000})
    magic = (b"\x2e\xa7\xd9\x0b", b"\x2e\xa7\xd9\x0c")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return p.startswith((b"\x2e\xa7\xd9\x0b", b"\x2e\xa7\xd9\x0c"))


class Dropbox(Simple):
    """Dropbox LAN sync discovery broadcast on 17500 (JSON with host_int)."""

    name = "Dropbox"
    transports = UDP
    ports = frozenset({17500})

    def could_be(self, s: FlowSample) -> bool:
        return s.dst_port == 17500

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return b'"host_int"' in p[:600] or (s.src_port == 17500 and p.startswith(b"{"))


def _dns_first_labels(p: bytes) -> list[bytes]:
    out = []
    o = 12
    while o < len(p) and len(out) < 4:
        ln = p[o]
        if ln == 0 or ln > 63:
            break
        out.append(p[o + 1:o + 1 + ln].lower())
        o += 1 + ln
    return out


class DNScrypt(Dissector):
    name = "DNScrypt"
    transports = TCP_UDP
    ports = frozenset()

    def could_be(self, s: FlowSample) -> bool:
        if s.dst_payloads and s.dst_payloads[0][:8] == b"r6fnvWj8":
            return True
        p = s.src_payloads[0] if s.src_payloads else b""
        return len(p) >= 17 and (b"\x00\x01" in (p[4:6], p[6:8]) or (len(p) >= 256 and len(p) % 64 == 0))

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        tcp = s.transport == "TCP"
        for src, p in ordered(s, 4):
            if tcp and len(p) > 2:
                p = p[2:]
            if len(p) > 17 and u16(p, 4) == 1:
                labels = _dns_first_labels(p)
                if len(labels) >= 2 and labels[0] == b"2":
                    if labels[1] == b"dnscrypt-cert" or labels[1].startswith(b"dnscrypt"):
                        v.app_protocol = self.name
                        return Match.FINAL
                    if labels[1] == b"securedns" and len(labels) > 2 and labels[2] == b"avast":
                        v.app_protocol = "AVASTSecureDNS"
                        return Match.FINAL
            if not src and p.startswith(b"r6fnvWj8"):
                v.app_protocol = self.name
                return Match.FINAL
        # encrypted queries only: >= 256 bytes, padded to 64, same client magic and key
        sp = s.src_payloads
        if not tcp and not s.dst_payloads and len(sp) >= 2:
            head = sp[0][:40]
            if all(len(q) >= 256 and len(q) % 64 == 0 and q[:40] == head for q in sp[:4]) and sp[0][0] & 0xC0 != 0xC0:
                v.app_protocol = self.name
                return Match.PARTIAL
        return Match.NO


DISSECTORS = [DNScrypt(), BitTorrent(), Gnutella(), EDonkey(), Ethereum(), Bitcoin(), Monero(), Mining(), Syncthing(), Dropbox()]


def dnscrypt_app(qname: str) -> str:
    """nDPI's name for a DNS-format DNSCrypt certificate query, '' when qname is not one.

    For the DNS dissector: ``2.dnscrypt-cert.<provider>`` is DNScrypt,
    ``2.securedns.avast.com`` (any letter case) is AVASTSecureDNS."""
    q = qname.lower().rstrip(".")
    if not q.startswith("2."):
        return ""
    if q.startswith("2.dnscrypt-cert.") or q.startswith("2.dnscrypt."):
        return "DNScrypt"
    if q.endswith("securedns.avast.com"):
        return "AVASTSecureDNS"
    return ""
