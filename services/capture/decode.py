"""Fast, struct-based frame decoder for the capture hot path.

``decode(frame, datalink)`` never raises.  It returns a compact tuple whose
first item is the kind:

``KIND_IP`` (0) — a packet that belongs to an IP flow::

    (0, ip_version, proto, src, dst, sport, dport, ip_bytes, payload_off,
     payload_len, tcp_flags, seq, ack, vlan, vlan_ids, mac_off, tunnel,
     frag, frag_id)

  ``src``/``dst`` are the packed address bytes (4 or 16); formatting them as
  text is left to flow creation, once per flow.  ``ip_bytes`` is the IP-layer
  size (header and payload, from the IP header: what nDPI and NFStream count).
  ``payload_off``/``payload_len`` locate the L4 payload inside ``frame``
  (clamped to what was captured).  ``vlan`` is a flow-key integer made of the
  VLAN tags (0 when untagged; the outermost id is ``vlan_ids[0]``).  ``mac_off``
  is the offset of the Ethernet header whose MACs describe the packet (-1
  when the link has no MACs).  ``tunnel`` names the outer encapsulation that
  was removed ('' when none).  ``frag`` is 0 for unfragmented packets, 1 for
  the first fragment of a fragmented datagram (it carries the L4 header) and
  2 for a later fragment (ports unknown: the meter maps it to its flow by
  ``(src, dst, frag_id, proto)``).

``KIND_ARP`` (1): ``(1, arp_off, vlan, vlan_ids, mac_off)`` — a well-formed
  Ethernet/IPv4 ARP packet at ``arp_off``.

``KIND_L2`` (2): ``(2, name)`` — a recognised non-IP protocol that is counted
  and not metered (stp, lldp, cdp, lacp, ...).

``KIND_BAD`` (3): ``(3, category)`` — truncated or malformed; exactly one
  category per packet (truncated_l2, truncated_ip, bad_ip_version,
  bad_ip_header, truncated_l4, bad_tcp_header, bad_arp, ...).

``KIND_UNSUPPORTED`` (4): ``(4, category)`` — a link type or protocol the
  decoder does not handle (dlt_N, ethertype, ieee802_11_protected, ...).

IP protocols without ports (ICMP, ICMPv6, SCTP as nDPI keys it, GRE that is
not decapsulated, ...) get ports 0, the way nDPI keys them.  Tunnels: GRE
(incl. ERSPAN and PPTP's enhanced GRE), IP-in-IP / 6in4 / 6in6, VXLAN (UDP
4789), GTP-U (UDP 2152), TZSP (UDP 37008) and CAPWAP data (UDP 5247) are
removed so that the inner flow is metered; when the inner packet cannot be
decoded, the outer packet is metered as it is.

``tunnel_outer(frame, datalink)`` (once per flow, not per packet): the outer
tunnel's endpoints and id of a frame ``decode`` decapsulated — ``(outer src
address, outer dst address, tunnel id)`` as packed bytes and an int (GRE key,
or PPTP's call id; VXLAN VNI; GTP-U TEID; 0 for IP-in-IP and tunnels without
an id), or None.  With nested tunnels, the outermost one.

``tunnel_frame(frame, datalink)`` (per packet of a GRE/VXLAN tunnel only): the
frame decoded with its GRE or VXLAN tunnel kept, so that the meter can meter
the tunnel's own flow too (``OUTER_FLOW_TUNNELS``).
"""

from __future__ import annotations

import socket
import struct

__all__ = [
    "KIND_IP", "KIND_ARP", "KIND_L2", "KIND_BAD", "KIND_UNSUPPORTED", "decode",
    "transport_name", "format_ip", "format_mac", "BAD_CATEGORIES", "tunnel_outer", "tunnel_frame",
    "OUTER_FLOW_TUNNELS",
]

KIND_IP = 0
KIND_ARP = 1
KIND_L2 = 2
KIND_BAD = 3
KIND_UNSUPPORTED = 4

BAD_CATEGORIES = (
    "truncated_l2", "bad_l2_header", "truncated_ip", "bad_ip_version", "bad_ip_header",
    "truncated_l4", "bad_tcp_header", "bad_arp", "too_many_headers",
)

_PROTO_NUM_TO_NAME = {
    1: "ICMP", 2: "IGMP", 6: "TCP", 17: "UDP", 47: "GRE", 50: "ESP", 51: "AH",
    58: "ICMPV6", 89: "OSPF", 103: "PIM", 112: "VRRP", 113: "PGM", 132: "SCTP",
}


def transport_name(proto: int) -> str:
    """nDPI's name of an IP protocol, or the number as text."""
    return _PROTO_NUM_TO_NAME.get(proto) or str(proto)


_u16 = struct.Struct("!H").unpack_from
_u32 = struct.Struct("!I").unpack_from
_ports = struct.Struct("!HH").unpack_from
_tcp = struct.Struct("!HHIIBB").unpack_from
_ip4 = struct.Struct("!BBHHHBB").unpack_from  # ver_ihl tos tot_len id frag ttl proto
_ip6 = struct.Struct("!HBB").unpack_from  # payload_len next_hdr hop_limit (from off+4)
_le32 = struct.Struct("<I").unpack_from
_le16 = struct.Struct("<H").unpack_from

# fixed results (no allocation per bad packet)
_BAD_TRUNC_L2 = (KIND_BAD, "truncated_l2")
_BAD_L2 = (KIND_BAD, "bad_l2_header")
_BAD_TRUNC_IP = (KIND_BAD, "truncated_ip")
_BAD_IP_VER = (KIND_BAD, "bad_ip_version")
_BAD_IP_HDR = (KIND_BAD, "bad_ip_header")
_BAD_TRUNC_L4 = (KIND_BAD, "truncated_l4")
_BAD_TCP = (KIND_BAD, "bad_tcp_header")
_BAD_ARP = (KIND_BAD, "bad_arp")
_BAD_DEEP = (KIND_BAD, "too_many_headers")

_L2_NAMES = {
    0x88CC: "lldp", 0x8809: "slow_protocols", 0x888E: "eapol", 0x88F7: "ptp", 0x88E5: "macsec",
    0x8863: "pppoe_discovery", 0x8035: "rarp", 0x9000: "loopback", 0x88E1: "homeplug",
    0x893A: "ieee1905", 0x8899: "realtek", 0x88B5: "local_experimental", 0x22F0: "avb",
    0x88A4: "ethercat", 0x8892: "profinet", 0x88E3: "mrp", 0x891D: "tte", 0x6002: "dec_mop",
    0x6003: "decnet", 0x809B: "appletalk", 0x80F3: "aarp", 0x8137: "ipx", 0x88BA: "iec61850_sv",
    0x88B8: "goose", 0x8902: "cfm", 0x22E7: "cisco_fabricpath",
}
_L2_RESULTS = {k: (KIND_L2, v) for k, v in _L2_NAMES.items()}
_UNSUP_ETHERTYPE = (KIND_UNSUPPORTED, "ethertype")
_UNSUP_LLC = (KIND_L2, "llc")
_L2_STP = (KIND_L2, "stp")
_L2_CDP = (KIND_L2, "cdp")
_L2_VTP = (KIND_L2, "cisco_l2")
_UNSUP_80211 = (KIND_UNSUPPORTED, "ieee802_11_protected")
_L2_80211_MGMT = (KIND_L2, "ieee802_11_nondata")
_L2_80211_NULL = (KIND_L2, "ieee802_11_null")
_UNSUP_PPP = (KIND_UNSUPPORTED, "ppp_protocol")
_UNSUP_NULLFAM = (KIND_UNSUPPORTED, "null_family")
_UNSUP_SLL = (KIND_UNSUPPORTED, "sll_protocol")
_UNSUP_DLT: dict[int, tuple[int, str]] = {}

_VLAN_TYPES = frozenset((0x8100, 0x88A8, 0x9100, 0x9200))
_MAX_DEPTH = 6


def _unsup_dlt(dlt: int) -> tuple[int, str]:
    r = _UNSUP_DLT.get(dlt)
    if r is None:
        if len(_UNSUP_DLT) < 256:
            r = _UNSUP_DLT[dlt] = (KIND_UNSUPPORTED, f"dlt_{dlt}")
        else:
            r = (KIND_UNSUPPORTED, "dlt_other")
    return r


# --------------------------------------------------------------------------- L2


def _ether(frame: bytes, off: int, depth: int, tunnel: str):
    """Ethernet header at ``off`` (with VLAN/MPLS/PPPoE/LLC) → IP/ARP decode."""
    if len(frame) - off < 14:
        return _BAD_TRUNC_L2
    return _after_ethertype(frame, off + 14, (frame[off + 12] << 8) | frame[off + 13], off, tunnel, depth)


def _after_ethertype(frame, off, et, mac_off, tunnel, depth):
    """What follows an ethertype at ``off``: 802.1Q/QinQ tags (up to 8), then IP, ARP or other L2."""
    vlan = 0
    vlans: tuple[int, ...] = ()
    if et in _VLAN_TYPES:
        n = len(frame)
        vl = []
        while et in _VLAN_TYPES:
            if n - off < 4:
                return _BAD_TRUNC_L2
            vid = ((frame[off] << 8) | frame[off + 1]) & 0x0FFF
            vl.append(vid)
            vlan = (vlan << 12) | vid if vlan else vid
            et = (frame[off + 2] << 8) | frame[off + 3]
            off += 4
            if len(vl) > 8:
                return _BAD_DEEP
        vlans = tuple(vl)
        if vlan > 0xFFFFFFFFFFFF:
            vlan &= 0xFFFFFFFFFFFF
    if et == 0x0800:
        return _ip4_decode(frame, off, vlan, vlans, mac_off, tunnel, depth)
    if et == 0x86DD:
        return _ip6_decode(frame, off, vlan, vlans, mac_off, tunnel, depth)
    return _ether_other(frame, off, et, vlan, vlans, mac_off, tunnel, depth)


def _ether_other(frame, off, et, vlan, vlans, mac_off, tunnel, depth):
    n = len(frame)
    if et == 0x0806:
        if n - off < 28:
            return _BAD_ARP
        if frame[off:off + 6] != b"\x00\x01\x08\x00\x06\x04":
            return _BAD_ARP
        return (KIND_ARP, off, vlan, vlans, mac_off)
    if et == 0x8847 or et == 0x8848:  # MPLS label stack
        while True:
            if n - off < 4:
                return _BAD_TRUNC_L2
            bos = frame[off + 2] & 1
            off += 4
            if bos:
                break
            if off - mac_off > 14 + 4 * 16:
                return _BAD_DEEP
        if n - off < 1:
            return _BAD_TRUNC_IP
        v = frame[off] >> 4
        if v == 4:
            return _ip4_decode(frame, off, vlan, vlans, mac_off, tunnel, depth)
        if v == 6:
            return _ip6_decode(frame, off, vlan, vlans, mac_off, tunnel, depth)
        if v == 0 and n - off >= 4 + 14 and depth < _MAX_DEPTH:
            # pseudowire control word followed by Ethernet
            r = _ether(frame, off + 4, depth + 1, tunnel or "MPLS")
            return r
        return _BAD_IP_VER
    if et == 0x8864:  # PPPoE session
        if n - off < 8:
            return _BAD_TRUNC_L2
        ppp = (frame[off + 6] << 8) | frame[off + 7]
        off += 8
        if ppp == 0x0021:
            return _ip4_decode(frame, off, vlan, vlans, mac_off, tunnel, depth)
        if ppp == 0x0057:
            return _ip6_decode(frame, off, vlan, vlans, mac_off, tunnel, depth)
        return (KIND_L2, "pppoe_control")
    if et <= 1500:  # IEEE 802.3 length field: LLC
        if n - off < 3:
            return _BAD_TRUNC_L2
        dsap = frame[off]
        if dsap == 0x42:
            return _L2_STP
        if dsap == 0xAA and n - off >= 8:  # SNAP
            oui = frame[off + 3:off + 6]
            ptype = (frame[off + 6] << 8) | frame[off + 7]
            if oui == b"\x00\x00\x0c":
                if ptype == 0x2000:
                    return _L2_CDP
                return _L2_VTP
            if oui == b"\x00\x00\x00":
                if ptype == 0x0800:
                    return _ip4_decode(frame, off + 8, vlan, vlans, mac_off, tunnel, depth)
                if ptype == 0x86DD:
                    return _ip6_decode(frame, off + 8, vlan, vlans, mac_off, tunnel, depth)
                if ptype == 0x0806:
                    return _ether_other(frame, off + 8, 0x0806, vlan, vlans, mac_off, tunnel, depth)
        return _UNSUP_LLC
    r = _L2_RESULTS.get(et)
    if r is not None:
        return r
    return _UNSUP_ETHERTYPE


# --------------------------------------------------------------------------- IPv4


def _ip4_decode(frame, off, vlan, vlans, mac_off, tunnel, depth):
    n = len(frame)
    if n - off < 20:
        return _BAD_TRUNC_IP
    vihl, _tos, tot, ipid, fragw, _ttl, proto = _ip4(frame, off)
    if vihl >> 4 != 4:
        return _BAD_IP_VER
    hl = (vihl & 15) << 2
    if hl < 20:
        return _BAD_IP_HDR
    if tot == 0:  # TSO / offloaded: length from the capture
        tot = n - off
    if tot < hl:
        return _BAD_IP_HDR
    if n - off < hl:
        return _BAD_TRUNC_IP
    end = off + tot
    if end > n:
        end = n
    l4 = off + hl
    src = frame[off + 12:off + 16]
    dst = frame[off + 16:off + 20]
    fo = fragw & 0x1FFF
    if fo:
        # a later fragment: no L4 header, the meter maps it by (src, dst, id, proto)
        return (KIND_IP, 4, proto, src, dst, 0, 0, tot, l4, end - l4, 0, 0, 0, vlan, vlans, mac_off, tunnel, 2, ipid)
    frag = 1 if fragw & 0x2000 else 0
    return _l4(frame, 4, proto, src, dst, tot, l4, end, vlan, vlans, mac_off, tunnel, depth, frag, ipid)


# --------------------------------------------------------------------------- IPv6

_EXT_SIMPLE = frozenset((0, 43, 60, 135, 139, 140, 253, 254))


def _ip6_decode(frame, off, vlan, vlans, mac_off, tunnel, depth):
    n = len(frame)
    if n - off < 40:
        return _BAD_TRUNC_IP
    if frame[off] >> 4 != 6:
        return _BAD_IP_VER
    plen, nh, _hl = _ip6(frame, off + 4)
    tot = plen + 40
    if plen == 0:  # jumbogram or offloaded: use the capture
        tot = n - off
    end = off + tot
    if end > n:
        end = n
    src = frame[off + 8:off + 24]
    dst = frame[off + 24:off + 40]
    l4 = off + 40
    frag = 0
    fid = 0
    hops = 0
    while True:
        if nh in _EXT_SIMPLE:
            if end - l4 < 8:
                return _BAD_TRUNC_L4
            nh2 = frame[l4]
            l4 += (frame[l4 + 1] + 1) << 3
            nh = nh2
        elif nh == 44:  # fragment
            if end - l4 < 8:
                return _BAD_TRUNC_L4
            nh2 = frame[l4]
            fow = (frame[l4 + 2] << 8) | frame[l4 + 3]
            fid = _u32(frame, l4 + 4)[0]
            l4 += 8
            nh = nh2
            if fow & 0xFFF8:
                if l4 > end:
                    l4 = end
                return (KIND_IP, 6, nh, src, dst, 0, 0, tot, l4, end - l4, 0, 0, 0, vlan, vlans, mac_off, tunnel, 2, fid)
            if fow & 1:
                frag = 1
        elif nh == 51:  # AH
            if end - l4 < 8:
                return _BAD_TRUNC_L4
            nh2 = frame[l4]
            l4 += (frame[l4 + 1] + 2) << 2
            nh = nh2
        else:
            break
        hops += 1
        if hops > 16:
            return _BAD_DEEP
        if l4 > end:
            return _BAD_TRUNC_L4
    return _l4(frame, 6, nh, src, dst, tot, l4, end, vlan, vlans, mac_off, tunnel, depth, frag, fid)


# --------------------------------------------------------------------------- L4


def _l4(frame, ver, proto, src, dst, tot, l4, end, vlan, vlans, mac_off, tunnel, depth, frag, fid):
    avail = end - l4
    if proto == 6:
        if avail < 20:
            if avail < 4 and frag:
                return _BAD_TRUNC_L4
            return _BAD_TRUNC_L4
        sport, dport, seq, ack, doff, flags = _tcp(frame, l4)
        hl = (doff >> 4) << 2
        if hl < 20:
            return _BAD_TCP
        po = l4 + hl
        pl = end - po
        if pl < 0:
            return _BAD_TCP
        return (KIND_IP, ver, 6, src, dst, sport, dport, tot, po, pl, flags, seq, ack, vlan, vlans, mac_off, tunnel, frag, fid)
    if proto == 17:
        if avail < 8:
            return _BAD_TRUNC_L4
        sport, dport = _ports(frame, l4)
        po = l4 + 8
        if (sport in _UDP_TUNNEL_PORTS or dport in _UDP_TUNNEL_PORTS) and depth < _MAX_DEPTH and not frag:
            r = _udp_tunnel(frame, po, end, sport, dport, vlan, vlans, mac_off, depth)
            if r is not None:
                if _outer is not None:   # tunnel_outer() is asking (once per flow)
                    _note_outer(src, dst, _udp_tunnel_id(frame, po, end, sport, dport))
                return r
        return (KIND_IP, ver, 17, src, dst, sport, dport, tot, po, end - po, 0, 0, 0, vlan, vlans, mac_off, tunnel, frag, fid)
    if proto == 4 or proto == 41:  # IPv4 / IPv6 in IP
        if depth < _MAX_DEPTH and not frag:
            if proto == 4:
                r = _ip4_decode(frame, l4, vlan, vlans, mac_off, "IP-in-IP", depth + 1)
            else:
                r = _ip6_decode(frame, l4, vlan, vlans, mac_off, "IP-in-IP", depth + 1)
            if r[0] == KIND_IP:
                if _outer is not None:
                    _note_outer(src, dst, 0)
                return r
    elif proto == 47 and depth < _MAX_DEPTH and not frag:
        r = None if _keep_outer else _gre(frame, l4, end, vlan, vlans, mac_off, depth)
        if r is not None:
            if _outer is not None:
                _note_outer(src, dst, _gre_key(frame, l4, end))
            return r
    elif proto == 132:
        if avail < 12:
            return _BAD_TRUNC_L4
    elif proto == 1 or proto == 58:
        if avail < 4:
            return _BAD_TRUNC_L4
    # ICMP, ICMPv6, SCTP, IGMP, ESP, AH (IPv4), OSPF, VRRP, PIM, ...: no ports, as nDPI keys them
    return (KIND_IP, ver, proto, src, dst, 0, 0, tot, l4, avail, 0, 0, 0, vlan, vlans, mac_off, tunnel, frag, fid)


_UDP_TUNNEL_PORTS = frozenset((4789, 2152, 37008, 5247))

# tunnel_outer(): while it re-decodes a frame, the list the tunnel branches write the outer
# endpoints to (None otherwise: the per-packet path only tests it in the tunnel branches)
_outer: list | None = None


def _note_outer(src: bytes, dst: bytes, tid: int) -> None:
    # the outer tunnel is decapsulated first but noted last (after its inner packet returned):
    # each note replaces the previous one, so the outermost stays
    if _outer is not None:
        _outer[:] = [(src, dst, tid)]


def _udp_tunnel_id(frame, po, end, sport, dport) -> int:
    if end - po < 8:
        return 0
    if dport == 2152 or sport == 2152:  # GTP-U TEID
        return _u32(frame, po + 4)[0]
    if dport == 4789 or sport == 4789:  # VXLAN VNI
        return _u32(frame, po + 4)[0] >> 8
    return 0


def _gre_key(frame, l4, end) -> int:
    f0 = frame[l4]
    ver = frame[l4 + 1] & 7
    off = l4 + 4
    if ver == 1:  # enhanced GRE (PPTP): payload length + call id
        return _u16(frame, off + 2)[0] if end - off >= 4 else 0
    if not f0 & 0x20:  # no key
        return 0
    if f0 & 0xC0:
        off += 4
    return _u32(frame, off)[0] if end - off >= 4 else 0


def tunnel_outer(frame: bytes, dlt: int) -> tuple[bytes, bytes, int] | None:
    """The outer tunnel of a frame decode() decapsulates: (outer src, outer dst, tunnel id), or None."""
    global _outer
    _outer = []
    try:
        decode(frame, dlt)
        return _outer[0] if _outer else None
    finally:
        _outer = None


# tunnel_frame(): while it re-decodes a frame, GRE and VXLAN are not decapsulated (False otherwise;
# only their tunnel branches test it)
_keep_outer = False

# tunnels whose own (outer) flow is metered besides the inner one: tools built on nDPI that do not
# decapsulate them (NFStream) report the outer GRE or UDP 4789 flow as GRE / VXLAN, and Zeek logs
# the tunnel's connection too; GTP, TZSP, CAPWAP and IP-in-IP are decapsulated by all of them
OUTER_FLOW_TUNNELS = frozenset(("GRE", "ERSPAN", "VXLAN"))


def tunnel_frame(frame: bytes, dlt: int):
    """decode() of a frame without decapsulating its GRE or VXLAN tunnel: the tunnel's own packet
    (an outer tunnel that decode() does not decapsulate, e.g. GTP, still is)."""
    global _keep_outer
    _keep_outer = True
    try:
        return decode(frame, dlt)
    finally:
        _keep_outer = False


def _inner_ip(frame, off, end, vlan, vlans, mac_off, tunnel, depth):
    if off >= end:
        return None
    v = frame[off] >> 4
    if v == 4:
        r = _ip4_decode(frame, off, vlan, vlans, mac_off, tunnel, depth + 1)
    elif v == 6:
        r = _ip6_decode(frame, off, vlan, vlans, mac_off, tunnel, depth + 1)
    else:
        return None
    return r if r[0] == KIND_IP else None


def _inner_ether(frame, off, end, depth, tunnel):
    if end - off < 14:
        return None
    r = _ether(frame[:end], off, depth + 1, tunnel)
    return r if r[0] == KIND_IP else None


def _udp_tunnel(frame, po, end, sport, dport, vlan, vlans, mac_off, depth):
    if dport == 2152 or sport == 2152:  # GTP-U
        if end - po < 8:
            return None
        flags = frame[po]
        if flags >> 5 != 1 or frame[po + 1] != 0xFF:  # version 1, G-PDU
            return None
        off = po + 8
        if flags & 0x07:
            if end - off < 4:
                return None
            ext = frame[off + 3] if flags & 0x04 else 0
            off += 4
            hops = 0
            while ext:
                if end - off < 1:
                    return None
                ln = frame[off] * 4
                if ln == 0 or end - off < ln:
                    return None
                ext = frame[off + ln - 1]
                off += ln
                hops += 1
                if hops > 8:
                    return None
        return _inner_ip(frame, off, end, vlan, vlans, mac_off, "GTP", depth)
    if dport == 4789 or sport == 4789:  # VXLAN
        if end - po < 8 + 14 or not frame[po] & 0x08 or _keep_outer:
            return None
        return _inner_ether(frame, po + 8, end, depth, "VXLAN")
    if dport == 37008 or sport == 37008:  # TZSP
        if end - po < 5 or frame[po] != 1:
            return None
        encap = (frame[po + 2] << 8) | frame[po + 3]
        off = po + 4
        while off < end:  # tagged fields until END (1)
            t = frame[off]
            if t == 1:
                off += 1
                break
            if t == 0:
                off += 1
                continue
            if end - off < 2:
                return None
            off += 2 + frame[off + 1]
        if encap == 1:
            return _inner_ether(frame, off, end, depth, "TZSP")
        return None
    if dport == 5247 or sport == 5247:  # CAPWAP data
        if end - po < 8:
            return None
        if frame[po] != 0:  # preamble: version 0, type 0
            return None
        hlen = ((frame[po + 1] << 8 | frame[po + 2]) >> 11) & 0x1F
        wbid = (frame[po + 2] >> 1) & 0x1F
        tbit = frame[po + 2] & 1
        off = po + hlen * 4
        if hlen < 2 or off >= end:
            return None
        if tbit and wbid == 1:  # native IEEE 802.11 frame
            return _inner_80211(frame, off, end, vlan, vlans, depth, "CAPWAP")
        return _inner_ether(frame, off, end, depth, "CAPWAP")
    return None


def _inner_80211(frame, off, end, vlan, vlans, depth, tunnel):
    """An IEEE 802.11 data frame with an LLC/SNAP header carrying IP.

    Some access points put the frame control field in the wrong byte order, so
    the header length is found by looking for the LLC/SNAP header at the
    possible offsets (24: data, 26: QoS data, 30: 4 addresses, 32: both).
    """
    for hl in (24, 26, 30, 32):
        o = off + hl
        if end - o < 9:
            return None
        if frame[o] == 0xAA and frame[o + 1] == 0xAA and frame[o + 2] == 0x03:
            et = (frame[o + 6] << 8) | frame[o + 7]
            if et == 0x0800 or et == 0x86DD:
                return _inner_ip(frame, o + 8, end, vlan, vlans, -1, tunnel, depth)
            return None
    return None


def _gre(frame, l4, end, vlan, vlans, mac_off, depth):
    if end - l4 < 4:
        return None
    f0 = frame[l4]
    ver = frame[l4 + 1] & 7
    ptype = (frame[l4 + 2] << 8) | frame[l4 + 3]
    off = l4 + 4
    if ver == 0:
        if f0 & 0xC0:  # checksum or routing present
            off += 4
        if f0 & 0x20:  # key
            off += 4
        if f0 & 0x10:  # sequence
            off += 4
    elif ver == 1:  # enhanced GRE (PPTP)
        off += 4  # key (payload length + call id)
        if f0 & 0x10:
            off += 4
        if frame[l4 + 1] & 0x80:  # ack
            off += 4
    else:
        return None
    if off >= end:
        return None
    if ptype == 0x0800 or ptype == 0x86DD:
        return _inner_ip(frame, off, end, vlan, vlans, mac_off, "GRE", depth)
    if ptype == 0x6558:  # transparent Ethernet bridging
        return _inner_ether(frame, off, end, depth, "GRE")
    if ptype == 0x88BE:  # ERSPAN type II (type I has no header when S is clear)
        if f0 & 0x10:
            return _inner_ether(frame, off + 8, end, depth, "ERSPAN")
        return _inner_ether(frame, off, end, depth, "ERSPAN")
    if ptype == 0x22EB:  # ERSPAN type III
        if end - off < 12:
            return None
        o = off + 12
        if frame[off + 11] & 1:  # optional platform sub-header
            o += 8
        return _inner_ether(frame, o, end, depth, "ERSPAN")
    if ptype == 0x880B:  # PPP (PPTP)
        o = off
        if end - o >= 2 and frame[o] == 0xFF and frame[o + 1] == 0x03:
            o += 2
        if end - o < 1:
            return None
        if frame[o] & 1:  # 1-byte protocol field (compressed)
            pp = frame[o]
            o += 1
        else:
            if end - o < 2:
                return None
            pp = (frame[o] << 8) | frame[o + 1]
            o += 2
        if pp == 0x21 or pp == 0x57:
            return _inner_ip(frame, o, end, vlan, vlans, mac_off, "GRE", depth)
        return None
    if ptype == 0x8847:
        return _inner_mpls(frame, off, end, vlan, vlans, mac_off, depth)
    return None


def _inner_mpls(frame, off, end, vlan, vlans, mac_off, depth):
    for _ in range(16):
        if end - off < 4:
            return None
        bos = frame[off + 2] & 1
        off += 4
        if bos:
            return _inner_ip(frame, off, end, vlan, vlans, mac_off, "GRE", depth)
    return None


# --------------------------------------------------------------------------- entry


_fast4 = struct.Struct("!HHH").unpack_from  # total length, id, flags+fragment offset (at 16)


def decode(frame: bytes, dlt: int):
    """Decode one frame of link type ``dlt``; never raises (see module doc)."""
    try:
        if dlt == 1:
            n = len(frame)
            if n < 14:
                return _BAD_TRUNC_L2
            if frame[12] == 8 and frame[13] == 0:
                # fast path: untagged Ethernet, IPv4 without options, not fragmented, TCP/UDP
                # (anything unusual falls through to the general decoder below)
                if n >= 42 and frame[14] == 0x45:
                    tot, ipid, fragw = _fast4(frame, 16)
                    if not fragw & 0x3FFF and tot >= 20:
                        end = 14 + tot
                        if end > n:
                            end = n
                        proto = frame[23]
                        if proto == 6:
                            if end >= 54:
                                sport, dport, seq, ack, doff, flags = _tcp(frame, 34)
                                po = 34 + ((doff >> 4) << 2)
                                if po >= 54 and po <= end:
                                    return (KIND_IP, 4, 6, frame[26:30], frame[30:34], sport, dport, tot, po,
                                            end - po, flags, seq, ack, 0, (), 0, "", 0, ipid)
                        elif proto == 17 and end >= 42:
                            sport, dport = _ports(frame, 34)
                            if sport not in _UDP_TUNNEL_PORTS and dport not in _UDP_TUNNEL_PORTS:
                                return (KIND_IP, 4, 17, frame[26:30], frame[30:34], sport, dport, tot, 42,
                                        end - 42, 0, 0, 0, 0, (), 0, "", 0, ipid)
                return _ip4_decode(frame, 14, 0, (), 0, "", 0)
            et = (frame[12] << 8) | frame[13]
            if et == 0x86DD:
                return _ip6_decode(frame, 14, 0, (), 0, "", 0)
            return _ether(frame, 0, 0, "")
        return _decode_other(frame, dlt)
    except (IndexError, struct.error):  # defensive: a bound check this code missed
        return _BAD_L2


def _raw(frame, off):
    if len(frame) - off < 1:
        return _BAD_TRUNC_IP
    v = frame[off] >> 4
    if v == 4:
        return _ip4_decode(frame, off, 0, (), -1, "", 0)
    if v == 6:
        return _ip6_decode(frame, off, 0, (), -1, "", 0)
    return _BAD_IP_VER


def _ppp_proto(frame, off, pp):
    if pp == 0x0021:
        return _ip4_decode(frame, off, 0, (), -1, "", 0)
    if pp == 0x0057:
        return _ip6_decode(frame, off, 0, (), -1, "", 0)
    if pp == 0x0281:
        return _ether_other(frame, off, 0x8847, 0, (), -1, "", 0)
    return _UNSUP_PPP


def _decode_other(frame: bytes, dlt: int):
    n = len(frame)
    if dlt == 12 or dlt == 14 or dlt == 101:
        return _raw(frame, 0)
    if dlt == 228:
        return _ip4_decode(frame, 0, 0, (), -1, "", 0)
    if dlt == 229:
        return _ip6_decode(frame, 0, 0, (), -1, "", 0)
    if dlt == 113:  # Linux cooked v1
        if n < 16:
            return _BAD_TRUNC_L2
        et = (frame[14] << 8) | frame[15]
        return _sll_payload(frame, 16, et)
    if dlt == 276:  # Linux cooked v2
        if n < 20:
            return _BAD_TRUNC_L2
        et = (frame[0] << 8) | frame[1]
        return _sll_payload(frame, 20, et)
    if dlt == 0 or dlt == 108:  # BSD loopback: address family, host or network order
        if n < 4:
            return _BAD_TRUNC_L2
        fam = _le32(frame, 0)[0] if frame[0] else _u32(frame, 0)[0]
        if fam == 2:
            return _ip4_decode(frame, 4, 0, (), -1, "", 0)
        if fam in (10, 24, 28, 30):
            return _ip6_decode(frame, 4, 0, (), -1, "", 0)
        return _UNSUP_NULLFAM
    if dlt == 9 or dlt == 50 or dlt == 104:  # PPP, PPP in HDLC framing, Cisco HDLC
        if n < 2:
            return _BAD_TRUNC_L2
        b0 = frame[0]
        if b0 == 0xFF and frame[1] == 0x03:
            if n < 4:
                return _BAD_TRUNC_L2
            return _ppp_proto(frame, 4, (frame[2] << 8) | frame[3])
        if b0 == 0x0F or b0 == 0x8F:  # Cisco HDLC: ethertype
            if n < 4:
                return _BAD_TRUNC_L2
            et = (frame[2] << 8) | frame[3]
            if et == 0x0800:
                return _ip4_decode(frame, 4, 0, (), -1, "", 0)
            if et == 0x86DD:
                return _ip6_decode(frame, 4, 0, (), -1, "", 0)
            if et == 0x8035:
                return (KIND_L2, "slarp")
            return (KIND_L2, "cisco_hdlc")
        if b0 & 1:
            return _ppp_proto(frame, 1, b0)
        return _ppp_proto(frame, 2, (b0 << 8) | frame[1])
    if dlt == 192:  # PPI
        if n < 8:
            return _BAD_TRUNC_L2
        hl = _le16(frame, 2)[0]
        inner = _le32(frame, 4)[0]
        if hl < 8 or hl > n or inner == 192:
            return _BAD_L2
        return decode(frame[hl:], inner)
    if dlt == 127:  # radiotap header, then an 802.11 frame
        if n < 8 or frame[0] != 0:
            return _BAD_L2 if n >= 8 else _BAD_TRUNC_L2
        hl = _le16(frame, 2)[0]
        if hl < 8 or hl > n:
            return _BAD_L2
        return _ieee80211(frame, hl)
    if dlt == 105:
        return _ieee80211(frame, 0)
    if dlt == 163:  # AVS: big-endian header length at offset 4, then 802.11
        if n < 8:
            return _BAD_TRUNC_L2
        hl = _u32(frame, 4)[0]
        if hl < 8 or hl > n:
            return _BAD_L2
        return _ieee80211(frame, hl)
    return _unsup_dlt(dlt)


_LLC_SNAP = b"\xaa\xaa\x03"


def _ieee80211(frame, off):
    """IEEE 802.11 MAC frame at ``off``: a data frame's body after its LLC/SNAP header (the
    ethertype) is decoded as Ethernet's payload would be.  Management, control, null-data and
    protected (encrypted) frames carry nothing to meter.  A trailing FCS (radiotap flag 0x10) is
    left in place: IP and ARP are bounded by their own lengths, and captures that set the flag
    without the 4 bytes exist."""
    n = len(frame)
    if n - off < 24:
        return _BAD_TRUNC_L2
    fc0, fc1 = frame[off], frame[off + 1]
    if fc0 & 0x03:                          # protocol version 0 only
        return _BAD_L2
    if (fc0 >> 2) & 0x03 != 2:              # not a data frame
        return _L2_80211_MGMT               # management, control, extension
    subtype = fc0 >> 4
    if subtype & 0x04:                      # null function / QoS null: no body
        return _L2_80211_NULL
    if fc1 & 0x40:                          # protected frame: encrypted body
        return _UNSUP_80211
    hl = 24
    if fc1 & 0x03 == 0x03:                  # to and from DS: a fourth address
        hl += 6
    if subtype & 0x08:                      # QoS data: QoS control, and HT control with the order bit
        hl += 2
        if fc1 & 0x80:
            hl += 4
    body = off + hl
    if n - body < 8:
        return _BAD_TRUNC_L2
    if frame[body:body + 3] != _LLC_SNAP:
        return _UNSUP_LLC
    et = (frame[body + 6] << 8) | frame[body + 7]
    # addresses 1 and 2 are destination and source only between stations (neither DS bit)
    mac_off = off + 4 if not fc1 & 0x03 else -1
    return _after_ethertype(frame, body + 8, et, mac_off, "", 0)


def _sll_payload(frame, off, et):
    if et == 0x0800:
        return _ip4_decode(frame, off, 0, (), -1, "", 0)
    if et == 0x86DD:
        return _ip6_decode(frame, off, 0, (), -1, "", 0)
    if et in _VLAN_TYPES or et == 0x8847 or et == 0x8848 or et == 0x8864 or et == 0x0806:
        # the cooked header ends with an ethertype, as Ethernet's does (no MAC addresses)
        return _after_ethertype(frame, off, et, -1, "", 0)
    if et == 0x0004:
        return (KIND_L2, "llc")
    return _L2_RESULTS.get(et) or _UNSUP_SLL


# --------------------------------------------------------------------------- formatting (once per flow)

_AF4, _AF6 = socket.AF_INET, socket.AF_INET6
_ntop = socket.inet_ntop


def format_mac(frame: bytes, off: int) -> str:
    """aa:bb:cc:dd:ee:ff of the 6 bytes at ``off`` ('' when off < 0 or out of range)."""
    if off < 0 or len(frame) < off + 6:
        return ""
    return frame[off:off + 6].hex(":")


def format_ip(addr: bytes) -> str:
    """Text form of a packed IPv4/IPv6 address (RFC 5952 for IPv6)."""
    try:
        return _ntop(_AF4 if len(addr) == 4 else _AF6, addr)
    except (ValueError, OSError):
        return addr.hex()
