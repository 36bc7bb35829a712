"""DNS (RFC 1035, 3596, 2782, 6891), mDNS (RFC 6762) and LLMNR (RFC 4795).

``parse_message`` is a bounds-checked DNS message parser used both by the
dissector and by ``Engine.dns_record`` (the DNS log).  It returns None for
anything that is not a plausible DNS message and never raises.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from services.classify.dissectors.base import Dissector, Match
from services.classify.dissectors.breadth_util import ordered
from services.classify.dissectors.p2p import dnscrypt_app
from shared.models import DnsAnswer, FlowSample, Verdict
from shared.text import represent, truncate

QTYPES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT", 17: "RP",
    18: "AFSDB", 24: "SIG", 25: "KEY", 28: "AAAA", 29: "LOC", 33: "SRV", 35: "NAPTR", 36: "KX",
    37: "CERT", 39: "DNAME", 41: "OPT", 42: "APL", 43: "DS", 44: "SSHFP", 45: "IPSECKEY", 46: "RRSIG",
    47: "NSEC", 48: "DNSKEY", 49: "DHCID", 50: "NSEC3", 51: "NSEC3PARAM", 52: "TLSA", 53: "SMIMEA",
    55: "HIP", 59: "CDS", 60: "CDNSKEY", 61: "OPENPGPKEY", 62: "CSYNC", 63: "ZONEMD", 64: "SVCB",
    65: "HTTPS", 99: "SPF", 108: "EUI48", 109: "EUI64", 249: "TKEY", 250: "TSIG", 251: "IXFR",
    252: "AXFR", 255: "ANY", 256: "URI", 257: "CAA", 32768: "TA", 32769: "DLV",
}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
          6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE"}


class _Bad(Exception):
    pass


@dataclass
class Answer:
    name: str
    rtype: str
    ttl: int
    data: str

    def as_model(self) -> DnsAnswer:
        return DnsAnswer(name=_clean(self.name, 1024), rtype=self.rtype[:16], ttl_s=max(0, self.ttl),
                         data=_clean(self.data, 2048))


@dataclass
class Message:
    txid: int
    is_response: bool
    opcode: int
    rcode: str
    qdcount: int
    qname: str = ""
    qtype: str = ""
    qtype_num: int = 0
    answers: list[Answer] = field(default_factory=list)
    truncated: bool = False


def _clean(s: str, limit: int) -> str:
    s = s[:limit]
    return s if s.isprintable() else "".join(c if c.isprintable() else "?" for c in s)


def read_name(b: bytes, pos: int) -> tuple[str, int]:
    """Read a (possibly compressed) name at pos; returns (name, position after it)."""
    labels: list[str] = []
    end_pos = -1
    jumps = 0
    n = len(b)
    total = 0
    while True:
        if pos >= n:
            raise _Bad
        ln = b[pos]
        if ln == 0:
            pos += 1
            break
        if ln & 0xC0 == 0xC0:
            if pos + 1 >= n:
                raise _Bad
            if end_pos < 0:
                end_pos = pos + 2
            pos = ((ln & 0x3F) << 8) | b[pos + 1]
            jumps += 1
            if jumps > 32:
                raise _Bad
            continue
        if ln & 0xC0:
            raise _Bad                      # extended label types: not supported
        pos += 1
        if pos + ln > n:
            raise _Bad
        labels.append(b[pos:pos + ln].decode("latin-1"))
        total += ln + 1
        if total > 255:
            raise _Bad
        pos += ln
    return ".".join(labels), (end_pos if end_pos >= 0 else pos)


def _rdata(b: bytes, pos: int, ln: int, t: int) -> str:
    d = b[pos:pos + ln]
    if t == 1 and ln == 4:
        return str(ipaddress.IPv4Address(d))
    if t == 28 and ln == 16:
        return str(ipaddress.IPv6Address(d))
    if t in (2, 5, 12, 39):
        return read_name(b, pos)[0]
    if t == 15 and ln >= 3:
        return "%d %s" % ((d[0] << 8) | d[1], read_name(b, pos + 2)[0])
    if t == 33 and ln >= 7:
        return "%d %d %d %s" % ((d[0] << 8) | d[1], (d[2] << 8) | d[3], (d[4] << 8) | d[5], read_name(b, pos + 6)[0])
    if t == 16 or t == 99:
        parts, i = [], 0
        while i < ln:
            k = d[i]
            parts.append(d[i + 1:i + 1 + k].decode("utf-8", "replace"))
            i += 1 + k
        return " ".join(parts)
    if t == 6:
        mname, p2 = read_name(b, pos)
        rname, p3 = read_name(b, p2)
        if p3 + 20 <= pos + ln:
            serial = int.from_bytes(b[p3:p3 + 4], "big")
            return "%s %s %d" % (mname, rname, serial)
        return "%s %s" % (mname, rname)
    return d[:64].hex()


def parse_message(b: bytes, max_answers: int = 64) -> Message | None:
    """Parse a DNS message; None when it is not one (never raises)."""
    try:
        return _parse(b, max_answers)
    except (_Bad, IndexError, ValueError, UnicodeDecodeError):
        return None


def _parse(b: bytes, max_answers: int) -> Message | None:
    if len(b) < 12:
        return None
    flags = (b[2] << 8) | b[3]
    qd = (b[4] << 8) | b[5]
    an = (b[6] << 8) | b[7]
    ns = (b[8] << 8) | b[9]
    ar = (b[10] << 8) | b[11]
    if qd > 64 or an > 512 or ns > 512 or ar > 512:
        return None
    msg = Message(txid=(b[0] << 8) | b[1], is_response=bool(flags & 0x8000), opcode=(flags >> 11) & 0xF,
                  rcode=RCODES.get(flags & 0xF, str(flags & 0xF)), qdcount=qd)
    pos = 12
    for i in range(qd):
        name, pos = read_name(b, pos)
        if pos + 4 > len(b):
            raise _Bad
        t = (b[pos] << 8) | b[pos + 1]
        pos += 4
        if i == 0:
            msg.qname, msg.qtype_num, msg.qtype = name, t, QTYPES.get(t, str(t))
    try:
        for _ in range(an):
            if len(msg.answers) >= max_answers:
                break
            name, pos = read_name(b, pos)
            if pos + 10 > len(b):
                raise _Bad
            t = (b[pos] << 8) | b[pos + 1]
            ttl = int.from_bytes(b[pos + 4:pos + 8], "big")
            ln = (b[pos + 8] << 8) | b[pos + 9]
            pos += 10
            if pos + ln > len(b):
                raise _Bad
            try:
                data = _rdata(b, pos, ln, t)
            except (_Bad, IndexError, ValueError):
                data = ""
            msg.answers.append(Answer(name, QTYPES.get(t, str(t)), ttl & 0x7FFFFFFF, data))
            pos += ln
    except (_Bad, IndexError):
        msg.truncated = True          # keep the question and the answers read so far
    return msg


@lru_cache(maxsize=4096)
def _parse_cached(b: bytes) -> Message | None:
    """parse_message memoised: every sample of a flow carries the same first datagrams again."""
    return parse_message(b)


_PORT_NAMES = {5353: "MDNS", 5355: "LLMNR"}

# host names as nDPI reports them: letters, digits, '-', '_', '.' kept; other ASCII -> '_';
# bytes outside printable ASCII -> '?'
_HOST_MAP = {i: "_" for i in range(0x20, 0x7F) if not (chr(i).isalnum() or chr(i) in "-_.")}
_HOST_MAP.update({i: "?" for i in list(range(0, 0x20)) + list(range(0x7F, 0x100))})


# nDPI keeps a flow's host name in an 80-byte buffer and, when a name is longer, keeps its end
# (ndpi_hostname_sni_set): a DNS flow is named by the last 79 characters (the DNS log keeps all)
NDPI_HOST_MAX = 79


def host_text(name: str) -> str:
    return name[-NDPI_HOST_MAX:].translate(_HOST_MAP)


def answer_text(name: str) -> str:
    """An answer name as text: UTF-8 where it decodes (mDNS instance names), else as is."""
    try:
        return name.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return name


def _plausible(m: Message, strict: bool) -> bool:
    if m.opcode not in (0, 1, 2, 4, 5):
        return False
    if m.qdcount == 0 and not m.answers and not (m.is_response and m.opcode == 1):
        return False
    if strict:
        return m.qdcount == 1 and m.qtype_num in QTYPES and (not m.qname or m.qname.isprintable())
    return True


def _question_name(b: bytes) -> str:
    """The first question's name read leniently (header counts ignored), '' when unreadable."""
    if len(b) < 17 or not ((b[4] << 8) | b[5]):
        return ""
    try:
        name, pos = read_name(b, 12)
    except (_Bad, IndexError):
        return ""
    return name if pos + 4 <= len(b) else ""


def _last_query_name(payloads: list[bytes]) -> str:
    """As nDPI: until a reply comes, every query (UDP) names the flow again, so the name is the last
    one read from a query header nDPI accepts (QR 0, 1-16 questions, no answer or authority records
    unless a dynamic update); other datagrams are skipped."""
    name = ""
    for b in payloads[:8]:
        if len(b) < 12:
            continue
        flags, qd = (b[2] << 8) | b[3], (b[4] << 8) | b[5]
        if flags & 0x8000 or not 0 < qd <= 16 or not ((flags & 0x2800) == 0x2800 or b[6:10] == b"\0\0\0\0"):
            continue
        name = _question_name(b) or name
    return name


def _valid_header(b: bytes, mdns: bool) -> tuple[bool, bool, int, int, int]:
    """nDPI's check of a DNS header (dns.c is_valid_dns): (valid, is_response, qdcount, ancount,
    answer+authority+additional records).  A query has at most 16 questions and is a standard,
    inverse or update query or carries no answer/authority records; a response has 1-16 questions
    (an mDNS one may have none) and 1-16 records in some section or none at all; a bare 12-byte
    header with every count 0 is an empty response."""
    if len(b) < 12:
        return False, False, 0, 0, 0
    flags = (b[2] << 8) | b[3]
    qd, an, ns, ar = (b[4] << 8) | b[5], (b[6] << 8) | b[7], (b[8] << 8) | b[9], (b[10] << 8) | b[11]
    resp = bool(flags & 0x8000)
    if not resp:
        ok = qd <= 16 and ((flags & 0x2800) == 0x2800 or (flags & 0xFCF0) == 0 or (flags & 0xFCFF) == 0x0800
                           or (an == 0 and ns == 0))
    else:
        ok = ((0 < qd <= 16 or (mdns and qd == 0))
              and (0 < an <= 16 or 0 < ns <= 16 or 0 < ar <= 16 or an == ns == ar == 0)) \
            or (qd == an == ns == ar == 0 and len(b) == 12)
    return ok, resp, qd, an, an + ns + ar


# nDPI inspects the packet that classified a DNS flow and then up to 5 more ("extra dissection")
_NDPI_DNS_PACKETS = 6


def ndpi_dns_name(s: FlowSample, mdns: bool = False, packets: int = _NDPI_DNS_PACKETS) -> tuple[str | None, bool]:
    """The name nDPI reports for a DNS flow over UDP, and whether nDPI has stopped looking.

    nDPI (dns.c) reads every datagram in arrival order: each valid message with a question (or an
    answer) names the flow again from the name at offset 12, so later queries overwrite earlier
    ones; a response carrying any record ends the inspection (dns.c keep_extra_dissection), as
    does a NOERROR response without records (what nDPI's own results show, e.g. its dns.pcap)
    and the sixth datagram read.
    Invalid datagrams after the first are skipped.  (None, False) when the first datagram is not
    a valid header (nDPI then leaves DNS aside).  LLMNR is read from its first packet only
    (``packets=1``: nDPI never reads on after classifying LLMNR)."""
    name: str | None = None
    seen = 0
    for _src, b in ordered(s, 16):
        ok, resp, qd, an, records = _valid_header(b, mdns)
        if seen == 0 and not ok:
            return None, False
        seen += 1
        if ok:
            if qd or an:
                try:
                    name = read_name(b, 12)[0]
                except (_Bad, IndexError):
                    name = name if name is not None else ""
            if resp and (records or not b[3] & 0x0F):
                return name, True
        if seen >= packets:
            return name, True
    return name, False


class DnsDissector(Dissector):
    """DNS, MDNS and LLMNR over UDP and TCP."""

    name = "DNS"
    transports = frozenset({"UDP", "TCP"})
    ports = frozenset({53, 5353, 5355})

    def could_be(self, s: FlowSample) -> bool:
        p = s.src_payloads or s.dst_payloads
        if not p:
            return False
        first = p[0]
        if s.src_port in self.ports or s.dst_port in self.ports:
            need = 2 if s.transport == "TCP" else 12
            # (nDPI reads every packet: a short first datagram does not hide the messages after it)
            return len(first) >= need or any(len(x) >= need for x in s.src_payloads[1:8] + s.dst_payloads[:8])
        # elsewhere only a standard query followed by its answer counts (see dissect): the first
        # message must be a query (QR 0, opcode 0) with one question and no answers
        if not (s.src_payloads and s.dst_payloads):
            return False
        o = 2 if s.transport == "TCP" else 0
        return (len(first) >= o + 17 and not first[o + 2] & 0xF8 and first[o + 4] == 0 and first[o + 5] == 1
                and first[o + 6] == 0 and first[o + 7] == 0)

    def _messages(self, s: FlowSample, payloads: list[bytes]) -> list[Message]:
        out = []
        if s.transport == "TCP":
            data = b"".join(payloads)
            pos = 0
            while pos + 2 <= len(data) and len(out) < 4:
                ln = (data[pos] << 8) | data[pos + 1]
                if ln < 12:
                    break
                m = _parse_cached(data[pos + 2:pos + 2 + ln])
                if m is None:
                    break
                out.append(m)
                pos += 2 + ln
            return out
        for d in payloads[:8]:
            m = _parse_cached(d)
            if m is not None:
                out.append(m)
            else:
                return []
        return out

    @staticmethod
    def _mdns(s: FlowSample, cm: list[Message], sm: list[Message], v: Verdict) -> Match:
        """mDNS: queries go to a multicast group and get no reply in the same flow, so nDPI reads
        on until the first response (or its sixth packet); that packet names the flow."""
        order: list[Message] = []
        i = j = 0
        for c in s.payload_dirs[:6] if len(s.payload_dirs) == len(s.src_payloads) + len(s.dst_payloads) else "":
            if c == "s":
                if i < len(cm):
                    order.append(cm[i])
                i += 1
            else:
                if j < len(sm):
                    order.append(sm[j])
                j += 1
        if not order:
            order = (cm + sm)[:6]
        stop = next((m for m in order if m.is_response), None)
        last = stop or order[-1]
        name = last.qname or (last.answers[0].name if last.answers else "")
        if name:
            v.host = host_text(name) if last.qname else answer_text(name)
        return Match.FINAL if stop is not None or len(order) >= 6 else Match.PARTIAL

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        std = s.src_port in self.ports or s.dst_port in self.ports
        cm = self._messages(s, s.src_payloads)
        sm = self._messages(s, s.dst_payloads)
        msgs = cm + sm
        if not msgs and std and s.transport == "UDP":
            # damaged messages on a DNS port: still DNS, with the first question's name if it reads
            name = next((n for n in map(_question_name, s.dst_payloads[:1] + s.src_payloads[:1]) if n), "")
            if not s.dst_payloads and len(s.src_payloads) > 1:
                name = _last_query_name(s.src_payloads) or name
            if name:
                port = s.dst_port if s.dst_port in _PORT_NAMES else s.src_port
                v.app_protocol = _PORT_NAMES.get(port, "DNS")
                v.host = host_text(name)
                return Match.PARTIAL
            return Match.NO
        if not msgs or not all(_plausible(m, not std) for m in msgs):
            return Match.NO
        if not std:
            # a non-standard port needs a query/response pair with the same id
            if not (cm and sm and cm[0].txid == sm[0].txid and cm[0].is_response != sm[0].is_response):
                return Match.NO
        port = s.dst_port if s.dst_port in _PORT_NAMES else s.src_port
        v.app_protocol = _PORT_NAMES.get(port, "DNS")
        if v.app_protocol == "MDNS":
            return self._mdns(s, cm, sm, v)
        # as nDPI: the first successful reply (or the second reply) ends the inspection and its
        # question names the flow; over UDP nDPI's reading is followed packet by packet instead
        # (ndpi_dns_name), which decides the name and when the verdict is final
        walk = None
        if std and s.transport == "UDP":
            walk = ndpi_dns_name(s, packets=1 if v.app_protocol == "LLMNR" else _NDPI_DNS_PACKETS)
        responses = [m for m in sm + cm if m.is_response]
        resp = next((m for m in responses[:2] if m.rcode == "NOERROR"), None)
        done = resp is not None
        if resp is None and responses:
            # error replies (NXDOMAIN, ...) do not end nDPI's inspection; the second reply does
            resp = responses[1] if len(responses) >= 2 else responses[0]
        q = (resp if resp is not None and resp.qname else None) or next((m for m in msgs if m.qname), None)
        if q is not None:
            v.host = host_text(q.qname)
            if q.qname[:2] == "2.":
                crypt = dnscrypt_app(q.qname)      # DNSCrypt certificate queries in DNS format
                if crypt:
                    v.app_protocol = crypt
                    v.host = ""     # as nDPI's DNSCrypt dissector: the certificate query names no host
            if not responses and s.transport == "UDP" and len(s.src_payloads) > 1:
                v.host = host_text(_last_query_name(s.src_payloads) or q.qname)
            if walk is not None and walk[0] and v.host:
                # as nDPI: the name of the last message it read before it stopped looking
                v.host = host_text(walk[0])
        else:
            a = next((m for m in msgs if m.answers), None)
            if a is not None:
                first = a.answers[0]
                # an inverse query (opcode 1) asks for the names of the address in its answer section
                v.host = answer_text(first.data if a.opcode == 1 and not first.name else first.name)
        if resp is not None:
            v.extra["dns_rcode"] = resp.rcode
            if q is not None and q.qtype:
                v.extra["dns_qtype"] = q.qtype
            addrs = [a.data for a in resp.answers if a.rtype in ("A", "AAAA")][:8]
            if addrs:
                v.extra["dns_answers"] = " ".join(addrs)
        if walk is not None and walk[0] is not None:
            # settled once nDPI has stopped reading (a later packet could rename the flow before)
            return Match.FINAL if walk[1] else Match.PARTIAL
        if resp is not None and (done or len(responses) >= 2 or len(msgs) >= 4):
            return Match.FINAL
        return Match.PARTIAL


# --------------------------------------------------------------------------- the DNS log's parser

CLASSES = {1: "IN", 3: "CH", 4: "HS", 254: "NONE", 255: "ANY"}
_FLAG_BITS = (("aa", 0x0400), ("tc", 0x0200), ("rd", 0x0100), ("ra", 0x0080), ("z", 0x0040), ("ad", 0x0020),
              ("cd", 0x0010))
MAX_RECORDS = 512        # per section, as DnsRecord allows


class Malformed(Exception):
    """A message that is not well-formed DNS; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class LogRecord:
    name: str
    rtype: str
    rclass: str
    ttl: int
    data: str

    def as_dict(self) -> dict[str, Any]:
        """The record's DnsAnswer fields, cut to the model's limits (validated with the DnsRecord holding it)."""
        return {"name": truncate(self.name, 1024), "rtype": self.rtype[:16], "rclass": self.rclass[:16],
                "ttl_s": max(0, int(self.ttl)), "data": truncate(self.data, 2048)}

    def as_model(self) -> DnsAnswer:
        return DnsAnswer(**self.as_dict())


@dataclass
class LogMessage:
    """Everything the DNS log keeps of one message; ``error`` set when parsing stopped early."""

    txid: int = 0
    flags: int = 0
    is_response: bool = False
    opcode: int = 0
    rcode: str = ""
    questions: list[tuple[str, str, str]] = field(default_factory=list)
    answers: list[LogRecord] = field(default_factory=list)
    authorities: list[LogRecord] = field(default_factory=list)
    additionals: list[LogRecord] = field(default_factory=list)
    error: str = ""

    @property
    def flag_names(self) -> list[str]:
        return [n for n, bit in _FLAG_BITS if self.flags & bit]


_NEEDS_WORK = re.compile(rb"[^\x21-\x5b\x5d-\x7e]|\.")    # anything but printable ASCII without \ and .


def _label_text(label: bytes) -> str:
    """A label as represented text; a dot inside a label is written ``\\x2e`` so names stay injective.
    Remembered (labels repeat: a query's names come back in its answers, popular names in many messages)."""
    t = _LABELS.get(label)
    if t is None:
        if _NEEDS_WORK.search(label) is None:
            t = label.decode("ascii")
        else:
            t = represent(label)
            if "." in t:
                t = t.replace(".", "\\x2e")
        if len(_LABELS) >= _LABELS_MAX:
            _LABELS.clear()
        _LABELS[label] = t
    return t


_LABELS: dict[bytes, str] = {}
_LABELS_MAX = 16384          # labels of at most 63 bytes, texts of at most 4 characters a byte: < 7 MB


def log_name(b: bytes, pos: int) -> tuple[str, int]:
    """Read a (possibly compressed) name for the log; raises Malformed with the reason."""
    labels: list[str] = []
    end_pos = -1
    n = len(b)
    total = 0
    seen: set[int] = set()
    while True:
        if pos >= n:
            raise Malformed("name runs past the end")
        ln = b[pos]
        if ln == 0:
            pos += 1
            break
        t = ln & 0xC0
        if t == 0xC0:
            if pos + 1 >= n:
                raise Malformed("name runs past the end")
            if end_pos < 0:
                end_pos = pos + 2
            target = ((ln & 0x3F) << 8) | b[pos + 1]
            if target in seen or len(seen) >= 128:
                raise Malformed("compression loop")
            seen.add(target)
            pos = target
            continue
        if t:
            raise Malformed("label type 0x%02x" % ln)
        pos += 1
        if pos + ln > n:
            raise Malformed("name runs past the end")
        total += ln + 1
        if total > 255:
            raise Malformed("name longer than 255 bytes")
        labels.append(_label_text(b[pos:pos + ln]))
        pos += ln
    return (".".join(labels) if labels else "."), (end_pos if end_pos >= 0 else pos)


def _log_rdata(b: bytes, pos: int, ln: int, t: int) -> str:
    d = b[pos:pos + ln]
    try:
        if t == 1 and ln == 4:
            return str(ipaddress.IPv4Address(d))
        if t == 28 and ln == 16:
            return str(ipaddress.IPv6Address(d))
        if t in (2, 5, 12, 39):
            return log_name(b, pos)[0]
        if t == 15 and ln >= 3:
            return "%d %s" % ((d[0] << 8) | d[1], log_name(b, pos + 2)[0])
        if t == 33 and ln >= 7:
            return "%d %d %d %s" % ((d[0] << 8) | d[1], (d[2] << 8) | d[3], (d[4] << 8) | d[5],
                                    log_name(b, pos + 6)[0])
        if t in (16, 99):
            parts, i = [], 0
            while i < ln:
                k = d[i]
                parts.append(represent(d[i + 1:i + 1 + k]).replace(" ", "\\x20"))
                i += 1 + k
            return " ".join(parts)
        if t == 6:
            mname, p2 = log_name(b, pos)
            rname, p3 = log_name(b, p2)
            if p3 + 20 <= pos + ln:
                nums = [int.from_bytes(b[p3 + 4 * k:p3 + 4 * k + 4], "big") for k in range(5)]
                return "%s %s %d %d %d %d %d" % (mname, rname, *nums)
            return "%s %s" % (mname, rname)
    except Malformed:
        pass
    return d[:1000].hex()


def parse_log(b: bytes) -> LogMessage:
    """Parse a DNS message for the log (never raises): every section, names as represented text;
    ``error`` names the first problem (records read before it are kept)."""
    m = LogMessage()
    if len(b) < 12:
        m.error = "shorter than a DNS header"
        if len(b) >= 2:
            m.txid = (b[0] << 8) | b[1]
        return m
    flags = (b[2] << 8) | b[3]
    m.txid = (b[0] << 8) | b[1]
    m.flags = flags
    m.is_response = bool(flags & 0x8000)
    m.opcode = (flags >> 11) & 0xF
    m.rcode = RCODES.get(flags & 0xF, str(flags & 0xF))
    qd = (b[4] << 8) | b[5]
    counts = ((b[6] << 8) | b[7], (b[8] << 8) | b[9], (b[10] << 8) | b[11])
    try:
        if qd > 64 or max(counts) > MAX_RECORDS:
            raise Malformed("record count too large")
        pos = 12
        for _ in range(qd):
            name, pos = log_name(b, pos)
            if pos + 4 > len(b):
                raise Malformed("question runs past the end")
            t = (b[pos] << 8) | b[pos + 1]
            c = (b[pos + 2] << 8) | b[pos + 3]
            pos += 4
            m.questions.append((name, QTYPES.get(t, str(t)), CLASSES.get(c & 0x7FFF, str(c))))
        for count, out in zip(counts, (m.answers, m.authorities, m.additionals)):
            for _ in range(count):
                name, pos = log_name(b, pos)
                if pos + 10 > len(b):
                    raise Malformed("record runs past the end")
                t = (b[pos] << 8) | b[pos + 1]
                c = (b[pos + 2] << 8) | b[pos + 3]
                ttl = int.from_bytes(b[pos + 4:pos + 8], "big")
                ln = (b[pos + 8] << 8) | b[pos + 9]
                pos += 10
                if pos + ln > len(b):
                    raise Malformed("record data runs past the end")
                cls = str(c) if t == 41 else CLASSES.get(c & 0x7FFF, str(c))
                out.append(LogRecord(name, QTYPES.get(t, str(t)), cls, ttl & 0x7FFFFFFF, _log_rdata(b, pos, ln, t)))
                pos += ln
    except Malformed as exc:
        m.error = exc.reason
    except (IndexError, ValueError) as exc:   # a parser gap: still a record, with the reason
        m.error = "unparsable: %s" % type(exc).__name__
    return m
