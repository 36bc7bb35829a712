"""The one service runner.

``run_service`` builds the service's frozen settings from the environment,
connects the bus, runs the service's ``main(settings, bus, stop)`` until
SIGINT/SIGTERM sets ``stop``, then drains subscriptions and the connection
(bounded by ``FT_DRAIN_TIMEOUT_S``) and cleans up in ``finally``.  A bad
configuration ends the service at start with one line on stderr and exit
status 2.

Shutdown takes bounded time, also while NATS is down (docker compose's
``stop_grace_period`` is 30 s; the defaults below end well within it):

- at once when NATS is unreachable, else ``FT_SHUTDOWN_TIMEOUT_S`` (15 s)
  after the stop request, or at a second SIGINT/SIGTERM, the bus *abandons*:
  every JetStream publication still waiting for its acknowledgement goes to
  the spool on disk (``FT_SPOOL_DIR``) and is published on the next start;
- 5 s later a ``main`` that has still not returned is cancelled;
- 10 s after the timeout the process exits whatever it is waiting for
  (``os._exit``; a thread stuck in C, an executor that never finishes).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, TypeVar

from pydantic import ValidationError

from shared.bus import Bus
from shared.settings import CommonSettings

S = TypeVar("S", bound=CommonSettings)
ServiceMain = Callable[[Any, Bus, asyncio.Event], Awaitable[None]]

EXIT_CONFIG = 2
EXIT_SHUTDOWN_TIMEOUT = 3
CANCEL_AFTER_S = 5.0       # after the shutdown timeout: main is cancelled
HARD_EXIT_AFTER_S = 10.0   # after the shutdown timeout: the process exits

log = logging.getLogger("flowtarget")


class ConfigError(Exception):
    """A fatal configuration problem, reported as one line."""


class FatalError(Exception):
    """A service cannot go on (e.g. its capture interface disappeared): one line, exit status 1,
    after the service's own cleanup has run."""


def config_error_line(exc: ValidationError, env_prefix: str = "FT_") -> str:
    """One line naming each bad setting by its environment variable."""
    parts = []
    for err in exc.errors():
        loc = "_".join(str(p) for p in err.get("loc", ()) if not isinstance(p, int)).upper()
        name = loc if loc.startswith(env_prefix) else env_prefix + loc
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") not in ("value_error", "assertion_error") and isinstance(err.get("input"), (str, int, float)):
            msg += f" (got {str(err['input'])[:60]!r})"
        part = f"{name}: {msg}"
        if part not in parts:
            parts.append(part)
    return " ".join("; ".join(parts).split())      # one line, whatever the messages hold


def load_settings(settings_cls: type[S], **overrides: Any) -> S:
    """Build settings from the environment (plus explicit overrides); ConfigError on bad values."""
    try:
        return settings_cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(config_error_line(exc)) from exc


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def tune_gc(gen0: int = 50_000) -> None:
    """Fewer young-generation collections (raises the threshold only).

    Services allocate many short-lived objects per packet or event and keep
    large live tables (flows, batches); with the default threshold (700) the
    collector runs every few hundred packets and rescans them.
    """
    g0, g1, g2 = gc.get_threshold()
    if g0 < gen0:
        gc.set_threshold(gen0, g1, g2)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic collection inside: for building a large acyclic structure at once (parsing a file of
    JSON lines), where every young-generation pass would rescan what was just built. Restores the
    collector's previous state, also on error."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def prepare_process() -> None:
    """Per-process tuning every service gets: fewer GC passes, start-up objects frozen out of them."""
    tune_gc()
    gc.freeze()     # what is loaded at start (modules, tables) is never garbage


async def _watch_shutdown(stop: asyncio.Event, bus: Bus, timeout_s: float, again: asyncio.Event,
                          main_task: asyncio.Task[None], name: str) -> None:
    """After ``stop``: abandon unacknowledged publications when NATS is down, the timeout passes or a second
    signal comes; cancel ``main`` if it still runs CANCEL_AFTER_S later."""
    await stop.wait()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline and bus.connected and not again.is_set():
        try:
            await asyncio.wait_for(again.wait(), 0.1)
        except asyncio.TimeoutError:
            pass
    why = ("NATS is unreachable" if not bus.connected else
           "asked again" if again.is_set() else f"{timeout_s:g} s after the stop request")
    log.info("%s: shutting down now (%s)", name, why)
    await bus.abandon(why)
    try:
        await asyncio.wait_for(asyncio.shield(main_task), CANCEL_AFTER_S)
    except asyncio.TimeoutError:
        log.warning("%s: still busy %g s after abandoning: cancelled", name, CANCEL_AFTER_S)
        main_task.cancel()
    except BaseException:  # noqa: BLE001 - main's own outcome is handled by serve
        pass


def arm_hard_exit(name: str, after_s: float) -> threading.Timer:
    """A daemon timer that ends the process ``after_s`` from now, whatever it waits for."""
    def _exit() -> None:
        try:
            sys.stderr.write(f"flowtarget {name}: shutdown took longer than {after_s:g} s; exiting now\n")
            sys.stderr.flush()
        finally:
            os._exit(EXIT_SHUTDOWN_TIMEOUT)

    t = threading.Timer(after_s, _exit)
    t.daemon = True
    t.start()
    return t


async def serve(name: str, settings: CommonSettings, main: ServiceMain, stop: asyncio.Event | None = None,
                on_stop: Iterable[Callable[[], None]] = (), hard_exit: bool = False) -> None:
    """Run one service on the current loop until ``stop`` is set (or main returns).

    ``on_stop`` callbacks run once when the first stop signal arrives (e.g. to
    pass it on to child processes).  With ``hard_exit`` (a process of its
    own) the process ends at the latest HARD_EXIT_AFTER_S after the shutdown
    timeout.
    """
    stop = stop or asyncio.Event()
    again = asyncio.Event()
    prepare_process()
    loop = asyncio.get_running_loop()
    callbacks = list(on_stop)
    timeout_s = float(getattr(settings, "shutdown_timeout_s", 15.0))
    timers: list[threading.Timer] = []

    def on_signal() -> None:
        if stop.is_set():
            again.set()
            return
        stop.set()
        if hard_exit and not timers:
            timers.append(arm_hard_exit(name, timeout_s + HARD_EXIT_AFTER_S))
        for cb in callbacks:
            try:
                cb()
            except Exception as exc:  # noqa: BLE001 - one callback's failure must not stop the shutdown
                log.warning("%s: stop callback failed: %s", name, exc)

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread: the caller owns signals
    try:
        bus = await Bus.connect(settings, name, stop)
    except ConnectionError:
        if stop.is_set():      # asked to stop before NATS was ever reachable
            log.info("%s stopped before connecting", name)
            return
        raise
    from shared.metrics import start_metrics_server  # /metrics and /healthz when FT_METRICS_PORT != 0

    metrics_server = start_metrics_server(settings, name, bus) if settings.metrics_port else None
    main_task = asyncio.ensure_future(main(settings, bus, stop))
    watcher = asyncio.create_task(_watch_shutdown(stop, bus, timeout_s, again, main_task, name))
    try:
        try:
            await main_task
        except asyncio.CancelledError:
            if not main_task.cancelled():
                raise                        # we were cancelled, not main
            log.warning("%s: main cancelled at shutdown", name)
    finally:
        watcher.cancel()
        if not main_task.done():
            main_task.cancel()
        if metrics_server is not None:
            metrics_server.close()
        await bus.close()
        for sig in installed:
            loop.remove_signal_handler(sig)
        log.info("%s stopped", name)


def run_service(name: str, settings_cls: type[S], main: ServiceMain, check: Callable[[Any], None] | None = None,
                on_stop: Iterable[Callable[[], None]] = (), **overrides: Any) -> int:
    """Entry point of ``flowtarget <service>``: returns the process exit status.

    ``check(settings)`` (the service module's ``check_settings``) runs before
    anything connects: what the settings name must exist (interfaces, files,
    filters); it raises ConfigError with the variable's name.  ``on_stop``
    callbacks run at the first stop signal (see ``serve``).
    """
    try:
        settings = load_settings(settings_cls, **overrides)
        if check is not None:
            check(settings)
    except ConfigError as exc:
        print(f"flowtarget {name}: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings.log_level)
    try:
        asyncio.run(serve(name, settings, main, on_stop=on_stop, hard_exit=True))
    except ConfigError as exc:
        print(f"flowtarget {name}: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except FatalError as exc:
        print(f"flowtarget {name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
