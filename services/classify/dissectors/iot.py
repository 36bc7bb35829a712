"""Industrial, building and IoT protocols: BACnet/IP, Modbus/TCP, DNP3,
EtherNet/IP, the ISO-on-TCP family on port 102 (S7comm, S7CommPlus, MMS),
IEC 62056 (DLMS/COSEM HDLC), HART-IP, OMRON FINS, Beckhoff ADS/AMS,
IEEE C37.118, CoAP, CAN over UDP, ANSI C12.22, GE EGD, SOME/IP, RTPS (DDS),
OpenFlow, PFCP, HL7 over MLLP.

References: ASHRAE 135 Annex J (BVLC), Modbus Messaging on TCP/IP (MBAP),
IEEE 1815 (DNP3 link header 0x0564), ODVA EtherNet/IP encapsulation header,
RFC 1006 + ISO 8073 COTP, Siemens S7 protocol ids 0x32/0x72, ISO 8327
session SPDUs, IEC 62056-46 HDLC framing, HART-IP header, FINS header,
Beckhoff AMS/TCP header, IEEE C37.118.2 common frame header, RFC 7252 (CoAP),
ANSI C12.22 ACSE APDU, SOME/IP specification header, OMG DDSI-RTPS header,
OpenFlow header, 3GPP TS 29.244 (PFCP header), HL7 MLLP framing.
"""

from __future__ import annotations

from shared.models import FlowSample, Verdict
from services.classify.dissectors.base import Dissector, Match
from services.classify.dissectors.breadth_util import (TCP, TCP_UDP, UDP, Simple, ordered, u16, u16le, u32, u32le)


class BACnet(Simple):
    name = "BACnet"
    transports = UDP
    ports = frozenset({47808, 47809})
    magic = (b"\x81", b"\x82")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 6 and p[0] in (0x81, 0x82) and p[1] <= 0x0C and u16(p, 2) == len(p)


class Modbus(Simple):
    name = "Modbus"
    transports = TCP
    ports = frozenset({502})
    port_gate = True

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 8 or u16(p, 2) != 0 or u16(p, 4) + 6 != len(p) or u16(p, 4) < 2:
            return False
        fc = p[7] & 0x7F
        return 1 <= fc <= 0x2B or fc in (0x5A, 0x64)

    def result(self, s: FlowSample, v: Verdict) -> str:
        p = s.src_payloads[0] if s.src_payloads else b""
        if len(p) >= 8 and p[7] == 0x5A:
            v.application = "UMAS"
        return self.name


class DNP3(Simple):
    name = "DNP3"
    transports = TCP_UDP
    ports = frozenset({20000})
    magic = (b"\x05\x64",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 10 and p[0] == 0x05 and p[1] == 0x64 and p[2] >= 5


_ENIP_CMDS = {0x0000, 0x0004, 0x0063, 0x0064, 0x0065, 0x0066, 0x006F, 0x0070}


class EthernetIP(Simple):
    name = "EthernetIP"
    transports = TCP_UDP
    ports = frozenset({44818, 2222})
    magic = tuple(bytes([c & 0xFF, c >> 8]) for c in sorted(_ENIP_CMDS))

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 24 and u16le(p, 0) in _ENIP_CMDS and u16le(p, 2) + 24 == len(p)


class ISOTSAP(Dissector):
    """TPKT + COTP on 102/tcp: S7comm (0x32), S7CommPlus (0x72) and MMS (ISO 8327 session) in data TPDUs."""

    name = "S7Comm"
    transports = TCP
    ports = frozenset()

    def could_be(self, s: FlowSample) -> bool:
        p = s.src_payloads[0] if s.src_payloads else b""
        return len(p) >= 7 and p[0] == 3 and p[1] == 0

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        cr = False
        for _src, p in ordered(s, 8):
            if len(p) < 7 or p[0] != 3 or p[1] != 0 or u16(p, 2) < 7:
                return Match.NO
            code = p[5] & 0xF0
            if code in (0xE0, 0xD0):
                # connection request/confirm with TSAP parameters (0xC0 size, 0xC1/0xC2 TSAPs)
                if len(p) >= 12 and any(b in (0xC0, 0xC1, 0xC2) for b in p[11:13]):
                    cr = True
                    continue
                return Match.NO
            if code == 0xF0 and len(p) > 7:
                body = p[7:]
                if body[0] == 0x32:
                    v.app_protocol = "S7Comm"
                    return Match.FINAL
                if body[0] == 0x72:
                    v.app_protocol = "S7CommPlus"
                    return Match.FINAL
                if body[0] in (0x0D, 0x0E, 0x01, 0x02) or body[:2] == b"\x61\x00" or body[:1] == b"\xa0":
                    v.app_protocol = "ISO9506-1-MMS"
                    return Match.FINAL
        if cr and 102 in (s.src_port, s.dst_port):
            for p in s.src_payloads[:1]:
                if b"SIMATIC" in p:
                    v.app_protocol = "S7CommPlus"
                    return Match.PARTIAL
        return Match.NO


class IEC62056(Simple):
    name = "IEC62056"
    transports = TCP_UDP
    ports = frozenset({4059})
    magic = (b"\x7e", b"\x00\x01")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) >= 9 and p[0] == 0x7E and p[-1] == 0x7E and (p[1] & 0xF0) == 0xA0:
            return (((p[1] & 0x07) << 8) | p[2]) + 2 == len(p)
        # COSEM wrapper (IEC 62056-47): version 1, ports, length
        return len(p) >= 9 and u16(p, 0) == 1 and u16(p, 6) + 8 == len(p) and p[8] in (0x60, 0x61, 0x62, 0x63, 0xC0, 0xC1, 0xC4, 0xC5, 0xDB)


class HARTIP(Simple):
    name = "HART-IP"
    transports = TCP_UDP
    ports = frozenset({5094})
    magic = (b"\x01", b"\x02")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 8 and p[0] in (1, 2) and p[1] <= 3 and p[2] <= 4 and u16(p, 6) == len(p)


class FINS(Simple):
    name = "FINS"
    transports = TCP_UDP
    ports = frozenset({9600})
    port_gate = True

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if s.transport == "TCP":
            return p.startswith(b"FINS") and len(p) >= 16
        return len(p) >= 12 and p[0] in (0x80, 0xC0, 0x00, 0x40, 0x81, 0xC1, 0x41, 0x01) and p[1] == 0 and p[2] in (2, 7) \
            and 9600 in (s.src_port, s.dst_port)


class BeckhoffADS(Simple):
    name = "BeckhoffADS"
    transports = TCP
    ports = frozenset({48898})
    magic = (b"\x00\x00",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 38 and p[:2] == b"\x00\x00" and u32le(p, 2) + 6 == len(p) and u16le(p, 22) <= 9 and u32le(p, 26) + 38 == len(p)


class IEEEC37118(Simple):
    name = "IEEE-C37118"
    transports = TCP_UDP
    ports = frozenset({4712, 4713})
    magic = (b"\xaa",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 16 and p[0] == 0xAA and ((p[1] >> 4) & 7) <= 5 and 1 <= (p[1] & 0x0F) <= 3 and u16(p, 2) == len(p)


class COAP(Simple):
    name = "COAP"
    transports = UDP
    ports = frozenset({5683, 5684})

    def could_be(self, s: FlowSample) -> bool:
        return s.dst_port in self.ports or s.src_port in self.ports

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 4 or p[0] >> 6 != 1 or (p[0] & 0x0F) > 8:
            return False
        cls, detail = p[1] >> 5, p[1] & 0x1F
        return (cls == 0 and detail <= 7) or cls in (2, 4, 5) and detail <= 31 or p[1] == 0


class CAN(Simple):
    name = "Controller_Area_Network"
    transports = TCP_UDP
    ports = frozenset()
    magic = (b"ISO11898",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return p.startswith(b"ISO11898") and len(p) >= 12


class ANSIC1222(Simple):
    name = "ANSI_C1222"
    transports = TCP_UDP
    ports = frozenset({1153})
    magic = (b"\x60",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 6 or p[0] != 0x60:
            return False
        if p[1] < 0x80:
            ln, o = p[1], 2
        elif p[1] == 0x81:
            ln, o = p[2], 3
        elif p[1] == 0x82:
            ln, o = u16(p, 2), 4
        else:
            return False
        return o + ln == len(p) and p[o] in (0xA1, 0xA2, 0xA4, 0xA6, 0xA7, 0xA8, 0xBE) and 1153 in (s.src_port, s.dst_port)


class EGD(Simple):
    name = "EthernetGlobalData"
    transports = UDP
    ports = frozenset({18246})
    magic = (b"\x0d\x01",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 32 and p[0] == 0x0D and p[1] == 0x01 and 18246 in (s.src_port, s.dst_port)


class SOMEIP(Simple):
    name = "SOMEIP"
    transports = TCP_UDP
    ports = frozenset({30490, 30491, 30501, 30502})
    port_gate = True

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 16 and u32(p, 4) + 8 == len(p) and p[12] == 1 and p[14] in (0x00, 0x01, 0x02, 0x40, 0x41, 0x42, 0x80, 0x81, 0xC0, 0xC1, 0x20, 0x21, 0x22, 0x23) \
            and p[15] <= 0x5E


class RTPS(Simple):
    name = "RTPS"
    transports = UDP
    ports = frozenset({7400, 7401, 7410, 7411})
    magic = (b"RTPS", b"RTPX")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 20 and p[:4] in (b"RTPS", b"RTPX") and p[4] == 2


class OpenFlow(Simple):
    name = "OpenFlow"
    transports = TCP
    ports = frozenset({6653, 6633})
    port_gate = True

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 8 and 1 <= p[0] <= 6 and p[1] <= 35 and u16(p, 2) == len(p) and (p[1] == 0 or 6653 in (s.src_port, s.dst_port) or 6633 in (s.src_port, s.dst_port))


class PFCP(Simple):
    name = "PFCP"
    transports = UDP
    ports = frozenset({8805})
    port_gate = True

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 8 and p[0] >> 5 == 1 and (1 <= p[1] <= 15 or 50 <= p[1] <= 57) and u16(p, 2) + 4 == len(p)


class HL7(Simple):
    name = "HL7"
    transports = TCP
    ports = frozenset({2575})
    magic = (b"\x0bMSH|", b"MSH|")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return p.startswith(b"\x0bMSH|") or p.startswith(b"MSH|^~\\&")


def crc16_xmodem(data: bytes) -> int:
    """CRC-16/XMODEM (poly 0x1021, init 0), as Ether-S-Bus frames carry it."""
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


class EtherSBus(Simple):
    """SAIA Ether-S-Bus over UDP: 32-bit length, version 0/1, protocol 0 and a trailing CRC-16/XMODEM."""

    name = "Ether-S-Bus"
    transports = UDP
    ports = frozenset()
    magic = (b"\x00\x00",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if not 12 < len(p) <= 1500 or u32(p, 0) != len(p) or p[4] >= 2 or p[5] != 0:
            return False
        return crc16_xmodem(p[:-2]) == u16(p, len(p) - 2)


class EtherSIO(Simple):
    name = "EtherSIO"
    transports = UDP
    ports = frozenset()
    magic = (b"ESIO",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 20 and p[:4] == b"ESIO" and p[4] == 0 and p[5] <= 2 and p[6] == 0


class DLEP(Simple):
    """DLEP (RFC 8175): 'DLEP' discovery signals over UDP, and signal/message headers on TCP 854."""

    name = "DLEP"
    transports = TCP_UDP
    ports = frozenset({854})

    def could_be(self, s: FlowSample) -> bool:
        if s.transport == "TCP":
            return 854 in (s.src_port, s.dst_port)
        return bool(s.src_payloads) and s.src_payloads[0][:4] == b"DLEP"

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if s.transport == "UDP":
            return len(p) > 27 and p[:4] == b"DLEP"
        return len(p) > 8 and 854 in (s.src_port, s.dst_port) and u16(p, 0) < 0x11 and u16(p, 2) == len(p) - 4


DISSECTORS = [BACnet(), Modbus(), DNP3(), EthernetIP(), ISOTSAP(), IEC62056(), HARTIP(), FINS(), BeckhoffADS(),
              IEEEC37118(), COAP(), CAN(), ANSIC1222(), EGD(), SOMEIP(), RTPS(), OpenFlow(), PFCP(), HL7(),
              EtherSBus(), EtherSIO(), DLEP()]
