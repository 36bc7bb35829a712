"""Evidence of alerts and blocks cut from the packet store (services/capture/recorder.py).

Without the store, an alert's or block's evidence is the meter's ring of one
flow's last packets (``FT_EVIDENCE_PACKETS``, 32): two packets of a 200-port
scan, nothing at all once a replay has run far ahead of the detectors.  With
``FT_RECORD_DIR`` set, capture cuts the evidence out of its store instead:

- an alert's evidence is every packet of the incident over its time window
  (``started_at`` to ``last_seen``, with a margin), chosen by the alert's kind:
  the scanner's packets for a port scan (every port, every target), the target
  (address and port) of a SYN flood, ICMP to the target of an ICMP flood, the
  client's queries of a DNS tunnel, the flooding MAC's ARP frames (or all ARP
  of a segment-wide flood), the ARP frames about a spoofed address; a policy
  alert's or a block's evidence is its flow's 5-tuple from the flow's start;
- the file is named when the incident opens (the alert names it in
  ``evidence_pcap`` from its first publication on), written at once from the
  meter's ring where that holds the flow (so there is evidence immediately),
  then cut from the store in a worker thread; the incident's last publication
  (``closed``) cuts it again over the whole incident, into the same file;
- each cut waits for the recorder's writer thread to have written what was
  recorded before the request, then reads only the store files its time window
  and index allow (services/capture/export.py), and stops at
  ``FT_RECORD_EVIDENCE_MAX_MB`` (the first packets in time order: the flood's
  first seconds) and within the evidence directory's budget;
- a finished cut is announced on ``ft.evidence.<probe>`` (reason ``alert`` or
  ``block``, ``ref`` the alert id / rule id, ``packets``).

The cuts run one at a time: a thread of capture's waits for the recorder's
barrier and keeps the accounts; the reading and writing of packets runs in a child
process (``ft-evidence``, services/capture/cut_worker.py), so that a cut never takes
the interpreter from capture's loop.  At most ``MAX_PENDING`` wait (more are refused
and counted); a second request for an incident that is still waiting replaces the
waiting one (the later, wider window).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import struct
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

from shared.community_id import proto_number

from .cut_worker import CutProcess
from .evidence import evidence_name
from .export import ExportError, Query, export

__all__ = ["StoreEvidence", "incident_of", "query_for_incident", "query_for_flow"]

log = logging.getLogger("flowtarget.capture.evidence")

MARGIN_S = 1.0              # before the incident's first and after its last evidence
MAX_WINDOW_S = 3600.0       # an incident's window read from the store at most (from its start)
FLOW_LOOKBACK_S = 600.0     # a block's flow whose start the recorder no longer knows: this far back
MAX_PENDING = 64
BARRIER_WAIT_S = 30.0
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_pp = struct.Struct("!HH").pack
_ARP = "(arp or (vlan and arp))"

# what an evidence request carries of an alert (ft.ctl.<probe>.evidence "incident")
INCIDENT_FIELDS = ("alert_id", "alert_type", "transport", "src_ip", "src_port", "dst_ip", "dst_port", "flow_id",
                   "first_seen", "last_seen", "started_at", "timestamp")


def incident_of(a: Any) -> dict[str, Any]:
    """The facts of an Alert that choose its evidence (small: fits an ft.ctl request)."""
    d = {k: getattr(a, k, "") for k in INCIDENT_FIELDS}
    det = getattr(a, "details", None) or {}
    d["details"] = {k: str(det[k])[:64] for k in ("src_mac", "scope", "kind", "state") if k in det}
    return d


def _ip(text: Any) -> str:
    try:
        return str(ipaddress.ip_address(str(text).strip()))
    except ValueError:
        return ""


def _num(v: Any, default: float = 0.0) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return f if f == f and abs(f) < 1e11 else default      # no NaN, no absurd times


def query_for_flow(transport: str, src_ip: str, src_port: int, dst_ip: str, dst_port: int,
                   since: float, until: float | None) -> Query | None:
    """A flow's packets by its 5-tuple (either direction) between ``since`` and ``until``."""
    a, b = _ip(src_ip), _ip(dst_ip)
    proto = proto_number(str(transport or ""))
    if not a or not b or proto is None or proto > 255:
        return None
    try:
        ap, bp = int(src_port) & 0xFFFF, int(dst_port) & 0xFFFF
    except (TypeError, ValueError):
        return None
    ab, bb = ipaddress.ip_address(a).packed, ipaddress.ip_address(b).packed
    since -= 2e-6       # pcap keeps microseconds: a stored time may read back a hair below the flow's own float
    q = Query(host=a, since=since, until=until)
    q.flow_keys.append((ab + bb + _pp(ap, bp), bb + ab + _pp(bp, ap), proto, 0, since - 2e-6, float("inf")))
    return q


def query_for_incident(d: dict[str, Any], flow_span: Any = None) -> Query | None:
    """The store query that gives an incident's packets (None when the alert says too little)."""
    kind = str(d.get("alert_type", ""))
    det = d.get("details") or {}
    if not isinstance(det, dict):
        det = {}
    last = _num(d.get("last_seen")) or _num(d.get("timestamp"))
    start = _num(d.get("started_at")) or _num(d.get("first_seen")) or last
    if not last:
        return None
    start = min(start, last)
    since = max(start - MARGIN_S, last - MAX_WINDOW_S)
    until = last + MARGIN_S
    src, dst = _ip(d.get("src_ip", "")), _ip(d.get("dst_ip", ""))
    try:
        dport = int(d.get("dst_port") or 0)
    except (TypeError, ValueError):
        dport = 0
    mac = str(det.get("src_mac", ""))
    if kind == "port_scan":
        return Query(host=src, since=since, until=until) if src else None
    if kind == "syn_flood":
        return Query(host=dst, port=dport, bpf="tcp", since=since, until=until) if dst and dport else None
    if kind == "icmp_flood":
        return Query(host=dst, bpf="icmp or icmp6", since=since, until=until) if dst else None
    if kind == "dns_tunnel":
        port = dport or 53
        if src:
            return Query(host=src, port=port, since=since, until=until)
        return Query(host=dst, port=port, since=since, until=until) if dst else None
    if kind in ("arp_flood", "arp_spoof"):
        if _MAC.match(mac):
            return Query(bpf=f"ether src {mac.lower()} and {_ARP}", since=since, until=until)
        if kind == "arp_flood":          # the segment-wide flood: all ARP of its window
            return Query(bpf=_ARP, since=since, until=until)
        if src and ":" not in src:       # a spoofed address: every ARP frame about it
            return Query(bpf=f"arp host {src} or (vlan and arp host {src})", since=since, until=until)
        return None
    # policy alerts and the rest: the flow of the alert, from its start
    if d.get("transport") and src and dst:
        fs = flow_span(str(d.get("flow_id", ""))) if flow_span is not None and d.get("flow_id") else None
        fstart = fs[0] if fs else start - FLOW_LOOKBACK_S
        return query_for_flow(str(d.get("transport")), src, d.get("src_port", 0), dst, d.get("dst_port", 0),
                              min(fstart, since), until)
    return Query(host=src, since=since, until=until) if src else None


class _Job:
    __slots__ = ("key", "query", "path", "barrier", "reason", "ref", "flow_id", "not_before")

    def __init__(self, key: str, query: Query, path: Path, barrier: Any, reason: str, ref: str, flow_id: str,
                 not_before: float = 0.0):
        self.key, self.query, self.path, self.barrier = key, query, path, barrier
        self.reason, self.ref, self.flow_id, self.not_before = reason, ref, flow_id, not_before


class StoreEvidence:
    """Cuts evidence pcaps from the store in a thread; see the module's docstring."""

    def __init__(self, settings: Any, recorder: Any, limits: Any, meter: Any = None) -> None:
        self.settings = settings
        self.recorder = recorder
        self.limits = limits
        self.meter = meter
        self.store = Path(settings.record_dir)
        self.directory = Path(settings.evidence_dir)
        self.max_bytes = int(settings.record_evidence_max_mb * 1024 * 1024)
        self.paths: OrderedDict[str, str] = OrderedDict()    # incident key -> its evidence file
        self._reserved: set[str] = set()
        self._pending: OrderedDict[str, _Job] = OrderedDict()
        self._cv = threading.Condition()
        self._busy = False
        self._thread: threading.Thread | None = None
        self._cutter: CutProcess | None = CutProcess()
        self.done: deque[tuple[str, str, str, int, str]] = deque()   # (path, reason, ref, packets, flow_id)
        for k in ("store_evidence_cut", "store_evidence_empty", "store_evidence_refused_busy",
                  "store_evidence_errors", "store_evidence_truncated"):
            limits.c.setdefault(k, 0)

    # ------------------------------------------------------------------ requests (capture's loop)
    def _name(self, key: str, src_ip: str, ts: float, tag: str) -> Path:
        iface = str(getattr(self.meter, "source", "") or "capture")
        base = evidence_name(iface, src_ip or "none", ts or time.time(), tag)
        p = self.directory / base
        stem, suffix = p.stem, p.suffix
        i = 0
        while str(p) in self._reserved or p.exists():
            i += 1
            p = p.with_name(f"{stem}-{i}{suffix}")
        self._reserved.add(str(p))
        return p

    def path_for(self, key: str) -> str:
        return self.paths.get(key, "")

    def request(self, key: str, query: Query, *, src_ip: str = "", ts: float = 0.0, tag: str = "",
                reason: str = "alert", ref: str = "", flow_id: str = "", ring_flow: str = "",
                delay_s: float = 0.0) -> str:
        """Schedule a cut for incident ``key`` (again, over a later window, if asked again); its path.

        The first request also writes the meter's ring of ``ring_flow`` (if it holds packets) to
        the path at once, so the evidence exists while the cut waits.
        """
        try:
            query.check()
        except ExportError as exc:
            log.debug("no store evidence for %s: %s", key, exc)
            return self.paths.get(key, "")
        path_s = self.paths.get(key)
        if path_s is None:
            if not self.limits.has_room(self.limits.MIN_ROOM):
                self.limits.c["evidence_refused_disk"] += 1
                return ""
            path = self._name(key, src_ip, ts, tag or reason)
            path_s = self.paths[key] = str(path)
            if len(self.paths) > 10_000:
                old, old_path = self.paths.popitem(last=False)
                self._reserved.discard(old_path)
            if ring_flow and self.meter is not None:
                self._write_ring(path, ring_flow)
        path = Path(path_s)
        with self._cv:
            if key not in self._pending and len(self._pending) >= MAX_PENDING:
                self.limits.c["store_evidence_refused_busy"] += 1
                return path_s
            self._pending[key] = _Job(key, query, path, self.recorder.barrier() if self.recorder is not None else None,
                                      reason, ref or key, flow_id, time.monotonic() + delay_s if delay_s else 0.0)
            self._pending.move_to_end(key)
            self._cv.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="ft-store-evidence", daemon=True)
            self._thread.start()
        return path_s

    def _write_ring(self, path: Path, flow_id: str) -> None:
        """The meter's last packets of the flow, into ``path`` (nothing when it holds none)."""
        try:
            pk = self.meter.evidence(flow_id)
        except Exception:  # noqa: BLE001 - the ring is a bonus; the store's cut follows
            pk = None
        if not pk:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name("." + path.name + ".part")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            os.fchmod(fd, 0o640)
            with os.fdopen(fd, "wb") as fh:
                fh.write(self.meter.evidence_pcap(pk))
            n = os.path.getsize(tmp)
            if not self.limits.take(n):
                os.unlink(tmp)
                self.limits.c["evidence_refused_disk"] += 1
                return
            os.replace(tmp, path)
        except OSError as exc:
            self.limits.c["store_evidence_errors"] += 1
            log.warning("evidence: %s", exc)

    # ------------------------------------------------------------------ the worker thread
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending:
                    self._busy = False
                    self._cv.notify_all()
                    self._cv.wait()
                _k, job = self._pending.popitem(last=False)
                self._busy = True
            try:
                self._cut(job)
            except Exception as exc:  # noqa: BLE001 - one bad cut never stops the others
                self.limits.c["store_evidence_errors"] += 1
                log.warning("evidence cut for %s failed: %s", job.ref[:64], exc)

    def _cut(self, job: _Job) -> None:
        wait = job.not_before - time.monotonic()
        if wait > 0:               # a block: the packets of the race that follow the injection
            time.sleep(min(wait, 10.0))
        if job.barrier is not None:
            job.barrier.wait(BARRIER_WAIT_S)          # the packets recorded before the request are on disk
        limits = self.limits
        old = _size(job.path)
        room = limits.dir_max_bytes - limits.used + old
        cap = min(self.max_bytes, room)
        if cap < 1024:
            limits.c["evidence_refused_disk"] += 1
            return
        tmp = job.path.with_name("." + job.path.name + ".cut")
        try:
            res = self._export(job.query, tmp, cap)
        except ExportError as exc:          # e.g. a BPF filter the store's link type cannot take
            limits.c["store_evidence_errors"] += 1
            log.debug("evidence cut for %s: %s", job.ref[:64], exc)
            _unlink(tmp)
            return
        if not res["packets"]:
            _unlink(tmp)
            limits.c["store_evidence_empty"] += 1     # aged out of the store (the ring's file, if any, stays)
            return
        n = _size(tmp)
        os.replace(tmp, job.path)
        limits.used += n - old
        limits.c["store_evidence_cut"] += 1
        if res.get("truncated"):
            limits.c["store_evidence_truncated"] += 1
        if not old:
            limits.c["evidence_written"] += 1
        self.done.append((str(job.path), job.reason, job.ref, int(res["packets"]), job.flow_id))

    def _export(self, query: Query, tmp: Path, cap: int, **options: Any) -> dict[str, Any]:
        cutter = self._cutter
        if cutter is not None:
            try:
                return cutter.cut(str(self.store), query, str(tmp), cap, **options)
            except OSError as exc:       # no child process here (none allowed, no memory): cut in this thread
                log.warning("evidence cuts run in capture's process: %s", exc)
                self._cutter = None
        return export(self.store, query, tmp, max_bytes=cap, **options)

    def export(self, query: Query, out: str | os.PathLike[str], max_bytes: int, **options: Any) -> dict[str, Any]:
        """An operator's export (ft.ctl.<probe>.export) in the same child process (blocks the caller's
        thread, after any cut that runs)."""
        return self._export(query, Path(out), max_bytes, **options)

    def close(self) -> None:
        """End the cutting process (after ``wait``; a cut still running finishes first)."""
        if self._cutter is not None:
            self._cutter.close()

    def idle(self) -> bool:
        with self._cv:
            return not self._pending and not self._busy

    def wait(self, timeout: float) -> bool:
        """Block until every scheduled cut is done (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.5))
        return True


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def _unlink(p: Path) -> None:
    try:
        p.unlink()
    except OSError:
        pass
