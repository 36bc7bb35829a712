"""The storage schema: which events become which points (see docs/storage.md).

Measurements
------------
``flows``         one point per flow in the access log, from the ``end`` FlowRecord;
                  timestamp = first_seen (the flow's start).
``flow_updates``  periodic ``update`` FlowRecords of long flows; timestamp = record time.
``dns``           one point per DnsRecord (query or response).
``http``          one point per HTTP request/response pair of a flow's best verdict.
``tls``           one point per Verdict carrying TLS or QUIC metadata.
``ssh``           one point per Verdict carrying SSH metadata (banners, HASSH).
``alerts``        one point per Alert publication (updates of an incident reuse alert_id).
``blocks``        one point per BlockAction.

Tags are low-cardinality only (probe, transport, app_protocol, category, rcode,
query_type, dns kind, alert_type, severity, action, outcome); addresses, ports,
names, URLs, fingerprints and ids are fields.  Every point about a flow has a
``community_id`` field (Community ID v1, seed 0; ``shared/community_id.py``),
computed here once per point, never per packet.

Point identity and redelivery
-----------------------------
InfluxDB identifies a point by measurement + tags + timestamp: writing it again
overwrites it, which makes a redelivered message harmless *if* the same event
always gives the same timestamp.  Many flows share tags, so two flows starting
in the same microsecond would collide.  Timestamps are therefore microsecond
times (the real precision of a float of Unix seconds is ~0.2 us) plus a
deterministic 0-999 ns "jitter" from a CRC32 of the event's identity (flow_id,
and what else distinguishes the event).  Two distinct points collide only when
they share tags and microsecond and their CRC32s agree modulo 1000 (1 in 1000
for two flows in the same microsecond); a redelivered event always lands on
its own point again.  flow_id is not a tag: that would create one series per
flow.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field

from shared.community_id import for_event
from shared.models import Alert, BlockAction, DnsAnswer, DnsRecord, Event, FlowRecord, Verdict

from services.store.lineproto import FAST_FIELDS, INT64_MAX, STR_NEEDS_WORK, Point

MAX_TS_S = 9.2e9  # int64 nanoseconds end in 2262


class BadTimestamp(ValueError):
    pass


_crc32 = zlib.crc32


def ts_ns(t: float, identity: str) -> int:
    """Nanosecond timestamp: microseconds of ``t`` plus a deterministic 0-999 ns jitter."""
    # a float in range is finite (NaN and infinities fail the comparison)
    if not ((type(t) is float or isinstance(t, (int, float))) and 0 <= t < MAX_TS_S and math.isfinite(t)):
        raise BadTimestamp(f"timestamp {t!r} out of range")
    try:
        ident = identity.encode()
    except UnicodeEncodeError:   # a lone surrogate
        ident = identity.encode("utf-8", "surrogatepass")
    return round(t * 1_000_000) * 1000 + _crc32(ident) % 1000


@dataclass
class AccessLogRule:
    """Which ended flows enter the access log (``flows``) and which updates ``flow_updates``.

    Every classified flow (app_protocol != Unknown); an unknown flow when it
    lasted more than ``min_duration_s`` at more than ``min_pps`` packets per
    second (the ISMS rule), or every flow when ``log_all``.  The others are
    counted in aggregate.
    """

    min_duration_s: float = 10.0
    min_pps: float = 1.0
    log_all: bool = False
    # aggregate of the flows left out
    skipped_flows: int = 0
    skipped_packets: int = 0
    skipped_bytes: int = 0
    skipped_updates: int = 0

    def admits(self, f: FlowRecord) -> bool:
        if self.log_all or (f.app_protocol and f.app_protocol != "Unknown"):
            return True
        duration_s = f.duration_ms / 1000.0
        if duration_s <= self.min_duration_s:
            return False
        packets = f.src2dst_packets + f.dst2src_packets
        return packets / duration_s > self.min_pps

    def skip(self, f: FlowRecord) -> None:
        if f.phase == "end":
            self.skipped_flows += 1
            self.skipped_packets += f.src2dst_packets + f.dst2src_packets
            self.skipped_bytes += f.src2dst_bytes + f.dst2src_bytes
        else:
            self.skipped_updates += 1


_cid_cache: dict[tuple, str] = {}
_CID_CACHE_MAX = 65_536


def community_id(ev: Event) -> str:
    """Community ID v1 (seed 0) of an event's endpoints (ICMP: with the flow's icmp_type/icmp_code), "" when it has none.

    Remembered per endpoint tuple (a flow's verdict, DNS records and end record share it: ~40 % of the
    stored points of a mixed capture); the cache is emptied when full.
    """
    d = ev.__dict__
    key = (d["transport"], d["src_ip"], d["src_port"], d["dst_ip"], d["dst_port"], d["icmp_type"], d["icmp_code"])
    cid = _cid_cache.get(key)
    if cid is None:
        cid = for_event(*key[:5], 0, key[5], key[6])
        if len(_cid_cache) >= _CID_CACHE_MAX:
            _cid_cache.clear()
        _cid_cache[key] = cid
    return cid


def _envelope(ev: Event) -> dict:
    return {
        "flow_id": ev.flow_id,
        "community_id": community_id(ev),
        "src_ip": ev.src_ip,
        "src_port": ev.src_port,
        "dst_ip": ev.dst_ip,
        "dst_port": ev.dst_port,
        "vlan_id": ev.vlan_id,
    }


def _rrs(rrs: list[DnsAnswer]) -> list[dict]:
    return [{"name": a.name, "rtype": a.rtype, "rclass": a.rclass, "ttl_s": a.ttl_s, "data": a.data} for a in rrs]


def _flow_fields(f: FlowRecord, with_first_seen: bool) -> dict:
    """Fields of a flows / flow_updates point (one dict literal: runs once per stored flow).

    ``flows`` has no first_seen field: its timestamp is first_seen (to the
    microsecond, see ``ts_ns``).  vlan_id only when tagged, TCP flags only for
    TCP, icmp_type/icmp_code only for ICMP flows; ip_version is left out (the addresses say it).
    """
    d = {
        "flow_id": f.flow_id,
        "community_id": community_id(f),
        "src_ip": f.src_ip,
        "src_port": f.src_port,
        "dst_ip": f.dst_ip,
        "dst_port": f.dst_port,
        "src2dst_packets": f.src2dst_packets,
        "src2dst_bytes": f.src2dst_bytes,
        "dst2src_packets": f.dst2src_packets,
        "dst2src_bytes": f.dst2src_bytes,
        "duration_ms": float(f.duration_ms),
        "last_seen": float(f.last_seen),
        "host": f.host,
        "application": f.application,
        "confidence": f.confidence,
        "end_reason": f.end_reason,
        "src_mac": f.src_mac,
        "dst_mac": f.dst_mac,
        "tunnel": f.tunnel,
        "source": f.source,
    }
    if with_first_seen:
        d["first_seen"] = float(f.first_seen)
    for k in _TUNNEL_ENDPOINTS:          # outer endpoints of a tunnelled flow, where capture reports them
        v = getattr(f, k, "")
        if v:
            d[k] = v
    if f.vlan_id:
        d["vlan_id"] = f.vlan_id
    if f.transport == "TCP":
        d["src2dst_tcp_flags"] = f.src2dst_tcp_flags
        d["dst2src_tcp_flags"] = f.dst2src_tcp_flags
    elif f.icmp_type is not None:        # ICMP/ICMPv6: the first packet's type and code
        d["icmp_type"] = f.icmp_type
        d["icmp_code"] = f.icmp_code or 0
    return d


_STR_ONLY = {str}
_INT_ONLY = {int}
_TUNNEL_ENDPOINTS = ("tunnel_src_ip", "tunnel_dst_ip")
_FLOW_OPTIONAL = ("first_seen", *_TUNNEL_ENDPOINTS, "vlan_id", "src2dst_tcp_flags", "dst2src_tcp_flags", "icmp_type",
                  "icmp_code")


def render_flow_fields(d: dict) -> str | None:
    """Line-protocol field set of a flows/flow_updates point, ~5x faster than the generic loop.

    Returns None (generic path) when a string needs escaping or a number is out
    of line-protocol range; otherwise exactly ``lineproto._format_fields(d)``.
    """
    try:
        host, app, conf, end, smac, dmac, tun, src = (d["host"], d["application"], d["confidence"], d["end_reason"],
                                                      d["src_mac"], d["dst_mac"], d["tunnel"], d["source"])
        fid, cid, sip, dip = d["flow_id"], d["community_id"], d["src_ip"], d["dst_ip"]
        sport, dport = d["src_port"], d["dst_port"]
        a, b, c, e = d["src2dst_packets"], d["src2dst_bytes"], d["dst2src_packets"], d["dst2src_bytes"]
        dur, last = d["duration_ms"], d["last_seen"]
    except KeyError:
        return None  # not the schema's own field set
    strs = (fid, cid, sip, dip, host, app, conf, end, smac, dmac, tun, src)
    ints = (sport, dport, a, b, c, e)
    optional = [(k, d[k]) for k in _FLOW_OPTIONAL if k in d]
    if (len(d) != 20 + len(optional) or type(dur) is not float or type(last) is not float
            or set(map(type, strs)) != _STR_ONLY or set(map(type, ints)) != _INT_ONLY):
        return None
    if STR_NEEDS_WORK.search(" ".join(strs)) is not None:
        return None
    if max(ints) > INT64_MAX or min(ints) < 0 or not (math.isfinite(dur) and math.isfinite(last)):
        return None
    line = (
        (f'flow_id="{fid}",' if fid else "")
        + (f'community_id="{cid}",' if cid else "")
        + (f'src_ip="{sip}",' if sip else "")
        + f"src_port={sport}i,"
        + (f'dst_ip="{dip}",' if dip else "")
        + f"dst_port={dport}i,src2dst_packets={a}i,src2dst_bytes={b}i,dst2src_packets={c}i,"
          f"dst2src_bytes={e}i,duration_ms={dur!r},last_seen={last!r}"
        + (f',host="{host}"' if host else "")
        + (f',application="{app}"' if app else "")
        + (f',confidence="{conf}"' if conf else "")
        + (f',end_reason="{end}"' if end else "")
        + (f',src_mac="{smac}"' if smac else "")
        + (f',dst_mac="{dmac}"' if dmac else "")
        + (f',tunnel="{tun}"' if tun else "")
        + (f',source="{src}"' if src else "")
    )
    for k, v in optional:  # in insertion order, as the schema adds them
        t = type(v)
        if t is float and math.isfinite(v):
            line += f",{k}={v!r}"
        elif t is int and 0 <= v <= INT64_MAX:
            line += f",{k}={v}i"
        elif t is str and STR_NEEDS_WORK.search(v) is None:
            line += f',{k}="{v}"'
        else:
            return None
    return line


FAST_FIELDS["flows"] = render_flow_fields
FAST_FIELDS["flow_updates"] = render_flow_fields


def _flow_tags(f: FlowRecord) -> tuple[tuple[str, str], ...]:
    return (("probe", f.probe), ("transport", f.transport), ("app_protocol", f.app_protocol or "Unknown"),
            ("category", f.category))


def _verdict_tags(v: Verdict) -> tuple[tuple[str, str], ...]:
    return (("probe", v.probe), ("transport", v.transport), ("app_protocol", v.app_protocol or "Unknown"),
            ("category", v.category))


def ssh_proto_version(banner: str) -> str:
    """The protocol version of an SSH identification string ("2.0" of "SSH-2.0-OpenSSH_9.2")."""
    if not banner.startswith("SSH-"):
        return ""
    return banner[4:].split("-", 1)[0][:16]


@dataclass
class Schema:
    """Turns events into points; keeps counts of what it did not store."""

    rule: AccessLogRule = field(default_factory=AccessLogRule)
    ignored: int = 0  # events of kinds that are not stored (samples, packets, stats, flow starts)
    bad_timestamps: int = 0

    def points(self, ev: Event, out: list[Point]) -> None:
        """Append the points of one event to ``out``."""
        kind = _BY_TYPE.get(type(ev))     # the schema's own models: no isinstance walk (a metaclass check each)
        if kind is None:                  # a subclass: the first of the table's models it is
            kind = next((fn for cls, fn in _BY_TYPE.items() if isinstance(ev, cls)), None)
            if kind is None:
                self.ignored += 1
                return
        try:
            kind(self, ev, out)
        except BadTimestamp:
            self.bad_timestamps += 1

    # ------------------------------------------------------------------ per kind

    def _flow(self, f: FlowRecord, out: list[Point]) -> None:
        if f.phase == "start":
            self.ignored += 1
            return
        if not self.rule.admits(f):
            self.rule.skip(f)
            return
        if f.phase == "end":
            out.append(Point("flows", _flow_tags(f), _flow_fields(f, False), ts_ns(f.first_seen, f.flow_id)))
        else:
            out.append(Point("flow_updates", _flow_tags(f), _flow_fields(f, True), ts_ns(f.timestamp, f.flow_id)))

    def _dns(self, d: DnsRecord, out: list[Point]) -> None:
        fields = _envelope(d)
        fields.update(
            transaction_id=d.transaction_id,
            query_name=d.query_name,
            query_class=d.query_class,
            opcode=d.opcode,
            flags=list(d.flags),
            answer_count=len(d.answers),
            answers=_rrs(d.answers),
            authorities=_rrs(d.authorities),
            additionals=_rrs(d.additionals),
            questions=[{"name": q.name, "rtype": q.rtype, "rclass": q.rclass} for q in d.questions]
            if len(d.questions) > 1 else [],
            src_mac=d.src_mac,
            dst_mac=d.dst_mac,
            from_src=d.from_src,
            error=d.error,
        )
        if d.rtt_ms is not None:
            fields["rtt_ms"] = float(d.rtt_ms)
            fields["query_time"] = float(d.query_time)
        kind = "response" if d.is_response else "query"
        tags = (("probe", d.probe), ("transport", d.transport), ("kind", kind), ("query_type", d.query_type),
                ("rcode", d.rcode))
        ident = f"{d.flow_id}|{d.transaction_id}|{kind}|{d.src_ip}|{d.src_port}"
        out.append(Point("dns", tags, fields, ts_ns(d.timestamp, ident)))

    def _verdict(self, v: Verdict, out: list[Point]) -> None:
        if v.http is None and v.tls is None and v.quic is None and v.ssh is None:
            self.ignored += 1
            return
        ident = f"{v.flow_id}|{v.sample_seq_no}"
        t = ts_ns(v.timestamp, ident)
        tags = _verdict_tags(v)
        if v.http is not None:
            for i, h in enumerate(v.http_transactions or [v.http]):
                fields = _envelope(v)
                fields.update(
                    method=h.method, host=h.host, url=h.url, version=h.version, user_agent=h.user_agent,
                    referer=h.referer, status_code=h.status_code, status_msg=h.status_msg,
                    content_type=h.content_type, request_content_type=h.request_content_type, server=h.server,
                    request_body_len=h.request_body_len, response_body_len=h.response_body_len,
                    trans_depth=h.trans_depth, application=v.application, sample_seq_no=v.sample_seq_no,
                    final=v.final,
                )
                # one microsecond apart: the pairs of one connection never share a point
                out.append(Point("http", tags, fields, t + i * 1000))
        if v.tls is not None or v.quic is not None:
            fields = _envelope(v)
            if v.tls is not None:
                s = v.tls
                fields.update(
                    version=s.version, sni=s.sni, alpn=list(s.alpn), ja3=s.ja3, ja4=s.ja4, ja3s=s.ja3s,
                    cipher=s.cipher, server_names=list(s.server_names), issuer=s.issuer,
                    cert_subject=s.cert_subject, cert_issuer=s.cert_issuer, cert_serial=s.cert_serial,
                )
                if s.cert_not_before or s.cert_not_after:
                    fields.update(cert_not_before=float(s.cert_not_before), cert_not_after=float(s.cert_not_after))
            else:
                q = v.quic
                assert q is not None
                fields.update(version=q.version, sni=q.sni, alpn=list(q.alpn), ja4=q.ja4,
                              user_agent=q.user_agent)
            fields.update(application=v.application, sample_seq_no=v.sample_seq_no, final=v.final)
            out.append(Point("tls", tags, fields, t))
        if v.ssh is not None:
            h = v.ssh
            fields = _envelope(v)
            fields.update(
                client_banner=h.client_banner, server_banner=h.server_banner,
                client_version=ssh_proto_version(h.client_banner), server_version=ssh_proto_version(h.server_banner),
                hassh=h.hassh_client, hassh_server=h.hassh_server, application=v.application,
                sample_seq_no=v.sample_seq_no, final=v.final,
            )
            out.append(Point("ssh", tags, fields, t))

    def _alert(self, a: Alert, out: list[Point]) -> None:
        fields = _envelope(a)
        fields.update(
            alert_id=a.alert_id, count=a.count, message=a.message, first_seen=float(a.first_seen),
            last_seen=float(a.last_seen), evidence_pcap=a.evidence_pcap, rule_id=a.rule_id,
            details=dict(sorted(a.details.items())),
        )
        tags = (("probe", a.probe), ("transport", a.transport), ("alert_type", a.alert_type),
                ("severity", a.severity))
        out.append(Point("alerts", tags, fields, ts_ns(a.timestamp, f"{a.alert_id}|{a.count}")))

    def _block(self, b: BlockAction, out: list[Point]) -> None:
        fields = _envelope(b)
        fields.update(rule_id=b.rule_id, host=b.host, latency_ms=float(b.latency_ms), attempts=b.attempts,
                      message=b.message)
        tags = (("probe", b.probe), ("transport", b.transport), ("action", b.action), ("outcome", b.outcome))
        out.append(Point("blocks", tags, fields, ts_ns(b.timestamp, f"{b.flow_id}|{b.rule_id}|{b.action}")))


_BY_TYPE = {FlowRecord: Schema._flow, DnsRecord: Schema._dns, Verdict: Schema._verdict, Alert: Schema._alert,
            BlockAction: Schema._block}
