"""Prometheus metrics and the health check of one service process.

One registry per process.  Services expose their plain counters without
depending on prometheus-client themselves: they hand over a function that
returns a dict of numbers, once::

    from shared.metrics import register_stats, set_ready
    set_ready(False)                         # optional, first line of main: "not serving yet"
    register_stats("capture", meter.stats)   # -> flowtarget_capture_<key>{service=,probe=}
    set_ready()                              # ... once subscribed and serving

Nested dicts are flattened (``counters: {samples_sent: 3}`` becomes
``flowtarget_capture_counters_samples_sent_total``).  A key is exposed as a
gauge when it names a level (active, pending, lag, per_s, uptime, ...) or is
listed in ``gauges=``; every other key is a counter (``_total``).  The
functions are called on the service's own event loop (the HTTP thread hands
the call over and waits), so they read their state without locks.

``start_metrics_server(settings, service_name, bus)`` (called by
``shared.runner.serve`` when ``FT_METRICS_PORT`` is non-zero) serves, on
``FT_METRICS_ADDR:FT_METRICS_PORT``:

- ``/metrics``: the registry in Prometheus text format: every registered
  stats function, the bus counters, ``flowtarget_nats_connected``,
  ``flowtarget_ready``, process metrics;
- ``/healthz``: 200 when the NATS connection is up, the event loop answers
  and the service is ready, else 503; a JSON body says which.  Readiness is
  what the service last reported with ``set_ready(flag)``; a service that
  never reports it counts as ready as soon as it runs (so a service that
  wants to be waited for calls ``set_ready(False)`` first thing in ``main``).

``python -m shared.metrics check`` asks the local ``/healthz`` (exit 0 when
healthy): the container health check of docker-compose.yml.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

log = logging.getLogger("flowtarget.metrics")

PREFIX = "flowtarget"
LOOP_TIMEOUT_S = 2.0

# words (between underscores) of a key that name a level rather than a running count
GAUGE_WORDS = frozenset(("active", "pending", "lag", "uptime", "closing", "open", "queue", "queued", "size", "ready",
                         "connected", "inflight", "current", "last", "tracked", "rules", "depth", "level", "ratio"))
GAUGE_SUFFIXES = ("per_s", "_ms", "_pct")

StatsFn = Callable[[], Mapping[str, Any]]

_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(*parts: str) -> str:
    """A valid Prometheus metric name from parts (bad characters become ``_``)."""
    name = "_".join(_NAME_BAD.sub("_", p) for p in parts if p)
    name = re.sub(r"__+", "_", name).strip("_")
    if not name or name[0].isdigit():
        name = "_" + name
    return name


def is_gauge(key: str, gauges: Iterable[str] = ()) -> bool:
    if key in gauges:
        return True
    k = key.lower()
    return k.endswith(GAUGE_SUFFIXES) or not GAUGE_WORDS.isdisjoint(k.split("_"))


def flatten(stats: Mapping[str, Any], prefix: str = "", depth: int = 0) -> dict[str, float]:
    """Numbers of a (nested) dict as ``{flat_key: value}``; text, lists and None are left out."""
    out: dict[str, float] = {}
    for k, v in stats.items():
        key = f"{prefix}_{k}" if prefix else str(k)
        if isinstance(v, bool):
            out[key] = float(v)
        elif isinstance(v, (int, float)):
            if v == v:  # not NaN
                out[key] = float(v)
        elif isinstance(v, Mapping) and depth < 3:
            out.update(flatten(v, key, depth + 1))
    return out


class _State:
    """The process's metrics state (one service per process)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stats: dict[str, tuple[StatsFn, tuple[str, ...]]] = {}
        self.families: dict[str, Callable[[], Iterable[Any]]] = {}
        self.service = ""
        self.probe = ""
        self.bus: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ready: bool | None = None  # None: the service does not report readiness
        self.stats_errors = 0
        self.loop_timeouts = 0


STATE = _State()


def register_stats(name: str, fn: StatsFn, gauges: Iterable[str] = ()) -> None:
    """Expose ``fn()``'s numbers as ``flowtarget_<name>_<key>`` (replaces an earlier ``name``)."""
    with STATE.lock:
        STATE.stats[name] = (fn, tuple(gauges))


def register_families(name: str, fn: Callable[[], Iterable[Any]]) -> None:
    """Expose metric families that need labels of their own (e.g. per rule id): ``fn()`` returns
    prometheus_client metric families, called on the service's loop at every scrape."""
    with STATE.lock:
        STATE.families[name] = fn


def unregister_stats(name: str) -> None:
    with STATE.lock:
        STATE.stats.pop(name, None)


def set_ready(ready: bool = True) -> None:
    """The service reports whether it is ready to serve (subscribed, sinks up ...)."""
    STATE.ready = bool(ready)


def bus_stats(bus: Any) -> dict[str, Any]:
    if hasattr(bus, "stats"):
        return bus.stats()
    return {
        "malformed": bus.malformed,
        "handler_errors": bus.handler_errors,
        "skipped": bus.skipped,
        "published": bus.published,
        "publish_retries": bus.publish_retries,
        "reconnects": bus.reconnects,
    }


# --------------------------------------------------------------------------- collecting


def _on_loop(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on the service's event loop and return its result (fallback: in this thread)."""
    loop = STATE.loop
    if loop is None or loop.is_closed() or not loop.is_running():
        return fn()
    try:
        if asyncio.get_running_loop() is loop:
            return fn()
    except RuntimeError:
        pass
    fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def call() -> None:
        if fut.set_running_or_notify_cancel():
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed to the waiting thread
                fut.set_exception(exc)

    try:
        loop.call_soon_threadsafe(call)
    except RuntimeError:  # loop closed meanwhile
        return fn()
    try:
        return fut.result(LOOP_TIMEOUT_S)
    except concurrent.futures.TimeoutError:
        fut.cancel()
        STATE.loop_timeouts += 1
        raise


def _snapshot() -> dict[str, dict[str, float]]:
    """Every registered stats function's numbers (on the loop), by registration name."""
    with STATE.lock:
        items = list(STATE.stats.items())

    def gather() -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for name, (fn, _g) in items:
            try:
                out[name] = flatten(fn() or {})
            except Exception as exc:
                STATE.stats_errors += 1
                log.debug("stats %s failed: %s", name, exc)
        return out

    try:
        return _on_loop(gather)
    except concurrent.futures.TimeoutError:
        return gather()  # the loop is busy: read from here (the dict copies are atomic enough)


class StatsCollector(Collector):
    """Exposes the registered stats functions and the process's health as metric families."""

    def collect(self) -> Iterable[Any]:
        labels = ["service", "probe"]
        values = [STATE.service, STATE.probe]
        snap = _snapshot()
        seen: set[str] = set()
        with STATE.lock:
            gauges = {name: g for name, (_f, g) in STATE.stats.items()}
        for name, numbers in snap.items():
            for key, value in sorted(numbers.items()):
                gauge = is_gauge(key, gauges.get(name, ()))
                base = metric_name(PREFIX, name, key)
                if not gauge and base.endswith("_total"):
                    base = base[: -len("_total")]
                if base in seen:
                    continue
                seen.add(base)
                doc = f"{name} {key}"
                fam = (GaugeMetricFamily(base, doc, labels=labels) if gauge
                       else CounterMetricFamily(base, doc, labels=labels))
                fam.add_metric(values, value)
                yield fam
        with STATE.lock:
            fam_fns = list(STATE.families.values())
        for fn in fam_fns:
            try:
                yield from _on_loop(lambda fn=fn: list(fn()))
            except Exception as exc:
                STATE.stats_errors += 1
                log.debug("metric families failed: %s", exc)
        connected = bool(STATE.bus is not None and STATE.bus.connected)
        for mname, doc, val in (
            ("flowtarget_nats_connected", "1 while the NATS connection is up", float(connected)),
            ("flowtarget_ready", "1 when the service is ready (see /healthz)", float(health()[0])),
        ):
            g = GaugeMetricFamily(mname, doc, labels=labels)
            g.add_metric(values, val)
            yield g
        for mname, doc, val in (
            ("flowtarget_metrics_stats_errors", "stats functions that raised", STATE.stats_errors),
            ("flowtarget_metrics_loop_timeouts", "scrapes the event loop did not answer in time", STATE.loop_timeouts),
        ):
            c = CounterMetricFamily(mname, doc, labels=labels)
            c.add_metric(values, float(val))
            yield c


def new_registry() -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StatsCollector())
    for extra in (ProcessCollector, PlatformCollector, GCCollector):
        try:
            extra(registry=reg)
        except Exception:  # a platform without /proc
            pass
    return reg


REGISTRY = new_registry()


def health() -> tuple[bool, dict[str, Any]]:
    """(healthy, details): NATS connected, loop answering, service ready."""
    connected = bool(STATE.bus is not None and STATE.bus.connected)
    loop_ok = True
    if STATE.loop is not None:
        try:
            _on_loop(lambda: None)
        except concurrent.futures.TimeoutError:
            loop_ok = False
        except Exception:
            loop_ok = STATE.loop.is_running()
    ready = STATE.ready if STATE.ready is not None else True
    ok = connected and loop_ok and ready
    return ok, {"service": STATE.service, "probe": STATE.probe, "healthy": ok, "nats_connected": connected,
                "loop_responsive": loop_ok, "ready": ready}


# --------------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    server_version = "flowtarget-metrics"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                body = generate_latest(REGISTRY)
                self._send(200, body, CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/health"):
                ok, details = health()
                self._send(200 if ok else 503, (json.dumps(details) + "\n").encode(), "application/json")
            else:
                self._send(404, b"not found: try /metrics or /healthz\n", "text/plain")
        except Exception as exc:  # never let a scrape take the thread down
            log.warning("metrics request %s failed: %s", path[:40], exc)
            try:
                self._send(500, b"internal error\n", "text/plain")
            except Exception:
                pass

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
        pass  # a scrape every few seconds is no news


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class MetricsServer:
    """The running HTTP endpoint; ``close()`` stops it."""

    def __init__(self, addr: str, port: int) -> None:
        self.httpd = _Server((addr, port), _Handler)
        self.addr = addr
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.25},
                                       name="flowtarget-metrics", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.addr in ("", "0.0.0.0", "::") else self.addr
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        try:
            self.httpd.shutdown()
        finally:
            self.httpd.server_close()
        STATE.bus = None
        unregister_stats("bus")


def start_metrics_server(settings: Any, service_name: str, bus: Any = None,
                         port: int | None = None) -> MetricsServer | None:
    """Serve /metrics and /healthz for this process; None when the port is 0 (off).

    Capture shard k (``FT_SHARD_INDEX``) listens on the port + k.  Call it
    from the service's event loop (stats functions are run there).
    A port that is taken is logged and the service runs on without metrics.
    """
    port = settings.metrics_port if port is None else port
    if not port:
        return None
    shard = getattr(settings, "shard_index", -1)
    if isinstance(shard, int) and shard > 0:
        port += shard  # capture shards share the host's ports: shard k listens on port + k
    STATE.service = service_name
    STATE.probe = getattr(settings, "probe", "")
    STATE.ready = None  # until the service reports
    STATE.bus = bus
    try:
        STATE.loop = asyncio.get_running_loop()
    except RuntimeError:
        STATE.loop = None
    if bus is not None:
        register_stats("bus", lambda: bus_stats(bus))
    addr = getattr(settings, "metrics_addr", None) or os.environ.get("FT_METRICS_ADDR", "0.0.0.0")
    try:
        server = MetricsServer(addr, port)
    except OSError as exc:
        log.error("metrics endpoint on %s:%d not started: %s", addr, port, exc)
        return None
    log.info("metrics on %s/metrics, health on %s/healthz", server.url, server.url)
    return server


# --------------------------------------------------------------------------- health check command


def check(port: int | None = None, addr: str | None = None, timeout_s: float = 3.0) -> int:
    """Exit status of the container health check: 0 healthy, 1 not."""
    port = port if port is not None else int(os.environ.get("FT_METRICS_PORT", "0") or 0)
    if not port:
        print("FT_METRICS_PORT is 0: no health endpoint", file=sys.stderr)
        return 1
    return check_healthz(addr if addr is not None else os.environ.get("FT_METRICS_ADDR", "127.0.0.1"),
                         port, timeout_s)


def check_healthz(addr: str, port: int | str, timeout_s: float = 3.0) -> int:
    """GET http://addr:port/healthz (a wildcard address asks loopback): 0 on 200, else 1; prints why."""
    if addr.strip() in ("", "0.0.0.0", "::"):
        addr = "127.0.0.1"
    host = f"[{addr.strip()}]" if ":" in addr else addr.strip()
    url = f"http://{host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            print(r.read().decode(errors="replace").strip())
            return 0 if r.status == 200 else 1
    except urllib.error.HTTPError as exc:
        print(exc.read().decode(errors="replace").strip() or f"{url}: HTTP {exc.code}")
        return 1
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] != ["check"]:
        print("usage: python -m shared.metrics check   (asks http://127.0.0.1:$FT_METRICS_PORT/healthz)",
              file=sys.stderr)
        return 2
    started = time.monotonic()
    code = check()
    log.debug("check took %.3f s", time.monotonic() - started)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
