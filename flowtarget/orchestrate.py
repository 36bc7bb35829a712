"""Run the four services together: ``flowtarget run`` and ``flowtarget analyze``.

The services run as child processes (``python -m flowtarget <service>``), each
configured only through ``FT_*`` environment variables, exactly as docker
compose runs them.  Without a NATS URL an embedded nats-server is started
(JetStream on, temporary store, free port) and stopped on exit.

For capture files the pipeline is drained before exit: capture exits after it
has published every flow's end record (it waits for classify's last verdicts);
then we wait until the store consumer has acknowledged everything in the
stream and the stream has stopped growing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import orjson
from nats.js.errors import NotFoundError

from flowtarget.embedded import EmbeddedNats, die_with_parent
from shared.settings import CommonSettings

SERVICES = ("capture", "classify", "store", "block")


class RusagePopen(subprocess.Popen):  # type: ignore[type-arg]
    """A Popen that keeps the child's resource usage (``os.wait4``) when it is reaped, as ``Forked`` does."""

    rusage: Any = None

    def _wait4(self, pid: int, flags: int) -> tuple[int, int]:
        rpid, sts, ru = os.wait4(pid, flags)
        if rpid == self.pid:
            self.rusage = ru
        return rpid, sts

    def _try_wait(self, wait_flags: int) -> tuple[int, int]:  # CPython's hook under wait()
        try:
            return self._wait4(self.pid, wait_flags)
        except ChildProcessError:
            return self.pid, 0

    def _internal_poll(self, _deadstate: Any = None, **_kw: Any) -> int | None:  # under poll()
        return super()._internal_poll(_deadstate=_deadstate, _waitpid=self._wait4)


@dataclass
class Pipeline:
    """Child processes of one pipeline run.

    Services are forked from a zygote (flowtarget/zygote.py) that has imported
    them once; one it cannot start (``zygote=False``, or an import-time variable
    that differs) is exec'd as ``python -m flowtarget <service>``.
    """

    env: dict[str, str]
    procs: dict[str, Any] = field(default_factory=dict)     # subprocess.Popen or zygote.Forked
    log_dir: Path | None = None
    #: service -> its /metrics port on 127.0.0.1 (set by ``start_web`` so the console can show health)
    metrics_ports: dict[str, int] = field(default_factory=dict)
    zygote: Any = True        # True: start one at the first service; None/False: exec every service

    def start(self, name: str, extra_env: dict[str, str] | None = None) -> Any:
        env = dict(self.env)
        if name in self.metrics_ports:
            env.update(FT_METRICS_PORT=str(self.metrics_ports[name]), FT_METRICS_ADDR="127.0.0.1")
        if extra_env:
            env.update(extra_env)
        log = str(self.log_dir / f"{name}.log") if self.log_dir is not None else None
        if self.zygote is True:
            from flowtarget.zygote import Zygote

            self.zygote = Zygote(self.env)
        proc: Any = self.zygote.spawn(name, env, log) if self.zygote else None
        if proc is None:
            out: Any = open(log, "ab") if log is not None else None
            proc = RusagePopen([sys.executable, "-m", "flowtarget", name], env=env, stdout=out,
                               stderr=subprocess.STDOUT if out else None, preexec_fn=die_with_parent)
            if out is not None:
                out.close()
        self.procs[name] = proc
        return proc

    def stop(self, names: tuple[str, ...] | None = None, timeout_s: float = 15.0) -> dict[str, int]:
        """Stop ``names`` (all services if None: then the zygote too), each in bounded time; their exit codes."""
        every = names is None
        names = names or tuple(self.procs)
        for n in names:
            p = self.procs.get(n)
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes: dict[str, int] = {}
        deadline = time.monotonic() + timeout_s
        for n in names:
            p = self.procs.get(n)
            if p is None:
                continue
            try:
                codes[n] = p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                codes[n] = p.wait()
        if every and self.zygote not in (None, False, True):
            self.zygote.close()
        return codes

    def check(self, name: str, extra_env: dict[str, str] | None = None) -> None:
        """Raise ConfigError (one line naming the variable) when service ``name`` would refuse its
        configuration: its settings as the child would build them, and its module's ``check_settings``."""
        check_service_config(name, {**self.env, **(extra_env or {})})

    def failed(self) -> dict[str, int]:
        return {n: p.returncode for n, p in self.procs.items() if p.poll() is not None and p.returncode not in (0, None)}


SETTINGS = {"capture": "CaptureSettings", "classify": "ClassifySettings", "store": "StoreSettings",
            "block": "BlockSettings"}
CHECKS = {"capture": "services.capture.sources"}    # modules with a check_settings(settings)


def check_service_config(name: str, env: dict[str, str]) -> None:
    """Build service ``name``'s settings from ``env`` (FT_* variables) as its process would; ConfigError if bad."""
    import importlib

    from shared import settings as settings_mod
    from shared.runner import load_settings

    cls = getattr(settings_mod, SETTINGS[name])
    fields = {}
    for key, value in env.items():
        if not key.startswith("FT_"):
            continue
        fname = key[3:].lower()
        if fname in cls.model_fields:
            fields[fname] = value
    settings = load_settings(cls, **fields)
    if name == "capture":       # its detectors' process reads the alert thresholds
        load_settings(settings_mod.DetectSettings, **{k: v for k, v in ((k[3:].lower(), v) for k, v in env.items()
                                                                        if k.startswith("FT_"))
                                                       if k in settings_mod.DetectSettings.model_fields})
    if name in CHECKS:
        importlib.import_module(CHECKS[name]).check_settings(settings)


async def check_nats(url: str, timeout_s: float = 3.0) -> str:
    """'' when a NATS server answers at ``url``, else a one-line reason (no retries, no tracebacks)."""
    async def quiet(_exc: Exception) -> None:
        return None

    try:
        nc = await nats.connect(servers=[u.strip() for u in url.split(",")], connect_timeout=timeout_s,
                                allow_reconnect=False, max_reconnect_attempts=1,
                                reconnect_time_wait=0.1, error_cb=quiet)
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        return f"cannot connect to NATS at {url}: {exc or type(exc).__name__}"
    await nc.close()
    return ""


def base_env(nats_url: str, probe: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["FT_NATS_URL"] = nats_url
    env["FT_PROBE"] = probe
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


async def stream_drained(settings: CommonSettings, durable: str = "store", quiet_s: float = 1.0,
                         timeout_s: float = 600.0, alive: Any = None) -> bool:
    """Wait until the store consumer has acked everything and the stream stopped growing."""
    nc = await nats.connect(settings.nats_servers, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    js = nc.jetstream()
    try:
        deadline = time.monotonic() + timeout_s
        last_seq = -1
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            if alive is not None and not alive():
                return False
            try:
                si = await js.stream_info(settings.stream_name)
                ci = await js.consumer_info(settings.stream_name, durable)
                seq = si.state.last_seq
                done = ci.num_pending == 0 and ci.num_ack_pending == 0
            except NotFoundError:
                seq, done = -1, False
            except Exception:
                seq, done = last_seq, False
            if seq != last_seq:
                last_seq, quiet_since = seq, time.monotonic()
            if done and time.monotonic() - quiet_since >= quiet_s:
                return True
            await asyncio.sleep(0.1)
        return False
    finally:
        await nc.close()


async def wait_ready(settings: CommonSettings | str, service: str = "classify", timeout_s: float = 60.0,
                     alive: Any = None, subject: str | None = None) -> bool:
    """Wait until a replica of ``service`` answers its readiness request.

    classify answers on ft.ctl.<any>.classify_ready, the detectors' process on
    ft.ctl.<probe>.detect_ready (pass ``subject``).  Connects with the
    settings' credentials (a plain URL is accepted for local runs).
    """
    from shared.bus import Bus

    if isinstance(settings, str):
        settings = CommonSettings(nats_url=settings)
    subj = subject or f"ft.ctl.orchestrator.{service}_ready"
    stop = asyncio.Event()
    try:
        bus = await Bus.connect(settings, f"wait-{service}", stop, give_up_after_s=timeout_s)
    except ConnectionError:
        return False
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if alive is not None and not alive():
                return False
            try:
                await bus.nc.request(subj, b"", timeout=0.5)
                return True
            except Exception:
                await asyncio.sleep(0.1)
        return False
    finally:
        await bus.close()


class StreamCollector:
    """Collects every event stored in the stream, as plain dicts in stream order, while a run goes on.

    ``start()`` launches a background task that waits for the stream to
    exist, then reads it with an ordered consumer, parsing (and validating) each
    message as it is stored, so the parsing overlaps the run instead of all
    coming after it.  ``finish()`` reads on until the stream's last message at
    that moment, stops and returns the events.  Malformed messages are skipped.

    ``keep`` (a test on an event's raw JSON object) collects only the events it
    accepts: the others (``flowtarget analyze`` wants no verdicts and no update
    records) are neither validated nor converted back to dicts, which was most
    of this reader's CPU (issue 12).  Kept events are validated as without it.

    ``kinds`` (event types, with ``keep``): messages go through the services' decoder
    (``shared.codec``) building only events of those types (the verdicts stored beside
    the flow records are skipped unbuilt); ``keep`` then tests each event's dict.  Every
    event of those types is validated, so a bad one of them is counted in ``skipped``
    even where ``keep`` would not have taken it.
    """

    def __init__(self, settings: CommonSettings, subjects: str = "ft.>",
                 keep: Callable[[dict[str, Any]], bool] | None = None,
                 kinds: tuple[str, ...] | None = None) -> None:
        self.settings = settings
        self.subjects = subjects
        self.keep = keep
        self.kinds = kinds
        self._decoder: Any = None
        self.events: list[dict[str, Any]] = []
        self.last_seq = 0        # stream sequence of the last message read
        self.skipped = 0
        self._nc: Any = None
        self._task: asyncio.Task[None] | None = None
        self._progress = asyncio.Event()

    async def start(self) -> StreamCollector:
        self._nc = await nats.connect(self.settings.nats_servers, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
        self._task = asyncio.create_task(self._run(), name="stream-collector")
        return self

    async def _run(self) -> None:
        from shared.models import event_dict, events_of, parse_event

        js = self._nc.jetstream()
        while True:   # the services create the stream when they start
            try:
                await js.stream_info(self.settings.stream_name)
                break
            except NotFoundError:
                await asyncio.sleep(0.1)
        sub = await js.subscribe(self.subjects, ordered_consumer=True, stream=self.settings.stream_name)
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=1.0)
                except asyncio.TimeoutError:   # nats' TimeoutError is one too
                    continue
                if self.keep is not None and self.kinds is not None:
                    self._take_kinds(msg.data, msg.subject)
                elif self.keep is not None:
                    self._take_kept(msg.data)
                else:
                    try:
                        parsed = parse_event(msg.data)
                    except Exception:  # noqa: BLE001 - a malformed message is skipped, not fatal
                        self.skipped += 1
                    else:
                        self.events.extend(event_dict(ev) for ev in events_of(parsed))
                self.last_seq = msg.metadata.sequence.stream
                self._progress.set()
        finally:
            await sub.unsubscribe()

    def _take_kinds(self, data: bytes, subject: str) -> None:
        """The events of ``kinds`` in one message that ``keep`` accepts (a bad one skipped alone)."""
        from shared.codec import DecodeError, Decoder
        from shared.models import event_dict

        if self._decoder is None:
            # as the other paths: no probe-of-subject and no schema-header check (the stream's own content)
            self._decoder = Decoder(check_probe=False)
        try:
            decoded = self._decoder.decode(data, subject, None, kinds=self.kinds)
        except DecodeError:
            self.skipped += 1
            return
        self.skipped += decoded.rejected
        keep = self.keep
        assert keep is not None
        for ev in decoded.events:
            d = event_dict(ev)
            if keep(d):
                self.events.append(d)

    def _take_kept(self, data: bytes) -> None:
        """The events of one message that ``keep`` accepts, each validated (a bad one skipped alone)."""
        from shared.models import event_dict, parse_one, strip_unknown_fields

        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.skipped += 1
            return
        items = obj.get("events") if isinstance(obj, dict) and obj.get("event_type") == "batch" else [obj]
        if not isinstance(items, list):
            self.skipped += 1
            return
        keep = self.keep
        for item in items:
            if not isinstance(item, dict):
                self.skipped += 1
                continue
            try:
                if not keep(item):
                    continue
                ev = parse_one(orjson.dumps(item))
            except Exception:  # noqa: BLE001 - a malformed event is skipped, not fatal
                self.skipped += 1
                continue
            strip_unknown_fields(ev)
            self.events.append(event_dict(ev))

    async def finish(self, timeout_s: float = 120.0) -> list[dict[str, Any]]:
        """Events up to the stream's current last message (or what arrived within ``timeout_s``)."""
        try:
            try:
                si = await self._nc.jetstream().stream_info(self.settings.stream_name)
                last = si.state.last_seq
            except NotFoundError:
                last = 0
            deadline = time.monotonic() + timeout_s
            while self.last_seq < last and time.monotonic() < deadline:
                if self._task is not None and self._task.done():
                    break
                self._progress.clear()
                try:
                    await asyncio.wait_for(self._progress.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
        finally:
            if self._task is not None:
                self._task.cancel()
                try:
                    await self._task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping
                    pass
            await self._nc.close()
        return self.events


async def read_stream(settings: CommonSettings, subjects: str = "ft.>") -> list[dict[str, Any]]:
    """Every event stored in the stream (batches unpacked), as plain dicts, in order."""
    return await (await StreamCollector(settings, subjects).start()).finish()


class Orchestrator:
    """Embedded NATS (when no URL is given) plus the four services as children."""

    def __init__(self, nats_url: str | None, probe: str = "probe1", log_dir: Path | None = None,
                 env: dict[str, str] | None = None, quiet: bool = False) -> None:
        self.embedded: EmbeddedNats | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if not nats_url:
            self._tmp = tempfile.TemporaryDirectory(prefix="flowtarget-")
            self.embedded = EmbeddedNats(store_dir=str(Path(self._tmp.name) / "nats"),
                                         log_file=str(Path(self._tmp.name) / "nats.log"))
            self.embedded.start()
            nats_url = self.embedded.url
            if log_dir is None:
                log_dir = Path(self._tmp.name)
        self.nats_url = nats_url
        self.probe = probe
        extra = dict(env or {})
        if self.embedded is not None:
            # a temporary nats-server: nothing spooled now could be published into it later
            extra["FT_SPOOL_DIR"] = ""
        if quiet:
            extra.setdefault("FT_LOG_LEVEL", "WARNING")
        self.pipeline = Pipeline(base_env(nats_url, probe, extra), log_dir=log_dir)
        self.settings = CommonSettings(nats_url=nats_url, probe=probe)

    def close(self) -> None:
        self.pipeline.stop()
        if self.embedded is not None:
            self.embedded.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def log_tail(self, name: str, lines: int = 20) -> str:
        if self.pipeline.log_dir is None:
            return ""
        path = self.pipeline.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def pcap_env(paths: list[str]) -> dict[str, str]:
    return {"FT_PCAP": json.dumps([str(Path(p).resolve()) for p in paths])}


def start_web(orch: Orchestrator, services: tuple[str, ...] = SERVICES,
              evidence_dir: Path | None = None) -> tuple[str | None, str]:
    """Start the web console beside the pipeline (``flowtarget run``): (its URL or None, a one-line note).

    Call before the other services start: each gets a /metrics port on
    127.0.0.1 that the console's health table reads.  Not started (None and the
    reason) when no login is configured (FT_WEB_TOKEN or FT_WEB_USER +
    FT_WEB_PASSWORD): the console ships no credentials.
    """
    from flowtarget.embedded import free_port
    from shared.runner import ConfigError, load_settings
    from shared.settings import WebSettings

    try:
        web = load_settings(WebSettings, **{k: v for k, v in (("nats_url", orch.nats_url), ("probe", orch.probe))})
    except ConfigError as exc:
        return None, f"web console not started: {exc}"
    if not web.login_configured():
        from services.web.service import LOGIN_MISSING

        return None, f"web console not started: {LOGIN_MISSING}"
    ports = {name: free_port() for name in services}
    orch.pipeline.metrics_ports.update(ports)
    health = {name: f"http://127.0.0.1:{port}/metrics" for name, port in ports.items()}
    port = web.web_port or free_port(web.web_addr)
    env = {"FT_WEB_HEALTH_URLS": json.dumps(health), "FT_WEB_PORT": str(port)}
    if evidence_dir is not None:   # where capture writes evidence in this run
        env["FT_EVIDENCE_DIR"] = str(evidence_dir)
    orch.pipeline.start("web", env)
    host = f"[{web.web_addr}]" if ":" in web.web_addr else web.web_addr
    return f"http://{host}:{port}/", "web console"
