"""The one settings mechanism: pydantic-settings, environment prefix ``FT_``.

Every service builds one frozen settings object at start.  ``CommonSettings``
holds what every service needs (NATS, probe name, JetStream stream limits);
each service's settings class extends it.  A bad value stops the service at
start with a one-line reason (see ``shared.runner``).

List settings (``FT_PCAP``, ``FT_ALLOWLIST``, ...) take a JSON list or
comma-separated values: ``FT_ALLOWLIST=10.0.0.0/8,192.168.1.1`` is
``FT_ALLOWLIST='["10.0.0.0/8","192.168.1.1"]'``.  Environment values are never
JSON-decoded by pydantic-settings itself (``enable_decoding=False``): the one
before-validator of ``FTSettings`` parses list values, so a malformed one is a
validation error naming its variable, not a traceback.
"""

from __future__ import annotations

import ipaddress
import json
import re
import typing
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.subjects import check_token


def _is_list(annotation: Any) -> bool:
    if typing.get_origin(annotation) in (list, tuple, set, frozenset):
        return True
    return any(_is_list(a) for a in typing.get_args(annotation)) if typing.get_origin(annotation) is typing.Union else False


def _is_dict(annotation: Any) -> bool:
    if typing.get_origin(annotation) is dict or annotation is dict:
        return True
    return any(_is_dict(a) for a in typing.get_args(annotation)) if typing.get_origin(annotation) is typing.Union else False


def parse_dict(value: str) -> dict[str, Any]:
    """A mapping setting's text: a JSON object (blank = empty)."""
    text = value.strip()
    if not text:
        return {}
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not a JSON object ({exc.msg} at character {exc.pos})") from None
    if not isinstance(parsed, dict):
        raise ValueError("not a JSON object")
    return parsed


def parse_list(value: str) -> list[Any]:
    """A list setting's text: a JSON list, or comma-separated values (blank = empty list)."""
    text = value.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"not a JSON list ({exc.msg} at character {exc.pos}); "
                             "give a JSON list or comma-separated values") from None
        if not isinstance(parsed, list):
            raise ValueError("not a JSON list")
        return parsed
    return [part.strip() for part in text.split(",") if part.strip()]


class FTSettings(BaseSettings):
    """Base of every settings class: ``FT_`` prefix, frozen, lists as JSON or comma-separated, mappings as JSON objects."""

    # defer_build: a settings class's validator is built when it is first loaded (a service loads one or two)
    model_config = SettingsConfigDict(env_prefix="FT_", frozen=True, extra="ignore", enable_decoding=False,
                                      defer_build=True)

    @field_validator("*", mode="before")
    @classmethod
    def _lists_from_text(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, str) and info.field_name is not None:
            field = cls.model_fields.get(info.field_name)
            if field is not None and _is_list(field.annotation):
                return parse_list(v)
            if field is not None and _is_dict(field.annotation):
                return parse_dict(v)
        return v


class CommonSettings(FTSettings):

    probe: str = Field(default="probe1", description="Probe name, used in subjects and stored records.")
    nats_url: str = Field(default="nats://127.0.0.1:4222", description="Comma-separated NATS server URLs.")
    nats_user: str = Field(default="", description="NATS user name (with FT_NATS_PASSWORD).")
    nats_password: SecretStr = Field(default=SecretStr(""), description="NATS password.")
    nats_token: SecretStr = Field(default=SecretStr(""), description="NATS token.")
    nats_creds: str = Field(default="", description="Path of a NATS .creds file.")
    stream_name: str = Field(default="FLOWTARGET", description="JetStream stream holding every event that must be stored.")
    stream_max_age_s: float = Field(default=7 * 24 * 3600, gt=0, description="Stream retention by age.")
    stream_max_bytes: int = Field(default=8 * 1024**3, gt=0, description="Stream retention by size.")
    stream_storage: str = Field(default="file", pattern="^(file|memory)$")
    stream_replicas: int = Field(default=1, ge=1, le=5, description="Copies of the stream in a JetStream cluster (3 = R3: survives one node lost); at most the cluster's size.")
    kv_replicas: int = Field(default=1, ge=1, le=5, description="Copies of the KV buckets (blocking rules, rule statistics) in a JetStream cluster.")
    js_domain: str = Field(default="", description="JetStream domain the JetStream API calls go to; empty = the connected server's own (a leaf probe's local JetStream).")
    stream_sources: str = Field(default="", description="Comma-separated JetStream domains of leaf probes whose FT_STREAM_NAME stream this stream sources; set, the stream takes no subjects of its own (the central aggregate of leaf probes).")
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    metrics_port: int = Field(default=0, ge=0, le=65535, description="Port of the Prometheus /metrics and /healthz endpoint; 0 = off.")
    metrics_addr: str = Field(default="0.0.0.0", description="Address the /metrics and /healthz endpoint listens on.")
    drain_timeout_s: float = Field(default=5.0, gt=0)
    # --- hostile or broken peers (shared.codec, shared.bus): every bound here is counted when hit
    max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, description="Messages larger than this are rejected unparsed (counted, dead-lettered by JetStream consumers).")
    sub_pending_mb: int = Field(default=2048, ge=1, le=65536, description="Bytes of messages a subscription holds before it is read; beyond it messages are dropped (counted as slow_consumer_drops).")
    alert_details_max_bytes: int = Field(default=16 * 1024, ge=64, description="An alert's details are cut to this many characters (keys and values; counted).")
    dlq_stream_name: str = Field(default="FLOWTARGET_DLQ", description="JetStream stream of dead letters (ft.dlq.<probe>): messages a consumer could not use, with the reason.")
    dlq_max_bytes: int = Field(default=256 * 1024**2, gt=0, description="Dead-letter stream retention by size (oldest dropped).")
    dlq_max_deliver: int = Field(default=20, ge=2, description="A JetStream message delivered this many times without being stored is dead-lettered.")
    # --- bounded shutdown and the spool of unacknowledged JetStream messages
    shutdown_timeout_s: float = Field(default=15.0, gt=0, description="After SIGTERM, JetStream publishes still unacknowledged after this long (at once while NATS is down) are spooled to disk; the process exits at the latest 10 s later.")
    spool_dir: str = Field(default="/var/lib/flowtarget/spool", description="Directory of the spool: JetStream messages not acknowledged at shutdown, published on the next start. Empty = no spool.")
    spool_max_bytes: int = Field(default=256 * 1024**2, ge=0, description="Spool size limit; messages beyond it are dropped (counted).")

    @field_validator("probe")
    @classmethod
    def _probe_token(cls, v: str) -> str:
        return check_token(v, "FT_PROBE")

    @field_validator("nats_url")
    @classmethod
    def _nats_url(cls, v: str) -> str:
        for url in v.split(","):
            if not url.strip().startswith(("nats://", "tls://", "ws://", "wss://")):
                raise ValueError(f"FT_NATS_URL {url!r} must start with nats://, tls://, ws:// or wss://")
        return v

    @field_validator("js_domain")
    @classmethod
    def _js_domain(cls, v: str) -> str:
        return check_token(v, "FT_JS_DOMAIN") if v else v

    @field_validator("stream_sources")
    @classmethod
    def _stream_sources(cls, v: str) -> str:
        for d in v.split(","):
            if d.strip():
                check_token(d.strip(), "FT_STREAM_SOURCES")
        return v

    @property
    def nats_servers(self) -> list[str]:
        """FT_NATS_URL as the list of server URLs the client fails over between."""
        return [u.strip() for u in self.nats_url.split(",") if u.strip()]

    @property
    def source_domains(self) -> list[str]:
        """FT_STREAM_SOURCES as a list of JetStream domains."""
        return [d.strip() for d in self.stream_sources.split(",") if d.strip()]


class CaptureSettings(CommonSettings):
    iface: str = Field(default="", description="Interface to capture on (live).")
    pcap: list[Path] = Field(default_factory=list, description="Capture files to replay instead of an interface.")
    bpf: str = Field(default="", description="BPF filter.")
    snaplen: int = Field(default=2048, ge=64, le=262144)
    promisc: bool = True
    direction_in: bool = Field(default=True, description="Capture only frames received by the interface (never block's own injected frames).")
    buffer_mb: int = Field(default=64, ge=1, le=4096, description="Kernel capture buffer.")
    shards: int = Field(default=1, ge=1, le=64, validation_alias=AliasChoices("shards", "FT_CAPTURE_SHARDS", "FT_SHARDS"),
                        description="Capture processes sharing the interface by flow hash (FT_CAPTURE_SHARDS or FT_SHARDS).")
    shard_index: int = Field(default=-1, ge=-1, le=63, description="This process's shard (set by the parent), -1 = not sharded.")
    shard_run: str = Field(default="", pattern=r"^[A-Za-z0-9]{0,32}$",
                           description="The sharded replay this process belongs to (set by the parent): its shards pace only each other, also beside another replay under the same probe name.")
    idle_timeout_s: float = Field(default=120.0, gt=0)
    active_timeout_s: float = Field(default=1800.0, gt=0)
    tcp_closed_timeout_s: float = Field(default=2.0, ge=0, description="Packets of a FIN/RST-closed flow that arrive within this time still count to it.")
    update_interval_s: float = Field(default=60.0, gt=0, description="Periodic update records for long flows.")
    hot_packets: int = Field(default=100, ge=0, description="Live updates for the alert detectors (core NATS ft.live.<probe>, never stored): a flow other than TCP/UDP (ICMP, ...) that got this many packets since its previous check, checked at most every hot_interval_s; 0 = none.")
    hot_interval_s: float = Field(default=0.5, gt=0, description="Hot checks of a busy flow at most this often; a TCP flow still half-open this long after its SYN also gets a live update.")
    max_flows: int = Field(default=1_000_000, ge=16)
    sample_max_packets: int = Field(default=8, ge=1, le=64, description="Payload packets per direction sent to classify.")
    sample_max_bytes: int = Field(default=4096, ge=64, le=65536, description="Payload bytes per direction sent to classify.")
    verdict_wait_s: float = Field(default=3.0, ge=0, description="How long an ended flow waits for a pending verdict before its end record is published.")
    batch_size: int = Field(default=500, ge=1, description="Flow records per JetStream message.")
    batch_interval_s: float = Field(default=0.2, gt=0)
    evidence_dir: Path = Field(default=Path("/var/lib/flowtarget/evidence"))
    evidence_packets: int = Field(default=32, ge=0, le=10000, description="Recent raw packets kept per flow for evidence.")
    evidence_memory_mb: float = Field(default=128.0, ge=1, le=65536, description="Frame bytes of the flows' evidence rings in all (MiB): each ring (at most 10,768: open flows' and recently ended flows') keeps its flow's last evidence_packets packets within an equal share of it (at least 256 bytes), fewer when they are large; a frame beyond a share is kept cut to it.")
    evidence_max_mb: float = Field(default=1024.0, gt=0, description="Bytes capture writes into evidence_dir (recordings and flow evidence); beyond, new evidence is refused and counted.")
    recording_max_active: int = Field(default=4, ge=1, le=1000, description="ft.ctl pcap recordings at once; further requests are refused and counted.")
    recording_max_packets: int = Field(default=100_000, ge=1, description="Packets per ft.ctl pcap recording (it ends there, counted as truncated).")
    recording_max_mb: float = Field(default=64.0, gt=0, description="Bytes on disk per ft.ctl pcap recording (it ends there, counted as truncated).")
    ctl_requests_per_s: float = Field(default=20.0, gt=0, description="ft.ctl pcap and evidence requests served per second (burst twice that); more are refused and counted.")
    replay_realtime: bool = Field(default=False, description="Replay files at their recorded pace instead of as fast as possible.")
    capture_role: str = Field(default="capture", pattern="^(capture|detect)$",
                              description="detect: run the alert detectors' process (started by flowtarget capture itself).")
    detect_inline: bool | None = Field(
        default=None, validate_default=True,
        description="Run the alert detectors inside the capture process instead of a process of their own; "
                    "unset: inside for file replays by one process (a second one decodes every flow record again "
                    "and asks for evidence after a fast replay ended the flows), "
                    "their own process for live capture and sharded replays (off capture's core; one for all shards).")

    @field_validator("detect_inline", mode="after")
    @classmethod
    def _inline_for_files(cls, v: bool | None, info: ValidationInfo) -> bool:
        if v is not None:
            return v
        return bool(info.data.get("pcap")) and int(info.data.get("shards") or 1) <= 1

    replay_max_pending: int = Field(default=4000, ge=0, description="File replay pauses while this many samples await a verdict (classify is behind); 0 = never pause.")
    # the packet recorder (services/capture/recorder.py, docs/recorder.md)
    record_dir: Path | None = Field(default=None, description="Directory of the rolling packet store; unset = no recording.")
    record_max_bytes: int = Field(default=1 << 30, ge=0, description="The store's byte bound (pcaps and indexes, shared equally by shards); 0 = none (then FT_RECORD_MAX_AGE_S).")
    record_max_age_s: float = Field(default=0.0, ge=0, description="Files whose last packet is older than this (packet time) are deleted; 0 = no age bound.")
    record_file_bytes: int = Field(default=64 << 20, ge=1024, description="A store file rotates at this size (at most an eighth of the byte bound).")
    record_file_s: float = Field(default=300.0, ge=0, description="A store file rotates after this many seconds of packet time; 0 = by size only.")
    record_cutoff_bytes: int = Field(default=0, ge=0, description="Keep only the first N bytes of every flow (both directions); 0 = whole flows.")
    record_direct_io: bool = Field(default=True, description="Write the store's pcaps with O_DIRECT (no copy through the page cache: about a twentieth of the kernel CPU of buffered writes); a filesystem that refuses it gets buffered writes.")
    record_index_max_flows: int = Field(default=100_000, ge=0, description="Flows listed in one file's index; a file with more is read whole by exports.")
    record_export_max_bytes: int = Field(default=1 << 30, ge=1024, description="Largest pcap one export (ft.ctl.<probe>.export) writes.")
    record_evidence_max_mb: float = Field(default=16.0, gt=0, le=4096, description="Largest evidence pcap cut from the store for one alert or block (its first packets in time order).")

    @field_validator("record_dir", mode="before")
    @classmethod
    def _record_dir_blank(cls, v: Any) -> Any:
        # FT_RECORD_DIR= (blank, as compose passes an unset variable) means no recording, not the cwd
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("record_max_age_s")
    @classmethod
    def _record_bounded(cls, v: float, info: Any) -> float:
        if info.data.get("record_dir") and not v and not info.data.get("record_max_bytes"):
            raise ValueError("FT_RECORD_DIR needs FT_RECORD_MAX_BYTES and/or FT_RECORD_MAX_AGE_S (the store must be bounded)")
        return v


class ClassifySettings(CommonSettings):
    queue_group: str = Field(default="classify")
    use_ndpi: bool = Field(default=True, description="Use libndpi as a second engine where it is installed.")


class StoreSettings(CommonSettings):
    influx_url: str = Field(default="", description="InfluxDB 2 URL; empty = no InfluxDB.")
    influx_token: SecretStr = Field(default=SecretStr(""))
    influx_org: str = Field(default="flowtarget")
    influx_bucket: str = Field(default="flowtarget")
    influx_create_bucket: bool = True
    @field_validator("influx_url")
    @classmethod
    def _influx_url(cls, v: str) -> str:
        if not v:
            return v
        try:
            parts = urlsplit(v)
            parts.port   # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError(f"{v!r} is not a URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{v!r} is not an http:// or https:// URL")
        return v

    out_dir: Path | None = Field(default=None, description="Directory for JSON-lines files (the embedded default); empty = none.")

    @field_validator("out_dir", mode="before")
    @classmethod
    def _empty_out_dir_is_none(cls, v: Any) -> Any:
        # FT_OUT_DIR= means no files (it used to mean the current directory: Path(""))
        return None if isinstance(v, str) and not v.strip() else v

    line_protocol_file: bool = Field(default=False, description="Also write influx line protocol into out_dir.")
    out_format: Literal["jsonl", "eve"] = Field(default="jsonl", description="Files in out_dir: jsonl (one file per measurement, the InfluxDB points) or eve (eve.json, Suricata eve.json-compatible lines for SIEMs).")
    durable: str = Field(default="store", description="Durable consumer shared by all store replicas.")
    batch_size: int = Field(default=5000, ge=1)
    flush_interval_s: float = Field(default=1.0, gt=0)
    retry_max_s: float = Field(default=30.0, gt=0)
    isms_min_duration_s: float = Field(default=10.0, ge=0, description="Unknown flows enter the access log when they last longer than this ...")
    isms_min_pps: float = Field(default=1.0, ge=0, description="... at more than this many packets per second.")
    log_all_flows: bool = Field(default=False, description="Write every flow into the access log.")
    report_file: str = Field(default="", description="Append the events flowtarget analyze reports (flow end records, DNS records, alerts) as decoded here to this file (services/store/report.py); one store replica; empty = none.")


# --------------------------------------------------------------------------- block's address lists
# (here, not in services/block, so that settings validate them without importing a service)

_NAME = re.compile(r"^[a-z0-9*?_-]+(\.[a-z0-9*?_-]+)*$")


def _looks_like_name(s: str) -> bool:
    """A host-name pattern, not a mistyped address: has a letter or a wildcard, and no '/' or ':'."""
    if not s or len(s) > 253 or not _NAME.match(s):
        return False
    return any(c.isalpha() or c in "*?" for c in s)


def parse_allow_entry(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | str:
    """An allowlist entry as an ip network, or a normalized host pattern; ValueError for anything else."""
    e = str(entry).strip()
    if not e:
        raise ValueError("empty entry")
    try:
        return ipaddress.ip_network(e, strict=False)
    except ValueError:
        pass
    n = e.lower().rstrip(".")
    if _looks_like_name(n):
        return n
    raise ValueError(f"{e!r} is neither an IP network/address nor a host name pattern")


def parse_address_entry(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A probe address (or network) as an ip network; ValueError otherwise (names are not allowed)."""
    e = str(entry).strip()
    try:
        return ipaddress.ip_network(e, strict=False)
    except ValueError:
        raise ValueError(f"{e!r} is not an IP address or network") from None


class BlockSettings(CommonSettings):
    iface: str = Field(default="", description="Interface to inject on; empty = report only.")
    rules_bucket: str = Field(default="ft_rules")
    rule_stats_bucket: str = Field(default="ft_rule_stats", description="KV bucket of per-rule hit/outcome counts shared by every block replica.")
    rule_stats_flush_s: float = Field(default=2.0, gt=0, description="How often a replica adds its per-rule counts to the bucket.")
    dry_run: bool = Field(default=True, description="Decide and report without injecting (the default); FT_DRY_RUN=false (or flowtarget run --enforce) injects.")
    snaplen: int = Field(default=2048, ge=64, le=262144, description="Bytes block's own capture takes of each frame (FT_SNAPLEN, as capture's): a request's name must lie within them for block to act before classify answers.")
    rate_limit_per_s: float = Field(default=200.0, gt=0)
    rate_burst: int = Field(default=50, ge=1)
    max_rules: int = Field(default=10_000, ge=1, le=1_000_000,
                           description="Rules block keeps from the bucket; a new rule past it is ignored, counted (rules_over_limit) and logged.")
    allowlist: list[str] = Field(default_factory=list, description="IP networks/addresses and host-name patterns never injected against; a bad entry stops block at start.")
    probe_addresses: list[str] = Field(default_factory=list, description="The probe's own addresses or networks, never targeted; a bad entry stops block at start.")

    @field_validator("allowlist")
    @classmethod
    def _allowlist(cls, v: list[str]) -> list[str]:
        out = []
        for e in v:
            try:
                out.append(str(parse_allow_entry(e)))
            except ValueError as exc:
                raise ValueError(f"entry {exc}") from None
        return out

    @field_validator("probe_addresses")
    @classmethod
    def _probe_addresses(cls, v: list[str]) -> list[str]:
        out = []
        for e in v:
            try:
                out.append(str(parse_address_entry(e)))
            except ValueError as exc:
                raise ValueError(f"entry {exc}") from None
        return out


class DetectSettings(FTSettings):
    """Thresholds of the alert detectors that run inside capture (docs/alerts.md).

    Rates are judged over ``*_window_s``: a rate threshold R fires when at least
    R × window events fall inside one window.
    """

    detectors: str = Field(default="arp_flood,arp_spoof,port_scan,syn_flood,icmp_flood,dns_tunnel",
                           description="Comma-separated detectors to run; empty = none.")
    alert_update_interval_s: float = Field(default=10.0, gt=0, description="At most one update of an open incident per this many seconds.")
    alert_expire_s: float = Field(default=60.0, gt=0, description="An incident closes after this long without new evidence.")
    alert_max_incidents: int = Field(default=1000, ge=1, description="Open incidents kept; further ones are counted and dropped.")
    detect_max_tracked: int = Field(default=20000, ge=16, description="Entries (MACs, IPs, sources, targets, domains) each detector tracks; least recent evicted.")
    detect_max_sources: int = Field(default=64, ge=1, description="Capture sources (interfaces, replayed files) whose detector state is kept; the least recently used is closed and dropped (counted in sources_dropped).")
    arp_flood_pps: float = Field(default=50.0, gt=0, description="ARP packets/s from one source MAC.")
    arp_flood_total_pps: float = Field(default=500.0, gt=0, description="ARP packets/s overall, not explained by flooding MACs already alerted.")
    arp_flood_window_s: float = Field(default=2.0, gt=0)
    arp_binding_recent_s: float = Field(default=300.0, gt=0, description="An IP claimed by a new MAC while its old binding was seen this recently is spoofing.")
    arp_gratuitous_max: int = Field(default=20, ge=1, description="Gratuitous ARPs from one MAC within arp_gratuitous_window_s that make a storm.")
    arp_gratuitous_window_s: float = Field(default=10.0, gt=0)
    arp_protected_ips: list[str] = Field(default_factory=list, description="Addresses (gateways, DNS servers) whose spoofing is critical.")
    scan_window_s: float = Field(default=60.0, gt=0)
    scan_vertical_ports: int = Field(default=128, ge=2, description="Distinct ports of one host probed by one source (flows not known to have succeeded).")
    scan_vertical_failed_ports: int = Field(default=32, ge=2, description="Distinct ports of one host with failed/reset/one-packet flows from one source.")
    scan_horizontal_hosts: int = Field(default=1000, ge=2, description="Distinct hosts probed on one port by one source (flows not known to have succeeded).")
    scan_horizontal_failed_hosts: int = Field(default=32, ge=2, description="Distinct hosts with failed flows on one port from one source.")
    scan_udp_unanswered: int = Field(default=128, ge=2, description="UDP: distinct hosts on one port, or ports of one host, left unanswered (P2P clients leave dozens).")
    syn_flood_half_open: int = Field(default=100, ge=1, description="Half-open TCP flows to one address and port within syn_flood_window_s.")
    syn_flood_window_s: float = Field(default=10.0, gt=0)
    icmp_flood_pps: float = Field(default=100.0, gt=0, description="ICMP packets/s towards one address.")
    icmp_flood_window_s: float = Field(default=10.0, gt=0)
    dns_tunnel_label_len: int = Field(default=52, ge=8, le=63, description="A query label this long is suspicious.")
    dns_tunnel_entropy: float = Field(default=3.6, gt=0, description="Shannon entropy (bits/char) that makes a long label suspicious.")
    dns_tunnel_min_len: int = Field(default=24, ge=8, le=63, description="Label length from which entropy is judged.")
    dns_tunnel_queries: int = Field(default=10, ge=1, description="Distinct suspicious query names under one registered domain within dns_tunnel_window_s.")
    dns_tunnel_txt_queries: int = Field(default=30, ge=1, description="TXT/NULL queries under one registered domain within dns_tunnel_window_s.")
    dns_tunnel_window_s: float = Field(default=60.0, gt=0)


class WebSettings(CommonSettings):
    """``flowtarget web``: the operator's console (services/web).

    Login is required: ``FT_WEB_TOKEN``, or ``FT_WEB_USER`` with
    ``FT_WEB_PASSWORD``; none is shipped and the service refuses to start
    without one.
    """

    web_addr: str = Field(default="127.0.0.1", description="Address the console listens on (loopback unless configured).")
    web_port: int = Field(default=8080, ge=0, le=65535, description="Port of the console; 0 = any free port (logged).")
    web_user: str = Field(default="", max_length=64, description="Login user name (with FT_WEB_PASSWORD).")
    web_password: SecretStr = Field(default=SecretStr(""), description="Login password.")
    web_token: SecretStr = Field(default=SecretStr(""), description="Login token (also accepted as 'Authorization: Bearer').")
    web_session_ttl_s: float = Field(default=8 * 3600, gt=0, description="A login lasts this long.")
    web_cookie_secure: bool = Field(default=False, description="Mark the session cookie Secure (behind an HTTPS proxy).")
    web_health_urls: dict[str, str] = Field(default_factory=dict, description="Service name -> its /metrics URL, for the overview's health table (JSON).")
    web_scan_max_messages: int = Field(default=5_000, ge=1, description="Stream messages (a flow message is a batch of up to FT_BATCH_SIZE records) one history search reads at most, newest first.")
    web_page_max: int = Field(default=10_000, ge=1, le=100_000, description="Rows one page shows at most.")
    web_live_interval_s: float = Field(default=1.0, gt=0, le=2.0, description="How often the live overview is pushed to open pages.")
    web_evidence_record_s: float = Field(default=10.0, gt=0, le=3600, description="Length of an evidence recording asked of capture from an alert's page.")
    web_export_timeout_s: float = Field(default=120.0, gt=0, le=3600, description="How long the pcap export page waits for capture's answer to an ft.ctl.<probe>.export request.")
    evidence_dir: Path = Field(default=Path("/var/lib/flowtarget/evidence"), description="Where capture writes evidence pcaps (FT_EVIDENCE_DIR); only files inside it are served.")
    rules_bucket: str = Field(default="ft_rules", description="The blocking rules' KV bucket (FT_RULES_BUCKET).")
    rule_stats_bucket: str = Field(default="ft_rule_stats", description="block's per-rule hit/outcome counts (FT_RULE_STATS_BUCKET), shown beside the rules.")

    @field_validator("web_health_urls")
    @classmethod
    def _health_urls(cls, v: dict[str, str]) -> dict[str, str]:
        for name, url in v.items():
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"health URL of {name!r} must start with http:// or https://")
        return v

    def login_configured(self) -> bool:
        return bool(self.web_token.get_secret_value() or (self.web_user and self.web_password.get_secret_value()))
