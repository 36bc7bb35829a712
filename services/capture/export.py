"""Cut pcaps out of the recorder's store: ``flowtarget pcap`` (and ``ft.ctl.<probe>.export``).

The store (services/capture/recorder.py) is a directory of rolling pcap files,
each with a sidecar index (time range, hosts, flows).  An export:

1. reads the indexes and keeps only the files that can hold a match (a file
   without an index, e.g. the one being written, is always read);
2. reads those files and merges their packets in time order (``heapq.merge``
   over files and shards);
3. matches each packet with capture's decoder (host, port, flow) and,
   optionally, a BPF filter compiled by pypcap;
4. writes one pcap (0640), or with ``per_source`` one pcap per source IP named
   like the original FlowTarget's ExportPack: ``<iface>-<srcIP>-<time>.pcap``.

A flow id (the meter's) resolves through the indexes to its key and start: its
packets are those of that 5-tuple (either direction) from its start until the
next flow on the same key starts.  A Community ID (``1:...``, the flow hash of
Zeek, Suricata and Arkime) selects files by the flows their indexes list; each
packet's 5-tuple is hashed once per distinct tuple (a bounded cache), so files
without an index (the one being written) are filtered in the same pass.  ICMP
and SCTP packets are not selected by Community ID here: the indexes and decode
key them without type/code or ports (the records' ICMP ids come from the type
and code capture keeps per flow, ``shared.community_id.for_event``).
"""

from __future__ import annotations

import argparse
import heapq
import ipaddress
import json
import os
import re
import struct
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from shared.community_id import community_id

from .decode import decode
from .evidence import wire_len
from .recorder import IDX_SUFFIX, list_store, pcap_header, scan_store
from .sources import CaptureFileError, open_source

__all__ = ["Query", "export", "parse_time", "select_files", "add_parser", "run"]

_REC = struct.Struct("<IIII").pack
_pp = struct.Struct("!HH").pack
_UNSAFE = re.compile(r"[^A-Za-z0-9.\-]+")
_CID = re.compile(r"^1:[A-Za-z0-9+/]{27}=$")
_CID_PROTOS = (6, 17)      # FlowTarget keys ICMP and SCTP flows without type/code or ports: no Community ID


class ExportError(ValueError):
    """A request that cannot be answered (bad host, bad filter, unknown flow id)."""


def parse_time(text: str | float | None) -> float | None:
    """Epoch seconds, or ISO 8601 (a time without zone is UTC); None stays None."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return float(text)
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise ExportError(f"bad time {text!r}: use epoch seconds or ISO 8601") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


@dataclass
class Query:
    host: str = ""
    port: int = 0
    flow_id: str = ""
    bpf: str = ""
    since: float | None = None
    until: float | None = None
    community_id: str = ""
    # resolved
    host_b: bytes = b""
    flow_keys: list[tuple] = field(default_factory=list)   # (key bytes fwd, key bytes rev, proto, vlan, start, end)
    flow_text: tuple = ()                                  # (proto, {address a, address b}) for the indexes

    def check(self) -> None:
        if self.host:
            try:
                self.host_b = ipaddress.ip_address(self.host.strip()).packed
            except ValueError:
                raise ExportError(f"bad host {self.host[:64]!r}: an IP address") from None
        if not 0 <= int(self.port) <= 65535:
            raise ExportError("bad port")
        if len(self.flow_id) > 64 or len(self.bpf) > 1024:
            raise ExportError("flow id or filter too long")
        if self.community_id:
            self.community_id = self.community_id.strip()
            if not _CID.fullmatch(self.community_id):
                raise ExportError(f"bad community id {self.community_id[:64]!r}: 1:<base64 of 20 bytes>")
        if not (self.host or self.port or self.flow_id or self.bpf or self.since is not None or self.until is not None
                or self.community_id or self.flow_keys):
            raise ExportError("say what to export: --host, --port, --flow-id, --community-id, --bpf and/or "
                              "--since/--until")


def _read_index(p: Path) -> dict[str, Any] | None:
    try:
        idx = orjson.loads(p.with_name(p.name + IDX_SUFFIX).read_bytes())
        return idx if isinstance(idx, dict) else None
    except (OSError, ValueError):
        return None


class _Summary:
    """What choosing files needs of one index: its time range, hosts and ports (flows are read on demand)."""
    __slots__ = ("first", "last", "truncated", "hosts", "ports")

    def __init__(self, idx: dict[str, Any]) -> None:
        try:
            self.first, self.last = float(idx.get("first_ts", 0.0)), float(idx.get("last_ts", 0.0))
        except (TypeError, ValueError):
            self.first, self.last = 0.0, float("inf")
        self.truncated = bool(idx.get("truncated"))
        hosts = idx.get("hosts", ())
        self.hosts = frozenset(h for h in hosts if isinstance(h, str)) if isinstance(hosts, list) else frozenset()
        ports: set[Any] = set()
        for f in idx.get("flows", ()):
            if isinstance(f, list) and len(f) >= 5:
                ports.add(f[2])
                ports.add(f[4])
        self.ports = frozenset(ports)


_SUMMARIES: OrderedDict[str, dict[str, tuple[tuple[int, int, int], _Summary]]] = OrderedDict()
# directory -> index name -> ((inode, mtime_ns, size), summary)
_SUMMARIES_LOCK = threading.Lock()


def _summaries(directory: str | os.PathLike[str], files: list[Path],
               inodes: dict[str, tuple[int, int, int]]) -> list[tuple[Path, _Summary | None]]:
    """Each file's index summary; an index is parsed again when it changed (inode, mtime or size).

    Evidence cuts choose files many times a minute from a store of hundreds of files whose indexes
    never change once written (the recorder writes each one whole and renames it into place): parsing
    each of them for every cut cost a replay with recording two thirds of its speed (a stat per index
    is cheap beside that, and keeps a rewritten index from being read stale).  The cache
    holds the files listed now (deleted ones drop out), for the last few store directories.
    """
    out: list[tuple[Path, _Summary | None]] = []
    keep: dict[str, tuple[tuple[int, int, int], _Summary]] = {}
    key = os.path.abspath(directory)
    with _SUMMARIES_LOCK:
        old = _SUMMARIES.pop(key, None) or {}
    for p in files:
        name = p.name + IDX_SUFFIX
        ino = inodes.get(name)
        if ino is None:
            out.append((p, None))       # being written, or its index was lost
            continue
        hit = old.get(name)
        if hit is not None and hit[0] == ino:
            summ = hit[1]
        else:
            idx = _read_index(p)
            if idx is None:
                out.append((p, None))
                continue
            summ = _Summary(idx)
        keep[name] = (ino, summ)
        out.append((p, summ))
    with _SUMMARIES_LOCK:
        _SUMMARIES[key] = keep
        while len(_SUMMARIES) > 8:
            _SUMMARIES.popitem(last=False)
    return out


def _resolve_flow(q: Query, indexes: list[tuple[Path, dict[str, Any] | None]]) -> None:
    """The flow id's 5-tuple and time range from the indexes (ExportError when no index names it).

    The flow's packets: that 5-tuple (either direction) from the flow's start until the next
    flow on the same 5-tuple starts.
    """
    found: list[tuple] = []
    by_key: dict[tuple, set[float]] = {}
    for _p, idx in indexes:
        idx = idx or {}
        rows = []
        for f in idx.get("flows", ()):        # [proto, a, ap, b, bp, vlan, flow_id, start, end or 0]
            if isinstance(f, list) and len(f) >= 8 and f[6]:
                rows.append((f[6], f[0], f[1], f[2], f[3], f[4], f[7]))
        for fid, proto, a, ap, b, bp, start in rows:
            k = (proto, frozenset([(a, ap), (b, bp)]))
            by_key.setdefault(k, set()).add(float(start))
            if fid == q.flow_id:
                found.append((k, proto, a, ap, b, bp, float(start)))
    if not found:
        raise ExportError(f"flow {q.flow_id!r} is not in the store's index (aged out, or never recorded)")
    k, proto, a, ap, b, bp, _s = found[0]
    start = min(f[6] for f in found)
    later = [s for s in by_key.get(k, ()) if s > start]
    end = min(later) if later else float("inf")
    q.flow_text = (proto, {a, b})
    ab, bb = ipaddress.ip_address(a).packed, ipaddress.ip_address(b).packed
    # pcap keeps microseconds: a stored time may read back a hair below the flow's own float
    q.flow_keys.append((ab + bb + _pp(ap, bp), bb + ab + _pp(bp, ap), proto, 0, start - 2e-6, end - 2e-6))


def _row_cid(f: list, cache: dict) -> str:
    """The Community ID of an index row [proto, a, ap, b, bp, ...] ('' where there is none)."""
    key = (f[0], f[1], f[2], f[3], f[4])
    cid = cache.get(key)
    if cid is None:
        cid = ""
        if f[0] in _CID_PROTOS:
            try:
                cid = community_id(str(f[1]), str(f[3]), int(f[0]), int(f[2]), int(f[4]))
            except (ValueError, TypeError):
                cid = ""
        if len(cache) > 200_000:
            cache.clear()
        cache[key] = cid
    return cid


def select_files(directory: str | os.PathLike[str], q: Query) -> tuple[list[Path], int]:
    """The store's files that can hold a match (by their index), and how many were skipped."""
    files, inodes = scan_store(directory, index_stats=True)
    full: dict[Path, dict[str, Any] | None] = {}      # whole indexes, parsed once, where flows are needed
    if q.flow_id:
        full = {p: _read_index(p) for p in files}
        _resolve_flow(q, list(full.items()))
    out: list[Path] = []
    skipped = 0
    fid = q.flow_id
    for p, summ in _summaries(directory, files, inodes):
        if summ is None:        # being written, or its index was lost: read it
            out.append(p)
            continue
        first, last = summ.first, summ.last
        if (q.since is not None and last < q.since) or (q.until is not None and first > q.until):
            skipped += 1
            continue
        if fid and q.flow_keys:
            s, e = q.flow_keys[0][4], q.flow_keys[0][5]
            if last < s or first >= e:
                skipped += 1
                continue
        if not summ.truncated:
            if q.host and q.host not in summ.hosts:
                skipped += 1
                continue
            if q.port and q.port not in summ.ports:
                skipped += 1
                continue
            if q.community_id or fid:
                flows = ((full[p] if p in full else _read_index(p)) or {}).get("flows", ())
                flows = flows if isinstance(flows, list) else ()
                if q.community_id:
                    cache: dict = {}
                    if not any(isinstance(f, list) and len(f) >= 5 and _row_cid(f, cache) == q.community_id
                               for f in flows):
                        skipped += 1
                        continue
                if fid and not any(isinstance(f, list) and len(f) >= 7 and f[6] == fid for f in flows):
                    skipped += 1      # every file that can hold a flow's packets lists its id
                    continue
        out.append(p)
    return out, skipped


def _prefilter(q: Query) -> Any:
    """A cheap, necessary condition on a batch of (ts, frame) records, or None (keep everything).

    It keeps a record only if it lies in the time window and its frame holds the bytes that any
    match must hold somewhere (the host's address; both addresses of a flow key; the port): a
    substring test in C instead of decoding every packet of the files read.  The matcher still
    decides each record that passes, so this changes what is read, never what is written.
    """
    since = q.since if q.since is not None else float("-inf")
    until = q.until if q.until is not None else float("inf")
    need: list[bytes] = []
    if q.host_b:
        need.append(q.host_b)
    if q.flow_keys and len(q.flow_keys) == 1:
        fwd = q.flow_keys[0][0]
        alen = (len(fwd) - 4) // 2
        if alen in (4, 16):
            need.extend({fwd[:alen], fwd[alen:2 * alen]} - set(need))
    if q.port and not need:
        need.append(struct.pack("!H", int(q.port)))
    if not need and q.since is None and q.until is None:
        return None
    if not need:
        return lambda recs: [r for r in recs if since <= r[0] <= until]
    if len(need) == 1:
        n0 = need[0]
        return lambda recs: [r for r in recs if n0 in r[1] and since <= r[0] <= until]
    n0, n1 = need[0], need[1]
    return lambda recs: [r for r in recs if n0 in r[1] and n1 in r[1] and since <= r[0] <= until]


def _iter_file(p: Path, stats: dict[str, int], keep: Any = None) -> Iterator[tuple[float, bytes, int, int]]:
    """``(ts, frame, dlt, cut_at)`` of a store file's packets (``cut_at``: its snap length, see wire_len)."""
    try:
        src = open_source(p)
    except (CaptureFileError, OSError):
        stats["unreadable_files"] += 1
        return
    cut = src.cut_at
    for dlt, recs in src.batches(4096):
        if keep is not None:
            recs = keep(recs)
        for ts, frame in recs:
            yield ts, frame, dlt, cut
    if src.error:
        stats["truncated_files"] += 1


def _matcher(q: Query) -> Any:
    host = q.host_b
    port = int(q.port)
    flows = q.flow_keys
    filters: dict[int, Any] = {}
    cid = q.community_id
    cids: dict[tuple, bool] = {}      # packet 5-tuple -> has the Community ID (hashed once per tuple)

    def cid_ok(proto: int, src: bytes, dst: bytes, sp: int, dp: int) -> bool:
        k = (proto, src, dst, sp, dp)
        ok = cids.get(k)
        if ok is None:
            ok = False
            if proto in _CID_PROTOS:
                try:
                    ok = community_id(str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)),
                                      proto, sp, dp) == cid
                except ValueError:
                    ok = False
            if len(cids) > 200_000:
                cids.clear()
            cids[k] = ok
        return ok

    def bpf_ok(frame: bytes, dlt: int) -> bool:
        f = filters.get(dlt)
        if f is None:
            import pcap

            try:
                f = filters[dlt] = pcap.bpf(q.bpf.encode(), dlt)
            except Exception as exc:  # noqa: BLE001 - pypcap raises a bare exception type
                raise ExportError(f"bad BPF filter {q.bpf[:200]!r}: {exc}") from None
        return bool(f.filter(frame))

    def match(ts: float, frame: bytes, dlt: int) -> bool:
        if q.since is not None and ts < q.since:
            return False
        if q.until is not None and ts > q.until:
            return False
        if host or port or flows or cid:
            d = decode(frame, dlt)
            if d[0]:
                return False
            src, dst, sp, dp = d[3], d[4], d[5], d[6]
            if host and src != host and dst != host:
                return False
            if port and sp != port and dp != port:
                return False
            if flows:
                kb = src + dst + _pp(sp, dp)
                for fwd, rev, proto, vlan, start, end in flows:
                    if d[2] == proto and (kb == fwd or kb == rev) and start <= ts < end:
                        break
                else:
                    return False
            if cid and not cid_ok(d[2], src, dst, sp, dp):
                return False
        if q.bpf and not bpf_ok(frame, dlt):
            return False
        return True

    return match


def _open_out(path: Path, dlt: int, append: bool = False, header: Any = None) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), 0o640)
    os.fchmod(fd, 0o640)
    fh = os.fdopen(fd, "wb")
    if not append:
        fh.write(header(dlt) if header is not None else pcap_header(dlt))
    return fh


# --------------------------------------------------------------------------- pcapng (section header, interface, packets)

_U32 = struct.Struct("<I").pack


def _opt(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _block(btype: int, body: bytes) -> bytes:
    n = 12 + len(body)
    return struct.pack("<II", btype, n) + body + _U32(n)


def pcapng_header(dlt: int, comment: str = "", iface: str = "", snaplen: int = 262144) -> bytes:
    """A section header block (application, comment) and one interface description block
    (link type, snap length, interface name, microsecond timestamps)."""
    opts = _opt(4, b"flowtarget")                        # shb_userappl
    if comment:
        opts += _opt(1, comment.encode("utf-8", "replace")[:4000])      # opt_comment
    shb = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + opts + _opt(0, b""))
    iopts = _opt(9, bytes([6]))                          # if_tsresol: microseconds
    if iface:
        iopts += _opt(2, iface.encode("utf-8", "replace")[:256])       # if_name
    idb = _block(1, struct.pack("<HHI", dlt & 0xFFFF, 0, snaplen) + iopts + _opt(0, b""))
    return shb + idb


def pcapng_packet(ts: float, frame: bytes, comment: bytes = b"", olen: int = 0) -> bytes:
    """An enhanced packet block on interface 0 (microsecond time), with an optional comment; ``olen``: the
    packet's original length when the frame was cut."""
    us = int(round(ts * 1e6))
    n = len(frame)
    body = (struct.pack("<IIIII", 0, (us >> 32) & 0xFFFFFFFF, us & 0xFFFFFFFF, n, max(n, olen)) + frame
            + b"\0" * (-n % 4))
    if comment:
        body += _opt(1, comment) + _opt(0, b"")
    return _block(6, body)


def describe(q: Query) -> str:
    """The query in words, for a pcapng's section comment."""
    parts = [f"{k}={v}" for k, v in (("host", q.host), ("port", q.port), ("flow_id", q.flow_id),
                                      ("community_id", q.community_id), ("bpf", q.bpf), ("since", q.since),
                                      ("until", q.until)) if v not in ("", 0, None)]
    return "flowtarget export: " + (" ".join(parts) or "flow")


def safe_name(text: str, limit: int = 64) -> str:
    return _UNSAFE.sub("-", text)[:limit].strip("-.") or "x"


def export(directory: str | os.PathLike[str], q: Query, out: str | os.PathLike[str], *, per_source: bool = False,
           max_bytes: int = 0, iface: str = "", fmt: str = "pcap", comment: str = "") -> dict[str, Any]:
    """Write the matching packets; returns {"path"/"files", "packets", "bytes", "files_read", "files_skipped", ...}."""
    q.check()
    if fmt not in ("pcap", "pcapng"):
        raise ExportError(f"bad format {fmt[:16]!r}: pcap or pcapng")
    ng = fmt == "pcapng"
    header = None
    hdr_len = 24
    pkt_comment = b""
    if ng:
        text = comment or describe(q)
        src_name = iface

        def header(dlt: int) -> bytes:
            return pcapng_header(dlt, text, src_name)

        hdr_len = len(header(1))
        if q.flow_id:
            pkt_comment = f"flow_id={q.flow_id}".encode()
    files, skipped = select_files(directory, q)
    stats = {"unreadable_files": 0, "truncated_files": 0}
    match = _matcher(q)
    keep = _prefilter(q)
    merged = heapq.merge(*(_iter_file(p, stats, keep) for p in files), key=lambda r: r[0])
    out_p = Path(out)
    dlt0 = -1
    npk = 0
    nbytes = 0 if per_source else hdr_len     # per source: each file's header counts when it is opened
    other_dlt = 0
    truncated = False
    fh = None
    writers: OrderedDict[str, tuple[Any, Path]] = OrderedDict()
    paths: dict[str, Path] = {}
    try:
        for ts, frame, dlt, cut in merged:
            if not match(ts, frame, dlt):
                continue
            if dlt0 < 0:
                dlt0 = dlt
                if not per_source:
                    fh = _open_out(out_p, dlt0, header=header)
            if dlt != dlt0:
                other_dlt += 1
                continue
            n = len(frame)
            olen = wire_len(frame, dlt, cut)
            if ng:
                rec = pcapng_packet(ts, frame, pkt_comment, olen)
            else:
                sec, usec = divmod(int(round(ts * 1e6)), 1000000)
                rec = _REC(sec, usec, n, olen) + frame
            if per_source:
                d = decode(frame, dlt)
                src = str(ipaddress.ip_address(d[3])) if not d[0] else "non-ip"
                new_file = src not in paths
                if max_bytes and nbytes + len(rec) + (hdr_len if new_file else 0) > max_bytes:
                    truncated = True
                    break
                if new_file:
                    nbytes += hdr_len
                w = writers.get(src)
                if w is None:
                    p = paths.get(src)
                    if p is None:
                        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(ts))
                        p = paths[src] = out_p / f"{safe_name(iface or 'capture')}-{safe_name(src)}-{stamp}.pcap"
                        w = (_open_out(p.with_suffix("." + fmt), dlt0, header=header), p)
                    else:
                        w = (_open_out(p.with_suffix("." + fmt), dlt0, append=True), p)
                    writers[src] = w
                    if len(writers) > 128:       # bounded open files: close the least recent
                        _k, (ofh, _op) = writers.popitem(last=False)
                        ofh.close()
                else:
                    writers.move_to_end(src)
                w[0].write(rec)
            else:
                if max_bytes and nbytes + len(rec) > max_bytes:
                    truncated = True
                    break
                assert fh is not None
                fh.write(rec)
            npk += 1
            nbytes += len(rec)
    finally:
        if fh is not None:
            fh.close()
        for wfh, _p in writers.values():
            wfh.close()
    if fh is None and not per_source:       # nothing matched: still an (empty) pcap
        fh = _open_out(out_p, files and _first_dlt(files) or 1, header=header)
        fh.close()
    res: dict[str, Any] = {"packets": npk, "bytes": nbytes,
                           "files_read": len(files), "files_skipped": skipped, "truncated": truncated,
                           "other_linktype_packets": other_dlt, **stats}
    if per_source:
        res["files"] = sorted(str(p.with_suffix("." + fmt)) for p in paths.values())
    else:
        res["path"] = str(out_p)
    return res


def _first_dlt(files: list[Path]) -> int:
    for p in files:
        idx = _read_index(p)
        if idx and isinstance(idx.get("datalink"), int):
            return idx["datalink"]
    return 1


# --------------------------------------------------------------------------- flowtarget pcap


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("pcap", help="cut a pcap out of capture's packet store (FT_RECORD_DIR)")
    p.add_argument("--host", default="", help="packets from or to this IP address")
    p.add_argument("--port", type=int, default=0, help="packets from or to this port")
    p.add_argument("--flow-id", default="", help="the packets of one flow (its flow_id in the flow records)")
    p.add_argument("--community-id", default="",
                   help="the packets of the flows with this Community ID (1:..., as Zeek, Suricata and store's records give it)")
    p.add_argument("--bpf", default="", help="a BPF filter the packets must also pass")
    p.add_argument("--since", default=None, help="from this time (epoch seconds or ISO 8601, UTC unless a zone is given)")
    p.add_argument("--until", default=None, help="up to this time")
    p.add_argument("--dir", default=os.environ.get("FT_RECORD_DIR", ""), help="the store (default: FT_RECORD_DIR)")
    p.add_argument("--per-source", action="store_true",
                   help="one pcap per source IP in the directory -o, named <iface>-<srcIP>-<time>.pcap")
    p.add_argument("--iface", default="", help="the interface name in --per-source file names (default: the recorded source)")
    p.add_argument("--max-bytes", type=int, default=0, help="stop writing at this output size (0 = no limit)")
    p.add_argument("--format", choices=("pcap", "pcapng"), default="pcap",
                   help="pcapng: with an interface description and comments (the query; the flow id on each packet of --flow-id)")
    p.add_argument("--comment", default="", help="pcapng: the section's comment (default: the query)")
    p.add_argument("--probe", default="",
                   help="ask the capture of this probe over NATS (ft.ctl.<probe>.export) and stream the pcap here, "
                        "checked complete; from any host that reaches NATS")
    p.add_argument("--nats", metavar="URL", default="", help="NATS server URL with --probe (default: FT_NATS_URL)")
    p.add_argument("-o", "--output", required=True, help="output pcap (a directory with --per-source)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    if args.probe:
        return run_remote(args)
    if not args.dir:
        print("flowtarget pcap: set --dir or FT_RECORD_DIR", file=sys.stderr)
        return 2
    try:
        q = Query(host=args.host, port=args.port, flow_id=args.flow_id, bpf=args.bpf,
                  since=parse_time(args.since), until=parse_time(args.until), community_id=args.community_id)
        iface = args.iface
        if args.per_source and not iface:
            idx = next((i for i in (_read_index(p) for p in list_store(args.dir)) if i), None)
            iface = str((idx or {}).get("source", "")) or "capture"
        res = export(args.dir, q, args.output, per_source=args.per_source, max_bytes=args.max_bytes, iface=iface,
                     fmt=args.format, comment=args.comment)
    except ExportError as exc:
        print(f"flowtarget pcap: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"flowtarget pcap: {exc}", file=sys.stderr)
        return 1
    where = res.get("path") or f"{len(res.get('files', []))} files in {args.output}"
    print(f"{res['packets']} packets, {res['bytes']} bytes -> {where} "
          f"(read {res['files_read']} store files, skipped {res['files_skipped']} by their index"
          f"{', output limit reached' if res['truncated'] else ''})")
    return 0


def run_remote(args: argparse.Namespace) -> int:
    """``flowtarget pcap --probe P [--nats URL] ...``: the export streamed over NATS."""
    import asyncio

    from shared.runner import ConfigError, load_settings
    from shared.settings import CommonSettings

    if args.per_source:
        print("flowtarget pcap: --per-source works on the store's directory (--dir), not with --probe", file=sys.stderr)
        return 2
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", args.probe):
        print("flowtarget pcap: bad --probe (letters, digits, '_' and '-')", file=sys.stderr)
        return 2
    req = {k: v for k, v in (("host", args.host), ("port", args.port), ("flow_id", args.flow_id),
                             ("community_id", args.community_id), ("bpf", args.bpf), ("since", args.since),
                             ("until", args.until)) if v}
    if args.format != "pcap":
        req["format"] = args.format
    try:
        settings = load_settings(CommonSettings, **({"nats_url": args.nats} if args.nats else {}))
    except ConfigError as exc:
        print(f"flowtarget pcap: configuration error: {exc}", file=sys.stderr)
        return 2

    async def go() -> dict[str, Any]:
        from shared.bus import Bus

        bus = await Bus.connect(settings, "pcap", give_up_after_s=10.0)
        try:
            return await fetch_remote(bus.nc, args.probe, req, Path(args.output))
        finally:
            await bus.close()

    try:
        res = asyncio.run(go())
    except ExportError as exc:
        print(f"flowtarget pcap: {exc}", file=sys.stderr)
        return 2
    except (ConnectionError, OSError) as exc:
        print(f"flowtarget pcap: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - NATS timeouts, no responders: one line
        print(f"flowtarget pcap: no answer from probe {args.probe!r}: {type(exc).__name__} {exc}", file=sys.stderr)
        return 1
    print(f"{res['packets']} packets, {res['size']} bytes -> {res['path']} (streamed from probe {args.probe} "
          f"in {res['chunks_read']} chunks, sha256 checked; read {res['files_read']} store files"
          f"{', output limit reached' if res['truncated'] else ''})")
    return 0


# --------------------------------------------------------------------------- ft.ctl.<probe>.export


STREAM_CHUNK_BYTES = 512 * 1024   # one chunk of a streamed export (at most the server's max_payload less headers)
STREAM_TTL_S = 300.0              # a streamed export not read for this long is deleted
STREAM_MAX_OPEN = 4               # streamed exports waiting to be read, per capture process


def ctl_handler(settings: Any, bus: Any, limits: Any = None, exporter: Any = None) -> Any:
    """``ft.ctl.<probe>.export`` {"host", "port", "flow_id", "community_id", "bpf", "since", "until", "format"}:
    cut a pcap (or with "format": "pcapng" a pcapng) from the store.

    Answered with {"status": "ok", "path", "size", "packets", "truncated"} (the file is in
    FT_EVIDENCE_DIR, named by the service, never by the request), or {"status": "busy"|"error", ...}.
    One export at a time per capture process; the output stops at FT_RECORD_EXPORT_MAX_BYTES and
    within the evidence directory's budget; requests count against FT_CTL_REQUESTS_PER_S (``limits``:
    capture's EvidenceLimits).
    The work runs in a thread, through ``exporter`` where given (capture's StoreEvidence.export: its
    ``ft-evidence`` child process, so that reading the store never holds the interpreter against
    capture's loop): capture keeps reading packets meanwhile.

    Streamed to a requester on another host: ``"stream": true`` in the request.  The answer (the
    header) then says {"status": "ok", "stream": ID, "size", "sha256", "chunks", "chunk_bytes",
    "packets", "truncated", ...} instead of a path; the requester asks {"stream": ID, "chunk": i}
    for i = 0 .. chunks-1 (each answered with the raw bytes and the NATS headers ``Ft-Status: ok``,
    ``Ft-Chunk``, ``Ft-Chunks``, ``Ft-Last: 1`` on the last: the trailer), checks size and sha256,
    then says {"stream": ID, "done": true}.  Chunk requests do not count against the request rate;
    at most STREAM_MAX_OPEN streams wait to be read, each deleted once done or STREAM_TTL_S unread.
    """
    import asyncio
    import hashlib
    import secrets

    from shared.bus import safe_text
    from shared.codec import DecodeError, loads_small

    busy = asyncio.Lock()
    counter = [0]
    streams: dict[str, dict[str, Any]] = {}
    evidence_dir = Path(settings.evidence_dir)

    def drop(sid: str) -> None:
        st = streams.pop(sid, None)
        if st is None:
            return
        try:
            os.unlink(st["path"])
        except OSError:
            pass
        if limits is not None:
            limits.used = max(0, limits.used - st["size"])

    def expire() -> None:
        now = time.monotonic()
        for sid in [k for k, st in streams.items() if now - st["t"] > STREAM_TTL_S]:
            drop(sid)

    def chunk_bytes() -> int:
        mp = int(getattr(bus.nc, "max_payload", 0) or 1024 * 1024)
        return max(4096, min(STREAM_CHUNK_BYTES, mp - 4096))

    async def reply(msg: Any, answer: dict[str, Any]) -> None:
        if msg.reply:
            await bus.nc.publish(msg.reply, json.dumps(answer).encode())

    async def serve_stream(msg: Any, req: dict[str, Any]) -> None:
        expire()
        sid = str(req.get("stream", ""))[:64]
        st = streams.get(sid)
        if st is None:
            await reply(msg, {"status": "error", "error": "no such stream (done, expired, or never started)"})
            return
        if req.get("done"):
            drop(sid)
            await reply(msg, {"status": "ok", "stream": sid, "done": True})
            return
        try:
            i = int(req.get("chunk", -1))
        except (TypeError, ValueError):
            i = -1
        if not 0 <= i < st["chunks"]:
            await reply(msg, {"status": "error", "error": f"chunk out of range 0..{st['chunks'] - 1}"})
            return
        st["t"] = time.monotonic()
        try:
            with open(st["path"], "rb") as fh:
                fh.seek(i * st["chunk_bytes"])
                data = fh.read(st["chunk_bytes"])
        except OSError as exc:
            await reply(msg, {"status": "error", "error": safe_text(exc, 300)})
            return
        headers = {"Ft-Status": "ok", "Ft-Stream": sid, "Ft-Chunk": str(i), "Ft-Chunks": str(st["chunks"])}
        if i == st["chunks"] - 1:
            headers.update({"Ft-Last": "1", "Ft-Size": str(st["size"]), "Ft-Sha256": st["sha256"]})
        if msg.reply:
            await bus.nc.publish(msg.reply, data, headers=headers)

    def digest(path: str) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    async def on_export(msg: Any) -> None:
        try:
            req = loads_small(msg.data, default={})
        except DecodeError as exc:
            await reply(msg, {"status": "error", "error": f"bad request: {safe_text(exc, 200)}"})
            return
        if not isinstance(req, dict):
            await reply(msg, {"status": "error", "error": "the request must be a JSON object"})
            return
        if isinstance(req.get("stream"), str):       # a chunk of a streamed export, or its end
            await serve_stream(msg, req)
            return
        stream = req.get("stream") is True
        refused = limits.allow_request() if limits is not None else ""
        expire()
        if busy.locked():
            answer: dict[str, Any] = {"status": "busy", "error": "an export is already running"}
        elif refused:
            answer = {"status": "error", "error": refused}
        elif limits is not None and not limits.has_room(limits.MIN_ROOM):
            answer = {"status": "error", "error": limits.disk_full_reason()}
        elif stream and len(streams) >= STREAM_MAX_OPEN:
            answer = {"status": "busy", "error": f"{STREAM_MAX_OPEN} streamed exports are waiting to be read"}
        else:
            async with busy:
                try:
                    q = Query(host=str(req.get("host", ""))[:64], port=int(req.get("port", 0) or 0),
                              flow_id=str(req.get("flow_id", ""))[:64], bpf=str(req.get("bpf", ""))[:1024],
                              since=parse_time(req.get("since")), until=parse_time(req.get("until")),
                              community_id=str(req.get("community_id", ""))[:64])
                    q.check()
                    fmt = str(req.get("format", "pcap") or "pcap")
                    if fmt not in ("pcap", "pcapng"):
                        raise ExportError(f"bad format {fmt[:16]!r}: pcap or pcapng")
                    counter[0] += 1
                    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
                    what = safe_name(q.flow_id or q.host or (f"port{q.port}" if q.port else "")
                                     or ("cid" if q.community_id else "time"), 48)
                    name = f"export-{safe_name(settings.probe, 32)}-{what}-{stamp}-{os.getpid()}-{counter[0]}.{fmt}"
                    if stream:      # a hidden file, deleted once read
                        name = f".stream-{os.getpid()}-{counter[0]}-{secrets.token_hex(4)}.{fmt}"
                    path = evidence_dir / name
                    max_bytes = settings.record_export_max_bytes
                    if limits is not None:
                        max_bytes = max(1024, min(max_bytes, limits.dir_max_bytes - limits.used))
                    if exporter is not None:
                        res = await asyncio.to_thread(exporter, q, path, max_bytes, fmt=fmt, iface=settings.iface or "")
                    else:
                        res = await asyncio.to_thread(export, settings.record_dir, q, path, max_bytes=max_bytes,
                                                      fmt=fmt, iface=settings.iface or "")
                    size = os.path.getsize(res["path"])
                    if limits is not None:
                        limits.used += size
                    answer = {"status": "ok", "size": size,
                              "packets": res["packets"], "truncated": res["truncated"],
                              "files_read": res["files_read"], "files_skipped": res["files_skipped"]}
                    if stream:
                        sid = secrets.token_hex(8)
                        cb = chunk_bytes()
                        st = {"path": res["path"], "size": size, "sha256": await asyncio.to_thread(digest, res["path"]),
                              "chunk_bytes": cb, "chunks": max(1, -(-size // cb)), "t": time.monotonic()}
                        streams[sid] = st
                        answer.update(stream=sid, sha256=st["sha256"], chunks=st["chunks"], chunk_bytes=cb)
                    else:
                        answer["path"] = res["path"]
                except (ExportError, ValueError, TypeError) as exc:
                    answer = {"status": "error", "error": safe_text(exc, 300)}
                except OSError as exc:
                    answer = {"status": "error", "error": safe_text(exc, 300)}
        await reply(msg, answer)

    return on_export


# --------------------------------------------------------------------------- flowtarget pcap --probe P (over NATS)


async def fetch_remote(nc: Any, probe: str, req: dict[str, Any], out: Path, timeout_s: float = 600.0,
                       chunk_timeout_s: float = 30.0, retries: int = 3) -> dict[str, Any]:
    """Ask capture of ``probe`` for a streamed export and write it to ``out``, checked complete
    (every chunk, size and sha256 of the trailer); ExportError when it cannot be had whole."""
    import hashlib

    from shared.subjects import subject

    subj = subject("ctl", probe, "export")
    msg = await nc.request(subj, json.dumps({**req, "stream": True}).encode(), timeout=timeout_s)
    head = json.loads(msg.data)
    if not isinstance(head, dict) or head.get("status") != "ok" or not head.get("stream"):
        raise ExportError(str((head or {}).get("error", head))[:300] if isinstance(head, dict) else "bad answer")
    sid, chunks, size, sha = str(head["stream"]), int(head["chunks"]), int(head["size"]), str(head["sha256"])
    part = out.with_name(out.name + ".part")
    out.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    got = 0
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    os.fchmod(fd, 0o640)
    try:
        with os.fdopen(fd, "wb") as fh:
            for i in range(chunks):
                for attempt in range(retries + 1):
                    try:
                        r = await nc.request(subj, json.dumps({"stream": sid, "chunk": i}).encode(),
                                             timeout=chunk_timeout_s)
                        break
                    except Exception:  # noqa: BLE001 - a lost chunk is asked again
                        if attempt == retries:
                            raise ExportError(f"chunk {i} of {chunks} did not come") from None
                hdr = r.headers or {}
                if hdr.get("Ft-Status") != "ok" or hdr.get("Ft-Chunk") != str(i):
                    raise ExportError(f"chunk {i}: {r.data[:300].decode('utf-8', 'replace')}")
                if (i == chunks - 1) != (hdr.get("Ft-Last") == "1"):
                    raise ExportError(f"chunk {i}: trailer out of place")
                fh.write(r.data)
                h.update(r.data)
                got += len(r.data)
            last = hdr
        if got != size or h.hexdigest() != sha or last.get("Ft-Sha256") != sha or last.get("Ft-Size") != str(size):
            raise ExportError(f"incomplete export: {got} of {size} bytes, checksum "
                              f"{'ok' if h.hexdigest() == sha else 'wrong'}")
        os.replace(part, out)
    except BaseException:
        try:
            os.unlink(part)
        except OSError:
            pass
        raise
    finally:
        try:
            await nc.request(subj, json.dumps({"stream": sid, "done": True}).encode(), timeout=5)
        except Exception:  # noqa: BLE001 - the stream expires by itself
            pass
    return {**head, "path": str(out), "chunks_read": chunks}
