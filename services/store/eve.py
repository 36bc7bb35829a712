"""Suricata eve.json-compatible records for SIEMs (``FT_OUT_FORMAT=eve``, ``--format eve``).

Each stored point becomes one eve line, as Suricata writes them, so Filebeat's
Suricata module, Wazuh or Splunk's Suricata add-on read them unchanged:

==================  ================================================================
point               eve line
==================  ================================================================
``flows``           ``event_type: flow`` (``flow``: packets/bytes to server/client, start, end, age, state, reason)
``dns``             ``event_type: dns`` (``dns``: version 2, ``type`` query or answer, id, flags, rcode, answers, authorities)
``http``            ``event_type: http`` (``http``: hostname, url, method, protocol, status, user agent, referer, content type, length), one per request/response pair
``tls``             ``event_type: tls`` (``tls``: sni, version, subject, issuerdn, serial, notbefore, notafter, ja3, ja3s)
``ssh``             ``event_type: ssh`` (``ssh``: client/server proto_version, software_version, hassh)
``alerts``          ``event_type: alert`` (``alert``: action allowed, signature, category, severity 1-4)
``blocks``          ``event_type: alert`` (``alert``: action blocked, or allowed when nothing was injected)
==================  ================================================================

Every line has ``timestamp`` (ISO 8601, microseconds, ``+0000``), ``flow_id`` (an
integer: the first 48 bits of SHA-1 of FlowTarget's flow id, the same for every
record of a flow), ``community_id``, ``src_ip``/``src_port``/``dest_ip``/``dest_port``,
``proto``, ``app_proto``, ``vlan``, ``ether`` (MACs) and, for tunnelled flows,
``tunnel`` (outer endpoints when capture reports them); ICMP flow lines have
``icmp_type``/``icmp_code`` (of the flow's first packet).  Fields eve has no place
for (DNS additionals and rtt, HTTP request body length, FlowTarget's host and
application ...) are only in the native JSON lines / InfluxDB output: eve's schema
forbids other keys.  ``flow_updates`` points and QUIC have no eve event and are
counted in ``EveWriter.skipped``.  Strings are stored text (docs/storage.md).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from typing import Any

from services.store.lineproto import Point, store_text

_PROTO = {"ICMPV6": "IPv6-ICMP"}
_SEVERITY = {"critical": 1, "high": 1, "medium": 2, "low": 3, "info": 4}
_RCODE_NUM = {"NOERROR": 0, "FORMERR": 1, "SERVFAIL": 2, "NXDOMAIN": 3, "NOTIMP": 4, "REFUSED": 5, "YXDOMAIN": 6,
              "YXRRSET": 7, "NXRRSET": 8, "NOTAUTH": 9, "NOTZONE": 10}
_FLAG_BITS = {"aa": 0x0400, "tc": 0x0200, "rd": 0x0100, "ra": 0x0080, "z": 0x0040, "ad": 0x0020, "cd": 0x0010}
_TLS_VERSIONS = {"TLSv1": "TLS 1.0", "TLSv1.0": "TLS 1.0", "TLSv1.1": "TLS 1.1", "TLSv1.2": "TLS 1.2",
                 "TLSv1.3": "TLS 1.3", "SSLv3": "SSLv3", "SSLv2": "SSLv2"}


def iso_time(t: float) -> str:
    """eve's timestamp: ``2026-12-04T15:48:46.123456+0000`` (UTC)."""
    d = _dt.datetime.fromtimestamp(t, tz=_dt.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.%f") + "+0000"


def _iso_seconds(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, tz=_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def eve_flow_id(flow_id: str) -> int:
    """eve's integer flow_id for FlowTarget's flow id (48 bits: exact in every JSON reader)."""
    return int.from_bytes(hashlib.sha1(flow_id.encode("utf-8", "surrogatepass")).digest()[:6], "big")


class EveWriter:
    """Turns points into eve records; counts the points eve has no event for."""

    def __init__(self) -> None:
        self.skipped = 0

    def record(self, p: Point) -> dict[str, Any] | None:
        m = p.measurement
        f = p.fields
        tags = dict(p.tags)
        if m == "flows":
            return self._flow(p, f, tags)
        if m == "dns":
            return self._dns(p, f, tags)
        if m == "http":
            return self._http(p, f, tags)
        if m == "tls":
            return self._tls(p, f, tags)
        if m == "ssh":
            return self._ssh(p, f, tags)
        if m == "alerts":
            return self._alert(p, f, tags)
        if m == "blocks":
            return self._block(p, f, tags)
        self.skipped += 1
        return None

    # ------------------------------------------------------------------ common

    @staticmethod
    def _base(p: Point, f: dict, tags: dict, event_type: str, t: float | None = None) -> dict[str, Any]:
        rec: dict[str, Any] = {"timestamp": iso_time(p.time_ns / 1e9 if t is None else t)}
        if f.get("flow_id"):
            rec["flow_id"] = eve_flow_id(f["flow_id"])
        rec["event_type"] = event_type
        if f.get("src_ip"):
            rec["src_ip"] = store_text(f["src_ip"])
            rec["src_port"] = int(f.get("src_port") or 0)
        if f.get("dst_ip"):
            rec["dest_ip"] = store_text(f["dst_ip"])
            rec["dest_port"] = int(f.get("dst_port") or 0)
        proto = tags.get("transport", "")
        if proto:
            rec["proto"] = _PROTO.get(proto, proto)
        if f.get("community_id"):
            rec["community_id"] = f["community_id"]
        if f.get("vlan_id"):
            rec["vlan"] = [int(f["vlan_id"])]
        app = tags.get("app_protocol", "")
        if app and app != "Unknown":
            rec["app_proto"] = store_text(app.lower())
        return rec

    @staticmethod
    def _ether(rec: dict, f: dict) -> None:
        e = {}
        if f.get("src_mac"):
            e["src_mac"] = f["src_mac"]
        if f.get("dst_mac"):
            e["dest_mac"] = f["dst_mac"]
        if e:
            rec["ether"] = e

    # ------------------------------------------------------------------ per kind

    def _flow(self, p: Point, f: dict, tags: dict) -> dict[str, Any]:
        first = p.time_ns / 1e9
        last = float(f.get("last_seen") or first)
        rec = self._base(p, f, tags, "flow", t=last)
        reason = f.get("end_reason", "")
        fl = {
            "pkts_toserver": int(f.get("src2dst_packets", 0)), "pkts_toclient": int(f.get("dst2src_packets", 0)),
            "bytes_toserver": int(f.get("src2dst_bytes", 0)), "bytes_toclient": int(f.get("dst2src_bytes", 0)),
            "start": iso_time(first), "end": iso_time(last), "age": int(max(0.0, last - first)),
            "state": "closed" if reason in ("fin", "rst") else "established" if tags.get("transport") == "TCP" else "new",
            "reason": {"idle": "timeout", "active": "timeout", "evicted": "forced", "eof": "shutdown",
                       "shutdown": "shutdown", "fin": "timeout", "rst": "timeout"}.get(reason, "timeout"),
            "alerted": False,
        }
        if f.get("icmp_type") is not None:    # ICMP/ICMPv6 flows: the first packet's, as Suricata's icmp_type/icmp_code
            rec["icmp_type"] = int(f["icmp_type"])
            rec["icmp_code"] = int(f.get("icmp_code") or 0)
        rec["flow"] = fl
        self._ether(rec, f)
        tun = {}
        for src, dst in (("tunnel_src_ip", "src_ip"), ("tunnel_dst_ip", "dest_ip")):
            if f.get(src):
                tun[dst] = store_text(str(f[src]))
        if f.get("tunnel"):
            tun["proto"] = store_text(f["tunnel"])
            tun["depth"] = 1
        if tun:
            rec["tunnel"] = tun
        return rec

    def _dns(self, p: Point, f: dict, tags: dict) -> dict[str, Any]:
        rec = self._base(p, f, tags, "dns")
        rec["app_proto"] = "dns"
        flags = f.get("flags") or []
        if isinstance(flags, str):
            flags = json.loads(flags)
        kind = tags.get("kind", "query")
        qname = store_text(f.get("query_name", ""))
        qtype = tags.get("query_type", "")
        if kind == "query":
            d: dict[str, Any] = {"version": 2, "type": "query", "id": int(f.get("transaction_id", 0)), "tx_id": 0}
            if qname:
                d["rrname"] = qname
            if qtype:
                d["rrtype"] = qtype
            if "z" in flags:
                d["z"] = True
        else:
            rcode = tags.get("rcode", "")
            word = 0x8000 | (int(f.get("opcode", 0)) & 0xF) << 11
            for n in flags:
                word |= _FLAG_BITS.get(n, 0)
            word |= _RCODE_NUM.get(rcode, int(rcode) if rcode.isdigit() else 0) & 0xF
            d = {"version": 2, "type": "answer", "id": int(f.get("transaction_id", 0)), "flags": "%04x" % word,
                 "qr": True}
            for n in ("aa", "rd", "ra", "z"):
                if n in flags:
                    d[n] = True
            if qname:
                d["rrname"] = qname
            if qtype:
                d["rrtype"] = qtype
            if rcode:
                d["rcode"] = rcode
            answers = [self._rr(a) for a in f.get("answers") or []]
            if answers:
                d["answers"] = answers
            auth = [self._rr(a) for a in f.get("authorities") or []]
            if auth:
                d["authorities"] = auth
        rec["dns"] = d
        self._ether(rec, f)
        return rec

    @staticmethod
    def _rr(a: dict) -> dict[str, Any]:
        out: dict[str, Any] = {"rrname": store_text(a.get("name", "")), "rrtype": store_text(a.get("rtype", "")),
                               "ttl": int(a.get("ttl_s", 0))}
        if a.get("data"):
            out["rdata"] = store_text(a["data"])
        return out

    def _http(self, p: Point, f: dict, tags: dict) -> dict[str, Any]:
        rec = self._base(p, f, tags, "http")
        rec["tx_id"] = max(0, int(f.get("trans_depth", 1)) - 1)
        h: dict[str, Any] = {}
        for src, dst in (("host", "hostname"), ("url", "url"), ("user_agent", "http_user_agent"),
                         ("content_type", "http_content_type"), ("referer", "http_refer"), ("method", "http_method")):
            if f.get(src):
                h[dst] = store_text(f[src])
        if f.get("version"):
            h["protocol"] = "HTTP/" + store_text(f["version"])
        if f.get("status_code"):
            h["status"] = int(f["status_code"])
        if f.get("response_body_len"):
            h["length"] = int(f["response_body_len"])
        if f.get("dst_port"):
            h["http_port"] = int(f["dst_port"])
        rec["http"] = h
        return rec

    def _tls(self, p: Point, f: dict, tags: dict) -> dict[str, Any] | None:
        if tags.get("app_protocol") == "QUIC" or not (f.get("ja3") or f.get("ja3s") or f.get("cert_subject")
                                                       or f.get("version")):
            self.skipped += 1
            return None
        rec = self._base(p, f, tags, "tls")
        rec["app_proto"] = "tls"
        t: dict[str, Any] = {}
        if f.get("cert_subject"):
            t["subject"] = store_text(f["cert_subject"])
        if f.get("cert_issuer"):
            t["issuerdn"] = store_text(f["cert_issuer"])
        if f.get("cert_serial"):
            s = f["cert_serial"]
            t["serial"] = ":".join(s[i:i + 2] for i in range(0, len(s), 2))
        if f.get("cert_not_before"):
            t["notbefore"] = _iso_seconds(float(f["cert_not_before"]))
        if f.get("cert_not_after"):
            t["notafter"] = _iso_seconds(float(f["cert_not_after"]))
        if f.get("sni"):
            t["sni"] = store_text(f["sni"])
        if f.get("version"):
            t["version"] = _TLS_VERSIONS.get(f["version"], store_text(f["version"]))
        if f.get("ja3"):
            t["ja3"] = {"hash": f["ja3"]}
        if f.get("ja3s"):
            t["ja3s"] = {"hash": f["ja3s"]}
        rec["tls"] = t
        return rec

    def _ssh(self, p: Point, f: dict, tags: dict) -> dict[str, Any]:
        rec = self._base(p, f, tags, "ssh")
        rec["app_proto"] = "ssh"
        s: dict[str, Any] = {}
        for side, banner, hassh in (("client", "client_banner", "hassh"), ("server", "server_banner", "hassh_server")):
            d: dict[str, Any] = {}
            b = f.get(banner) or ""
            if b.startswith("SSH-"):
                parts = b[4:].split("-", 1)
                d["proto_version"] = store_text(parts[0])
                if len(parts) > 1:
                    d["software_version"] = store_text(parts[1])
            if f.get(hassh):
                d["hassh"] = {"hash": f[hassh]}
            if d:
                s[side] = d
        rec["ssh"] = s
        return rec

    def _alert(self, p: Point, f: dict, tags: dict) -> dict[str, Any]:
        rec = self._base(p, f, tags, "alert")
        rec.pop("app_proto", None)
        atype = tags.get("alert_type", "")
        a: dict[str, Any] = {"action": "allowed", "gid": 1, "signature_id": _sid(atype), "rev": 1,
                             "signature": store_text(f.get("message") or f"FlowTarget {atype}"),
                             "category": store_text(atype), "severity": _SEVERITY.get(tags.get("severity", ""), 2)}
        if f.get("rule_id"):
            a["metadata"] = {"tag": [store_text(f["rule_id"])]}
        rec["alert"] = a
        return rec

    def _block(self, p: Point, f: dict, tags: dict) -> dict[str, Any]:
        rec = self._base(p, f, tags, "alert")
        rec.pop("app_proto", None)
        action, outcome = tags.get("action", ""), tags.get("outcome", "")
        injected = action in ("reset", "http_block", "dns_block", "drop") and outcome in ("won", "lost", "unknown")
        rule = store_text(f.get("rule_id", ""))
        a: dict[str, Any] = {"action": "blocked" if injected else "allowed", "gid": 1,
                             "signature_id": _sid("block:" + action), "rev": 1,
                             "signature": f"FlowTarget {action} by rule {rule}: {outcome}",
                             "category": "policy", "severity": 2, "metadata": {"tag": [rule]} if rule else {}}
        if not a["metadata"]:
            del a["metadata"]
        rec["alert"] = a
        return rec

    def line(self, p: Point) -> str | None:
        rec = self.record(p)
        if rec is None:
            return None
        return json.dumps(rec, ensure_ascii=False, separators=(",", ":"))


def _sid(name: str) -> int:
    """A stable signature id per FlowTarget alert kind, in the 9,000,000 range (local rules)."""
    return 9_000_000 + int.from_bytes(hashlib.sha1(name.encode()).digest()[:3], "big") % 1_000_000
