"""More protocols from nDPI's list, each with a fixed header defined by its
specification: MS SQL TDS, Oracle TNS, Cassandra CQL, Git, rsync, WHOIS,
PPTP, L2TP, Teredo, RADIUS, Diameter, LISP, CAPWAP, IEC 60870-5-104, OPC UA,
KNXnet/IP, MGCP, TeamSpeak 3, FIX, Ookla speedtest, ZeroMQ.

References: [MS-TDS] 2.2.3.1 (packet header), Oracle Net TNS packet header,
CQL binary protocol v3-v5 frame header, git pack-protocol (pkt-line),
rsync daemon greeting, RFC 3912 (WHOIS), RFC 2637 (PPTP control message,
magic cookie 0x1A2B3C4D), RFC 2661 / 3931 (L2TP header), RFC 4380 (Teredo),
RFC 2865/2866/5176 (RADIUS codes), RFC 6733 (Diameter header), RFC 9301
(LISP control messages), RFC 5415 (CAPWAP preamble), IEC 60870-5-104 (APCI
start 0x68), OPC UA Part 6 (UA-TCP message header), KNXnet/IP core header,
RFC 3435 (MGCP verbs), TeamSpeak 3 init packets, FIX 4.x/FIXT BeginString,
Ookla's text protocol (HI/HELLO), ZMTP 2.0/3.x greeting; EAQ probes, TiVoConnect
beacons, Armagetron and Crossfire game packets, CIP I/O common packet format
(ODVA), CNP/IP (ANSI/CEA-852) as nDPI's dissectors recognise them.
"""

from __future__ import annotations

from shared.models import FlowSample, Verdict
from services.classify.dissectors.base import Dissector, Match
from services.classify.dissectors.breadth_util import TCP, TCP_UDP, UDP, Simple, printable, u16, u32, u32le


class MsSQLTDS(Simple):
    name = "MsSQL-TDS"
    transports = TCP
    ports = frozenset({1433})
    magic = (b"\x12", b"\x10", b"\x01", b"\x03", b"\x04", b"\x0e", b"\x07", b"\x06", b"\x11")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 8 or p[1] not in (0, 1, 2, 4, 8, 9, 0x10, 0x11) or p[7] != 0:
            return False
        ln = u16(p, 2)
        if ln != len(p) and not (8 < ln < len(p)):
            return False
        if p[0] == 0x12:        # PRELOGIN: option tokens (VERSION first), terminated by 0xFF
            return p[8] == 0x00 and 0xFF in p[8:64]
        return 1433 in (s.src_port, s.dst_port)


class Oracle(Simple):
    name = "Oracle"
    transports = TCP
    ports = frozenset({1521})

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 8 or p[2:4] != b"\x00\x00" or p[5] != 0 or p[6:8] != b"\x00\x00":
            return False
        if u16(p, 0) != len(p) and not (u16(p, 0) == 0 and u32(p, 0) == len(p)):
            return False
        if p[4] == 1:
            return b"(DESCRIPTION=" in p[:600].upper() or b"(CONNECT_DATA=" in p[:600].upper()
        return p[4] in (2, 4, 5, 6, 11, 12) and 1521 in (s.src_port, s.dst_port)


class Cassandra(Simple):
    name = "Cassandra"
    transports = TCP
    ports = frozenset({9042})
    magic = (b"\x03", b"\x04", b"\x05", b"\x83", b"\x84", b"\x85")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 9 and (p[0] & 0x7F) in (3, 4, 5) and p[1] <= 0x1F and p[4] <= 0x10 and u32(p, 5) + 9 == len(p)


_LOWER_HEX = b"0123456789abcdef"     # (x.translate(None, _LOWER_HEX) is empty iff x is all lower-case hex digits)


class Git(Simple):
    name = "Git"
    transports = TCP
    ports = frozenset({9418})

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 8 or p[:4].translate(None, _LOWER_HEX):
            return False
        n = int(p[:4], 16)
        if n <= len(p) and p[4:].startswith((b"git-upload-pack ", b"git-receive-pack ", b"git-upload-archive ")):
            return True
        # the server's reference advertisement (the capture met the flow at it): pkt-lines of
        # "<40 hex object id> <refname>" whose lengths add up to the segment, on git's port
        if 9418 not in (s.src_port, s.dst_port) or n < 46 or p[44:45] != b" " \
                or p[4:44].translate(None, _LOWER_HEX):
            return False
        i = 0
        while i + 4 <= len(p):
            h = p[i:i + 4]
            if h.translate(None, _LOWER_HEX):
                return False
            ln = int(h, 16)
            if ln == 0:
                i += 4
                continue
            if ln < 4:
                return False
            i += ln
        return i == len(p)


class RSYNC(Simple):
    name = "RSYNC"
    transports = TCP
    ports = frozenset({873})
    magic = (b"@RSYNCD: ",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return p.startswith(b"@RSYNCD: ")


class WhoisDAS(Simple):
    """WHOIS (RFC 3912) on 43/tcp: one query line from the client; the query is the host."""

    name = "Whois-DAS"
    transports = TCP
    ports = frozenset({43, 4343})
    port_gate = True

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if from_src == (s.dst_port in self.ports):     # the client's query line
            return 3 <= len(p) <= 512 and p.endswith(b"\r\n") and all(32 <= c < 127 for c in p[:-2])
        # the server's text answer (the capture met the flow at it, or saw the server's packet first)
        return len(p) >= 8 and all(32 <= c < 127 or c in (9, 10, 13) for c in p[:128])

    def result(self, s: FlowSample, v: Verdict) -> str:
        client = s.src_payloads if s.dst_port in self.ports else s.dst_payloads
        q = client[0].strip() if client else b""
        word = q.split(b" ")[-1] if q else b""
        if word and b"." in word:
            v.host = printable(word, 255).lower()
        return self.name


class PPTP(Simple):
    name = "PPTP"
    transports = TCP
    ports = frozenset({1723})

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 16 and u16(p, 0) == len(p) and u16(p, 2) == 1 and p[4:8] == b"\x1a\x2b\x3c\x4d"


class L2TP(Simple):
    name = "L2TP"
    transports = UDP
    ports = frozenset({1701})
    port_gate = True

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 8:
            return False
        flags = u16(p, 0)
        if flags & 0x000F not in (2, 3) or flags & 0x0030:
            return False
        if flags & 0x4000:
            return u16(p, 2) == len(p)
        return not flags & 0x8000


class Teredo(Simple):
    name = "Teredo"
    transports = UDP
    ports = frozenset({3544})

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        o = 0
        if p[:2] == b"\x00\x01" and len(p) >= 13:       # authentication indicator
            o = 4 + p[2] + p[3] + 9
        if p[o:o + 2] == b"\x00\x00":                     # origin indication
            o += 8
        return len(p) >= o + 40 and p[o] >> 4 == 6 and u16(p, o + 4) + 40 == len(p) - o and 3544 in (s.src_port, s.dst_port)


_RADIUS_CODES = {1, 2, 3, 4, 5, 11, 12, 13, 40, 41, 42, 43, 44, 45}


class Radius(Simple):
    name = "Radius"
    transports = UDP
    ports = frozenset({1812, 1813, 1645, 1646, 3799})
    port_gate = True

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 20 and p[0] in _RADIUS_CODES and u16(p, 2) == len(p)


class Diameter(Simple):
    name = "Diameter"
    transports = frozenset({"TCP", "SCTP"})
    ports = frozenset({3868})
    magic = (b"\x01",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 20 or p[0] != 1 or p[4] & 0x0F:
            return False
        ln = int.from_bytes(p[1:4], "big")
        code = int.from_bytes(p[5:8], "big")
        return ln == len(p) and (257 <= code <= 287 or 300 <= code <= 330 or code in (8388620, 8388622))


class LISP(Simple):
    name = "LISP"
    transports = UDP
    ports = frozenset({4341, 4342})
    port_gate = True

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if 4342 in (s.src_port, s.dst_port):
            return len(p) >= 8 and 1 <= p[0] >> 4 <= 8
        return len(p) >= 8 + 20 and p[8] >> 4 in (4, 6)      # data: 8-byte LISP header + inner IP


class CAPWAP(Simple):
    name = "CAPWAP"
    transports = UDP
    ports = frozenset({5246, 5247})
    port_gate = True

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 8 or p[0] >> 4 != 0:
            return False
        if p[0] & 0x0F == 1:        # DTLS header follows
            return len(p) >= 17
        hlen = (p[1] >> 3) * 4
        return p[0] == 0 and 8 <= hlen <= len(p)


class IEC60870(Simple):
    name = "IEC60870"
    transports = TCP
    ports = frozenset({2404})
    magic = (b"\x68",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        o = 0
        n = 0
        while o < len(p) and n < 32:
            if p[o] != 0x68 or o + 1 >= len(p) or p[o + 1] < 4:
                return False
            o += 2 + p[o + 1]
            n += 1
        return n >= 1 and o == len(p)


class OPCUA(Simple):
    name = "OPC-UA"
    transports = TCP
    ports = frozenset({4840})
    magic = (b"HEL", b"ACK", b"OPN", b"MSG", b"CLO", b"ERR", b"RHE")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 8 and p[3:4] in (b"F", b"C", b"A") and u32le(p, 4) == len(p)


class KNXnetIP(Simple):
    name = "KNXnet_IP"
    transports = TCP_UDP
    ports = frozenset({3671})
    magic = (b"\x06\x10", b"\x06\x20")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 6 and 0x0200 <= u16(p, 2) <= 0x0950 and u16(p, 4) == len(p)


_MGCP_VERBS = (b"EPCF ", b"CRCX ", b"MDCX ", b"DLCX ", b"RQNT ", b"NTFY ", b"AUEP ", b"AUCX ", b"RSIP ", b"MESG ")


class MGCP(Simple):
    name = "MGCP"
    transports = UDP
    ports = frozenset({2427, 2727})

    def could_be(self, s: FlowSample) -> bool:
        p = s.src_payloads[0] if s.src_payloads else (s.dst_payloads[0] if s.dst_payloads else b"")
        return len(p) >= 8 and (p[:4].isupper() or p[:3].isdigit())

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        line = p.split(b"\n", 1)[0].rstrip(b"\r")
        if line.startswith(_MGCP_VERBS):
            return b" MGCP 1." in line
        parts = line.split(b" ")
        return len(parts) >= 2 and len(parts[0]) == 3 and parts[0].isdigit() and parts[1].isdigit() and \
            bool({s.src_port, s.dst_port} & self.ports)


class TeamSpeak(Simple):
    name = "TeamSpeak"
    transports = TCP_UDP
    ports = frozenset({9987, 10011, 30033})
    magic = (b"TS3",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if s.transport == "UDP":
            return p.startswith(b"TS3INIT1") and len(p) >= 11
        return p.startswith(b"TS3\n\r") or p.startswith(b"TS3\r\n")


class FIX(Simple):
    name = "FIX"
    transports = TCP
    ports = frozenset()
    magic = (b"8=FIX",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return p.startswith((b"8=FIX.", b"8=FIXT.")) and b"\x019=" in p[:32]


class Ookla(Simple):
    """Ookla speedtest's TCP text protocol: HI / HELLO, then PING/DOWNLOAD/UPLOAD commands."""

    name = "Ookla"
    transports = TCP
    ports = frozenset({8080})
    magic = (b"HI\n", b"HELLO", b"HI ")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        # client: "HI" (optionally followed by a GUID) or "HELLO"; server: "HELLO <version> ..."
        if from_src and (p.startswith((b"HI\n", b"HI ")) and p.endswith(b"\n") and len(p) < 80 or p.startswith(b"HELLO")):
            return any(q.startswith(b"HELLO ") for q in s.dst_payloads[:2]) or p.startswith(b"HELLO ") and b" " in p[6:]
        return False


class ZeroMQ(Simple):
    name = "ZeroMQ"
    transports = TCP
    ports = frozenset()
    magic = (b"\xff",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        # ZMTP 2.0/3.x signature: 0xFF, 8 bytes of padding, 0x7F (then the version)
        return len(p) >= 10 and p[0] == 0xFF and p[9] == 0x7F


class EAQ(Dissector):
    """EAQ broadband quality probes (Brazil): 16-byte UDP datagrams on 6000 whose leading digits count up."""

    name = "EAQ"
    transports = UDP
    ports = frozenset({6000})

    def could_be(self, s: FlowSample) -> bool:
        return 6000 in (s.src_port, s.dst_port) and bool(s.src_payloads) and len(s.src_payloads[0]) == 16

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        seqs = []
        for p in s.src_payloads[:6]:
            if len(p) != 16:
                return Match.NO
            seqs.append(p[0] * 1000 + p[1] * 100 + p[2] * 10 + p[3])
        if any(b - a not in (0, 1) for a, b in zip(seqs, seqs[1:])):
            return Match.NO
        v.app_protocol = self.name
        return Match.FINAL if len(seqs) >= 4 else Match.PARTIAL


class TiVoConnect(Simple):
    """TiVo discovery beacons: 'tivoconnect=1' followed by key=value lines."""

    name = "TiVoConnect"
    transports = TCP_UDP
    ports = frozenset({2190})

    def could_be(self, s: FlowSample) -> bool:
        return bool(s.src_payloads) and s.src_payloads[0][:4].lower() == b"tivo"

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return p[:12].lower() == b"tivoconnect="

    def result(self, s: FlowSample, v: Verdict) -> str:
        for line in (s.src_payloads[0] if s.src_payloads else b"")[:1024].split(b"\n"):
            k, _, val = line.partition(b"=")
            if k.lower() == b"machine" and val.strip():
                v.extra["tivo_machine"] = printable(val.strip(), 128)
        return self.name


class Armagetron(Simple):
    """Armagetron Advanced: login (0x000b), sync (0x001c) and net_sync (0x0018) messages whose
    16-bit word count covers the datagram and which end with a zero word."""

    name = "Armagetron"
    transports = UDP
    ports = frozenset({4534})

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) <= 10 or p[-2:] != b"\x00\x00":
            return False
        words = u16(p, 4)
        if p[:4] == b"\x00\x0b\x00\x00":
            return words != 0 and words * 2 + 8 == len(p) and p[6:8] == b"\x00\x08"
        if len(p) == 16 and p[:2] == b"\x00\x1c" and p[2:4] != b"\x00\x00":
            return words == 4 and p[6:10] == b"\x00\x00\x05\x00" and p[10:14] == b"\x00\x01\x00\x00"
        return False


class Crossfire(Simple):
    name = "Crossfire"
    transports = UDP
    ports = frozenset()
    magic = (b"\xc7\xd9\x19\x99",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) == 25 and p[:4] == b"\xc7\xd9\x19\x99" and p[4:6] == b"\x02\x00" and p[22:24] == b"\x7d\x00"


class CIP(Simple):
    """CIP class 0/1 I/O over UDP 2222: common packet format items (count, items of type+length) filling the datagram."""

    name = "CIP"
    transports = UDP
    ports = frozenset({2222})
    port_gate = True

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if not 12 <= len(p) < 64 or p[1] != 0:
            return False
        n, o = p[0], 2
        while n > 0 and o + 4 < len(p):
            o += 4 + (p[o + 2] | (p[o + 3] << 8))
            n -= 1
        return p[0] > 0 and o == len(p)


class CNPIP(Simple):
    """CNP/IP (LonWorks over IP, ANSI/CEA-852) on 1628/1629: length, version/type, reserved."""

    name = "CNP-IP"
    transports = UDP
    ports = frozenset({1628, 1629})
    port_gate = True

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) > 20 and u16(p, 0) == len(p) and (p[3] & 0x1F) == 1 and p[4] == 0 and (p[5] & 0x1F) < 3


class TuyaLP(Simple):
    """Tuya smart-device LAN protocol: prefix 0x000055AA, 32-bit length, suffix 0x0000AA55."""

    name = "TuyaLP"
    transports = TCP_UDP
    ports = frozenset({6666, 6667, 6668})
    magic = (b"\x00\x00\x55\xaa",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 16 and p[:4] == b"\x00\x00\x55\xaa" and u32(p, 4) <= len(p) and p[-4:] == b"\x00\x00\xaa\x55"


class RMCP(Simple):
    """RMCP (ASF / IPMI over LAN, DMTF DSP0136): version 6, reserved 0, class ASF (6) or IPMI (7)."""

    name = "RMCP"
    transports = UDP
    ports = frozenset({623, 664})
    port_gate = True

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 4 or p[0] != 6 or p[1] != 0 or (p[3] & 0x7F) not in (6, 7):
            return False
        return not (p[3] & 0x80 and p[2] == 0xFF)


class Thrift(Simple):
    """Apache Thrift: strict binary protocol over TCP (0x80 0x01, message type 1..4, method name)
    and compact protocol over UDP (0x82, version 1, message type)."""

    name = "Thrift"
    transports = TCP_UDP
    ports = frozenset()
    magic = (b"\x80\x01", b"\x82")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if s.transport == "TCP":
            if len(p) < 12 or p[:2] != b"\x80\x01" or not 1 <= p[3] <= 4:
                return False
            n = u32(p, 4)
            return 0 < n <= len(p) - 8 and all(32 <= c < 127 for c in p[8:8 + n])
        if len(p) < 6 or p[0] != 0x82 or (p[1] & 0x1F) != 1 or not 1 <= (p[1] >> 5) <= 4:
            return False
        n = p[5]
        return 0 < n <= len(p) - 6 and all(32 <= c < 127 for c in p[6:6 + n])


class DICOM(Simple):
    """DICOM upper layer (PS3.8): A-ASSOCIATE-RQ PDU (type 1, protocol version 1)."""

    name = "DICOM"
    transports = TCP
    ports = frozenset({104, 11112})
    magic = (b"\x01\x00",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) > 9 and p[0] == 1 and p[1] == 0 and len(p) <= u32(p, 2) + 6 and p[6:10] == b"\x00\x01\x00\x00"


class GLBP(Simple):
    """Cisco GLBP on 3222/udp (both ports): version 0/1 and a small group number."""

    name = "GLBP"
    transports = UDP
    ports = frozenset({3222})

    def could_be(self, s: FlowSample) -> bool:
        return s.src_port == 3222 and s.dst_port == 3222

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 12 and p[0] <= 1 and u16(p, 2) <= 1023


class Gearman(Simple):
    name = "Gearman"
    transports = TCP
    ports = frozenset({4730})
    magic = (b"\x00REQ", b"\x00RES")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) > 12 and p[1:4] in (b"REQ", b"RES")


class GenshinImpact(Dissector):
    name = "GenshinImpact"
    transports = UDP
    ports = frozenset()

    def could_be(self, s: FlowSample) -> bool:
        return bool(s.src_payloads) and s.src_payloads[0][:8] == b"\x00\x00\x00\xff\x00\x00\x00\x00"

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        p = s.src_payloads[0]
        if len(p) >= 20 and p[12:16] == b"\x49\x96\x02\xd2" and p[16:20] == b"\xff\xff\xff\xff":
            v.app_protocol = self.name
            return Match.FINAL
        return Match.NO


class JRMI(Simple):
    """Java RMI transport (JRMP): the stream opens with 'JRMI', a version and a protocol byte."""

    name = "JRMI"
    transports = TCP
    ports = frozenset({1099})
    magic = (b"JRMI",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) > 5 and p[:4] == b"JRMI"


class LotusNotes(Simple):
    """Lotus Notes / Domino NRPC on 1352: the first client message carries a fixed header at offset 6."""

    name = "LotusNotes"
    transports = TCP
    ports = frozenset({1352})
    maxpk = 1

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) > 16 and p[6:14] == b"\x00\x00\x02\x00\x00\x40\x02\x0f"


class VMware(Simple):
    """VMware remote console heartbeat on 902/udp: 66-byte datagrams starting 0xA4."""

    name = "VMware"
    transports = UDP
    ports = frozenset({902})

    def could_be(self, s: FlowSample) -> bool:
        return s.dst_port == 902

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) == 66 and p[0] == 0xA4


DISSECTORS = [MsSQLTDS(), Oracle(), Cassandra(), Git(), RSYNC(), WhoisDAS(), PPTP(), L2TP(), Teredo(), Radius(),
              Diameter(), LISP(), CAPWAP(), IEC60870(), OPCUA(), KNXnetIP(), MGCP(), TeamSpeak(), FIX(), Ookla(), ZeroMQ(),
              EAQ(), TiVoConnect(), Armagetron(), Crossfire(), CIP(), CNPIP(),
              TuyaLP(), RMCP(), Thrift(), DICOM(), GLBP(), Gearman(), GenshinImpact(), JRMI(), LotusNotes(), VMware()]
