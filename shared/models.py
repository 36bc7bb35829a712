"""The event contract between FlowTarget's services.

Every message on a FlowTarget NATS subject is one of the models below (or an
``EventBatch`` of them), serialised as JSON by pydantic (batches of flow records,
samples and DNS packet events by orjson, the same document).  All events share
one envelope (``Event``): when, which probe, which flow, what kind of event,
and the flow's endpoints.  Each concrete model pins ``event_type`` to a literal
so that ``parse_event`` (one discriminated union) can parse any of them.

Conventions
-----------
- Times are Unix epoch seconds as floats (``timestamp``, ``first_seen``,
  ``last_seen``); durations carry their unit in the name (``duration_ms``).
- Counters carry their unit and direction in the name (``src2dst_bytes``).
  "src" is the endpoint that sent the flow's first packet, as in NFStream and
  nDPI; "dst" is the other one.
- Byte counts are IP-layer bytes (IP header and payload, no L2 header), the
  unit nDPI and NFStream use for flow volume.
- Transport names are nDPI's: ``TCP``, ``UDP``, ``ICMP``, ``ICMPV6``,
  ``IGMP``, ``SCTP`` … or the IP protocol number as text.
- Protocol names are nDPI's (``TLS``, ``HTTP``, ``DNS``, ``QUIC``, ``SSH`` …);
  ``Unknown`` when not classified.
- Raw bytes (payloads, frames) are base64 in JSON.

Schema versions and tolerant readers
------------------------------------
``SCHEMA_VERSION`` is ``"MAJOR.MINOR"``.  Publishers through ``shared.bus``
send it in the ``Ft-Schema`` message header (not in the body, so that a
consumer of any version reads the body); a message without the header counts
as this version's major.

- A **minor** bump adds optional fields (with defaults) or new event types
  only.  Consumers of an older minor read such messages: unknown fields are
  accepted, counted (``unknown_fields``) and dropped; nothing else changes.
- A **major** bump removes or renames a field, changes a field's type, unit or
  meaning, or makes a field required.  A consumer rejects a message of another
  major version with one log line naming both versions (counted
  ``old_major``/``new_major``; JetStream consumers dead-letter it to
  ``ft.dlq.<probe>``), so an old producer is never half-understood.
- Rolling upgrade: within a major version, upgrade in any order.  Across a
  major version, drain the stream, then upgrade every service together.

Models accept unknown fields (``extra="allow"``) only so that they can be
counted; ``strip_unknown_fields`` (called by ``shared.codec``, the one safe
decoder every service uses) drops them, so they are never stored or passed on.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

#: the event contract's version, "MAJOR.MINOR" (see "Schema versions" above)
SCHEMA_MAJOR = 1
SCHEMA_MINOR = 3
SCHEMA_VERSION = f"{SCHEMA_MAJOR}.{SCHEMA_MINOR}"

#: a probe name: one NATS subject token (what ``shared.subjects.check_token`` accepts)
PROBE_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class _Model(BaseModel):
    """Base for every model: tolerant of unknown fields (counted and dropped by the decoder), bytes as base64."""

    model_config = ConfigDict(
        extra="allow",
        ser_json_bytes="base64",
        val_json_bytes="base64",
        frozen=False,
        # a model's validator and serializer are built at its first use, not at import: a service uses a
        # few of the ~40 models, and building them all took ~130 ms of every process's start
        defer_build=True,
    )


class Event(_Model):
    """Common envelope carried by every event."""

    timestamp: float = Field(description="When the event happened (packet time for capture events), Unix epoch seconds.")
    probe: str = Field(min_length=1, max_length=64, pattern=PROBE_PATTERN,
                       description="Name of the probe that produced the event (FT_PROBE): letters, digits, '_' and '-'.")
    flow_id: str = Field(default="", max_length=64, description="Identifier of the flow this event belongs to; empty for events about no flow.")
    event_type: str = Field(description="Kind of event; a literal on each concrete model.")
    transport: str = Field(default="", max_length=16, description="Transport as nDPI names it (TCP, UDP, ICMP, ICMPV6, ...) or the IP protocol number.")
    src_ip: str = Field(default="", max_length=64, description="Source address: the endpoint that sent the flow's first packet.")
    src_port: int = Field(default=0, ge=0, le=65535, description="Source port (0 for transports without ports).")
    dst_ip: str = Field(default="", max_length=64, description="Destination address.")
    dst_port: int = Field(default=0, ge=0, le=65535, description="Destination port (0 for transports without ports).")
    vlan_id: int = Field(default=0, ge=0, le=4095, description="Outermost 802.1Q VLAN id, 0 when untagged.")
    icmp_type: int | None = Field(default=None, ge=0, le=255, description=(
        "ICMP/ICMPv6 flows (keyed without type and code, ports 0): type of the flow's first packet, for the "
        "flow's Community ID; None for other transports or when unknown. Copied onto every event about the flow."))
    icmp_code: int | None = Field(default=None, ge=0, le=255, description="ICMP/ICMPv6 flows: code of the flow's first packet (see icmp_type).")


# --------------------------------------------------------------------------- flows

FlowPhase = Literal["start", "update", "end"]
EndReason = Literal["", "fin", "rst", "idle", "active", "evicted", "eof", "shutdown"]


class FlowRecord(Event):
    """A flow's counters and ISMS access-log fields, from capture.

    Published at a flow's start, periodically for long flows (``update``) and
    exactly once at its end (``end``).  The ``end`` record is the access-log
    entry; capture stamps the classification it received onto it.
    """

    event_type: Literal["flow"] = "flow"
    phase: FlowPhase = Field(description="start: first packet; update: periodic report of a long flow; end: the flow is over.")
    end_reason: EndReason = Field(default="", description="Why the flow ended (end phase only): fin, rst, idle, active timeout, evicted, eof of a capture file, shutdown.")
    source: str = Field(default="", max_length=256, description="Where the packets came from: interface name or capture file base name.")
    ip_version: int = Field(default=4, description="4 or 6.")
    first_seen: float = Field(description="Time of the flow's first packet, Unix epoch seconds.")
    last_seen: float = Field(description="Time of the flow's latest packet, Unix epoch seconds.")
    duration_ms: float = Field(default=0.0, ge=0, description="last_seen - first_seen in milliseconds, rounded to whole microseconds.")
    src2dst_packets: int = Field(default=0, ge=0, description="Packets sent by src.")
    src2dst_bytes: int = Field(default=0, ge=0, description="IP-layer bytes sent by src.")
    dst2src_packets: int = Field(default=0, ge=0, description="Packets sent by dst.")
    dst2src_bytes: int = Field(default=0, ge=0, description="IP-layer bytes sent by dst.")
    src2dst_tcp_flags: int = Field(default=0, ge=0, le=255, description="OR of the TCP flags sent by src.")
    dst2src_tcp_flags: int = Field(default=0, ge=0, le=255, description="OR of the TCP flags sent by dst.")
    src_mac: str = Field(default="", max_length=17, description="Source MAC of the first frame, aa:bb:cc:dd:ee:ff.")
    dst_mac: str = Field(default="", max_length=17, description="Destination MAC of the first frame.")
    tunnel: str = Field(default="", max_length=16, description="Outer encapsulation the flow was carried in (GRE, VXLAN, GTP), empty when none.")
    tunnel_src_ip: str = Field(default="", max_length=45, description="Outer tunnel endpoint on src's side (the outer source address of src's packets; with nested tunnels the outermost), from the flow's first packet; empty when not tunnelled.")
    tunnel_dst_ip: str = Field(default="", max_length=45, description="Outer tunnel endpoint on dst's side, from the flow's first packet; empty when not tunnelled.")
    tunnel_id: int = Field(default=0, ge=0, le=0xFFFFFFFF, description="Tunnel id from the flow's first packet: GRE key (PPTP: call id), VXLAN VNI, GTP-U TEID; 0 when none (IP-in-IP, no key, not tunnelled).")
    app_protocol: str = Field(default="Unknown", max_length=64, description="nDPI protocol name from classify's verdict, Unknown when none.")
    application: str = Field(default="", max_length=64, description="Application (e.g. Google, YouTube) from classify's verdict.")
    category: str = Field(default="", max_length=64, description="Category from classify's verdict.")
    host: str = Field(default="", max_length=512, description="HTTP Host, TLS/QUIC SNI or DNS name from classify's verdict.")
    confidence: str = Field(default="", max_length=32, description="How the protocol was found: dpi, port, ip, or empty.")


# --------------------------------------------------------------------------- samples


class FlowSample(Event):
    """The first payload-bearing packets of a flow, cumulative, for classify.

    Each sample of a flow carries everything seen so far, so classify needs no
    state.  TCP payloads are in-order and de-duplicated: joining a direction's
    list gives the start of that direction's byte stream.  UDP payloads are
    the datagrams.  Blocking needs the MACs and the latest sequence numbers.
    """

    event_type: Literal["sample"] = "sample"
    source: str = Field(default="", max_length=256, description="Interface or capture file base name.")
    seq_no: int = Field(default=0, ge=0, description="Sample number within the flow, 0 first; later samples supersede earlier ones.")
    final: bool = Field(default=False, description="True when capture will send no further samples for this flow.")
    first_seen: float = Field(description="Time of the flow's first packet, Unix epoch seconds.")
    src2dst_packets: int = Field(default=0, ge=0, description="Packets sent by src so far.")
    dst2src_packets: int = Field(default=0, ge=0, description="Packets sent by dst so far.")
    src_payloads: list[bytes] = Field(default_factory=list, description="Payloads sent by src, in order.")
    dst_payloads: list[bytes] = Field(default_factory=list, description="Payloads sent by dst, in order.")
    payload_dirs: str = Field(default="", max_length=256, description="Arrival order of the payloads: one character per payload, 's' from src, 'd' from dst.")
    src_mac: str = Field(default="", max_length=17, description="MAC address of src as seen on the wire.")
    dst_mac: str = Field(default="", max_length=17, description="MAC address of dst as seen on the wire.")
    vlan_ids: list[int] = Field(default_factory=list, description="802.1Q tags of the frames, outermost first.")
    src2dst_next_seq: int = Field(default=0, ge=0, description="TCP: sequence number src will send next (latest seq + payload length).")
    src2dst_ack: int = Field(default=0, ge=0, description="TCP: latest acknowledgement number sent by src.")
    dst2src_next_seq: int = Field(default=0, ge=0, description="TCP: sequence number dst will send next.")
    dst2src_ack: int = Field(default=0, ge=0, description="TCP: latest acknowledgement number sent by dst.")
    trigger_time: float = Field(default=0.0, description="Capture time of the packet that produced this sample, Unix epoch seconds.")
    trigger_from_src: bool = Field(default=True, description="True when the packet that produced this sample was sent by src.")


class ArpInfo(_Model):
    """Decoded ARP fields."""

    operation: int = Field(description="1 request, 2 reply.")
    sender_mac: str
    sender_ip: str
    target_mac: str
    target_ip: str


class PacketEvent(Event):
    """A single packet worth reporting on its own (every DNS and ARP packet)."""

    event_type: Literal["packet"] = "packet"
    kind: Literal["dns", "arp", "other"] = Field(description="What kind of packet this is.")
    source: str = Field(default="", max_length=256, description="Interface or capture file base name.")
    src_mac: str = Field(default="", max_length=17)
    dst_mac: str = Field(default="", max_length=17)
    vlan_ids: list[int] = Field(default_factory=list, description="802.1Q tags, outermost first.")
    payload: bytes = Field(default=b"", description="DNS: the UDP/TCP payload (the DNS message). ARP: empty.")
    arp: ArpInfo | None = Field(default=None, description="Decoded ARP fields (kind == arp).")
    from_src: bool = Field(default=True, description="True when the packet was sent by the flow's src.")


# --------------------------------------------------------------------------- verdicts


class HttpInfo(_Model):
    """One HTTP/1.x request and its response, as far as the samples reach.  Strings are
    represented text (shared/text.py)."""

    method: str = Field(default="", max_length=32)
    host: str = Field(default="", max_length=512)
    url: str = Field(default="", max_length=4096, description="Request target (URI) as sent.")
    user_agent: str = Field(default="", max_length=1024)
    status_code: int = Field(default=0, ge=0, le=999)
    content_type: str = Field(default="", max_length=256, description="Response Content-Type.")
    server: str = Field(default="", max_length=256)
    version: str = Field(default="", max_length=16, description="Request's HTTP version, e.g. 1.1.")
    referer: str = Field(default="", max_length=4096)
    status_msg: str = Field(default="", max_length=256, description="Response reason phrase.")
    request_content_type: str = Field(default="", max_length=256)
    request_body_len: int = Field(default=0, ge=0, description="Request body bytes (Content-Length, or chunks seen).")
    response_body_len: int = Field(default=0, ge=0, description="Response body bytes (Content-Length, or chunks seen).")
    trans_depth: int = Field(default=1, ge=1, description="Position of this request on its connection, 1 first (as Zeek's trans_depth).")


class TlsInfo(_Model):
    version: str = Field(default="", max_length=32, description="Negotiated (server) or offered (client) version, e.g. TLSv1.3.")
    sni: str = Field(default="", max_length=512)
    alpn: list[str] = Field(default_factory=list)
    ja3: str = Field(default="", max_length=64, description="JA3 hash of the ClientHello (MD5 hex).")
    ja4: str = Field(default="", max_length=64, description="JA4 fingerprint of the ClientHello.")
    ja3s: str = Field(default="", max_length=64)
    cipher: str = Field(default="", max_length=64)
    server_names: list[str] = Field(default_factory=list, description="Certificate subject CN and SANs, where visible.")
    issuer: str = Field(default="", max_length=512, description="Issuer CN of the server certificate.")
    cert_subject: str = Field(default="", max_length=1024, description="Server certificate subject, RFC 4514 text (TLS <= 1.2).")
    cert_issuer: str = Field(default="", max_length=1024, description="Server certificate issuer, RFC 4514 text.")
    cert_serial: str = Field(default="", max_length=128, description="Server certificate serial number, upper-case hex.")
    cert_not_before: float = Field(default=0.0, description="Certificate validity start, Unix epoch seconds (0: not seen).")
    cert_not_after: float = Field(default=0.0, description="Certificate validity end, Unix epoch seconds (0: not seen).")


class QuicInfo(_Model):
    version: str = Field(default="", max_length=32)
    sni: str = Field(default="", max_length=512)
    alpn: list[str] = Field(default_factory=list)
    ja4: str = Field(default="", max_length=64)
    user_agent: str = Field(default="", max_length=1024)


class SshInfo(_Model):
    client_banner: str = Field(default="", max_length=256)
    server_banner: str = Field(default="", max_length=256)
    hassh_client: str = Field(default="", max_length=64)
    hassh_server: str = Field(default="", max_length=64)


class Verdict(Event):
    """classify's answer about one flow, for capture (stop sampling), store and block."""

    event_type: Literal["verdict"] = "verdict"
    sample_seq_no: int = Field(default=0, ge=0, description="seq_no of the FlowSample this verdict answers.")
    final: bool = Field(default=False, description="True when more samples cannot change the answer; capture stops sampling the flow.")
    app_protocol: str = Field(default="Unknown", max_length=64, description="nDPI master protocol name (TLS, HTTP, DNS, ...), Unknown when none.")
    application: str = Field(default="", max_length=64, description="Application/service name (Google, YouTube, ...).")
    category: str = Field(default="", max_length=64, description="nDPI-style category (Web, Media, VPN, ...).")
    confidence: Literal["dpi", "port", "ip", "unknown"] = Field(default="unknown", description="dpi: payload inspection; port: a guess from the port; ip: from an address list.")
    host: str = Field(default="", max_length=512, description="HTTP Host, TLS/QUIC SNI, DNS query name, ...")
    http: HttpInfo | None = None
    http_transactions: list[HttpInfo] = Field(default_factory=list, max_length=64, description="Every request/response pair of the connection the samples reached, in order (the first is ``http``).")
    tls: TlsInfo | None = None
    quic: QuicInfo | None = None
    ssh: SshInfo | None = None
    extra: dict[str, str] = Field(default_factory=dict, description="Other protocol metadata as text (mail/FTP commands, banners, ...).")
    # what block needs to act at once, copied from the sample
    trigger_time: float = Field(default=0.0, description="Capture time of the packet that triggered the sample, Unix epoch seconds.")
    src_mac: str = Field(default="", max_length=17)
    dst_mac: str = Field(default="", max_length=17)
    vlan_ids: list[int] = Field(default_factory=list)
    src2dst_next_seq: int = Field(default=0, ge=0)
    src2dst_ack: int = Field(default=0, ge=0)
    dst2src_next_seq: int = Field(default=0, ge=0)
    dst2src_ack: int = Field(default=0, ge=0)


class DnsQuestion(_Model):
    name: str = Field(max_length=1024, description="Query name, represented text (shared/text.py).")
    rtype: str = Field(default="", max_length=16, description="A, AAAA, ... or the number as text.")
    rclass: str = Field(default="", max_length=16, description="IN, CH, ... or the number as text.")


class DnsAnswer(_Model):
    """One resource record (answer, authority or additional section)."""

    name: str = Field(max_length=1024, description="Owner name, represented text.")
    rtype: str = Field(max_length=16, description="A, AAAA, CNAME, ...")
    ttl_s: int = Field(default=0, ge=0)
    data: str = Field(default="", max_length=2048, description="RDATA as text (addresses, names, ...), hex for other types.")
    rclass: str = Field(default="", max_length=16, description="IN, CH, ...; for OPT records the UDP payload size.")


DnsFlagName = Literal["aa", "tc", "rd", "ra", "z", "ad", "cd"]


class DnsRecord(Event):
    """One DNS message (query or response), for the DNS log.

    The envelope is the flow's: src is the endpoint that sent the flow's first
    packet (the client), whatever side sent this message (``from_src``).  A
    response whose query this classify replica saw is a transaction record:
    ``query_time`` and ``rtt_ms`` are set.  A message that cannot be parsed is
    a record too, with ``error`` naming why and the header fields read so far.
    """

    event_type: Literal["dns"] = "dns"
    transaction_id: int = Field(ge=0, le=65535)
    is_response: bool
    query_name: str = Field(default="", max_length=1024, description="First question's name, represented text.")
    query_type: str = Field(default="", max_length=16)
    rcode: str = Field(default="", max_length=16, description="NOERROR, NXDOMAIN, ... (responses only).")
    answers: list[DnsAnswer] = Field(default_factory=list)
    src_mac: str = Field(default="", max_length=17, description="MAC of src (the flow's first frame).")
    dst_mac: str = Field(default="", max_length=17)
    from_src: bool = Field(default=True, description="True when src sent this message.")
    opcode: int = Field(default=0, ge=0, le=15, description="0 QUERY, 1 IQUERY, 2 STATUS, 4 NOTIFY, 5 UPDATE.")
    flags: list[DnsFlagName] = Field(default_factory=list, description="Header flags set: aa, tc, rd, ra, z, ad, cd.")
    query_class: str = Field(default="", max_length=16)
    questions: list[DnsQuestion] = Field(default_factory=list, max_length=64)
    authorities: list[DnsAnswer] = Field(default_factory=list, max_length=512)
    additionals: list[DnsAnswer] = Field(default_factory=list, max_length=512)
    query_time: float = Field(default=0.0, description="Responses: capture time of the matching query, Unix epoch seconds (0: not seen).")
    rtt_ms: float | None = Field(default=None, ge=0, description="Responses: time from the query to this response in milliseconds (None: query not seen).")
    error: str = Field(default="", max_length=128, description="Why the message could not be parsed (or was cut short), empty when it parsed.")


# --------------------------------------------------------------------------- alerts and blocks

AlertType = Literal["arp_flood", "arp_spoof", "port_scan", "syn_flood", "icmp_flood", "dns_tunnel", "policy"]
Severity = Literal["info", "low", "medium", "high", "critical"]


class Alert(Event):
    """One incident; re-published with growing count while it lasts."""

    event_type: Literal["alert"] = "alert"
    alert_id: str = Field(max_length=64, description="Stable id of the incident; updates reuse it.")
    alert_type: AlertType
    severity: Severity = "medium"
    first_seen: float
    last_seen: float
    count: int = Field(default=1, ge=0, description="Packets, flows or events that make up the incident so far.")
    message: str = Field(default="", max_length=2048)
    evidence_pcap: str = Field(default="", max_length=1024, description="Path of the evidence pcap capture wrote, if any.")
    rule_id: str = Field(default="", max_length=128, description="policy alerts: id of the rule that matched.")
    details: dict[str, str] = Field(default_factory=dict, description=(
        "Type-specific facts as text. Consumers cut it to FT_ALERT_DETAILS_MAX_BYTES characters "
        "(keys and values), marking the cut with a '_truncated' key."))
    started_at: float = Field(default=0.0, description="When the attack started: packet time of its first evidence (0 = unknown).")
    rate: float = Field(default=0.0, ge=0, description="Measured rate of the attack so far (rate_unit), over the time it was seen.")
    rate_unit: str = Field(default="", max_length=32, description="Unit of rate: packets/s, flows/s, queries/s, targets/s.")
    top_sources: list[str] = Field(default_factory=list, max_length=16, description="Most active sources (addresses or MACs), busiest first.")
    top_targets: list[str] = Field(default_factory=list, max_length=16, description="Most hit targets (address, address:port, domain), busiest first.")


BlockOutcome = Literal["won", "lost", "unknown", "dry_run", "not_possible", "rate_limited", "allowlisted"]


class BlockAction(Event):
    """What block did about a flow and whether it won the race."""

    event_type: Literal["block"] = "block"
    rule_id: str = Field(max_length=128)
    action: Literal["alert", "reset", "http_block", "dns_block", "drop"]
    outcome: BlockOutcome = "unknown"
    host: str = Field(default="", max_length=512)
    latency_ms: float = Field(default=0.0, ge=0, description="From the trigger packet's capture to injection.")
    attempts: int = Field(default=0, ge=0)
    message: str = Field(default="", max_length=1024)


class CaptureStats(Event):
    """Periodic and end-of-source counters from a capture process."""

    event_type: Literal["capture_stats"] = "capture_stats"
    source: str = Field(default="", max_length=256)
    finished: bool = Field(default=False, description="True for the last report of a file source.")
    packets: int = 0
    bytes: int = 0
    bad_packets: int = Field(default=0, description="Truncated or malformed packets, counted and skipped.")
    unsupported_packets: int = Field(default=0, description="Packets of a link type or protocol capture does not decode.")
    dropped_kernel: int = 0
    dropped_interface: int = 0
    flows_active: int = 0
    flows_ended: int = 0
    flows_evicted: int = 0
    one_way_tcp_flows: int = 0
    duplicate_frames: int = 0
    counters: dict[str, int] = Field(default_factory=dict, description="Other named counters (per link type, L2 protocols, ...).")


class Evidence(Event):
    """A pcap capture wrote as evidence: for an alerted or blocked flow, or on request."""

    event_type: Literal["evidence"] = "evidence"
    path: str = Field(max_length=1024, description="Where the pcap was written (on the probe host).")
    reason: Literal["alert", "block", "request"] = Field(description="What asked for it.")
    ref: str = Field(default="", max_length=128, description="alert_id, block rule id or request id.")
    packets: int = Field(default=0, ge=0, description="Packets in the file.")


AnyEvent = Annotated[
    Union[FlowRecord, FlowSample, PacketEvent, Verdict, DnsRecord, Alert, BlockAction, CaptureStats, Evidence],
    Field(discriminator="event_type"),
]


class EventBatch(_Model):
    """Many events in one message, where the rate is high."""

    event_type: Literal["batch"] = "batch"
    events: list[AnyEvent]


_ADAPTERS: dict[str, TypeAdapter[Any]] = {}


def _adapter(which: str) -> TypeAdapter[Any]:
    """parse_any's and parse_one's validators, built at their first use (they build every event model)."""
    ad = _ADAPTERS.get(which)
    if ad is None:
        ad = _ADAPTERS[which] = TypeAdapter(
            Annotated[Union[AnyEvent, EventBatch], Field(discriminator="event_type")] if which == "any" else AnyEvent)
    return ad


def _flat_json(cls: type) -> bool:
    """Whether every field of ``cls`` is a str, int, float or bool (a Literal of str included, or one
    of them or None), so that an instance's ``__dict__`` is its JSON document as pydantic would write it."""
    import types
    import typing

    scalars = (str, int, float, bool)
    for fi in cls.model_fields.values():
        t = fi.annotation
        origin = typing.get_origin(t)
        if origin is Literal:
            if not all(isinstance(a, str) for a in typing.get_args(t)):
                return False
        elif origin in (typing.Union, types.UnionType):   # e.g. int | None: None is null for both writers
            if not all(a in scalars or a is type(None) for a in typing.get_args(t)):
                return False
        elif t not in scalars:
            return False
    return True


import sys as _sys
from binascii import b2a_base64 as _b2a

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - a dependency; the pydantic path gives the same document
    _orjson = None
#: events written by orjson from their ``__dict__`` (the capture hot path's flow records); every
#: other event goes through its own pydantic serializer
_FLAT_MODELS = frozenset(c for c in (FlowRecord,) if _flat_json(c))
_FLAT_TYPES = _FLAT_MODELS if _orjson is not None else frozenset()


def _doc_json(cls: type) -> bool:
    """Whether an instance's ``__dict__`` is its JSON document as pydantic writes it once the models in it
    are replaced by their own ``__dict__`` (recursively): every field is a scalar (``_flat_json``), a list
    of scalars, a ``dict[str, str]``, or such a model, an optional one or a list of them."""
    import types
    import typing

    scalars = (str, int, float, bool)

    def ok(t: Any) -> bool:
        origin = typing.get_origin(t)
        if t in scalars or t is type(None):
            return True
        if origin is Literal:
            return all(isinstance(a, str) for a in typing.get_args(t))
        if origin in (typing.Union, types.UnionType, list):
            return all(ok(a) for a in typing.get_args(t))
        if origin is dict:
            return typing.get_args(t) == (str, str)
        return isinstance(t, type) and issubclass(t, BaseModel) and _doc_json(t)

    return all(ok(fi.annotation) for fi in cls.model_fields.values())


#: classify's answers (verdicts, DNS records), written by orjson from their ``__dict__`` without its
#: defaults, the models in them (``_DOC_NESTED``) from theirs, whole; about 2x cheaper than pydantic's
#: serializer with exclude_defaults, the same models once read
_DOC_TYPES = frozenset(c for c in (Verdict, DnsRecord) if _doc_json(c)) if _orjson is not None else frozenset()
_DOC_NESTED = frozenset((HttpInfo, TlsInfo, QuicInfo, SshInfo, DnsQuestion, DnsAnswer))


def _nested_doc(o: Any) -> Any:
    """orjson's ``default`` for the batches of ``_DOC_TYPES``: a nested model's ``__dict__`` (anything
    else, or a model with unknown fields, is left to pydantic: the whole batch falls back)."""
    if type(o) in _DOC_NESTED and not o.__pydantic_extra__:
        return o.__dict__
    raise TypeError(type(o).__name__)


def event_dict(e: Event) -> dict[str, Any]:
    """``e.model_dump(mode="json")``, without the walk for flat events (their ``__dict__`` is it)."""
    if type(e) in _FLAT_MODELS:
        return dict(e.__dict__)
    return e.model_dump(mode="json")


#: the wire leaves out every field at its default (schema 1.3): readers fill it in from the model, as
#: they always could for an optional field.  On the 1 M-packet issue-12 mix this took start records from
#: ~710 to ~330 bytes, end records from ~730 to ~450 and verdicts from ~500 to ~100 (bench pipeline).
#: ``event_type`` (the union's discriminator) is always written.
#: model -> (field names, their defaults in field order (_KEEP: event_type, required), {field: default})
_DEFAULTS: dict[type, tuple[tuple[str, ...], tuple[Any, ...], dict[str, Any]]] = {}
#: model -> b'{"event_type":"<its literal>",'
_ET_PREFIX: dict[type, bytes] = {}


class _Keep:
    """Not the default of any field: event_type and required fields are always written."""


_KEEP = _Keep()


def _defaults(cls: type) -> tuple[tuple[str, ...], tuple[Any, ...], dict[str, Any]]:
    got = _DEFAULTS.get(cls)
    if got is None:
        names, values = [], []
        for name, fi in cls.model_fields.items():
            names.append(name)
            values.append(_KEEP if name == "event_type" or fi.is_required() else fi.get_default(call_default_factory=True))
        got = _DEFAULTS[cls] = (tuple(names), tuple(values),
                                {n: v for n, v in zip(names, values) if v is not _KEEP})
    return got


def _lean_py(d: dict[str, Any], spec: tuple[tuple[str, ...], tuple[Any, ...], dict[str, Any]]) -> dict[str, Any]:
    """``d`` without the entries at their field's default (same type and ==); see ``_meter.lean``."""
    defaults, missing = spec[2], _KEEP
    return {k: v for k, v in d.items()
            if (dv := defaults.get(k, missing)) is missing or type(v) is not type(dv) or v != dv}


_lean: Any = _lean_py


def set_lean(fn: Any) -> None:
    """A faster ``_lean_py`` (capture's compiled ``_meter.lean``, registered when services.capture.flows
    is imported); None: the Python one."""
    global _lean
    _lean = fn if fn is not None else _lean_py


_flat_batch: Any = None
_FLAT_SPECS: dict[type, Any] = {}


def set_flat_batch(fn: Any) -> None:
    """``(events, specs, other, float_json) -> bytes | None``: batch_json's document for a batch of flat
    events written in one pass (capture's compiled ``_meter.flat_batch``, registered when
    services.capture.flows is imported), byte for byte what the orjson path below writes; None from it:
    that path decides.  None here: always that path."""
    global _flat_batch
    _flat_batch = fn
    _FLAT_SPECS.clear()


def _float_json(x: float) -> bytes:
    return _orjson.dumps(x)


_b64_batch: Any = None
_B64_SPECS: dict[type, Any] = {}


def set_b64_batch(fn: Any) -> None:
    """``(events, specs, other, float_json) -> bytes | None``: batch_json's document for a batch of samples
    written in one pass (capture's compiled ``_meter.b64_batch``), byte for byte what the orjson path below
    writes; None from it: that path decides.  None here: always that path."""
    global _b64_batch
    _b64_batch = fn
    _B64_SPECS.clear()


def _b64_other(e: Any) -> bytes:
    """One event of a sample batch that b64_batch does not write itself, as that path writes it."""
    spec = _B64_MODELS.get(type(e))
    return _orjson.dumps(_b64_doc(e, spec)) if spec is not None else _pyd_lean(e)


def _pyd_lean(e: Any) -> bytes:
    """An event's JSON from its own pydantic serializer, without its default-valued fields."""
    cls = type(e)
    body = e.__pydantic_serializer__.to_json(e, exclude_defaults=True)
    prefix = _ET_PREFIX.get(cls)
    if prefix is None:
        import json

        prefix = _ET_PREFIX[cls] = b'{"event_type":' + json.dumps(cls.model_fields["event_type"].default).encode() + b","
    return prefix + body[1:] if len(body) > 2 else prefix[:-1] + b"}"


def event_json(e: Event) -> bytes:
    """One event's JSON as the bus carries it: ``e.model_dump_json(exclude_defaults=True)`` with its
    ``event_type``, written faster where it can be."""
    if type(e) in _FLAT_TYPES:
        try:
            return _orjson.dumps(_lean(e.__dict__, _defaults(type(e))))
        except (TypeError, _orjson.JSONEncodeError):
            pass  # e.g. an int beyond 64 bits or a lone surrogate: pydantic decides
    return _pyd_lean(e)


#: events with raw bytes written by orjson from a copy of their ``__dict__`` whose bytes fields are
#: turned into pydantic's base64 text first (URL-safe alphabet, padded: ``ser_json_bytes="base64"``):
#: model -> (list-of-bytes fields, bytes fields).  The capture hot path's samples (~4x cheaper than
#: pydantic's serializer).  A DNS packet event only without its nested ``arp``.
_B64_MODELS: dict[type, tuple[tuple[str, ...], tuple[str, ...]]] = {
    FlowSample: (("src_payloads", "dst_payloads"), ()),
    PacketEvent: ((), ("payload",)),
}
if _orjson is None:
    _B64_MODELS = {}
_B64_TRANS = bytes.maketrans(b"+/", b"-_")


def _b64(b: bytes) -> str:
    return _b2a(b, newline=False).translate(_B64_TRANS).decode("ascii")


def _b64_texts_py(v: list[bytes]) -> list[str]:
    return [_b64(x) for x in v]


_b64_json: Any = None


def set_b64_json(fn: Any) -> None:
    """``list[bytes] -> bytes``, the JSON array of their base64 texts, for an orjson fragment (capture's
    compiled ``_meter.b64_json``, registered when services.capture.flows is imported): orjson copies it
    whole instead of one str per payload that it scans for escapes (a sample's JSON in 40 % less
    time on the issue-12 mix).  None: one text per payload (``_b64_texts_py``)."""
    global _b64_json
    _b64_json = fn


def _b64_doc(e: Any, spec: tuple[tuple[str, ...], tuple[str, ...]]) -> Any:
    """The JSON-ready dict of a ``_B64_MODELS`` event (a pydantic fragment when it is not plain)."""
    d = e.__dict__
    arp = d.get("arp")
    if e.__pydantic_extra__ or (arp is not None and (type(arp) is not ArpInfo or arp.__pydantic_extra__)):
        return _orjson.Fragment(_pyd_lean(e))
    d = dict(d)   # not lean: samples' defaults are few (6 % of their bytes), and dropping them costs more
    if arp is not None:   # an ARP packet's fields: all scalars (ARP packets went to pydantic: 3 % of a replay)
        d["arp"] = arp.__dict__
    lists, ones = spec
    as_json = _b64_json
    for name in lists:
        v = d[name]
        if v:
            d[name] = _orjson.Fragment(as_json(v)) if as_json is not None and type(v) is list else _b64_texts_py(v)
    for name in ones:
        d[name] = _b64(d[name])
    return d


def batch_json(events: list[Event | bytes]) -> bytes:
    """An EventBatch's JSON as the bus carries it: each event without its default-valued fields
    (``event_type`` always written), which parses to the same models as the full document.  An item
    that is bytes is an event's document written already (capture's end records, ``_meter.expire``):
    it goes in as it is.

    Serialising through the union costs twice as much (the serializer has to
    find each member's type), so each event goes through its own serializer;
    a batch that starts with a flat event (``_FLAT_TYPES``) is written by
    orjson in one call, flat events from their ``__dict__`` (about 4x cheaper
    than pydantic's), others as fragments from their own serializer; a batch
    that starts with a sample or packet event (``_B64_MODELS``) likewise, their
    bytes as base64 text.
    """
    flat = _FLAT_TYPES
    if events:
        t0 = type(events[0])
        if t0 in flat or t0 is bytes:   # flow records (some as their JSON already), a verdict here and there
            if _flat_batch is not None:
                specs = _FLAT_SPECS
                if not specs:
                    specs.update((c, _defaults(c)) for c in flat)
                out = _flat_batch(events if type(events) is list else list(events), specs, _pyd_lean, _float_json)
                if out is not None:
                    return out
            frag = _orjson.Fragment
            lean = _lean
            try:
                return b'{"event_type":"batch","events":' + _orjson.dumps(
                    [lean(e.__dict__, _defaults(type(e))) if type(e) in flat
                     else frag(e if type(e) is bytes else _pyd_lean(e)) for e in events]) + b"}"
            except (TypeError, _orjson.JSONEncodeError):
                pass  # e.g. an int beyond 64 bits or a lone surrogate in a flat event: pydantic decides
        elif t0 in _DOC_TYPES and _lean is not _lean_py:   # classify's verdicts, DNS records
            # without their default-valued fields (the compiled lean: in Python it costs more than
            # pydantic's exclude_defaults), nested models whole
            docs = _DOC_TYPES
            frag = _orjson.Fragment
            lean = _lean
            try:
                return b'{"event_type":"batch","events":' + _orjson.dumps(
                    [lean(e.__dict__, _defaults(type(e))) if type(e) in docs and not e.__pydantic_extra__
                     else frag(e if type(e) is bytes else _pyd_lean(e)) for e in events], default=_nested_doc) + b"}"
            except (TypeError, _orjson.JSONEncodeError):
                pass  # e.g. an int beyond 64 bits, a lone surrogate, a value of another type: pydantic decides
        elif t0 in _B64_MODELS:   # samples, packet events
            if _b64_batch is not None and t0 is FlowSample:
                specs = _B64_SPECS
                if not specs:
                    specs[FlowSample] = (tuple(_sys.intern(n) for n in _B64_MODELS[FlowSample][0]),
                                         tuple(_sys.intern(n) for n in FlowSample.model_fields))
                out = _b64_batch(events if type(events) is list else list(events), specs, _b64_other, _float_json)
                if out is not None:
                    return out
            b64m = _B64_MODELS
            frag = _orjson.Fragment
            try:
                return b'{"event_type":"batch","events":' + _orjson.dumps(
                    [_b64_doc(e, b64m[type(e)]) if type(e) in b64m else frag(e if type(e) is bytes else _pyd_lean(e))
                     for e in events]) + b"}"
            except (TypeError, _orjson.JSONEncodeError):
                pass
    return b'{"event_type":"batch","events":[' + b",".join([e if type(e) is bytes else _pyd_lean(e) for e in events]) + b"]}"


def parse_any(data: bytes | str) -> Event | EventBatch:
    """Parse any FlowTarget message as it is (unknown fields kept in ``__pydantic_extra__``).

    Raises pydantic.ValidationError when malformed (also beyond the JSON
    parser's nesting limit).  Services decode through ``shared.codec.Decoder``.
    """
    return _adapter("any").validate_json(data)


def parse_one(data: bytes | str) -> Event:
    """Parse one event (not a batch); ValidationError when malformed."""
    return _adapter("one").validate_json(data)


def parse_event(data: bytes | str) -> Event | EventBatch:
    """Parse any FlowTarget message, unknown fields dropped; raises pydantic.ValidationError when malformed."""
    parsed = _adapter("any").validate_json(data)
    strip_unknown_fields(parsed)
    return parsed


_NESTED: dict[type, tuple[str, ...]] = {}


def _holds_model(t: Any) -> bool:
    import typing

    if isinstance(t, type) and issubclass(t, BaseModel):
        return True
    return any(_holds_model(a) for a in typing.get_args(t))


def _nested_fields(cls: type) -> tuple[str, ...]:
    names = _NESTED.get(cls)
    if names is None:
        names = _NESTED[cls] = tuple(n for n, fi in cls.model_fields.items() if _holds_model(fi.annotation))
    return names


def strip_unknown_fields(model: BaseModel) -> int:
    """Drop the fields a newer producer added (``extra="allow"`` kept them); returns how many there were.

    Runs on every decoded event: reads ``__dict__`` and checks model types by their class's nested-field
    plan instead of ``getattr`` and ``isinstance(..., BaseModel)`` (a metaclass check) per field.
    """
    n = 0
    extra = model.__pydantic_extra__
    if extra:
        n += len(extra)
        extra.clear()
    names = _nested_fields(type(model))
    if names:
        d = model.__dict__
        for name in names:
            value = d.get(name)
            if value is None:
                continue
            if isinstance(value, list):      # a plain type check first (BaseModel's is a metaclass one)
                for item in value:
                    if isinstance(item, BaseModel):
                        n += strip_unknown_fields(item)
            elif isinstance(value, BaseModel):
                n += strip_unknown_fields(value)
    return n


def events_of(message: Event | EventBatch) -> list[Event]:
    """The events a parsed message carries (one, or a batch's)."""
    if isinstance(message, EventBatch):
        return list(message.events)
    return [message]
