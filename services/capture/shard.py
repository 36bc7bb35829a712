"""Sharding one interface across capture processes by a symmetric flow hash.

Two ways, both keep the two directions of a flow in one shard:

- ``shard_filter(k, n)``: a BPF filter text for shard ``k`` of ``n``.  The hash
  is a *sum* of the addresses and ports (symmetric: swapping the endpoints
  does not change it), mixed by a multiplication and a shift before the modulo
  (a plain sum is a bad hash: Linux picks source ports of one parity).  BPF
  arithmetic is 32-bit, so the sum wraps, which keeps it symmetric.  IP
  fragments are hashed by addresses only (later fragments carry no ports), so
  a fragmented datagram may land in another shard than its flow's unfragmented
  packets; non-IP frames (ARP, STP, ...) all go to shard 0.
- ``join_fanout(fd, group)``: AF_PACKET fanout on a pypcap socket with the
  kernel's symmetric flow hash and defragmentation before hashing (so
  fragments follow their flow).  Preferred on Linux.
"""

from __future__ import annotations

import os
import socket
import struct

__all__ = ["shard_filter", "join_fanout", "check_filter", "shard_of", "GOLDEN", "open_live", "fanout_group_id"]

GOLDEN = 2654435761  # Knuth's multiplicative hash constant
SOL_PACKET = 263
PACKET_FANOUT = 18
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_DEFRAG = 0x8000


def _h(expr: str, n: int) -> str:
    return f"((({expr}) * {GOLDEN} >> 16) % {n})"


_V4 = "ip[12:4] + ip[16:4]"
_V6 = " + ".join(f"ip6[{o}:4]" for o in range(8, 40, 4))


def _ip_expr(k: int, n: int) -> str:
    nofrag = "ip[6:2] & 0x3fff = 0"
    return " or ".join([
        f"(ip and tcp and {nofrag} and {_h(_V4 + ' + tcp[0:2] + tcp[2:2]', n)} = {k})",
        f"(ip and udp and {nofrag} and {_h(_V4 + ' + udp[0:2] + udp[2:2]', n)} = {k})",
        f"(ip and not (({nofrag}) and (tcp or udp)) and {_h(_V4, n)} = {k})",
        f"(ip6 and tcp and {_h(_V6 + ' + tcp[0:2] + tcp[2:2]', n)} = {k})",
        f"(ip6 and udp and {_h(_V6 + ' + udp[0:2] + udp[2:2]', n)} = {k})",
        f"(ip6 and not tcp and not udp and {_h(_V6, n)} = {k})",
    ])


def shard_filter(k: int, n: int, base: str = "") -> str:
    """BPF filter text selecting shard ``k`` (0-based) of ``n`` (untagged and 802.1Q-tagged frames)."""
    if n < 1 or not 0 <= k < n:
        raise ValueError(f"shard {k} of {n}: need 0 <= k < n")
    if n == 1:
        return base
    ip = _ip_expr(k, n)
    # libpcap's "vlan" shifts the offsets of everything after it, even across
    # "or": the tagged alternative must come last
    parts = [f"({ip})"]
    tagged = ip
    if k == 0:
        parts.append("(not ip and not ip6 and ether[12:2] != 0x8100 and ether[12:2] != 0x88a8)")
        tagged = f"{ip} or (not ip and not ip6)"
    parts.append(f"(vlan and ({tagged}))")
    expr = " or ".join(parts)
    if base:
        expr = f"({base}) and ({expr})"
    return expr


def check_filter(expr: str, dlt: int = 1) -> None:
    """Compile a BPF filter (raises ValueError with libpcap's message when it does not compile)."""
    import pcap

    try:
        pcap.bpf(expr.encode(), dlt)
    except Exception as exc:  # noqa: BLE001 - pypcap raises OSError / generic errors
        raise ValueError(f"BPF filter does not compile: {exc}") from None


def shard_of(frame: bytes, n: int, dlt: int = 1) -> list[int]:
    """Which shards' filters accept ``frame`` (tests and diagnostics; slow)."""
    import pcap

    return [k for k in range(n) if pcap.bpf(shard_filter(k, n).encode(), dlt).filter(frame)]


def join_fanout(fd: int, group_id: int, defrag: bool = True) -> None:
    """Join AF_PACKET fanout group ``group_id`` (hash mode) on a packet socket file descriptor.

    Works on pypcap's socket: ``join_fanout(live.fileno(), 4242)``.  Every
    process of the group must join with the same mode and flags.
    """
    mode = PACKET_FANOUT_HASH | (PACKET_FANOUT_FLAG_DEFRAG if defrag else 0)
    s = socket.socket(fileno=os.dup(fd))
    try:
        # the value can exceed a C int (DEFRAG flag in bit 31): pass it as raw bytes
        s.setsockopt(SOL_PACKET, PACKET_FANOUT, struct.pack("=I", (group_id & 0xFFFF) | (mode << 16)))
    finally:
        s.close()


def fanout_group_id(iface: str, shards: int) -> int:
    """The AF_PACKET fanout group every shard process of ``iface`` joins (same in every process)."""
    import zlib

    return (zlib.crc32(f"flowtarget/{iface}/{shards}".encode()) & 0xFFFF) or 1


def open_live(settings, direction_in: bool = False):
    """A LiveSource for the capture settings, sharded when ``shards > 1`` and ``shard_index >= 0``.

    Sharding uses AF_PACKET fanout (kernel symmetric hash, fragments
    defragmented first); where fanout cannot be joined it falls back to the BPF
    shard filter (``shard_filter``) combined with the configured filter.
    Returns ``(source, how)`` with how in {"", "fanout", "bpf"}.
    """
    from .sources import LiveSource

    shards, index = settings.shards, settings.shard_index
    sharded = shards > 1 and 0 <= index < shards
    src = LiveSource(settings.iface, bpf=settings.bpf, snaplen=settings.snaplen, promisc=settings.promisc,
                     buffer_mb=settings.buffer_mb, direction_in=direction_in)
    if not sharded:
        return src, ""
    try:
        src.join_fanout(fanout_group_id(settings.iface, shards))
        return src, "fanout"
    except OSError:
        src.close()
    src = LiveSource(settings.iface, bpf=shard_filter(index, shards, settings.bpf), snaplen=settings.snaplen,
                     promisc=settings.promisc, buffer_mb=settings.buffer_mb, direction_in=direction_in)
    return src, "bpf"
