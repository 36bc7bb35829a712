"""The application layer: host/SNI patterns and address lists -> application, category.

All knowledge lives in data files under ``services/classify/data/``:

- ``apps.json``: ``{"Application": {"category": "...", "hosts": [...], "ips": [...]}}``.
  Host patterns:
    ``example.com``   the domain and every name under it (``www.example.com``);
    ``=example.com``  exactly that name;
    ``example.*``     the label ``example`` followed by any public suffix
                      (``example.com``, ``example.co.uk``, ``www.example.de``);
    ``*part*``        any name containing ``part`` (product names such as ``*fbcdn*``);
    ``*tail``         any name ending with ``tail`` (``*mtalk.google.com`` matches
                      ``alt2-mtalk.google.com``).
  Precedence: exact names, then ``*part*`` and ``*tail`` patterns (specific by
  nature), then domains with the longest matching suffix winning (so
  ``youtube.googleapis.com`` can be YouTube while ``googleapis.com`` is
  GoogleServices), then ``label.*``.
- ``ports.json``: ``{"TCP/443": "TLS", ...}`` well-known ports for the guess.
- ``categories.json``: ``{"DNS": "Network", ...}`` nDPI's category of a protocol, used
  when no application gives one.
- ``voip_apps.json``: for media protocols (STUN, RTP, ...) the call service of an
  application (Facebook/WhatsApp -> WhatsAppCall, Telegram -> TelegramVoip, ...).

The lookups are dictionary probes per label (no regular expressions) so they
cost little on the hot path.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from functools import lru_cache
from pathlib import Path

from shared.models import FlowSample, Verdict

log = logging.getLogger("flowtarget.classify.apps")

DATA_DIR = Path(__file__).with_name("data")
_pton, _AF_INET, _AF_INET6 = socket.inet_pton, socket.AF_INET, socket.AF_INET6


class Apps:
    def __init__(self, apps: dict[str, dict], ports: dict[str, str] | None = None,
                 proto_categories: dict[str, str] | None = None, voip: dict | None = None) -> None:
        self.proto_categories = dict(proto_categories or {})
        voip = voip or {}
        self.voip_protocols = frozenset(voip.get("protocols", ()))
        self.voip_apps: dict[str, str] = dict(voip.get("apps", {}))
        self._suffix: dict[str, tuple[str, str]] = {}
        self._exact: dict[str, tuple[str, str]] = {}
        self._label: dict[str, tuple[str, str]] = {}       # "example" of "example.*"
        self._contains: list[tuple[str, tuple[str, str]]] = []
        self._tails: list[tuple[str, tuple[str, str]]] = []
        self._nets4: dict[int, dict[int, tuple[str, str]]] = {}
        self._nets6: dict[int, dict[int, tuple[str, str]]] = {}
        self.categories: dict[str, str] = {}
        for name, spec in apps.items():
            cat = str(spec.get("category", ""))
            val = (name, cat)
            self.categories[name] = cat
            for pat in spec.get("hosts", []):
                pat = pat.strip().lower()
                if not pat:
                    continue
                if pat.startswith("*") and pat.endswith("*") and len(pat) > 2:
                    self._contains.append((pat[1:-1], val))
                elif pat.startswith("*") and not pat.startswith("*."):
                    self._tails.append((pat[1:], val))
                elif pat.startswith("="):
                    self._exact[pat[1:]] = val
                elif pat.endswith(".*"):
                    self._label[pat[:-2]] = val
                else:
                    self._suffix[pat.lstrip("*.")] = val
            for net in spec.get("ips", []):
                try:
                    n = ipaddress.ip_network(net, strict=False)
                except ValueError:
                    log.warning("apps.json: bad network %r for %s", net, name)
                    continue
                table = self._nets4 if n.version == 4 else self._nets6
                table.setdefault(n.prefixlen, {})[int(n.network_address)] = val
        self._plens4 = sorted(self._nets4, reverse=True)
        self._plens6 = sorted(self._nets6, reverse=True)
        # (shift, table) from the longest prefix: the network of x is (x >> shift) << shift
        self._shifts4 = [(32 - plen, self._nets4[plen]) for plen in self._plens4]
        self._shifts6 = [(128 - plen, self._nets6[plen]) for plen in self._plens6]
        self.ports: dict[tuple[str, int], str] = {}
        for key, proto in (ports or {}).items():
            t, _, p = key.partition("/")
            try:
                self.ports[(t.upper(), int(p))] = proto
            except ValueError:
                log.warning("ports.json: bad key %r", key)
        self.lookup_host = lru_cache(maxsize=65536)(self._lookup_host)
        self.lookup_ip = lru_cache(maxsize=65536)(self._lookup_ip)

    # ------------------------------------------------------------------ lookups

    def _lookup_host(self, host: str) -> tuple[str, str] | None:
        h = host.strip().rstrip(".").lower()
        if not h:
            return None
        got = self._exact.get(h)
        if got:
            return got
        for part, val in self._contains:
            if part in h:
                return val
        for tail, val in self._tails:
            if h.endswith(tail):
                return val
        labels = h.split(".")
        n = len(labels)
        for i in range(n):
            got = self._suffix.get(".".join(labels[i:]) if i else h)
            if got:
                return got
        if self._label:
            # "example.*": a label followed by one or two short labels (a public suffix)
            for i in range(n - 1):
                got = self._label.get(labels[i])
                if got and (n - i - 1) <= 2 and all(len(x) <= 3 or x in ("info", "mobi") for x in labels[i + 1:]):
                    return got
        return None

    def _lookup_ip(self, ip: str) -> tuple[str, str] | None:
        # inet_pton reads the addresses capture writes (dotted quad, RFC 5952 text) about 5x faster than
        # ipaddress; whatever it refuses (a scope id, hostile text, not a string) goes to ipaddress as before
        try:
            if ":" in ip:
                x, shifts = int.from_bytes(_pton(_AF_INET6, ip), "big"), self._shifts6
            else:
                x, shifts = int.from_bytes(_pton(_AF_INET, ip), "big"), self._shifts4
        except (OSError, ValueError, TypeError):
            try:
                a = ipaddress.ip_address(ip)
            except ValueError:
                return None
            x, shifts = int(a), (self._shifts4 if a.version == 4 else self._shifts6)
        for sh, table in shifts:
            got = table.get((x >> sh) << sh)
            if got:
                return got
        return None

    # ------------------------------------------------------------------ verdict

    def apply(self, s: FlowSample, v: Verdict) -> None:
        """Fill application/category from the host, or from the addresses when DPI found nothing."""
        h = v.host
        if h and h != h.lower() and v.app_protocol not in HOST_CASE_KEPT:
            v.host = h.lower()
        if v.host and not v.application:
            got = self.lookup_host(v.host)
            if got:
                v.application, cat = got
                if not v.category:
                    v.category = cat
        if v.application:
            if not v.category:
                v.category = self.categories.get(v.application, "")
        elif not v.host and v.tls is not None and v.tls.server_names:
            # no SNI: the server certificate's names say which service it is (nDPI does the same)
            for name in v.tls.server_names[:8]:
                got = self.lookup_host(name[2:] if name.startswith("*.") else name)
                if got:
                    v.application, cat = got
                    if not v.category:
                        v.category = cat
                    break
        if not v.application and not v.host:
            got = self.lookup_ip(s.dst_ip) or self.lookup_ip(s.src_ip)
            if got:
                v.application, cat = got
                if not v.category:
                    v.category = cat
        if v.application and v.app_protocol in self.voip_protocols:
            call = self.voip_apps.get(v.application)
            if call:
                v.application = call
                v.category = self.categories.get(call, "VoIP")
        if not v.category and v.app_protocol != "Unknown":
            v.category = self.proto_categories.get(v.app_protocol, "")


# nDPI lower-cases host names (HTTP Host, TLS/QUIC SNI, DNS/LLMNR/MDNS/DHCP names), but not the SSH
# software versions reported in the same field.  (It also keeps only a name's last 79 characters;
# we keep the whole name, up to the verdict's limit, for the records.)
HOST_CASE_KEPT = frozenset({"SSH"})


def _load_json(path: Path, missing: str) -> dict:
    """A data file's JSON, or {} with a warning naming what is then missing."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        log.warning(missing, e)
        return {}


def load_apps(data_dir: Path = DATA_DIR) -> Apps:
    apps = _load_json(data_dir / "apps.json", "no application data (%s): applications stay empty")
    ports = _load_json(data_dir / "ports.json", "no port data (%s): port guesses from dissectors only")
    cats = _load_json(data_dir / "categories.json", "no protocol categories (%s)")
    voip = _load_json(data_dir / "voip_apps.json", "no call-service data (%s)")
    return Apps(apps, ports, cats, voip)


_default: Apps | None = None


def default_apps() -> Apps:
    global _default
    if _default is None:
        _default = load_apps()
    return _default
