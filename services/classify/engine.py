"""The built-in DPI engine: dissectors, then applications, then a port guess.

``Engine.classify`` turns one ``FlowSample`` into one ``Verdict``.  It is
stateless per sample (everything needed is in the sample), so any number of
classify replicas can share the work.

Order of work for one sample:

1. every dissector of ``REGISTRY`` in order: ``could_be`` (cheap) then
   ``dissect``.  The first FINAL match wins; otherwise the first PARTIAL match
   is kept (later PARTIAL matches cannot override it, only a FINAL one can).
   A dissector that raises is counted in ``errors[name]`` and logged (rate
   limited); the others go on.
2. the application layer (``apps.Apps``): host/SNI (or certificate) patterns
   give the application and category; without a host, an address list gives
   the application.
3. optionally (``second``), another engine (libndpi) for flows still Unknown.
4. when still nothing: a guess from well-known ports, confidence ``port``;
   else an address-list application stands for the protocol, confidence
   ``ip`` (nDPI's "Match by IP").

A FINAL verdict is remembered per flow (bounded): samples of that flow still
in flight when capture stops sampling get the same answer without DPI.  An
HTTP verdict on a connection that stays open is not final, so capture keeps
sampling it (to its per-flow limits) for the HTTP log's further pairs.

``Engine.dns_record`` turns one DNS PacketEvent into one DnsRecord.  The only
state it keeps is a bounded table of recent queries (per replica), to pair a
response with its query and give it a round-trip time.
"""

from __future__ import annotations

import logging
import operator
import time
from collections import Counter
from typing import Any, Callable, Iterable

from services.classify.apps import Apps, default_apps
from services.classify.dissectors import REGISTRY, Dissector, Match
from services.classify.dissectors.http import wants_more as _http_wants_more

try:  # the breadth dissectors' declarative gates (see Engine._dissectors_for)
    from services.classify.dissectors import breadth_util as _bu
except ImportError:  # pragma: no cover
    _bu = None
from shared.text import RAW_CHARS as _RAW_CHARS, represent as _represent, truncate as _truncate
from shared.models import DnsRecord, FlowSample, PacketEvent, Verdict

log = logging.getLogger("flowtarget.classify.engine")

# Max lengths of the verdict's strings (shared/models.py); hostile payloads
# must not produce a verdict that fails validation downstream.
_STR_LIMITS = {"app_protocol": 64, "application": 64, "category": 64, "host": 512}
_ENVELOPE = ("timestamp", "probe", "flow_id", "transport", "src_ip", "src_port", "dst_ip", "dst_port", "vlan_id",
             "icmp_type", "icmp_code",
             "sample_seq_no", "trigger_time", "src_mac", "dst_mac", "vlan_ids", "src2dst_next_seq", "src2dst_ack",
             "dst2src_next_seq", "dst2src_ack")

#: envelope fields a verdict copies from its sample under the same name (new_verdict)
_SAME = ("timestamp", "probe", "flow_id", "transport", "src_ip", "src_port", "dst_ip", "dst_port", "vlan_id",
         "icmp_type", "icmp_code", "trigger_time", "src_mac", "dst_mac", "src2dst_next_seq", "src2dst_ack",
         "dst2src_next_seq", "dst2src_ack")
_same_of = operator.itemgetter(*_SAME)
_DNS_VALIDATE = DnsRecord.model_validate     # dns_record: the whole record in one call
_SAMPLE_NFIELDS = len(FlowSample.model_fields)


class _RateLimitedLog:
    """Log one line per key at most every ``interval_s`` seconds, with the count suppressed meanwhile."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def __call__(self, key: str, msg: str, *args: Any, exc_info: bool = False) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] += 1
            return
        self._last[key] = now
        n = self._suppressed.pop(key, 0)
        if n:
            msg += " (%d similar suppressed)"
            args = (*args, n)
        log.warning(msg, *args, exc_info=exc_info)


def clean_text(value: str, limit: int) -> str:
    """Printable label of at most ``limit`` characters (non-printable characters become ``?``, as
    nDPI writes host names): the verdict's protocol, application, category and host."""
    if value.isprintable():
        return value[:limit]
    return "".join(c if c.isprintable() else "?" for c in value[:limit])


_MAX_LEN: dict[tuple[type, str], int] = {}


def _max_len(cls: type, name: str) -> int:
    """The max_length of a model's string field (4096 when it has none)."""
    key = (cls, name)
    n = _MAX_LEN.get(key)
    if n is None:
        n = 4096
        for m in cls.model_fields[name].metadata:
            if getattr(m, "max_length", None):
                n = m.max_length
        _MAX_LEN[key] = n
    return n


def wire_field(value: str, limit: int) -> str:
    """A payload-derived metadata string as represented text (shared/text.py) of at most ``limit``
    characters: a dissector that left raw control characters in it gets them escaped, recoverably."""
    if _RAW_CHARS.search(value) is not None:
        value = _represent(value)
    return _truncate(value, limit) if len(value) > limit else value


class Engine:
    """Classifies flow samples; see the module docstring."""

    def __init__(
        self,
        registry: Iterable[Dissector] | None = None,
        apps: Apps | None = None,
        second: Callable[[FlowSample], tuple[str, ...] | None] | None = None,
        port_guess: bool = True,
        final_memo: int = 8192,
    ) -> None:
        self.registry: list[Dissector] = list(REGISTRY if registry is None else registry)
        # flows that already got a FINAL verdict from this replica: capture stops sampling them once the
        # verdict arrives, but samples already in flight still come; they get the same answer without DPI
        self.final_memo = final_memo
        self._finals: dict[tuple, Verdict] = {}
        self.apps = apps if apps is not None else default_apps()
        self.second = second
        self.port_guess = port_guess
        self.errors: Counter[str] = Counter()       # dissector name -> exceptions
        self.counters: Counter[str] = Counter()     # samples, dpi, port, ip, unknown, dns_bad, ...
        self._warn = _RateLimitedLog()
        # per transport: the dissectors that could apply (saves a call per dissector)
        self._by_transport: dict[str, list[tuple[Any, Any, Dissector, Any, Any]]] = {}
        self._gate_ports: frozenset[int] = frozenset()
        self._by_ports: dict[tuple[str, int, int, int, int], list[tuple[Any, Any, Dissector, Any, Any, Any, Any]]] = {}
        self._lists: dict[tuple[int, ...], list[tuple[Any, Any, Dissector, Any, Any, Any, Any]]] = {}
        for t in ("TCP", "UDP"):
            self._dissectors_for(t)
        self._ports = self._build_port_table()
        self._template = dict(Verdict(timestamp=0.0, probe="template").__dict__)
        self._dns_pending: dict[tuple, tuple[float, bool]] = {}   # (probe, flow_id, txid) -> (time, from_src)

    # ------------------------------------------------------------------ classify

    def _dissectors_for(self, transport: str) -> list[tuple[Any, Any, Dissector, Any, Any, Any, Any]]:
        """(could_be, dissect, dissector, gate ports, gate first bytes, simple, lead) for a transport, bound once.

        Dissectors built on ``breadth_util.Simple`` declare their cheap test as data
        (``port_gate`` + ``ports``, ``magic`` prefixes) and do not override ``could_be``; for
        them the engine applies the same test from an index (ports) or inline (first byte of
        the magic, then the prefixes), which skips the call without changing any answer (their
        ``could_be`` slot is None).  ``PortHint`` entries (never a match, ports only) are left out
        of the loop.  ``simple`` is ``(check, maxpk, result)`` for a ``Simple`` that keeps
        ``Simple.dissect``: the engine runs that loop itself over the sample's payloads in arrival
        order (the same test, without a call and a generator per dissector), else None.  ``lead`` is
        the dissector's declared ``lead`` gate for this transport, ``(n, frozenset of first bytes)``
        (see ``Dissector.lead``), else None.
        """
        lst = self._by_transport.get(transport)
        if lst is None:
            lst = []
            gate_ports = set(self._gate_ports)
            for d in self.registry:
                if transport not in d.transports:
                    continue
                could_be = d.could_be
                ports = first = simple = None
                if _bu is not None:
                    cls = type(d)
                    if cls.could_be is _bu.PortHint.could_be:
                        continue
                    if isinstance(d, _bu.Simple):
                        if cls.could_be is _bu.Simple.could_be:
                            could_be = None             # the engine's inline test, see _classify2
                            if d.port_gate:
                                ports = frozenset(d.ports)
                                gate_ports |= ports
                            if d.magic and all(d.magic):
                                first = frozenset(m[0] for m in d.magic)
                        if cls.dissect is _bu.Simple.dissect:
                            simple = (d.check, d.maxpk, d.result)
                if first is None:                   # a declared first-byte gate (Dissector.first_bytes)
                    fb = getattr(d, "first_bytes", None)
                    fb = fb.get(transport) if fb else None
                    if fb:
                        first = frozenset(fb)
                lead = getattr(d, "lead", None) if _bu is not None else None
                lead = lead.get(transport) if lead else None
                if lead is not None:
                    lead = (lead[0], frozenset(lead[1]))
                lst.append((could_be, d.dissect, d, ports, first, simple, lead))
            self._by_transport[transport] = lst
            self._gate_ports = frozenset(gate_ports)
            self._by_ports.clear()
            self._lists.clear()
        return lst

    def _candidates(self, s: FlowSample, a0: int = -1, b0: int = -1) -> list[tuple[Any, Any, Dissector, Any, Any, Any, Any]]:
        """The entries of ``_dissectors_for`` whose port gate and first-byte gate (magic) the sample passes;
        ``a0``/``b0``: the first byte of the first src/dst payload (-1: none).  Cached per (transport, gate
        ports, a0, b0): a few hundred keys in real traffic, each list shared by all keys that select it."""
        gp = self._gate_ports
        a = s.src_port if s.src_port in gp else -1
        b = s.dst_port if s.dst_port in gp else -1
        key = (s.transport, a, b, a0, b0)
        lst = self._by_ports.get(key)
        if lst is None:
            lst = [e for e in self._dissectors_for(s.transport)
                   if (e[3] is None or s.src_port in e[3] or s.dst_port in e[3])
                   and (e[4] is None or a0 in e[4] or b0 in e[4])]
            if len(self._by_ports) >= 8192:
                self._by_ports.clear()
                self._lists.clear()
            lst = self._lists.setdefault(tuple(map(id, lst)), lst)
            self._by_ports[key] = lst
        return lst

    def new_verdict(self, s: FlowSample) -> Verdict:
        """A Verdict with the sample's envelope and the fields block needs.

        Built from a validated template without re-validation: every value
        comes from the already validated sample, whose fields have the same
        constraints (this halves the cost of the most frequent allocation).
        """
        d = self._template.copy()
        sd = s.__dict__
        if type(s) is FlowSample and len(sd) >= _SAMPLE_NFIELDS:     # a validated sample: its values at once
            d.update(zip(_SAME, _same_of(sd)))
            d["sample_seq_no"] = sd["seq_no"]
            d["vlan_ids"] = list(sd["vlan_ids"])
            d["extra"] = {}
            d["http_transactions"] = []
        else:
            d.update(
            timestamp=s.timestamp, probe=s.probe, flow_id=s.flow_id, transport=s.transport,
            src_ip=s.src_ip, src_port=s.src_port, dst_ip=s.dst_ip, dst_port=s.dst_port, vlan_id=s.vlan_id,
            icmp_type=s.icmp_type, icmp_code=s.icmp_code, sample_seq_no=s.seq_no, trigger_time=s.trigger_time, src_mac=s.src_mac, dst_mac=s.dst_mac,
            vlan_ids=list(s.vlan_ids), src2dst_next_seq=s.src2dst_next_seq, src2dst_ack=s.src2dst_ack,
            dst2src_next_seq=s.dst2src_next_seq, dst2src_ack=s.dst2src_ack, extra={}, http_transactions=[],
            )
        v = Verdict.__new__(Verdict)
        _setattr = object.__setattr__
        _setattr(v, "__dict__", d)
        _setattr(v, "__pydantic_fields_set__", set(_ENVELOPE))
        _setattr(v, "__pydantic_extra__", None)
        _setattr(v, "__pydantic_private__", None)
        return v

    def classify(self, s: FlowSample) -> Verdict:
        self.counters["samples"] += 1
        if self.final_memo:
            key = (s.probe, s.source, s.flow_id, s.transport, s.src_ip, s.src_port, s.dst_ip, s.dst_port, s.vlan_id)
            done = self._finals.get(key)
            if done is not None:
                self.counters["memo"] += 1
                return self._from_final(s, done)
        v = self._classify(s)
        if v.final and self.final_memo and not s.final:
            if len(self._finals) >= self.final_memo:
                del self._finals[next(iter(self._finals))]       # oldest first
            self._finals[key] = v
        return v

    def _from_final(self, s: FlowSample, done: Verdict) -> Verdict:
        v = self.new_verdict(s)
        d, old = v.__dict__, done.__dict__
        for f in ("final", "app_protocol", "application", "category", "confidence", "host", "http", "tls", "quic", "ssh"):
            d[f] = old[f]
        d["http_transactions"] = list(old["http_transactions"])
        d["extra"] = dict(old["extra"])
        self.counters[v.confidence] += 1
        return v

    def _classify(self, s: FlowSample) -> Verdict:
        if _bu is None:
            return self._classify2(s)
        _bu.classifying(s)
        try:
            return self._classify2(s)
        finally:
            _bu.classifying(None)

    def _classify2(self, s: FlowSample) -> Verdict:
        v = self.new_verdict(s)
        final = False
        kept: str | None = None      # app_protocol of the first PARTIAL match
        kept_host = ""
        FINAL, PARTIAL = Match.FINAL, Match.PARTIAL
        NO = Match.NO
        sp, dp = s.src_payloads, s.dst_payloads
        a = sp[0] if sp else b""
        b = dp[0] if dp else b""
        a0 = a[0] if a else -1
        b0 = b[0] if b else -1
        any_payload = bool(sp or dp)
        olist = None                            # (from_src, payload) in arrival order, once
        # (the candidates passed their port gate and the first byte of their magic: same tests as could_be)
        for could_be, dissect, d, _ports, _first, simple, lead in self._candidates(s, a0, b0):
            if lead is not None:                # its declared lead bytes (Dissector.lead): NO without them
                if olist is None:
                    olist = _bu.arrival_order(s)
                lead_set = lead[1]
                for _from_src, p in (olist if lead[0] >= len(olist) else olist[:lead[0]]):
                    if p and p[0] in lead_set:
                        break
                else:
                    continue
            try:
                if could_be is None:            # Simple.could_be, its port gate already applied
                    magic = d.magic
                    if magic:
                        if not (a.startswith(magic) or b.startswith(magic)):
                            continue
                    elif not any_payload:
                        continue
                elif not could_be(s):
                    continue
                if simple is None:
                    m = dissect(s, v)
                else:                           # Simple.dissect, inline
                    if olist is None:
                        olist = _bu.arrival_order(s)
                    check, maxpk = simple[0], simple[1]
                    m = NO
                    for from_src, p in (olist if maxpk >= len(olist) else olist[:maxpk] if maxpk > 0 else ()):
                        if p and check(p, from_src, s):
                            v.app_protocol = simple[2](s, v)
                            m = FINAL
                            break
            except Exception:  # noqa: BLE001 - safecall: one dissector's bug never stops the others
                name = d.name or type(d).__name__
                self.errors[name] += 1
                self._warn(name, "dissector %s raised on flow %s", name, s.flow_id, exc_info=True)
                v.app_protocol = kept if kept is not None else "Unknown"
                continue
            if m is FINAL or m == FINAL:
                # Not final while an earlier dissector's PARTIAL claim stands: with more packets it may
                # decide, so capture keeps sampling and the flow's verdict does not depend on how its
                # packets were batched into samples (a FINAL stops sampling for good).
                final = kept is None
                break
            if m is PARTIAL or m == PARTIAL:
                if kept is None:
                    kept, kept_host = v.app_protocol, v.host
                else:
                    v.app_protocol = kept
                    v.host = kept_host          # the kept answer's host, not the overruled one's
            elif kept is not None:
                if v.app_protocol != kept:
                    v.app_protocol = kept
                if v.host != kept_host:
                    v.host = kept_host
            elif v.app_protocol != "Unknown":   # a NO must not leave a protocol behind
                v.app_protocol = "Unknown"
        self._sanitize(v)
        if v.app_protocol != "Unknown":
            v.confidence = "dpi"
        self.apps.apply(s, v)
        if v.confidence == "unknown" and self.second is not None:
            try:
                got = self.second(s)
            except Exception:  # noqa: BLE001
                self.errors["ndpi"] += 1
                self._warn("ndpi", "second engine raised on flow %s", s.flow_id, exc_info=True)
                got = None
            if got:
                v.app_protocol, app = got[0], got[1]
                if app and not v.application:
                    v.application = app
                if len(got) > 2 and got[2] and not v.host:
                    v.host = got[2]
                v.confidence = "dpi"
                self.counters["second"] += 1
                self._sanitize(v)
        if v.confidence == "unknown" and self.port_guess:
            guess = self.guess_port(s)
            if guess:
                v.app_protocol = guess
                v.confidence = "port"
                v.extra["guess"] = "port"
        if v.confidence == "unknown" and v.application:
            # nDPI's "Match by IP": the application stands for the protocol
            v.app_protocol = v.application
            v.confidence = "ip"
        self.counters[v.confidence] += 1
        if final and not s.final and v.http_transactions and _http_wants_more(s):
            # keep-alive: later samples of this connection hold further request/response pairs for
            # the HTTP log; capture samples it on up to its per-flow limits (sample_max_*)
            final = False
            self.counters["http_keep_sampling"] += 1
        v.final = final or s.final
        return v

    @staticmethod
    def _sanitize(v: Verdict) -> None:
        """Make whatever the dissectors wrote a valid, printable verdict (never raises)."""
        d = v.__dict__
        for field, limit in _STR_LIMITS.items():
            val = d[field]
            if type(val) is not str:
                val = d[field] = "" if val is None else str(val)
            if val and (len(val) > limit or not val.isprintable()):
                d[field] = clean_text(val, limit)
        if not d["app_protocol"]:
            d["app_protocol"] = "Unknown"
        # payload-derived metadata: represented text (shared/text.py), no raw control character
        # leaves classify (logs, line protocol, UIs), and the original stays recoverable
        raw = _RAW_CHARS.search
        for info in (d["http"], d["tls"], d["quic"], d["ssh"], *d["http_transactions"]):
            if info is None:
                continue
            sd = info.__dict__
            for val in sd.values():           # the common case: all printable, nothing to escape
                t = type(val)
                if (t is str and not val.isprintable()) or (t is list and val and not "".join(map(str, val)).isprintable()):
                    break
            else:
                continue
            for k, val in sd.items():
                if type(val) is str:
                    if val and raw(val) is not None:
                        sd[k] = wire_field(val, _max_len(type(info), k))
                elif type(val) is list:
                    sd[k] = [wire_field(x, 1024) if type(x) is str and raw(x) is not None else x for x in val]
        extra = d["extra"]
        if extra:
            for k, val in list(extra.items()):
                if type(k) is not str or type(val) is not str:
                    del extra[k]
                    extra[str(k)[:64]] = str(val)
                    val = extra[str(k)[:64]]
                    k = str(k)[:64]
                if len(val) > 1024 or _RAW_CHARS.search(val) is not None:
                    extra[k] = wire_field(val, 1024)

    def stats(self) -> dict[str, int]:
        """Counters for metrics/logs: samples, answers by confidence (dpi/port/ip/unknown), memo hits,
        second-engine answers, bad DNS messages, and ``errors_<dissector>`` per failing dissector."""
        out = dict(self.counters)
        out.update({"errors_" + k: v for k, v in self.errors.items()})
        return out

    def clear_caches(self) -> None:
        """Forget the memoised parses (for honest benchmarks)."""
        from services.classify.dissectors import dns, http, quic, tls, tls_common

        self._finals.clear()
        tls._client_side.cache_clear()
        tls._server_side.cache_clear()
        tls_common.parse_certificate_msg.cache_clear()
        tls_common.certificate_msg_details.cache_clear()
        http._requests.cache_clear()
        http._responses.cache_clear()
        quic.initial_keys.cache_clear()
        quic._decrypt_cached.cache_clear()
        dns._parse_cached.cache_clear()
        self.apps.lookup_host.cache_clear()
        self.apps.lookup_ip.cache_clear()

    # ------------------------------------------------------------------ ports

    def _build_port_table(self) -> dict[tuple[str, int], str]:
        table: dict[tuple[str, int], str] = {}
        for d in self.registry:      # the dissectors' well-known ports (first registered wins)
            for t in d.transports:
                for p in d.ports:
                    table.setdefault((t, p), d.name)
        for key, name in self.apps.ports.items():   # data file entries override
            table[key] = name
        return table

    def guess_port(self, s: FlowSample) -> str:
        """A protocol name from the flow's well-known ports, '' when none (the lower port first)."""
        return self.guess(s.transport, s.src_port, s.dst_port)

    @property
    def port_table(self) -> dict[tuple[str, int], str]:
        """The well-known ports ``guess`` looks up: ``(transport, port) -> protocol name``."""
        return self._ports

    def guess(self, transport: str, src_port: int, dst_port: int) -> str:
        """The port guess for any flow (also one that never carried payload, so never sampled): the lower
        port's name, else the higher port's, else '' (capture's ``flows.PortTable`` applies the same rule)."""
        a, b = (src_port, dst_port) if src_port <= dst_port else (dst_port, src_port)
        return self._ports.get((transport, a)) or self._ports.get((transport, b)) or ""

    # ------------------------------------------------------------------ DNS log

    #: queries remembered for pairing with their response (per replica), and for how long (packet time)
    DNS_PENDING_MAX = 65536
    DNS_PENDING_S = 60.0

    def dns_record(self, p: PacketEvent) -> DnsRecord | None:
        """A DnsRecord for one DNS message; None only for an empty payload.

        ``p.payload`` is the DNS message: capture removes DNS-over-TCP's two-byte length
        prefix.  (A producer that left it on is tolerated: when the message does not parse
        and the first two bytes are exactly the rest's length, they are taken as the prefix.)
        A message that does not parse is still a record, with ``error`` naming why, counted
        in ``counters['dns_bad']`` and ``counters['dns_malformed']`` and logged (rate limited).
        A response is paired with the query of the same flow and id this replica saw:
        ``query_time`` and ``rtt_ms`` are set.
        """
        from services.classify.dissectors.dns import parse_log

        payload = p.payload
        if not payload:
            self.counters["dns_empty"] += 1
            return None
        try:
            msg = parse_log(payload)
            if msg.error and p.transport == "TCP" and len(payload) >= 14 and \
                    ((payload[0] << 8) | payload[1]) == len(payload) - 2:
                again = parse_log(payload[2:])
                if not again.error:
                    msg = again
                    self.counters["dns_tcp_prefix_seen"] += 1
        except Exception:  # noqa: BLE001 - a parser bug must not stop the service
            self.errors["dns_record"] += 1
            self._warn("dns_record", "DNS parser raised", exc_info=True)
            return None
        if msg.error:
            self.counters["dns_bad"] += 1
            self.counters["dns_malformed"] += 1
            self._warn("dns_malformed", "malformed DNS message on flow %s (%s %s:%d -> %s:%d): %s",
                       p.flow_id, p.transport, p.src_ip, p.src_port, p.dst_ip, p.dst_port, msg.error)
        return self._dns_event(p, msg)

    def _dns_event(self, p: PacketEvent, msg: Any) -> DnsRecord | None:
        from shared.text import truncate

        q = msg.questions[0] if msg.questions else None
        first = q[0] if q else (msg.answers[0].name if msg.answers else "")
        query_time, rtt = 0.0, None
        key = (p.probe, p.flow_id, msg.txid)
        pending = self._dns_pending
        if not msg.is_response:
            if not msg.error:
                if len(pending) >= self.DNS_PENDING_MAX:
                    del pending[next(iter(pending))]
                    self.counters["dns_pending_evicted"] += 1
                pending.pop(key, None)
                pending[key] = (p.timestamp, p.from_src)
                # forget queries older than DNS_PENDING_S of packet time (the oldest are first)
                limit = p.timestamp - self.DNS_PENDING_S
                while pending:
                    k0 = next(iter(pending))
                    if pending[k0][0] >= limit:
                        break
                    del pending[k0]
                    self.counters["dns_unanswered"] += 1
        else:
            got = pending.get(key)
            if got is not None and got[1] != p.from_src and p.timestamp >= got[0]:
                del pending[key]
                query_time, rtt = got[0], (p.timestamp - got[0]) * 1000.0
                self.counters["dns_paired"] += 1
        try:
            # one validation of the whole record, its sections as plain dicts (the same schema checks them; a
            # model built per question and record cost three to five validator calls per message)
            return _DNS_VALIDATE(dict(
                timestamp=p.timestamp, probe=p.probe, flow_id=p.flow_id, transport=p.transport,
                src_ip=p.src_ip, src_port=p.src_port, dst_ip=p.dst_ip, dst_port=p.dst_port, vlan_id=p.vlan_id,
                src_mac=p.src_mac, dst_mac=p.dst_mac, from_src=p.from_src,
                transaction_id=msg.txid, is_response=msg.is_response, opcode=msg.opcode, flags=msg.flag_names,
                query_name=truncate(first, 1024), query_type=q[1][:16] if q else "",
                query_class=q[2][:16] if q else "",
                rcode=msg.rcode if msg.is_response else "",
                questions=[{"name": truncate(n, 1024), "rtype": t[:16], "rclass": c[:16]}
                           for n, t, c in msg.questions[:64]],
                answers=[a.as_dict() for a in msg.answers[:512]],
                authorities=[a.as_dict() for a in msg.authorities[:512]],
                additionals=[a.as_dict() for a in msg.additionals[:512]],
                query_time=query_time, rtt_ms=rtt, error=msg.error[:128],
            ))
        except Exception:  # noqa: BLE001 - validation of hostile content
            self.counters["dns_bad"] += 1
            self._warn("dns_invalid", "DNS record for flow %s failed validation", p.flow_id, exc_info=True)
            return None
