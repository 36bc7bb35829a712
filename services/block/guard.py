"""block's guards: what stops an injection before it happens.

- ``Allowlist``: networks and host-name patterns never injected against
  (FT_ALLOWLIST).  Entries are parsed once, at start: an entry is an IP
  network or address (CIDRs honoured, IPv6 in any case), or a host-name
  pattern when it is clearly a name (letters, digits, ``-``, ``.``, ``*``,
  ``?``, with a letter or a wildcard, no ``/`` and no ``:``).  Anything else
  (``10.60.0.1/99``, ``10.1.2``, ``fd00::zz``) is refused: an allowlist typo
  must stop block at start, never become a pattern that matches nothing.
- ``AddressSet``: the probe's own addresses (FT_PROBE_ADDRESSES plus the
  interface's), compared as ip objects; networks are honoured.
- ``TokenBucket``: the injection rate limit.

``parse_allow_entry`` / ``parse_address_entry`` are what BlockSettings
validates with, so a bad entry is one configuration line naming the variable.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import time
from collections.abc import Iterable

from shared.settings import parse_address_entry, parse_allow_entry

from services.block.rules import normalize_host

__all__ = ["AddressSet", "Allowlist", "Guard", "TokenBucket", "parse_address_entry", "parse_allow_entry"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(s: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(s.split("%", 1)[0])  # fe80::1%eth0 -> fe80::1
    except (ValueError, AttributeError):
        return None


class AddressSet:
    """Addresses and networks, matched as ip objects (so FD00::1 == fd00::1, and 10.98.0.7 in 10.98.0.0/24)."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.nets: list[IPNetwork] = []
        self.update(entries)

    def update(self, entries: Iterable[str]) -> None:
        for e in entries:
            try:
                self.add(parse_address_entry(e))
            except ValueError:
                continue  # settings validated FT_PROBE_ADDRESSES; this is an interface address we cannot read

    def add(self, net: IPNetwork) -> None:
        if net not in self.nets:
            self.nets.append(net)

    def __contains__(self, ip: object) -> bool:
        a = ip if isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else _ip(str(ip))
        if a is None:
            return False
        if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
            a = a.ipv4_mapped
        return any(a.version == n.version and a in n for n in self.nets)

    def __len__(self) -> int:
        return len(self.nets)


class Allowlist:
    """Networks and host patterns never injected against."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.addrs = AddressSet()
        self.names: list[str] = []
        for e in entries:
            p = parse_allow_entry(e)  # ValueError on a bad entry: settings refused it already
            if isinstance(p, str):
                self.names.append(p)
            else:
                self.addrs.add(p)

    def hit(self, ips: list[str], host: str) -> bool:
        if any(ip in self.addrs for ip in ips):
            return True
        if host and self.names:
            h = normalize_host(host)
            return any(fnmatch.fnmatchcase(h, p) for p in self.names)
        return False


class TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens = float(burst)
        self.t = time.monotonic()

    def take(self, n: float = 1.0) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False


class Guard:
    """The checks every injection passes: allowlist, the probe's own addresses and MAC."""

    def __init__(self, allowlist: Iterable[str], own_addresses: Iterable[str]) -> None:
        self.allow = Allowlist(allowlist)
        self.own = AddressSet(own_addresses)
        self.own_mac = ""

    def check(self, ips: list[str], macs: list[str], host: str) -> tuple[str, str] | None:
        """(outcome, message) that stops an injection, or None."""
        if self.allow.hit(ips, host):
            return "allowlisted", "allowlisted"
        if any(ip in self.own for ip in ips):
            return "not_possible", "target is the probe itself"
        if self.own_mac and self.own_mac in [m.lower() for m in macs]:
            return "not_possible", "target is the probe itself"
        return None
