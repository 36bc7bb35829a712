"""The one service runner.

``run_service`` builds the service's frozen settings from the environment,
connects the bus, runs the service's ``main(settings, bus, stop)`` until
SIGINT/SIGTERM sets ``stop``, then drains subscriptions and the connection
(bounded by ``FT_DRAIN_TIMEOUT_S``) and cleans up in ``finally``.  A bad
configuration ends the service at start with one line on stderr and exit
status 2.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from shared.bus import Bus
from shared.settings import CommonSettings

S = TypeVar("S", bound=CommonSettings)
ServiceMain = Callable[[Any, Bus, asyncio.Event], Awaitable[None]]

EXIT_CONFIG = 2

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


def prepare_process() -> None:
    """Per-process tuning every service gets: fewer GC passes, start-up objects frozen out of them."""
    tune_gc()
    gc.freeze()     # what is loaded at start (modules, tables) is never garbage


async def serve(name: str, settings: CommonSettings, main: ServiceMain, stop: asyncio.Event | None = None) -> None:
    """Run one service on the current loop until ``stop`` is set (or main returns)."""
    stop = stop or asyncio.Event()
    prepare_process()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
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
    try:
        await main(settings, bus, stop)
    finally:
        if metrics_server is not None:
            metrics_server.close()
        await bus.close()
        for sig in installed:
            loop.remove_signal_handler(sig)
        log.info("%s stopped", name)


def run_service(name: str, settings_cls: type[S], main: ServiceMain, check: Callable[[Any], None] | None = None,
                **overrides: Any) -> int:
    """Entry point of ``flowtarget <service>``: returns the process exit status.

    ``check(settings)`` (the service module's ``check_settings``) runs before
    anything connects: what the settings name must exist (interfaces, files,
    filters); it raises ConfigError with the variable's name.
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
        asyncio.run(serve(name, settings, main))
    except ConfigError as exc:
        print(f"flowtarget {name}: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except FatalError as exc:
        print(f"flowtarget {name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
