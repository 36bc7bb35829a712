"""Flows identified by their IP protocol alone (nDPI reports these as
protocols): ICMP, ICMPv6, IGMP, PIM, SCTP, GRE, OSPF, VRRP, ESP/AH are in vpn.py.

The transport is what nDPI prints (ICMP, ICMPV6, IGMP, ...) or the IP protocol
number as text; both spellings are accepted.
"""

from __future__ import annotations

from shared.models import FlowSample, Verdict
from services.classify.dissectors.base import Dissector, Match

_BY_TRANSPORT = {
    "ICMP": "ICMP", "1": "ICMP",
    "ICMPV6": "ICMPV6", "58": "ICMPV6", "IPV6-ICMP": "ICMPV6",
    "IGMP": "IGMP", "2": "IGMP",
    "PIM": "IP_PIM", "103": "IP_PIM",
    "SCTP": "SCTP", "132": "SCTP",
    "GRE": "GRE", "47": "GRE",
    "OSPF": "OSPF", "89": "OSPF",
    "VRRP": "VRRP", "112": "VRRP",
    "PGM": "PGM", "113": "PGM",
    "EGP": "EGP", "8": "EGP",
    "4": "IP_in_IP", "41": "IP_in_IP",
}


class IPProtocol(Dissector):
    name = "ICMP"
    transports = frozenset(_BY_TRANSPORT)
    ports = frozenset()

    def could_be(self, s: FlowSample) -> bool:
        return s.transport in _BY_TRANSPORT

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        name = _BY_TRANSPORT.get(s.transport)
        if not name:
            return Match.NO
        v.app_protocol = name
        return Match.FINAL


DISSECTORS = [IPProtocol()]
