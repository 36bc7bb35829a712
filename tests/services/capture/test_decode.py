"""Unit tests of the struct-based decoder on frames built with dpkt."""

from __future__ import annotations

import socket
import struct

import dpkt
import pytest

from services.capture.decode import (
    KIND_ARP,
    KIND_BAD,
    KIND_IP,
    KIND_L2,
    KIND_UNSUPPORTED,
    decode,
    format_ip,
    format_mac,
    transport_name,
)

MAC_A = b"\x02\x00\x00\x00\x00\x0a"
MAC_B = b"\x02\x00\x00\x00\x00\x0b"
A4 = socket.inet_pton(socket.AF_INET, "10.0.0.1")
B4 = socket.inet_pton(socket.AF_INET, "10.0.0.2")
A6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
B6 = socket.inet_pton(socket.AF_INET6, "2001:db8::2")


def ip4(proto_layer, proto: int, src: bytes = A4, dst: bytes = B4, **kw) -> dpkt.ip.IP:
    ip = dpkt.ip.IP(src=src, dst=dst, p=proto, ttl=64, **kw)
    ip.data = proto_layer
    ip.len = 20 + len(bytes(proto_layer))
    return ip


def tcp(sport=1234, dport=80, flags=dpkt.tcp.TH_ACK, data=b"", seq=1000, ack=0) -> dpkt.tcp.TCP:
    return dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, data=data)


def udp(sport=5353, dport=53, data=b"") -> dpkt.udp.UDP:
    u = dpkt.udp.UDP(sport=sport, dport=dport, data=data)
    u.ulen = 8 + len(data)
    return u


def eth(payload: bytes, etype: int = 0x0800, src: bytes = MAC_A, dst: bytes = MAC_B) -> bytes:
    return dst + src + struct.pack("!H", etype) + bytes(payload)


def fields(r):
    names = ("kind", "ver", "proto", "src", "dst", "sport", "dport", "ip_bytes", "poff", "plen", "flags",
             "seq", "ack", "vlan", "vlans", "mac_off", "tunnel", "frag", "frag_id")
    assert r[0] == KIND_IP, r
    return dict(zip(names, r, strict=True))


def test_ethernet_ipv4_tcp_fields():
    frame = eth(ip4(tcp(flags=dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK, data=b"GET / HTTP/1.1\r\n", seq=7, ack=9), 6))
    f = fields(decode(frame, 1))
    assert (f["ver"], f["proto"], f["src"], f["dst"], f["sport"], f["dport"]) == (4, 6, A4, B4, 1234, 80)
    assert f["ip_bytes"] == 20 + 20 + 16
    assert frame[f["poff"]:f["poff"] + f["plen"]] == b"GET / HTTP/1.1\r\n"
    assert f["flags"] == 0x18 and f["seq"] == 7 and f["ack"] == 9
    assert f["vlan"] == 0 and f["vlans"] == () and f["mac_off"] == 0 and f["tunnel"] == "" and f["frag"] == 0


def test_ethernet_padding_is_not_payload():
    frame = eth(ip4(tcp(), 6)) + b"\x00" * 6  # padded to the 60-byte minimum
    f = fields(decode(frame, 1))
    assert f["plen"] == 0 and f["ip_bytes"] == 40


def test_vlan_and_qinq():
    inner = ip4(udp(data=b"x" * 20), 17)
    one = MAC_B + MAC_A + struct.pack("!HHH", 0x8100, 0x2000 | 42, 0x0800) + bytes(inner)
    f = fields(decode(one, 1))
    assert f["vlans"] == (42,) and f["vlan"] == 42 and f["dport"] == 53
    two = MAC_B + MAC_A + struct.pack("!HHHHH", 0x88A8, 100, 0x8100, 200, 0x0800) + bytes(inner)
    g = fields(decode(two, 1))
    assert g["vlans"] == (100, 200) and g["vlan"] not in (0, 100, 200)
    three = MAC_B + MAC_A + struct.pack("!HHHHH", 0x88A8, 100, 0x8100, 201, 0x0800) + bytes(inner)
    assert fields(decode(three, 1))["vlan"] != g["vlan"]


def test_mpls_and_pppoe():
    inner = bytes(ip4(udp(), 17))
    mpls = eth(struct.pack("!I", (16 << 12) | (0 << 8) | 64) + struct.pack("!I", (17 << 12) | 0x100 | 64) + inner, 0x8847)
    assert fields(decode(mpls, 1))["dport"] == 53
    pppoe = eth(struct.pack("!BBHHH", 0x11, 0, 0x1234, len(inner) + 2, 0x0021) + inner, 0x8864)
    assert fields(decode(pppoe, 1))["dport"] == 53


def test_ipv6_extension_headers_and_fragments():
    u = udp(sport=1000, dport=2000, data=b"abcdefgh")
    hbh = bytes([17, 0]) + b"\x01\x04\x00\x00\x00\x00"  # next=UDP, len 0 (8 bytes), PadN
    payload = hbh + bytes(u)
    ip6 = dpkt.ip6.IP6(src=A6, dst=B6, nxt=0, hlim=64, plen=len(payload))
    frame = eth(bytes(ip6)[:40] + payload, 0x86DD)
    f = fields(decode(frame, 1))
    assert (f["ver"], f["proto"], f["sport"], f["dport"], f["ip_bytes"]) == (6, 17, 1000, 2000, 40 + len(payload))
    # first fragment: fragment header with M=1 offset 0 → ports, frag=1
    fh = struct.pack("!BBHI", 17, 0, 0x0001, 0xABCD)
    ip6f = dpkt.ip6.IP6(src=A6, dst=B6, nxt=44, hlim=64, plen=8 + 16)
    first = eth(bytes(ip6f)[:40] + fh + bytes(u), 0x86DD)
    g = fields(decode(first, 1))
    assert (g["proto"], g["sport"], g["dport"], g["frag"], g["frag_id"]) == (17, 1000, 2000, 1, 0xABCD)
    # later fragment: offset 16 → frag=2, no ports
    fh2 = struct.pack("!BBHI", 17, 0, (2 << 3), 0xABCD)
    later = eth(bytes(ip6f)[:40] + fh2 + b"y" * 16, 0x86DD)
    h = fields(decode(later, 1))
    assert (h["proto"], h["sport"], h["dport"], h["frag"], h["frag_id"]) == (17, 0, 0, 2, 0xABCD)


def test_ipv4_fragments():
    u = udp(sport=1111, dport=2222, data=b"z" * 40)
    first = ip4(u, 17, id=77, mf=1)
    f = fields(decode(eth(first), 1))
    assert (f["frag"], f["frag_id"], f["sport"]) == (1, 77, 1111)
    later = dpkt.ip.IP(src=A4, dst=B4, p=17, id=77, offset=24, data=b"q" * 24)
    later.len = 44
    g = fields(decode(eth(later), 1))
    assert (g["frag"], g["frag_id"], g["sport"], g["dport"], g["ip_bytes"]) == (2, 77, 0, 0, 44)


def test_icmp_sctp_and_other_protocols_have_port_zero():
    icmp = dpkt.icmp.ICMP(type=8, code=0, data=dpkt.icmp.ICMP.Echo(id=5, seq=1, data=b"ping"))
    f = fields(decode(eth(ip4(icmp, 1)), 1))
    assert (f["proto"], f["sport"], f["dport"]) == (1, 0, 0)
    sctp = b"\x0b\x59\x0b\x59" + b"\x00" * 8 + b"\x01\x00\x00\x10" + b"\x00" * 12
    ip = dpkt.ip.IP(src=A4, dst=B4, p=132, data=sctp)
    ip.len = 20 + len(sctp)
    g = fields(decode(eth(ip), 1))
    assert (g["proto"], g["sport"], g["dport"]) == (132, 0, 0)
    assert transport_name(132) == "SCTP" and transport_name(58) == "ICMPV6" and transport_name(118) == "118"


def test_tunnels_give_the_inner_flow():
    inner = ip4(tcp(sport=4000, dport=443, data=b"hello"), 6, src=b"\xc0\xa8\x00\x01", dst=b"\xc0\xa8\x00\x02")
    # GRE
    gre = struct.pack("!HH", 0, 0x0800) + bytes(inner)
    f = fields(decode(eth(ip4(gre, 47)), 1))
    assert (f["tunnel"], f["src"], f["sport"], f["dport"]) == ("GRE", b"\xc0\xa8\x00\x01", 4000, 443)
    assert f["ip_bytes"] == len(bytes(inner))
    # VXLAN: inner Ethernet frame
    vx = struct.pack("!II", 0x08000000, 5000 << 8) + eth(inner)
    g = fields(decode(eth(ip4(udp(sport=55555, dport=4789, data=vx), 17)), 1))
    assert (g["tunnel"], g["sport"], g["dport"]) == ("VXLAN", 4000, 443)
    # GTP-U G-PDU
    gtp = struct.pack("!BBHI", 0x30, 0xFF, len(bytes(inner)), 1234) + bytes(inner)
    h = fields(decode(eth(ip4(udp(sport=2152, dport=2152, data=gtp), 17)), 1))
    assert (h["tunnel"], h["sport"], h["dport"]) == ("GTP", 4000, 443)
    # IP in IP
    k = fields(decode(eth(ip4(inner, 4)), 1))
    assert (k["tunnel"], k["dport"]) == ("IP-in-IP", 443)
    # a VXLAN port carrying garbage is metered as the outer UDP flow
    m = fields(decode(eth(ip4(udp(sport=1, dport=4789, data=b"\x00" * 30), 17)), 1))
    assert (m["tunnel"], m["dport"]) == ("", 4789)


def test_other_link_types():
    ip = bytes(ip4(udp(), 17))
    sll = struct.pack("!HHH", 0, 1, 6) + MAC_A + b"\x00\x00" + struct.pack("!H", 0x0800) + ip
    assert fields(decode(sll, 113))["dport"] == 53
    sll2 = struct.pack("!HHIHBB", 0x0800, 0, 2, 1, 0, 6) + MAC_A + b"\x00\x00" + ip
    assert fields(decode(sll2, 276))["dport"] == 53
    assert fields(decode(struct.pack("<I", 2) + ip, 0))["dport"] == 53
    assert fields(decode(struct.pack("!I", 2) + ip, 108))["dport"] == 53
    assert fields(decode(struct.pack("<I", 30) + bytes(dpkt.ip6.IP6(src=A6, dst=B6, nxt=17, hlim=1, plen=8, data=udp())), 0))["ver"] == 6
    for dlt in (12, 14, 101, 228):
        assert fields(decode(ip, dlt))["dport"] == 53
    assert decode(b"\x00" * 40, 147) == (KIND_UNSUPPORTED, "dlt_147")


# --------------------------------------------------------------------------- IEEE 802.11 link types

STA, AP, BSSID, RA = MAC_A, MAC_B, b"\x02\x00\x00\x00\x00\x0c", b"\x02\x00\x00\x00\x00\x0d"
SNAP = b"\xaa\xaa\x03\x00\x00\x00"       # LLC/SNAP header (RFC 1042) before the ethertype


def wifi(body: bytes, *, ftype: int = 2, subtype: int = 0, flags: int = 0, addrs=(AP, STA, BSSID),
         addr4: bytes = b"", etype: int = 0x0800, snap: bytes = SNAP, htc: bool = False) -> bytes:
    """An 802.11 MAC frame (IEEE 802.11-2020 9.2.4): frame control (protocol version 0, type,
    subtype; flags: To DS 0x01, From DS 0x02, Protected 0x40, +HTC/Order 0x80), duration, three
    addresses, sequence control, a fourth address with both DS bits, QoS control for QoS subtypes,
    HT control when QoS and the order bit; then LLC/SNAP and the ethertype."""
    fc = struct.pack("<BB", (subtype << 4) | (ftype << 2), flags | (0x80 if htc else 0))
    hdr = fc + b"\x00\x00" + b"".join(addrs) + b"\x10\x00" + addr4
    if subtype & 0x08:
        hdr += b"\x00\x00"
        if htc:
            hdr += b"\x00\x00\x00\x00"
    return hdr + snap + struct.pack("!H", etype) + bytes(body)


def radiotap(frame: bytes, *, flags: int | None = 0x10, tsft: bool = True, ext: bool = False) -> bytes:
    """A radiotap header (radiotap.org): version 0, pad, little-endian length and present words
    (bit 31: another word follows), then the fields in bit order, each aligned to its size:
    TSFT (bit 0, u64), Flags (bit 1, u8: 0x10 = the frame ends with its FCS), Rate (bit 2, u8)."""
    present = (1 if tsft else 0) | (2 if flags is not None else 0) | 4
    words = struct.pack("<I", present | (0x80000000 if ext else 0)) + (struct.pack("<I", 0) if ext else b"")
    fields_ = b""
    off = 4 + len(words)
    if tsft:
        pad = (-off) % 8
        fields_ += b"\x00" * pad + struct.pack("<Q", 123456789)
    if flags is not None:
        fields_ += bytes([flags])
    fields_ += b"\x0c"                          # rate: 6 Mb/s
    hdr_len = 4 + len(words) + len(fields_)
    return struct.pack("<BBH", 0, 0, hdr_len) + words + fields_ + frame


def test_ieee80211_data_frames_are_decoded():
    ip = bytes(ip4(udp(sport=61738, dport=53, data=b"\x12\x34" + b"\x00" * 10), 17))
    ip6 = bytes(dpkt.ip6.IP6(src=A6, dst=B6, nxt=17, hlim=1, plen=8, data=udp(sport=5353, dport=5353)))
    fcs = b"\xde\xad\xbe\xef"
    # QoS data from a station to the AP (To DS), in radiotap with TSFT, Flags (FCS) and Rate
    f = radiotap(wifi(ip, subtype=8, flags=0x01) + fcs)
    h = fields(decode(f, 127))
    assert (h["ver"], h["sport"], h["dport"], h["ip_bytes"], h["plen"]) == (4, 61738, 53, len(ip), 12)
    assert f[h["poff"]:h["poff"] + 2] == b"\x12\x34"
    assert h["mac_off"] == -1                    # with a DS bit, addresses 1/2 are not DA/SA
    # plain data from the AP (From DS), IPv6, radiotap without TSFT and with a second present word
    h = fields(decode(radiotap(wifi(ip6, flags=0x02, etype=0x86DD), tsft=False, ext=True), 127))
    assert (h["ver"], h["dport"]) == (6, 5353)
    # QoS data with +HTC (order bit): four more header bytes
    assert fields(decode(radiotap(wifi(ip, subtype=8, htc=True)), 127))["dport"] == 53
    # a four-address (mesh / WDS) QoS data frame
    f4 = wifi(ip, subtype=8, flags=0x03, addrs=(RA, STA, BSSID), addr4=AP)
    assert fields(decode(radiotap(f4), 127))["dport"] == 53
    # between stations (no DS bit) address 1 is the destination and 2 the source, as in Ethernet
    frame = wifi(ip, addrs=(AP, STA, BSSID))
    h = fields(decode(frame, 105))
    assert (format_mac(frame, h["mac_off"]), format_mac(frame, h["mac_off"] + 6)) == (AP.hex(":"), STA.hex(":"))
    # ARP in an 802.11 frame (no radiotap), and in radiotap whose FCS flag has no FCS behind it
    arp = bytes(dpkt.arp.ARP(sha=STA, spa=A4, tha=b"\x00" * 6, tpa=B4, op=1))
    assert decode(wifi(arp, flags=0x01, etype=0x0806), 105)[0] == KIND_ARP
    assert decode(radiotap(wifi(arp, subtype=8, flags=0x01, etype=0x0806), flags=0x10), 127)[0] == KIND_ARP
    # PPI carrying 802.11, and AVS (big-endian header length at offset 4)
    ppi = struct.pack("<BBHI", 0, 0, 8, 105) + frame
    assert fields(decode(ppi, 192))["dport"] == 53
    avs = struct.pack("!II", 0x80211001, 64) + b"\x00" * 56 + frame
    assert fields(decode(avs, 163))["dport"] == 53


def test_ieee80211_frames_without_ip():
    ip = bytes(ip4(udp(), 17))
    beacon = wifi(b"\x00" * 40, ftype=0, subtype=8, snap=b"", etype=0)
    assert decode(radiotap(beacon), 127) == (KIND_L2, "ieee802_11_nondata")
    ack = struct.pack("<BB", (13 << 4) | (1 << 2), 0) + b"\x00\x00" + AP + b"\x00" * 20
    assert decode(ack, 105) == (KIND_L2, "ieee802_11_nondata")
    assert decode(wifi(b"", subtype=4, snap=b"", etype=0), 105) == (KIND_L2, "ieee802_11_null")
    assert decode(wifi(b"", subtype=12, snap=b"", etype=0), 105) == (KIND_L2, "ieee802_11_null")
    assert decode(wifi(ip, flags=0x41), 105) == (KIND_UNSUPPORTED, "ieee802_11_protected")
    assert decode(wifi(ip, snap=b"\xf0\xf0\x03\x00\x00\x00"), 105) == (KIND_L2, "llc")
    assert decode(wifi(ip)[:20], 105)[0] == KIND_BAD
    assert decode(b"\x01" + b"\x00" * 30, 127) == (KIND_BAD, "bad_l2_header")      # radiotap version 1
    assert decode(struct.pack("<BBH", 0, 0, 200) + b"\x00" * 30, 127) == (KIND_BAD, "bad_l2_header")
    assert decode(b"\x00\x00", 127)[0] == KIND_BAD
    assert decode(struct.pack("<BB", 0x09, 0) + b"\x00" * 40, 105) == (KIND_BAD, "bad_l2_header")  # version 1


def test_arp_and_l2_protocols():
    arp = dpkt.arp.ARP(sha=MAC_A, spa=A4, tha=b"\x00" * 6, tpa=B4, op=1)
    r = decode(eth(arp, 0x0806, dst=b"\xff" * 6), 1)
    assert r[0] == KIND_ARP and r[1] == 14
    stp = b"\x01\x80\xc2\x00\x00\x00" + MAC_A + struct.pack("!H", 38) + b"\x42\x42\x03" + b"\x00" * 35
    assert decode(stp, 1) == (KIND_L2, "stp")
    lldp = eth(b"\x02\x07\x04" + MAC_A + b"\x00" * 20, 0x88CC, dst=b"\x01\x80\xc2\x00\x00\x0e")
    assert decode(lldp, 1) == (KIND_L2, "lldp")
    cdp = b"\x01\x00\x0c\xcc\xcc\xcc" + MAC_A + struct.pack("!H", 30) + b"\xaa\xaa\x03\x00\x00\x0c\x20\x00" + b"\x00" * 22
    assert decode(cdp, 1) == (KIND_L2, "cdp")


@pytest.mark.parametrize(
    ("frame", "category"),
    [
        (b"\x00" * 10, "truncated_l2"),
        (MAC_B + MAC_A + b"\x81\x00\x00", "truncated_l2"),
        (eth(b"\x45\x00\x00"), "truncated_ip"),
        (eth(b"\x55" + b"\x00" * 30), "bad_ip_version"),
        (eth(b"\x43" + b"\x00" * 30), "bad_ip_header"),
        (eth(b"\x60" + b"\x00" * 20, 0x86DD), "truncated_ip"),
        (eth(b"\x46\x00\x00\x28" + b"\x00" * 16), "truncated_ip"),  # IHL 24 but 20 bytes
        (eth(b"\x45\x00\x00\x10" + b"\x00" * 16), "bad_ip_header"),  # total length < header
        (eth(b"\x00\x01\x08\x00\x06\x04\x00", 0x0806), "bad_arp"),
    ],
)
def test_bad_frames_have_exact_categories(frame, category):
    assert decode(frame, 1) == (KIND_BAD, category)


def test_truncated_and_bad_l4():
    full = bytes(ip4(tcp(data=b"abc"), 6))
    cut = eth(full[:30])  # TCP header cut at 10 bytes, IP says more
    assert decode(cut, 1) == (KIND_BAD, "truncated_l4")
    bad = bytearray(full)
    bad[20 + 12] = 0x20  # data offset 2 words
    assert decode(eth(bytes(bad)), 1) == (KIND_BAD, "bad_tcp_header")


def test_formatting_helpers():
    assert format_ip(A4) == "10.0.0.1"
    assert format_ip(A6) == "2001:db8::1"
    assert format_mac(MAC_A + MAC_B, 6) == "02:00:00:00:00:0b"
    assert format_mac(b"\x00", 0) == "" and format_mac(MAC_A, -1) == ""
