"""dns_tunnel, from capture's DNS PacketEvents (payload = the DNS message)."""

from __future__ import annotations

import math
import re
from collections import Counter

from shared.models import Alert, PacketEvent
from shared.settings import DetectSettings

from .incidents import IncidentTable, LruDict, SlidingCount, clean

QTYPE_NULL, QTYPE_TXT = 10, 16
_QTYPES = {1: "A", 2: "NS", 5: "CNAME", 10: "NULL", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV",
           64: "SVCB", 65: "HTTPS", 255: "ANY"}
# second-level labels under two-letter country codes that are public suffixes (co.uk, com.au, ...)
_SLD = frozenset(("co", "com", "net", "org", "gov", "edu", "ac", "or", "ne", "go", "gob", "mil", "nic", "ltd", "plc"))
_LOCAL_PORTS = (5353, 5355)
STRONG_LABEL_LEN = 40
_BASE64_PUNCT = re.compile(rb"[=+/*]")  # mDNS, LLMNR: names full of device UUIDs, never tunnels


def parse_question(msg: bytes) -> tuple[bool, list[bytes], int] | None:
    """(is_response, labels, qtype) of a DNS message's first question; None when malformed."""
    if len(msg) < 17:
        return None
    if msg[4] == 0 and msg[5] == 0:
        return None  # no question
    labels: list[bytes] = []
    i = 12
    end = len(msg)
    total = 0
    while True:
        if i >= end:
            return None
        n = msg[i]
        if n == 0:
            i += 1
            break
        if n > 63:
            return None  # compression pointer or reserved: not in a well-formed question
        labels.append(msg[i + 1:i + 1 + n])
        i += 1 + n
        total += n + 1
        if total > 255 or len(labels) > 127:
            return None
    if i + 2 > end:
        return None
    return bool(msg[2] & 0x80), labels, (msg[i] << 8) | msg[i + 1]


def entropy(s: bytes) -> float:
    n = len(s)
    if n == 0:
        return 0.0
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def registered_domain(labels: list[bytes]) -> int:
    """How many trailing labels form the registered domain (2, or 3 under co.uk-like suffixes)."""
    if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2].lower() in _SLD_B:
        return 3
    return 2


_SLD_B = frozenset(x.encode() for x in _SLD)


def _text(labels: list[bytes]) -> str:
    return clean(b".".join(labels).decode("latin-1"), 255)


class DnsTunnelDetector:
    """Per registered domain: queries with long or high-entropy subdomains, and TXT/NULL query volume."""

    def __init__(self, s: DetectSettings, table: IncidentTable) -> None:
        self.table = table
        self.label_len = s.dns_tunnel_label_len
        self.min_len = s.dns_tunnel_min_len
        self.min_entropy = s.dns_tunnel_entropy
        self.limit = s.dns_tunnel_queries
        self.txt_limit = s.dns_tunnel_txt_queries
        self.window = s.dns_tunnel_window_s
        self.domains: LruDict = LruDict(s.detect_max_tracked)  # domain -> [suspicion score, TXT/NULL queries, clients, recent names, suspicious queries]
        self.malformed = 0

    def on_packet(self, p: PacketEvent) -> list[Alert]:
        if not p.payload or p.dst_port in _LOCAL_PORTS or p.src_port in _LOCAL_PORTS:
            return []
        q = parse_question(p.payload)
        if q is None:
            self.malformed += 1
            return []
        is_response, labels, qtype = q
        if is_response or len(labels) < 2:
            return []
        last = labels[-1].lower()
        if last in (b"local", b"arpa"):
            return []
        nreg = registered_domain(labels)
        if len(labels) <= nreg and qtype not in (QTYPE_TXT, QTYPE_NULL):
            return []
        sub = labels[:-nreg]
        longest = max((len(x) for x in sub), default=0)
        suspicious = longest >= self.label_len
        ent = 0.0
        if not suspicious and longest >= self.min_len:
            ent = max(entropy(x.lower()) for x in sub if len(x) >= self.min_len)
            suspicious = ent >= self.min_entropy
        # a long label carrying base64 punctuation is data, not a host name: one such query is enough
        strong = longest >= STRONG_LABEL_LEN and any(_BASE64_PUNCT.search(x) for x in sub if len(x) >= STRONG_LABEL_LEN)
        suspicious = suspicious or strong
        txt = qtype in (QTYPE_TXT, QTYPE_NULL)
        if not suspicious and not txt:
            return []
        domain = b".".join(labels[-nreg:]).lower()
        ts = p.timestamp
        entry = self.domains.get(domain)
        if entry is None:
            entry = self.domains.put(domain, [SlidingCount(self.window), SlidingCount(self.window), set(),
                                              LruDict(256), SlidingCount(self.window)])
        else:
            self.domains.touch(domain)
        if suspicious:
            # distinct names only: a client re-resolving one long name is no tunnel
            seen: LruDict = entry[3]
            qname = b".".join(sub).lower()
            last = seen.get(qname)
            if last is not None and ts - last < self.window:
                suspicious = False
            seen.put(qname, ts)
        if not suspicious and not txt:
            return []
        score = entry[0].add(ts, self.limit if strong else 1) if suspicious else entry[0].count(ts)
        n_s = entry[4].add(ts) if suspicious else entry[4].count(ts)
        n_t = entry[1].add(ts) if txt else entry[1].count(ts)
        # the flow's src is whoever sent its first packet; the querier sent this query
        client, server, sport = (p.src_ip, p.dst_ip, p.dst_port) if p.from_src else (p.dst_ip, p.src_ip, p.src_port)
        clients: set = entry[2]
        if len(clients) < 256:
            clients.add(client)
        table = self.table
        key = ("domain", domain)
        inc = table.get("dns_tunnel", key)
        new = False
        if inc is not None:
            table.hit("dns_tunnel", key, ts)
        elif score >= self.limit or n_t >= self.txt_limit:
            inc, new = table.hit("dns_tunnel", key, ts, int(max(n_s, n_t)))
            if inc is None:
                return []
            inc.severity = "high"
            inc.transport = p.transport
            inc.dst_ip, inc.dst_port = server, sport
            inc.flow_id = p.flow_id
            inc.rate_unit = "queries/s"
            inc.started_at = inc.first_seen = max(entry[4].since if n_s else entry[1].since, ts - self.window)
        else:
            return []
        name = _text(labels)
        dom = clean(domain.decode("latin-1"), 255)
        inc.note(source=client, target=dom)
        inc.src_ip = client if len(clients) == 1 else inc.src_ip or client
        inc.details = {
            "domain": dom,
            "example_query": name,
            "qtype": _QTYPES.get(qtype, str(qtype)),
            "suspicious_names_in_window": str(int(n_s)),
            "txt_null_queries_in_window": str(int(n_t)),
            "longest_label": str(longest),
            "clients": str(len(clients)),
        }
        if ent:
            inc.details["entropy"] = f"{ent:.2f}"
        if strong:
            inc.details["exfiltration_like"] = "true"
        why = []
        if n_s:
            why.append(f"{int(n_s)} distinct long/high-entropy names")
        if n_t:
            why.append(f"{int(n_t)} TXT/NULL queries")
        inc.message = f"possible DNS tunnel via {dom}: " + ", ".join(why) + f" in {self.window:g} s (e.g. {name[:120]})"
        return [table.alert(inc, "open")] if new else []

    def prune(self, now: float) -> None:
        pass  # bounded by the LRU cap; windows age by themselves
