"""Games and their networking libraries: Source engine queries, RakNet,
Activision (3074), Blizzard (Battle.net 1119, Heroes of the Storm 3724),
Epic Online Services, AFS RX.

References: Valve's Server Queries documentation (0xFFFFFFFF + 'T'/'U'/'V'/
'W'/'A'/'I'), RakNet's offline message id and OFFLINE_MESSAGE_DATA_ID magic,
the AFS RX packet header (type 1..13).
"""

from __future__ import annotations

from shared.models import FlowSample, Verdict
from services.classify.dissectors.base import Dissector, Match
from services.classify.dissectors.breadth_util import TCP, TCP_UDP, UDP, Simple, ordered, u16, u32

_RAKNET_MAGIC = b"\x00\xff\xff\x00\xfe\xfe\xfe\xfe\xfd\xfd\xfd\xfd\x12\x34\x56\x78"


class HalfLife2(Dissector):
    """Half-Life 2 and mods: a connectionless request and its reply, both 0xFFFFFFFF-prefixed and ending '000\\0'."""

    name = "HalfLife2"
    transports = UDP
    ports = frozenset()

    @staticmethod
    def _ok(p: bytes) -> bool:
        return len(p) >= 20 and p[:4] == b"\xff\xff\xff\xff" and p[-4:] == b"000\x00"

    def could_be(self, s: FlowSample) -> bool:
        return bool(s.src_payloads) and self._ok(s.src_payloads[0])

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        if any(self._ok(q) for q in s.dst_payloads[:2]):
            v.app_protocol = self.name
            return Match.FINAL
        return Match.NO


class Xbox(Simple):
    """Xbox Live UDP: zero 32-bit prefix, 0x58 marker and known (type, length) pairs; or its 3074 datagrams."""

    name = "Xbox"
    transports = UDP
    ports = frozenset()

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) > 12 and p[:4] == b"\x00\x00\x00\x00" and p[5] == 0x58 and p[7:10] == b"\x00\x00\x00" and \
            (p[4], p[6]) in ((0x0C, 0x76), (0x02, 0x18), (0x0B, 0x80), (0x03, 0x40), (0x06, 0x4E))


class SourceEngine(Simple):
    name = "Source_Engine"
    transports = UDP
    ports = frozenset({27015})
    magic = (b"\xff\xff\xff\xff",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 5 or p[:4] != b"\xff\xff\xff\xff":
            return False
        if p[4:24] == b"TSource Engine Query":
            return True
        return p[4] in b"UVWAIDEmsjk" and 27015 <= max(s.src_port, s.dst_port) <= 27030 or \
            p[4] in b"UVW" and len(p) == 9


class WorldOfWarcraft(Simple):
    """World of Warcraft: both sides open with a length-prefixed 'WORLD OF WARCRAFT CONNECTION - ...' string."""

    name = "WorldOfWarcraft"
    transports = TCP
    ports = frozenset({3724})

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return p[2:30] == b"WORLD OF WARCRAFT CONNECTION"


class RakNet(Simple):
    name = "RakNet"
    transports = UDP
    ports = frozenset({19132, 19133})
    magic = (b"\x01", b"\x02", b"\x1c", b"\x05", b"\x06", b"\x07", b"\x08", b"\x09", b"\x10", b"\x11", b"\x12", b"\x19",
             b"\xa0", b"\xc0") + tuple(bytes([b]) for b in range(0x80, 0x8E))

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) < 17:
            return (rak_ack_ok(p) or rak_frameset_ok(p)) and s.src_port not in _NAME_PORTS and s.dst_port not in _NAME_PORTS
        if p[0] in (0x05, 0x06, 0x07, 0x08, 0x09, 0x10, 0x11, 0x12, 0x19) and p[1:17] == _RAKNET_MAGIC:
            return True
        if p[0] in (0x01, 0x02, 0x1C) and len(p) >= 25 and p[9:25] == _RAKNET_MAGIC:
            return True
        if p[0] in (0x01, 0x02, 0x05, 0x07) and _RAKNET_MAGIC in p[:96]:      # offline message with extra fields
            return True
        if s.src_port in _NAME_PORTS or s.dst_port in _NAME_PORTS:
            # nDPI runs the port's own dissector first: there a DNS/LLMNR/mDNS message whose ID happens
            # to start with a frame-set byte is DNS; only RakNet's magic claims such a flow
            return False
        return rak_ack_ok(p) or rak_frameset_ok(p)


_NAME_PORTS = frozenset((53, 5353, 5355))


def rak_ack_ok(p: bytes) -> bool:
    """A RakNet ACK (0xC0) / NACK (0xA0): record count, then single (flag 1 + seq) or range (flag 0 + 2 seqs) records."""
    if len(p) < 7 or p[0] not in (0xC0, 0xA0):
        return False
    n = u16(p, 1)
    o = 3
    for _ in range(n):
        if o >= len(p):
            return False
        o += 4 if p[o] == 1 else 7 if p[o] == 0 else 10 ** 6
    return n >= 1 and o == len(p)


def rak_frameset_ok(p: bytes) -> bool:
    """A RakNet frame set (0x80..0x8D + 24-bit sequence) whose frames exactly fill the datagram."""
    if len(p) < 8 or not 0x80 <= p[0] <= 0x8D:
        return False
    o = 4
    frames = 0
    while o < len(p) and frames < 64:
        if o + 3 > len(p):
            return False
        flags = p[o]
        rel = flags >> 5
        bits = u16(p, o + 1)
        o += 3
        if rel in (2, 3, 4, 6, 7):
            o += 3
        if rel in (1, 4):
            o += 3
        if rel in (1, 3, 4, 7):
            o += 4
        if flags & 0x10:
            o += 10
        if bits == 0:
            return False
        o += (bits + 7) // 8
        frames += 1
    return frames >= 1 and o == len(p)


class Activision(Simple):
    name = "Activision"
    transports = UDP
    ports = frozenset({3074, 3075})

    def could_be(self, s: FlowSample) -> bool:
        return 3074 in (s.src_port, s.dst_port) or 3075 in (s.src_port, s.dst_port)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 18 and (p[0] in (0x0C, 0x0D) and p[1] == 0x02 or p[0] in (0x28, 0x29) and b"GDN" in p[:12])


class Blizzard(Dissector):
    """Battle.net (1119) and Heroes of the Storm game traffic (3724)."""

    name = "Starcraft"
    transports = TCP_UDP
    ports = frozenset({1119})

    def could_be(self, s: FlowSample) -> bool:
        return bool({s.src_port, s.dst_port} & {1119, 3724})

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        p = s.src_payloads[0] if s.src_payloads else (s.dst_payloads[0] if s.dst_payloads else b"")
        if s.transport == "UDP":
            # the server's datagrams: 12 zero bytes, a 16-bit word, then 0x40
            for q in (s.src_payloads[:2] + s.dst_payloads[:2]):
                if len(q) >= 20 and q[:12] == b"\x00" * 12 and q[12:14] in (b"\x00\x00", b"\x00\x01") and q[14] == 0x40:
                    v.app_protocol = "Heroes_of_the_Storm"
                    return Match.FINAL
            return Match.NO
        if s.transport == "TCP" and 1119 in (s.src_port, s.dst_port) and len(p) >= 4 and p[0] == 0x4A and p[1] == 0:
            v.app_protocol = "Starcraft"
            return Match.FINAL
        return Match.NO


class EpicGames(Simple):
    name = "EpicGames"
    transports = UDP
    ports = frozenset()

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 40 and p[1:3] == b"\x1a\x20" and p[5:9] == b"\x98\x22\x65\x74"


class RX(Simple):
    name = "RX"
    transports = UDP
    ports = frozenset(range(7000, 7010))

    def could_be(self, s: FlowSample) -> bool:
        return 7000 <= s.dst_port <= 7009 or 7000 <= s.src_port <= 7009

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 28 and 1 <= p[20] <= 13 and u32(p, 0) != 0 and p[25] <= 3


class Yojimbo(Simple):
    """netcode.io (Yojimbo) connection request: 0x00 + 'NETCODE 1.02' version info."""

    name = "Yojimbo"
    transports = UDP
    ports = frozenset()
    magic = (b"\x00NETCODE",)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 14 and p[0] == 0 and p[1:12] == b"NETCODE 1.0"


class AmongUs(Simple):
    """Among Us (Hazel networking) on 22023: hello (0x08) / reliable (0x01) / ack (0x0a) packets."""

    name = "AmongUs"
    transports = UDP
    ports = frozenset({22023})

    def could_be(self, s: FlowSample) -> bool:
        return 22023 in (s.src_port, s.dst_port)

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 3 and p[0] in (0x00, 0x01, 0x08, 0x09, 0x0A, 0x0C)


class Steam(Simple):
    """Steam: 'VS01' datagrams, in-home streaming discovery (0xFFFFFFFF + 0xA05F4C21 little-endian)."""

    name = "Steam"
    transports = UDP
    ports = frozenset({27036})
    magic = (b"VS01", b"\xff\xff\xff\xff\x21\x4c\x5f\xa0")

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return p.startswith(self.magic) and len(p) >= 8


class SteamDatagramRelay(Simple):
    """Steam Datagram Relay ping requests ('sdping')."""

    name = "SteamDatagramRelay"
    transports = UDP
    ports = frozenset()

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 16 and p[2:8] == b"sdping"


class Nintendo(Simple):
    """Nintendo Switch online play (Pia): datagrams starting with the magic 0x32AB9864."""

    name = "Nintendo"
    transports = UDP
    ports = frozenset()
    magic = (b"\x32\xab\x98\x64",)

    maxpk = 1       # the flow's first datagram decides

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) > 48 and p[:5] == b"\x32\xab\x98\x64\x02"


class RiotGames(Simple):
    """Riot Games UDP: datagrams ending with 0xAAAAAAAA 0xBBBBBBBB, or the 53-byte hello trailer."""

    name = "RiotGames"
    transports = UDP
    ports = frozenset()

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) > 8 and p[-8:] == b"\xaa\xaa\xaa\xaa\xbb\xbb\xbb\xbb":
            return True
        return len(p) == 53 and p[-8:] == b"\x3c\xb1\x1f\x2d\xea\x23\x46\x0c"


class LoLWildRift(Dissector):
    """League of Legends: Wild Rift: a 22-byte hello, or a 69-byte request answered by a 359-byte reply."""

    name = "LoLWildRift"
    transports = UDP
    ports = frozenset()

    def could_be(self, s: FlowSample) -> bool:
        p = s.src_payloads[0] if s.src_payloads else b""
        return len(p) in (22, 69)

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        for _src, p in ordered(s, 4):
            if len(p) == 22 and p[:4] == b"\x01\x02\xc8\x41" and p[-4:] == b"\x41\x30\x42\x31":
                v.app_protocol = self.name
                return Match.FINAL
        a = s.src_payloads[0]
        if len(a) == 69 and a[:4] == b"\x04\x00\x00\x00":
            for q in s.dst_payloads[:2]:
                if len(q) == 359 and q[:4] == b"\x10\x00\x00\x00":
                    v.app_protocol = self.name
                    return Match.FINAL
        return Match.NO


class TencentGames(Simple):
    name = "TencentGames"
    transports = TCP
    ports = frozenset()

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) <= 50:
            return False
        if p[:4] == b"\x33\x66\x00\x0b" and p[4:6] == b"\x00\x0b":
            return True
        if p[:4] == b"\x43\x66\xaa\x00" and p[12:16] == b"\x10\xe6\x86\x01":
            return True
        if p[:4] == b"\xaa\x00\x00\x00" and p[10:14] == b"\x10\xe6\x86\x01":
            return True
        # length-prefixed zlib stream (0x78 0x01)
        return p[:2] == b"\x00\x00" and u16(p, 2) == len(p) - 4 and p[4:6] == b"\x78\x01"


class GaijinEntertainment(Simple):
    name = "GaijinEntertainment"
    transports = UDP
    ports = frozenset()

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) == 52 and p[:3] == b"\x8f\xff\x00" and p[4:8] == b"\x82\xff\x00\x01":
            return True
        return len(p) > 100 and p.startswith((b"embeddedupdater.", b"app.start", b"app.stage"))


class NetEaseGames(Simple):
    name = "NetEaseGames"
    transports = UDP
    ports = frozenset()

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) == 12 and from_src and p[0] == 1 and p[2:4] == b"\xd0\x01" and p[8:12] == b"\x00\x01\x01\x01":
            return True
        if len(p) >= 30 and p[:4] == b"\xb3\xaf\x8d\xe8":
            return True
        return len(p) > 30 and p[:4] == b"\x07\x08\x08\x0c"


class CoDMobile(Simple):
    name = "CoD_Mobile"
    transports = UDP
    ports = frozenset({7500})

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        if len(p) == 12 and 7500 in (s.src_port, s.dst_port) and p[8:12] == b"ping":
            return True
        return len(p) > 350 and p[0] == 0xCE and b"LOC_PREFAB_LOADOUTNAME_1" in p


class PathOfExile(Simple):
    """Path of Exile: the client's first message (26..49 bytes) carrying the character name between
    fixed header words and a fixed trailer."""

    name = "PathofExile"
    transports = TCP
    ports = frozenset({6112})
    maxpk = 1

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return 25 < len(p) < 50 and p[0] == 0 and p[6] == 0 and p[1:3] == b"\x03\x00" and p[7:9] == b"\x02\x00" \
            and p[-8:] == b"\x00\x00\x00\x00\x40\x00\x00\x01"


class CryNetwork(Simple):
    """CryEngine network (CryNetwork) datagrams: length byte + 10, fixed markers at 3, 16, 20 and 24."""

    name = "CryNetwork"
    transports = UDP
    ports = frozenset()

    def check(self, p: bytes, from_src: bool, s: FlowSample) -> bool:
        return len(p) >= 26 and len(p) == p[0] + 10 and p[3:5] == b"\x08\xed" and p[16] == 1 and p[20] == 7 \
            and p[24:26] == b"\x03\x07"


DISSECTORS = [CryNetwork(), PathOfExile(), HalfLife2(), Xbox(), SourceEngine(), WorldOfWarcraft(), RakNet(), Activision(), Blizzard(), EpicGames(), RX(), Yojimbo(), AmongUs(), Steam(), SteamDatagramRelay(), Nintendo(),
              RiotGames(), LoLWildRift(), TencentGames(), GaijinEntertainment(), NetEaseGames(), CoDMobile()]
