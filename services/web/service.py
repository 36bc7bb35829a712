"""``flowtarget web``: the operator's console, a fifth service that reads only the bus.

- live views: core NATS subjects (``ft.flow.>``, ``ft.stats.>``), subscribed
  only while a page watches (services/web/live.py);
- history: the JetStream stream (flows, DNS, alerts, blocks) and the rules KV
  bucket (services/web/history.py); no database of its own;
- packets: capture's evidence pcaps (announced on ``ft.evidence.<probe>``,
  files under ``FT_EVIDENCE_DIR``) and its ``ft.ctl.<probe>.pcap`` recordings.

Serves HTTP with uvicorn on ``FT_WEB_ADDR:FT_WEB_PORT`` (127.0.0.1:8080) on
the runner's event loop; stops with the runner's stop event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from shared.bus import Bus
from shared.metrics import register_stats, set_ready
from shared.models import Evidence
from shared.settings import WebSettings
from shared.subjects import all_of

log = logging.getLogger("flowtarget.web")

LOGIN_MISSING = "set FT_WEB_TOKEN, or FT_WEB_USER and FT_WEB_PASSWORD (the console ships no credentials)"


def check_settings(settings: WebSettings) -> None:
    from shared.runner import ConfigError

    if not settings.login_configured():
        raise ConfigError(LOGIN_MISSING)


def _server(app: Any, settings: WebSettings) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:   # the runner owns SIGINT/SIGTERM
            yield

    config = uvicorn.Config(app, host=settings.web_addr, port=settings.web_port, log_level="warning",
                            access_log=False, lifespan="off", timeout_graceful_shutdown=2,
                            proxy_headers=False, server_header=False)
    return Server(config)


def url_of(server: Any, settings: WebSettings) -> str:
    port = settings.web_port
    try:
        port = server.servers[0].sockets[0].getsockname()[1]
    except (AttributeError, IndexError):
        pass
    host = settings.web_addr
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


async def main(settings: WebSettings, bus: Bus, stop: asyncio.Event) -> None:
    from services.web.app import Console, build_app

    set_ready(False)
    check_settings(settings)
    console = Console(settings, bus)

    async def on_evidence(ev: Evidence) -> None:
        console.evidence.add(ev)

    await bus.subscribe(all_of("evidence"), on_evidence, types=(Evidence,))
    register_stats("web", lambda: {"viewers": console.hub.viewers, "live_subscribed": int(console.hub.subscribed),
                                   "sessions": len(console.auth.sessions), "changes": len(console.auth.audit)},
                   gauges=("viewers", "live_subscribed", "sessions"))
    server = _server(build_app(console), settings)
    serving = asyncio.create_task(server.serve(), name="web-http")
    while not server.started and not serving.done():
        await asyncio.sleep(0.05)
    if serving.done():
        exc = serving.exception()
        from shared.runner import ConfigError

        raise ConfigError(f"cannot listen on {settings.web_addr}:{settings.web_port}: {exc or 'server exited'}")
    url = url_of(server, settings)
    log.info("web console on %s", url)
    print(f"flowtarget web: console on {url}", flush=True)
    set_ready(True)
    try:
        while not stop.is_set() and not serving.done():
            try:
                await asyncio.wait_for(stop.wait(), 2.0)
            except asyncio.TimeoutError:
                pass
            await console.hub.reap()
    finally:
        console.stopping.set()
        server.should_exit = True
        try:
            await asyncio.wait_for(serving, 5.0)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - stopping anyway
            serving.cancel()
