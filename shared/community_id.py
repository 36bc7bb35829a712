"""Community ID v1 flow hashing (https://github.com/corelight/community-id-spec).

The flow identifier Zeek, Suricata, Arkime, Elastic and most SIEMs compute,
so records of different tools about one flow can be joined::

    sha1(seed:2 . saddr . daddr . proto:1 . 0:1 . sport:2 . dport:2), base64, "1:" prefix

with the endpoints ordered so the smaller (address, port) comes first, all in
network byte order.  ICMP and ICMPv6 use the type and its "counter-type" (or
the code for one-way types) as ports, as Zeek does; other protocols without
ports hash the addresses and protocol only.

``community_id`` is the spec's function; ``for_event`` applies it to a
FlowTarget event's envelope.  FlowTarget keys ICMP and ICMPv6 flows without
type/code (``src_port = dst_port = 0``, as nDPI does); capture reads the type
and code of a flow's first packet once, when it creates the flow, and every
event about the flow carries them (``icmp_type``/``icmp_code``), so
``for_event`` hashes those.  A flow that mixes ICMP types (echo and
unreachable between the same hosts) gets its first packet's id.  SCTP flows
are keyed and recorded without ports (decode only checks the common header's
length), so for those ``for_event`` gives ``""``, as the spec asks of a
monitor that cannot compute the value.  Computed once per stored record (in
store, at write time), never per packet.
"""

from __future__ import annotations

import hashlib
import socket
import struct
from binascii import b2a_base64

PROTO_NUMBERS = {"ICMP": 1, "IGMP": 2, "TCP": 6, "UDP": 17, "GRE": 47, "ESP": 50, "AH": 51, "ICMPV6": 58,
                 "OSPF": 89, "PIM": 103, "VRRP": 112, "PGM": 113, "SCTP": 132}
_PORTED = (6, 17, 132)

# ICMP type -> counter-type (Zeek's mapping; types absent here are one-way, the code is the "port")
_ICMP4 = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 9: 10, 17: 18, 18: 17}
_ICMP6 = {128: 129, 129: 128, 130: 131, 131: 130, 133: 134, 134: 133, 135: 136, 136: 135, 139: 140, 140: 139,
          144: 145, 145: 144}


def _icmp_ports(proto: int, itype: int, code: int) -> tuple[int, int, bool]:
    """(sport, dport, one_way) for an ICMP type and code."""
    m = _ICMP4 if proto == 1 else _ICMP6
    if itype in m:
        return itype, m[itype], False
    return itype, code, True


_inet_pton = socket.inet_pton
_V4, _V6 = socket.AF_INET, socket.AF_INET6
_sha1 = hashlib.sha1
_pack_hdr = struct.Struct("!H").pack
_pack_proto = struct.Struct("!BB").pack
_pack_ports = struct.Struct("!HH").pack


def _packed(addr: str) -> bytes:
    try:
        return _inet_pton(_V6 if ":" in addr else _V4, addr)
    except OSError:
        raise ValueError(f"not an IP address: {addr!r}") from None


def community_id(saddr: str, daddr: str, proto: int, sport: int | None = None, dport: int | None = None,
                 seed: int = 0) -> str:
    """Community ID v1 of a flow tuple; for ICMP/ICMPv6 ``sport``/``dport`` are the type and code.

    ``sport``/``dport`` None: a protocol without ports.  Raises ValueError for bad addresses.
    """
    a = _packed(saddr)
    b = _packed(daddr)
    if len(a) != len(b):
        raise ValueError("address families differ")
    one_way = False
    if proto in (1, 58) and sport is not None and dport is not None:
        sport, dport, one_way = _icmp_ports(proto, sport, dport)
    ported = sport is not None and dport is not None
    if not one_way and (b < a or (a == b and ported and dport < sport)):
        a, b = b, a
        if ported:
            sport, dport = dport, sport
    data = _pack_hdr(seed & 0xFFFF) + a + b + _pack_proto(proto & 0xFF, 0)
    if ported:
        data += _pack_ports(sport & 0xFFFF, dport & 0xFFFF)
    return "1:" + b2a_base64(_sha1(data).digest(), newline=False).decode("ascii")


def proto_number(transport: str) -> int | None:
    """IP protocol number of an nDPI transport name (or of a number written as text)."""
    n = PROTO_NUMBERS.get(transport)
    if n is None and transport.isdigit():
        n = int(transport)
    return n


def for_event(transport: str, src_ip: str, src_port: int, dst_ip: str, dst_port: int, seed: int = 0,
              icmp_type: int | None = None, icmp_code: int | None = None) -> str:
    """Community ID of a FlowTarget event's endpoints; "" when it cannot be computed (no IP
    addresses, an ICMP flow without its first packet's type and code, SCTP flows (keyed without
    ports), unknown transport).  ``icmp_type``/``icmp_code``: the event's (ICMP/ICMPv6 flows)."""
    if not src_ip or not dst_ip:
        return ""
    proto = proto_number(transport)
    if proto is None or proto > 255:
        return ""
    if proto == 132:
        return ""           # FlowTarget does not key or record SCTP ports
    try:
        if proto == 1 or proto == 58:
            if icmp_type is None or icmp_code is None:
                return ""   # not known (e.g. an event of an older producer)
            return community_id(src_ip, dst_ip, proto, icmp_type, icmp_code, seed)
        if proto in _PORTED:
            return community_id(src_ip, dst_ip, proto, src_port, dst_port, seed)
        return community_id(src_ip, dst_ip, proto, None, None, seed)
    except ValueError:
        return ""
