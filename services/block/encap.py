"""Frames as block's capture sees them, and injected frames encapsulated the same way.

One decoder: every frame is decoded by capture's ``services.capture.decode``
(VLAN/QinQ, MPLS, PPPoE, GRE, VXLAN, GTP-U, IP-in-IP, ERSPAN, TZSP, CAPWAP),
so block judges the flow *inside* a tunnel by its inner addresses, ports and
sequence numbers, exactly as capture meters it.

Everything in front of the inner IP header (outer Ethernet, VLAN tags, outer
IP, UDP/GRE/GTP headers, the inner Ethernet of VXLAN) is the frame's
*encapsulation*.  block keeps the latest encapsulation seen in each direction
of a flow and wraps what it injects in it, fixing what depends on the inner
packet (outer IP length and checksum, UDP length and checksum, GTP length,
PPPoE length, GRE checksum) and advancing the tunnel's own sequence numbers
(GRE S flag, GTP-U S flag) past the latest one seen.

A direction never seen (a DNS answer travels server→client, the query was
seen client→server) is derived by mirroring the other direction (swapped MACs
and outer addresses) where the tunnel's identifiers are the same both ways
(VLAN, PPPoE, VXLAN, IP-in-IP, GRE without key or sequence numbers).  GTP-U
TEIDs, GRE keys and sequence numbers and MPLS labels differ per direction: they
cannot be mirrored, and block reports ``not_possible``.

Encapsulations that cannot carry a frame to an endpoint are refused with the
reason: ERSPAN and TZSP carry a *mirror copy* to a collector, CAPWAP and 802.11
frames, PPTP's enhanced GRE, IPv6 extension headers in the outer header.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

from services.capture.decode import KIND_IP, decode
from services.capture.evidence import wire_len

_VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)


class NotPossible(ValueError):
    """This encapsulation cannot be reproduced; the message says why."""


@dataclass
class Layer:
    kind: str  # eth, vlan, mpls, pppoe, ip4, ip6, udp, vxlan, gtp, gre
    off: int
    flags: int = 0  # gre: the flag byte; gtp: the flag byte
    seq_off: int = -1  # gre/gtp: offset of the tunnel's sequence number in the prefix, -1 when none


@dataclass
class Encap:
    """The encapsulation of one direction of a flow (everything in front of the inner IP header)."""

    prefix: bytes
    layers: list[Layer]
    tunnel: str  # capture's name for it ('' for plain Ethernet + VLAN tags)
    mirrorable: str = ""  # why it cannot be mirrored ('' when it can)
    next_seq: dict[int, int] = field(default_factory=dict)  # layer offset -> tunnel sequence number to send next

    @property
    def plain(self) -> bool:
        return all(lay.kind in ("eth", "vlan") for lay in self.layers)


class Seen:
    """One TCP or UDP frame as decoded (the inner flow of a tunnelled frame).

    Per-packet fields are plain attributes; addresses and MACs as text are made only when
    asked for (the race judge needs none of them)."""

    __slots__ = ("proto", "key", "_src", "_dst", "sport", "dport", "seq", "ack", "flags", "plen", "po", "_frame",
                 "mac_off", "vlans", "tunnel", "ip_off")

    def __init__(self, frame: bytes, proto: int, src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int,
                 flags: int, plen: int, po: int, mac_off: int, vlans: tuple[int, ...], tunnel: str, ip_off: int) -> None:
        self.proto = proto
        self.key = src + dst + _PP(sport, dport)  # src ip + dst ip + sport + dport (packed, inner)
        self._src, self._dst = src, dst
        self.sport, self.dport = sport, dport
        self.seq, self.ack, self.flags, self.plen, self.po = seq, ack, flags, plen, po
        self._frame = frame
        self.mac_off = mac_off
        self.vlans = vlans
        self.tunnel = tunnel
        self.ip_off = ip_off  # offset of the (inner) IP header; -1 when it could not be located

    @property
    def src(self) -> str:
        return _ntop(self._src)

    @property
    def dst(self) -> str:
        return _ntop(self._dst)

    @property
    def smac(self) -> str:
        o = self.mac_off
        return self._frame[o + 6:o + 12].hex(":") if o >= 0 else ""

    @property
    def dmac(self) -> str:
        o = self.mac_off
        return self._frame[o:o + 6].hex(":") if o >= 0 else ""

    def __repr__(self) -> str:
        return (f"Seen(proto={self.proto}, {self.src}:{self.sport}->{self.dst}:{self.dport}, seq={self.seq}, "
                f"ack={self.ack}, flags={self.flags:#x}, plen={self.plen}, tunnel={self.tunnel!r}, ip_off={self.ip_off})")


_PP = struct.Struct("!HH").pack


def _ntop(b: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(b) == 4 else socket.AF_INET6, b)


def observe(frame: bytes) -> Seen | None:
    """The TCP/UDP flow a frame belongs to (inside its tunnel), or None; never raises."""
    try:
        r = decode(frame, 1)
        if r[0] != KIND_IP:
            return None
        (_k, ver, proto, src, dst, sport, dport, tot, po, pl, flags, seq, ack, _vlan, vlans, mac_off, tunnel,
         frag, _fid) = r
        if (proto != 6 and proto != 17) or frag == 2:
            return None
        n = len(frame)
        if po + pl == n:
            # the payload reaches the frame's end: block's snap length (or the NIC's GRO) may have cut it;
            # the sequence numbers it implies count the bytes on the wire, as the IP header gives them
            pl += wire_len(frame, 1, 1) - n
        ip_off = po + pl - tot
        if ip_off < 0 or frame[ip_off] >> 4 != ver or \
                frame[ip_off + (12 if ver == 4 else 8):ip_off + (16 if ver == 4 else 24)] != src:
            ip_off = -1  # truncated or padded oddly: its encapsulation cannot be copied
        return Seen(frame, proto, src, dst, sport, dport, seq, ack, flags, pl, po, mac_off, vlans, tunnel, ip_off)
    except (IndexError, ValueError, struct.error, OSError):
        return None


# --------------------------------------------------------------------------- the prefix


def parse_prefix(prefix: bytes, tunnel: str) -> Encap:
    """The layers of an encapsulation; NotPossible when it is not one block can reproduce."""
    if tunnel in ("ERSPAN", "TZSP"):
        raise NotPossible(f"{tunnel} carries a mirror copy to a collector: frames sent into it never reach the endpoints")
    if tunnel == "CAPWAP":
        raise NotPossible("CAPWAP (wireless controller tunnel) is not reproduced by block")
    layers: list[Layer] = []
    n = len(prefix)
    mirror_why = ""
    o = 0
    if n < 14:
        raise NotPossible("no Ethernet header")
    # (offset, what comes next) state machine over the prefix
    nxt, o = "eth", 0
    for _ in range(40):
        if o == n:
            break
        if nxt == "eth":
            layers.append(Layer("eth", o))
            et = struct.unpack_from("!H", prefix, o + 12)[0]
            o += 14
            while et in _VLAN_TPIDS:
                layers.append(Layer("vlan", o - 2))
                et = struct.unpack_from("!H", prefix, o + 2)[0]
                o += 4
            if et == 0x0800:
                nxt = "ip4"
            elif et == 0x86DD:
                nxt = "ip6"
            elif et in (0x8847, 0x8848):
                while True:
                    layers.append(Layer("mpls", o))
                    bos = prefix[o + 2] & 1
                    o += 4
                    if bos:
                        break
                mirror_why = mirror_why or "MPLS labels differ per direction"
                nxt = "ip?"
            elif et == 0x8864:
                layers.append(Layer("pppoe", o))
                ppp = struct.unpack_from("!H", prefix, o + 6)[0]
                o += 8
                nxt = "ip4" if ppp == 0x0021 else "ip6" if ppp == 0x0057 else "?"
            else:
                raise NotPossible(f"ethertype 0x{et:04x} in front of the IP header is not reproduced")
            continue
        if nxt == "ip?":
            nxt = "ip4" if prefix[o] >> 4 == 4 else "ip6" if prefix[o] >> 4 == 6 else "?"
            continue
        if nxt == "ip4":
            layers.append(Layer("ip4", o))
            ihl = (prefix[o] & 0x0F) * 4
            if struct.unpack_from("!H", prefix, o + 6)[0] & 0x3FFF:
                raise NotPossible("the outer IPv4 packet is a fragment")
            proto = prefix[o + 9]
            o += ihl
            nxt = _after_ip(proto)
            continue
        if nxt == "ip6":
            layers.append(Layer("ip6", o))
            proto = prefix[o + 6]
            o += 40
            nxt = _after_ip(proto)
            if nxt == "?":
                raise NotPossible(f"outer IPv6 next header {proto} (extension headers) is not reproduced")
            continue
        if nxt == "udp":
            layers.append(Layer("udp", o))
            sport, dport = struct.unpack_from("!HH", prefix, o)
            o += 8
            if 4789 in (sport, dport) and tunnel == "VXLAN":
                layers.append(Layer("vxlan", o))
                o += 8
                nxt = "eth"
            elif 2152 in (sport, dport) and tunnel == "GTP":
                fl = prefix[o]
                lay = Layer("gtp", o, flags=fl)
                if fl & 0x02:
                    lay.seq_off = o + 8
                layers.append(lay)
                mirror_why = mirror_why or "GTP-U tunnel ids (TEID) differ per direction"
                o = n  # the rest (optional fields, extension headers) is copied as is
            else:
                raise NotPossible(f"UDP {sport}->{dport} encapsulation is not reproduced")
            continue
        if nxt == "gre":
            fl, verb, ptype = prefix[o], prefix[o + 1], struct.unpack_from("!H", prefix, o + 2)[0]
            if verb & 7:
                raise NotPossible("PPTP's enhanced GRE (version 1) is not reproduced")
            if fl & 0x40:
                raise NotPossible("GRE with source routing is not reproduced")
            lay = Layer("gre", o, flags=fl)
            p = o + 4
            if fl & 0x80:
                p += 4
            if fl & 0x20:
                p += 4
                mirror_why = mirror_why or "GRE keys may differ per direction"
            if fl & 0x10:
                lay.seq_off = p
                p += 4
                mirror_why = mirror_why or "GRE sequence numbers differ per direction"
            layers.append(lay)
            o = p
            if ptype == 0x6558:
                nxt = "eth"
            elif ptype in (0x0800, 0x86DD):
                nxt = "ip4" if ptype == 0x0800 else "ip6"
            elif ptype == 0x8847:
                while True:
                    layers.append(Layer("mpls", o))
                    bos = prefix[o + 2] & 1
                    o += 4
                    if bos:
                        break
                mirror_why = mirror_why or "MPLS labels differ per direction"
                nxt = "ip?"
            else:
                raise NotPossible(f"GRE protocol 0x{ptype:04x} is not reproduced")
            continue
        raise NotPossible(f"{tunnel or 'this'} encapsulation is not reproduced")
    if o != n:
        raise NotPossible(f"{tunnel or 'this'} encapsulation is not reproduced")
    return Encap(prefix=bytes(prefix), layers=layers, tunnel=tunnel, mirrorable=mirror_why)


def _after_ip(proto: int) -> str:
    return {17: "udp", 47: "gre", 4: "ip4", 41: "ip6"}.get(proto, "?")


def encap_of(frame: bytes, seen: Seen) -> Encap:
    """The encapsulation of a decoded frame; NotPossible with the reason."""
    if seen.ip_off < 0:
        raise NotPossible("the frame was truncated: its encapsulation cannot be copied")
    return encap_from(frame[:seen.ip_off], seen.tunnel)


def encap_from(prefix: bytes, tunnel: str) -> Encap:
    """The encapsulation of a prefix kept from a frame; its tunnel sequence numbers advanced past the frame's."""
    e = parse_prefix(prefix, tunnel)
    for lay in e.layers:
        if lay.seq_off >= 0:
            e.next_seq[lay.off] = (struct.unpack_from("!I" if lay.kind == "gre" else "!H", e.prefix, lay.seq_off)[0] + 1)
    return e


def for_flow(to_server: tuple[bytes, str] | None, to_client: tuple[bytes, str] | None) -> tuple[Encap, Encap] | None:
    """Both directions' encapsulations from the prefixes seen (one may be mirrored); None when none was seen."""
    if to_server is None and to_client is None:
        return None
    es = encap_from(*to_server) if to_server is not None else None
    ec = encap_from(*to_client) if to_client is not None else None
    if es is None:
        es = mirror(ec)  # type: ignore[arg-type]
    if ec is None:
        ec = mirror(es)
    return es, ec


def mirror(e: Encap) -> Encap:
    """The other direction's encapsulation (swapped MACs and outer addresses); NotPossible when it cannot be."""
    if e.mirrorable:
        raise NotPossible(f"the other direction was not seen and {e.mirrorable}")
    b = bytearray(e.prefix)
    for lay in e.layers:
        o = lay.off
        if lay.kind == "eth":
            b[o:o + 6], b[o + 6:o + 12] = e.prefix[o + 6:o + 12], e.prefix[o:o + 6]
        elif lay.kind == "ip4":
            b[o + 12:o + 16], b[o + 16:o + 20] = e.prefix[o + 16:o + 20], e.prefix[o + 12:o + 16]
        elif lay.kind == "ip6":
            b[o + 8:o + 24], b[o + 24:o + 40] = e.prefix[o + 24:o + 40], e.prefix[o + 8:o + 24]
        # UDP ports are kept: a VXLAN source port is the sender's flow hash, the destination the VTEP's port
    return Encap(prefix=bytes(b), layers=list(e.layers), tunnel=e.tunnel, mirrorable="")


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


_IP_ID = [0x7A00]


def wrap(e: Encap, inner_ip: bytes) -> bytes:
    """``inner_ip`` (an IP packet) inside the encapsulation, lengths/checksums fixed, tunnel sequence advanced."""
    b = bytearray(e.prefix) + inner_ip
    total = len(b)
    for lay in reversed(e.layers):  # innermost first: outer checksums cover the fixed inner headers
        o = lay.off
        if lay.kind == "ip4":
            ihl = (b[o] & 0x0F) * 4
            _IP_ID[0] = (_IP_ID[0] + 1) & 0xFFFF
            struct.pack_into("!HH", b, o + 2, total - o, _IP_ID[0])
            struct.pack_into("!H", b, o + 10, 0)
            struct.pack_into("!H", b, o + 10, _csum(bytes(b[o:o + ihl])))
        elif lay.kind == "ip6":
            struct.pack_into("!H", b, o + 4, total - o - 40)
        elif lay.kind == "udp":
            struct.pack_into("!HH", b, o + 4, total - o, 0)
            outer = _enclosing_ip(e, o)
            if outer is not None and outer.kind == "ip6":  # IPv6 UDP needs its checksum
                ip = outer.off
                pseudo = bytes(b[ip + 8:ip + 40]) + struct.pack("!IxxxB", total - o, 17)
                c = _csum(pseudo + bytes(b[o:])) or 0xFFFF
                struct.pack_into("!H", b, o + 6, c)
        elif lay.kind == "gtp":
            struct.pack_into("!H", b, o + 2, total - o - 8)
            if lay.seq_off >= 0:
                s = e.next_seq.get(o, 0)
                struct.pack_into("!H", b, lay.seq_off, s & 0xFFFF)
                e.next_seq[o] = (s + 1) & 0xFFFF
        elif lay.kind == "gre":
            if lay.seq_off >= 0:
                s = e.next_seq.get(o, 0)
                struct.pack_into("!I", b, lay.seq_off, s & 0xFFFFFFFF)
                e.next_seq[o] = (s + 1) & 0xFFFFFFFF
            if lay.flags & 0x80:
                struct.pack_into("!H", b, o + 4, 0)
                struct.pack_into("!H", b, o + 4, _csum(bytes(b[o:])))
        elif lay.kind == "pppoe":
            struct.pack_into("!H", b, o + 4, total - o - 6)
    return bytes(b)


def _enclosing_ip(e: Encap, off: int) -> Layer | None:
    best = None
    for lay in e.layers:
        if lay.off < off and lay.kind in ("ip4", "ip6"):
            best = lay
    return best
