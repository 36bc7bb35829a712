"""Network services and management: DHCP, DHCPv6, NTP, SNMP, Syslog, SSDP, WSD,
NAT-PMP, HSRP, BFD, Kerberos, LDAP, TFTP, NFS (ONC RPC), collectd, Zabbix,
Checkmk, Munin, NetFlow/IPFIX, sFlow, PTPv2, Roughtime, LDP, BGP, SLP.

References: RFC 2131/2132 (DHCP, options), RFC 8415 (DHCPv6), RFC 5905 (NTP),
RFC 3416/3412 (SNMP PDUs), RFC 5424/3164 (syslog), UPnP Device Architecture
(SSDP), WS-Discovery 1.1 (SOAP over UDP 3702), RFC 6886 (NAT-PMP), RFC 6887
(PCP), RFC 2281 and Cisco's HSRPv2 TLVs, RFC 5880/5881 (BFD), RFC 4120
(Kerberos ASN.1 tags), RFC 4511 (LDAP), RFC 1350 (TFTP), RFC 5531 (ONC RPC)
and RFC 1813/7530 (NFS program numbers), collectd's binary protocol, Zabbix
protocol header, Munin node protocol, RFC 3954/7011 (NetFlow v9, IPFIX),
sFlow v5, IEEE 1588-2008 (PTP common header), the Roughtime draft,
RFC 5036 (LDP), RFC 4271 (BGP), RFC 2608 (SLP).
"""

from __future__ import annotations

from shared.models import FlowSample, Verdict
from services.classify.dissectors.base import Dissector, Match
from services.classify.dissectors.breadth_util import (TCP, TCP_UDP, UDP, Simple, ordered, printable,
                                                       u16, u32, u32le)


class DHCP(Dissector):
    name = "DHCP"
    transports = UDP
    ports = frozenset({67, 68})

    def could_be(self, s: FlowSample) -> bool:
        return s.src_port in (67, 68) or s.dst_port in (67, 68) or bool(s.src_payloads and len(s.src_payloads[0]) >= 240)

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        for _src, p in ordered(s, 3):
            if len(p) >= 240 and p[0] in (1, 2) and p[236:240] == b"\x63\x82\x53\x63" and p[2] <= 16:
                v.app_protocol = self.name
                self._options(p, v)
                return Match.FINAL
        return Match.NO

    @staticmethod
    def _options(p: bytes, v: Verdict) -> None:
        o = 240
        n = 0
        while o < len(p) and n < 64:
            n += 1
            code = p[o]
            if code == 255:
                break
            if code == 0:
                o += 1
                continue
            if o + 1 >= len(p):
                break
            ln = p[o + 1]
            val = p[o + 2:o + 2 + ln]
            if code == 12 and val:
                v.host = printable(val, 255)
            elif code == 60 and val:
                v.extra["dhcp_vendor_class"] = printable(val, 128)
            elif code == 53 and len(val) == 1:
                v.extra["dhcp_message_type"] = str(val[0])
            o += 2 + ln


class DHCPV6(Simple):
    name = "DHCPV6"
    transports = UDP
    ports = frozenset({546, 547})

    def could_be(self, s: FlowSample) -> bool:
        return s.src_port in self.ports or s.dst_port in self.ports

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 4 or not 1 <= p[0] <= 13:
            return False
        if p[0] in (12, 13):   # relay messages: hop count + two addresses
            return len(p) >= 34
        # options follow the 4-byte header: each option code + length fits
        o = 4
        while o + 4 <= len(p):
            ln = u16(p, o + 2)
            o += 4 + ln
        return o == len(p)


class NTP(Simple):
    name = "NTP"
    transports = UDP
    ports = frozenset({123})

    def could_be(self, s: FlowSample) -> bool:
        return s.src_port == 123 or s.dst_port == 123

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 12:
            return False
        ver = (p[0] >> 3) & 7
        mode = p[0] & 7
        if not 1 <= ver <= 4:
            return False
        if mode in (6, 7):        # control / private messages
            return True
        return len(p) >= 48 and mode != 0


def _ber_len(p: bytes, o: int) -> tuple[int, int]:
    """(length, offset of content) of a BER length at o; (-1, -1) when malformed."""
    if o >= len(p):
        return -1, -1
    b = p[o]
    if b < 0x80:
        return b, o + 1
    n = b & 0x7F
    if n == 0 or n > 3 or o + 1 + n > len(p):
        return -1, -1
    return int.from_bytes(p[o + 1:o + 1 + n], "big"), o + 1 + n


class SNMP(Simple):
    name = "SNMP"
    transports = UDP
    ports = frozenset({161, 162})
    magic = (b"\x30",)
    port_gate = True

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 12 or p[0] != 0x30:
            return False
        ln, o = _ber_len(p, 1)
        if ln < 0 or o + ln != len(p) or o + 3 > len(p):
            return False
        if p[o] != 0x02 or p[o + 1] != 1 or p[o + 2] not in (0, 1, 3):
            return False
        ver = p[o + 2]
        o += 3
        if ver == 3:
            return o < len(p) and p[o] == 0x30
        if o >= len(p) or p[o] != 0x04:
            return False
        cl, co = _ber_len(p, o + 1)
        if cl < 0 or co + cl >= len(p):
            return False
        return 0xA0 <= p[co + cl] <= 0xA8


class Syslog(Simple):
    name = "Syslog"
    transports = TCP_UDP
    ports = frozenset({514, 601, 6514})
    magic = (b"<", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"8", b"9")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        # RFC 6587 octet counting over TCP: "<len> <PRI>..."
        if s.transport == "TCP" and p[:1].isdigit():
            sp = p.find(b" ", 0, 7)
            if sp > 0 and p[:sp].isdigit():
                p = p[sp + 1:]
        if len(p) < 5 or p[0] != 0x3C:
            return False
        end = p.find(b">", 1, 5)
        if end < 2 or not p[1:end].isdigit() or int(p[1:end]) > 191:
            return False
        return True


class SSDP(Dissector):
    name = "SSDP"
    transports = UDP
    ports = frozenset({1900})
    lead = {"UDP": (2, b"MNH")}    # M-SEARCH, NOTIFY, HTTP/1.1 200 in one of the first 2 payloads

    def could_be(self, s: FlowSample) -> bool:
        return bool(s.src_payloads or s.dst_payloads)

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        for _src, p in ordered(s, 2):
            if p.startswith((b"M-SEARCH * HTTP/1.1", b"NOTIFY * HTTP/1.1")) or (
                    p.startswith(b"HTTP/1.1 200") and (1900 in (s.src_port, s.dst_port) or b"\r\nST:" in p.upper())):
                v.app_protocol = self.name
                for line in p[:2048].split(b"\r\n")[1:]:
                    k, _, val = line.partition(b":")
                    k = k.strip().lower()
                    if k == b"host" and not v.host:
                        v.host = printable(val.strip(), 255)
                    elif k in (b"user-agent", b"server") and val.strip():
                        v.extra["ssdp_" + k.decode().replace("-", "_")] = printable(val.strip(), 200)
                return Match.FINAL
        return Match.NO


class WSD(Simple):
    """WS-Discovery: SOAP-over-UDP on 3702."""

    name = "WSD"
    transports = UDP
    ports = frozenset({3702})

    def could_be(self, s: FlowSample) -> bool:
        return s.dst_port == 3702 or s.src_port == 3702

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        head = p[:64].lstrip()
        return head.startswith((b"<?xml", b"<soap", b"<s:Envelope", b"<env:", b"<SOAP-ENV"))


class NATPMP(Simple):
    """NAT-PMP (RFC 6886, version 0) and PCP (RFC 6887, version 2) on 5351."""

    name = "NAT-PMP"
    transports = UDP
    ports = frozenset({5350, 5351})

    def could_be(self, s: FlowSample) -> bool:
        return s.dst_port in self.ports or s.src_port in self.ports

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 2 or p[0] != 0:
            return False
        op = p[1]
        if op == 0:
            return len(p) == 2
        if op in (1, 2):
            return len(p) == 12
        if op == 128:
            return len(p) == 12
        if op in (129, 130):
            return len(p) == 16
        return False


class HSRP(Simple):
    name = "HSRP"
    transports = UDP
    ports = frozenset({1985, 2029})

    def could_be(self, s: FlowSample) -> bool:
        return s.dst_port in self.ports

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 20:
            return False
        if p[0] == 0 and p[1] <= 2 and p[2] in (0, 1, 2, 4, 8, 16):   # HSRPv1 (RFC 2281 5.1)
            return True
        return p[0] == 1 and p[1] == 0x28 and p[2] == 2               # HSRPv2 group state TLV


class BFD(Simple):
    name = "BFD"
    transports = UDP
    ports = frozenset({3784, 3785, 4784})

    def could_be(self, s: FlowSample) -> bool:
        return s.dst_port in self.ports or s.src_port in self.ports

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) >= 24 and p[0] >> 5 == 1 and p[3] == len(p) and p[2] >= 1:
            return True
        return 3785 in (s.src_port, s.dst_port) and len(p) >= 8   # echo: opaque to all but the sender


_KRB_TAGS = {0x6A, 0x6B, 0x6C, 0x6D, 0x6E, 0x6F, 0x74, 0x75, 0x76, 0x7E}


def krb_ok(p: bytes) -> bool:
    """An application-tagged Kerberos message (RFC 4120 5.10) whose first field is pvno/msg-type 5."""
    if len(p) < 10 or p[0] not in _KRB_TAGS:
        return False
    ln, o = _ber_len(p, 1)
    if ln < 0 or o >= len(p) or p[o] != 0x30:       # the outer length may exceed a truncated datagram
        return False
    _l2, o2 = _ber_len(p, o + 1)
    if o2 < 0 or o2 + 5 > len(p):
        return False
    return p[o2] in (0xA0, 0xA1) and p[o2 + 1:o2 + 4] == b"\x03\x02\x01" and p[o2 + 4] == 5


class Kerberos(Simple):
    name = "Kerberos"
    transports = TCP_UDP
    ports = frozenset({88, 464})
    magic = (b"\x00", b"\x6a", b"\x6b", b"\x6c", b"\x6d", b"\x6e", b"\x6f", b"\x74", b"\x75", b"\x76", b"\x7e")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if s.transport == "TCP" and len(p) > 4 and p[0] == 0 and u32(p, 0) < 0x100000:
            return krb_ok(p[4:])
        return krb_ok(p)


class LDAP(Simple):
    name = "LDAP"
    transports = TCP_UDP
    ports = frozenset({389, 3268})

    def could_be(self, s: FlowSample) -> bool:
        return bool(s.src_payloads) and s.src_payloads[0][:1] == b"\x30"

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 7 or p[0] != 0x30:
            return False
        ln, o = _ber_len(p, 1)
        if ln < 0 or o + 2 > len(p) or p[o] != 0x02:
            return False
        il = p[o + 1]
        if not 1 <= il <= 4:
            return False
        o += 2 + il
        if o >= len(p):
            return False
        op = p[o]
        return op in (0x60, 0x61, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6A, 0x6B, 0x6C, 0x6D,
                      0x6E, 0x6F, 0x73, 0x77, 0x78, 0x42, 0x4A, 0x50)


class TFTP(Dissector):
    name = "TFTP"
    transports = UDP
    ports = frozenset({69})

    def could_be(self, s: FlowSample) -> bool:
        p = s.src_payloads[0] if s.src_payloads else b""
        return len(p) >= 4 and p[0] == 0 and 1 <= p[1] <= 6

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        p = s.src_payloads[0]
        op = p[1]
        if op in (1, 2):
            parts = p[2:].split(b"\x00")
            if len(parts) >= 3 and parts[0] and parts[1].lower() in (b"netascii", b"octet", b"mail"):
                v.app_protocol = self.name
                v.extra["tftp_file"] = printable(parts[0], 200)
                return Match.FINAL
            return Match.NO
        if op == 6:    # OACK (RFC 2347): option names and values, NUL-terminated
            parts = p[2:].split(b"\x00")
            if len(parts) >= 3 and parts[0].lower() in (b"blksize", b"tsize", b"timeout", b"windowsize") and parts[1].isdigit():
                v.app_protocol = self.name
                return Match.FINAL
            return Match.NO
        if op == 3:
            blk = u16(p, 2)
            for q in s.dst_payloads[:3]:
                if len(q) == 4 and q[1] == 4 and q[0] == 0 and u16(q, 2) == blk:
                    v.app_protocol = self.name
                    return Match.FINAL
        if op == 4 and len(p) == 4:
            blk = u16(p, 2)
            for q in s.dst_payloads[:3]:
                if len(q) >= 4 and q[:2] == b"\x00\x03" and u16(q, 2) in (blk, blk + 1):
                    v.app_protocol = self.name
                    return Match.FINAL
        return Match.NO


_RPC_PROGS = {100000, 100003, 100005, 100021, 100024, 100227}


class NFS(Simple):
    """ONC RPC calls to the NFS family of programs (portmapper, nfs, mountd, nlockmgr, status)."""

    name = "NFS"
    transports = TCP_UDP
    ports = frozenset({111, 2049})
    first_bytes = {"TCP": bytes(range(0x80, 0x100))}   # could_be: a record mark's last-fragment bit

    def could_be(self, s: FlowSample) -> bool:
        # the call from either side: the capture may have seen the server's packet first
        for lst in (s.src_payloads, s.dst_payloads):
            p = lst[0] if lst else b""
            if s.transport == "TCP":
                if len(p) >= 28 and p[0] & 0x80 and p[8:12] == b"\x00\x00\x00\x00":
                    return True
            elif len(p) >= 24 and p[4:8] == b"\x00\x00\x00\x00":
                return True
        return False

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if s.transport == "TCP":
            if len(p) < 4 or not p[0] & 0x80:
                return False
            p = p[4:]
        if len(p) < 24:
            return False
        return u32(p, 4) == 0 and u32(p, 8) == 2 and u32(p, 12) in _RPC_PROGS and u32(p, 16) <= 4


# collectd's binary protocol part types (collectd's network plugin: host, time, time (hi-res),
# plugin, plugin instance, type, type instance, values, interval, interval (hi-res), message,
# severity, signature (SHA-256), encryption (AES-256))
_COLLECTD_TYPES = frozenset({0x0000, 0x0001, 0x0008, 0x0002, 0x0003, 0x0004, 0x0005, 0x0006, 0x0007, 0x0009,
                             0x0100, 0x0101, 0x0200, 0x0210})


class Collectd(Dissector):
    """collectd's binary network protocol: a datagram of parts (type, length including the 4-byte
    header, value).  As nDPI's collectd.c: the parts are read from the start, at most five, up to
    the first one that does not fit or has an unknown type; three are needed, or a single
    encryption part (0x0210) that fills the datagram and holds a user name.  The host part names
    the flow."""

    name = "collectd"
    transports = UDP
    ports = frozenset({25826})

    def could_be(self, s: FlowSample) -> bool:
        p = s.src_payloads[0] if s.src_payloads else b""
        return len(p) >= 8 and p[0] in (0, 1, 2)

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        p = s.src_payloads[0]
        o = 0
        host = b""
        n = 0
        while n < 5 and o + 4 <= len(p):
            t, ln = u16(p, o), u16(p, o + 2)
            if ln == 0 or o + ln > len(p) or t not in _COLLECTD_TYPES:
                break
            if t == 0x0000 and ln > 4:
                host = p[o + 4:o + ln]
            elif t == 0x0210:
                # encrypted: the user name (length, name) then a 16-byte IV and the ciphertext
                if ln != len(p) or ln < 6 or u16(p, 4) > len(p) - 6 - 16:
                    return Match.NO
                v.app_protocol = self.name
                return Match.FINAL
            o += ln
            n += 1
        if n < 3:
            return Match.NO
        v.app_protocol = self.name
        host = host.split(b"\x00", 1)[0]
        if host:
            v.host = "".join(chr(c) if 32 <= c < 127 else "?" for c in host[-79:]).lower()
        return Match.FINAL


class Zabbix(Simple):
    name = "Zabbix"
    transports = TCP
    ports = frozenset({10050, 10051})
    magic = (b"ZBXD",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return p.startswith(b"ZBXD") and len(p) >= 5 and p[4] in (1, 3, 5, 7)


class CHECKMK(Simple):
    name = "CHECKMK"
    transports = TCP
    ports = frozenset({6556})
    magic = (b"<<<",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return p.startswith(b"<<<check_mk>>>") or p.startswith(b"<<<")


class Munin(Dissector):
    name = "Munin"
    transports = TCP
    ports = frozenset({4949})
    lead = {"TCP": (3, b"#")}      # "# munin node at " in one of the first 3 payloads, see dissect

    def could_be(self, s: FlowSample) -> bool:
        return bool(s.dst_payloads) or bool(s.src_payloads)

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        for _src, p in ordered(s, 3):
            if p.startswith(b"# munin node at "):
                v.app_protocol = self.name
                v.host = printable(p[16:].split(b"\n", 1)[0].strip(), 255)
                return Match.FINAL
        return Match.NO


class NetFlow(Simple):
    name = "NetFlow"
    transports = UDP
    ports = frozenset({2055, 9995, 9996, 4739})
    magic = (b"\x00\x01", b"\x00\x05", b"\x00\x07", b"\x00\x09", b"\x00\x0a")
    port_gate = True

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        ver = u16(p, 0)
        cnt = u16(p, 2)
        if ver == 10:
            return cnt == len(p) and len(p) >= 16
        if ver == 9:
            return len(p) >= 20 and 0 < cnt < 500
        if ver == 5:
            return 1 <= cnt <= 30 and len(p) == 24 + 48 * cnt
        if ver == 1:
            return 1 <= cnt <= 24 and len(p) == 16 + 48 * cnt
        if ver == 7:
            return 1 <= cnt <= 27 and len(p) == 24 + 52 * cnt
        return False


class SFlow(Simple):
    name = "sFlow"
    transports = UDP
    ports = frozenset({6343})
    magic = (b"\x00\x00\x00",)
    port_gate = True

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 28 and u32(p, 0) in (2, 4, 5) and u32(p, 4) in (1, 2)


class PTPv2(Simple):
    name = "PTPv2"
    transports = UDP
    ports = frozenset({319, 320})

    def could_be(self, s: FlowSample) -> bool:
        return s.dst_port in self.ports or s.src_port in self.ports

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 34 and (p[1] & 0x0F) == 2 and (p[0] & 0x0F) in (0, 1, 2, 3, 8, 9, 0xA, 0xB, 0xC, 0xD) and u16(p, 2) <= len(p)


class Roughtime(Simple):
    name = "Roughtime"
    transports = TCP_UDP
    ports = frozenset({2002})
    first_bytes = {t: b"R" + bytes(range(1, 65)) for t in ("TCP", "UDP")}   # could_be: "ROUGHTIM" or 1..64 tags

    def could_be(self, s: FlowSample) -> bool:
        p = s.src_payloads[0] if s.src_payloads else (s.dst_payloads[0] if s.dst_payloads else b"")
        return p.startswith(b"ROUGHTIM") or (len(p) >= 8 and p[1:4] == b"\x00\x00\x00" and 1 <= p[0] <= 64)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if p.startswith(b"ROUGHTIM"):
            return True
        n = u32le(p, 0)
        if not 1 <= n <= 64 or len(p) < 8 * n:
            return False
        tags = p[4 * n:8 * n] if n > 0 else b""
        return any(t in tags for t in (b"NONC", b"SIG\x00", b"PAD\xff", b"SREP", b"CERT", b"INDX", b"PATH", b"VER\x00"))


class LDP(Simple):
    name = "LDP"
    transports = TCP_UDP
    ports = frozenset({646})
    magic = (b"\x00\x01",)
    port_gate = True

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 14 and u16(p, 0) == 1 and u16(p, 2) + 4 <= len(p) and u16(p, 2) >= 10 and (u16(p, 10) & 0x7FFF) in (
            0x0001, 0x0100, 0x0200, 0x0201, 0x0300, 0x0301, 0x0400, 0x0401, 0x0402, 0x0403, 0x0404)


class BGP(Simple):
    name = "BGP"
    transports = TCP
    ports = frozenset({179})
    magic = (b"\xff" * 16,)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 19 and p[:16] == b"\xff" * 16 and 19 <= u16(p, 16) <= 4096 and 1 <= p[18] <= 5


class SLP(Simple):
    """Service Location Protocol v1/v2 (RFC 2165, RFC 2608 8)."""

    name = "Service_Location_Protocol"
    transports = TCP_UDP
    ports = frozenset({427})

    def could_be(self, s: FlowSample) -> bool:
        return s.dst_port == 427 or s.src_port == 427

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 12 or p[0] not in (1, 2) or not 1 <= p[1] <= 11:
            return False
        if p[0] == 2:
            return int.from_bytes(p[2:5], "big") == len(p)
        return u16(p, 2) == len(p)


DISSECTORS = [DHCP(), DHCPV6(), NTP(), SNMP(), Syslog(), SSDP(), WSD(), NATPMP(), HSRP(), BFD(), Kerberos(),
              LDAP(), TFTP(), NFS(), Collectd(), Zabbix(), CHECKMK(), Munin(), NetFlow(), SFlow(), PTPv2(),
              Roughtime(), LDP(), BGP(), SLP()]
