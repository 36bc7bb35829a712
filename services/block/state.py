"""What block remembers of flows, shared by its parts (service, TCP race, DNS race)."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from services.block import inject as inj
from services.block.rules import MatchContext

FLOW_CACHE_MAX = 100_000
FLOW_CACHE_TTL_S = 1800.0
HANDLED_MAX = 200_000
RECENT_S = 3.0  # recent TCP packets kept per direction, to judge what happened before a watch began
RECENT_MAX_KEYS = 65536
RECENT_PER_KEY = 32
PREFIX_MAX_KEYS = 2 * RECENT_MAX_KEYS  # flow directions whose encapsulation is remembered
TH_FIN, TH_SYN, TH_RST, TH_ACK = 0x01, 0x02, 0x04, 0x10
_TRIGGER_FIRST_BYTES = frozenset(b"GPHDOCT\x16")  # HTTP methods, TLS handshake record


def _seq_gt(a: int, b: int) -> bool:
    """a > b in 32-bit sequence space."""
    return 0 < ((a - b) & 0xFFFFFFFF) < 0x80000000


@dataclass
class FlowInfo:
    """What block remembers of a classified flow (from its verdict)."""

    flow_id: str
    transport: str
    client: inj.Endpoint
    server: inj.Endpoint
    vlan_ids: list[int]
    ctx: MatchContext
    seen: float
    t_packet: float = 0.0  # DNS: the query's capture time (one query seen by two paths has one time)
    icmp_type: int | None = None  # ICMP flows: the verdict's icmp_type/icmp_code (for the Community ID)
    icmp_code: int | None = None


def _reverse_key(key: bytes) -> bytes:
    """The other direction's lookup key."""
    n = (len(key) - 4) // 2
    return key[n:2 * n] + key[:n] + key[2 * n + 2:2 * n + 4] + key[2 * n:2 * n + 2]


def _ip_bytes(ip: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)


def flow_keys(a: inj.Endpoint, b: inj.Endpoint) -> tuple[bytes, bytes]:
    """Lookup keys (src ip, dst ip, sport, dport as on the wire) for both directions."""
    ia, ib = _ip_bytes(a.ip), _ip_bytes(b.ip)
    return (ia + ib + struct.pack("!HH", a.port, b.port), ib + ia + struct.pack("!HH", b.port, a.port))
