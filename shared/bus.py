"""The NATS bus helper every service uses.

- ``Bus.connect`` connects with endless reconnects and the credentials from the
  settings (``FT_NATS_USER``/``FT_NATS_PASSWORD``, ``FT_NATS_TOKEN`` or
  ``FT_NATS_CREDS``); a server that is down at start is retried until it is up
  or the service is asked to stop.
- ``publish`` sends a model on core NATS (hints: samples, packets, verdicts);
  ``js_publish`` sends it through JetStream and waits for the ack, retrying
  with the same ``Nats-Msg-Id`` so that a retry is not stored twice.
- ``subscribe`` validates every message against the event contract: a
  malformed message is counted (``bus.malformed``) and logged, never raised
  into the handler; a handler's exception is counted and logged too.
- ``ensure_stream`` creates (or updates) the one stream that holds every event
  that must be stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, ExternalStream, RetentionPolicy, StorageType, StreamConfig, StreamSource
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ValidationError

from shared.models import Event, EventBatch, events_of, parse_event
from shared.settings import CommonSettings
from shared.subjects import STORED_KINDS, all_of

log = logging.getLogger("flowtarget.bus")

Handler = Callable[[Any], Awaitable[None]]


class RateLimitedLog:
    """Logs at most one line per ``interval_s`` per key, with the count of suppressed ones."""

    def __init__(self, logger: logging.Logger, interval_s: float = 5.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        last = self._last.get(key, 0.0)
        if now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        n = self._suppressed.pop(key, 0)
        self._last[key] = now
        if n:
            msg += f" ({n} similar suppressed)"
        self.logger.warning(msg, *args)


def safe_text(value: Any, limit: int = 200) -> str:
    """Text fit for one log line: printable ASCII only (repr-escaped), truncated."""
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, (bytes, bytearray)) else str(value)
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit] + "..."


class Bus:
    """One NATS connection with JetStream, plus validated subscriptions."""

    def __init__(self, settings: CommonSettings, name: str) -> None:
        self.settings = settings
        self.name = name
        self.nc: NATS = NATS()
        self.js: JetStreamContext | None = None
        self.malformed = 0
        self.handler_errors = 0
        self.skipped = 0   # messages dropped unparsed while a subscription's ``when`` was false
        self.published = 0
        self.publish_retries = 0
        self.reconnects = 0
        self._subs: list[Any] = []
        self._closing = False
        self._rlog = RateLimitedLog(log)

    # ------------------------------------------------------------------ connection

    @classmethod
    async def connect(cls, settings: CommonSettings, name: str, stop: asyncio.Event | None = None,
                      give_up_after_s: float | None = None) -> "Bus":
        """Connect, retrying until NATS is up, ``stop`` is set or ``give_up_after_s`` passes (ConnectionError)."""
        bus = cls(settings, name)
        await bus._connect(stop, give_up_after_s)
        return bus

    def _options(self) -> dict[str, Any]:
        s = self.settings
        opts: dict[str, Any] = dict(
            servers=[u.strip() for u in s.nats_url.split(",") if u.strip()],
            name=f"flowtarget-{self.name}-{s.probe}",
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=2,
            ping_interval=10,
            max_outstanding_pings=3,
            pending_size=64 * 1024 * 1024,
            flush_timeout=10,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        if s.nats_user:
            opts["user"] = s.nats_user
            opts["password"] = s.nats_password.get_secret_value()
        if s.nats_token.get_secret_value():
            opts["token"] = s.nats_token.get_secret_value()
        if s.nats_creds:
            opts["user_credentials"] = s.nats_creds
        return opts

    async def _connect(self, stop: asyncio.Event | None, give_up_after_s: float | None = None) -> None:
        # With endless reconnects nats-py keeps retrying the first connection
        # itself; we only decide how long to wait for it.
        self._rlog.interval_s = 10.0
        connecting = asyncio.create_task(self.nc.connect(**self._options()))
        waits: set[asyncio.Future[Any]] = {connecting}
        stopping = asyncio.create_task(stop.wait()) if stop is not None else None
        if stopping is not None:
            waits.add(stopping)
        try:
            done, _ = await asyncio.wait(waits, timeout=give_up_after_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if stopping is not None:
                stopping.cancel()
        if connecting not in done:
            connecting.cancel()
            try:
                await connecting
            except BaseException:
                pass
            self._closing = True
            try:
                await self.nc.close()
            except Exception:
                pass
            raise ConnectionError(f"could not connect to NATS at {safe_text(self.settings.nats_url)}")
        try:
            connecting.result()
        except Exception as exc:
            raise ConnectionError(f"could not connect to NATS at {safe_text(self.settings.nats_url)}: {safe_text(exc)}") from exc
        self.js = self.nc.jetstream(timeout=10, domain=self.settings.js_domain or None)
        log.info("%s connected to NATS %s", self.name, self.nc.connected_url.netloc if self.nc.connected_url else "")

    async def _on_error(self, exc: Exception) -> None:
        self._rlog.warning("error", "NATS error: %s", safe_text(exc))

    async def _on_disconnected(self) -> None:
        if not self._closing:
            self._rlog.warning("disc", "disconnected from NATS; reconnecting")

    async def _on_reconnected(self) -> None:
        self.reconnects += 1
        log.info("reconnected to NATS")

    @property
    def connected(self) -> bool:
        return self.nc.is_connected

    async def close(self, timeout_s: float | None = None) -> None:
        """Drain subscriptions and the connection (bounded by the drain timeout)."""
        timeout = timeout_s if timeout_s is not None else self.settings.drain_timeout_s
        self._closing = True
        if self.nc.is_closed:
            return
        try:
            await asyncio.wait_for(self.nc.drain(), timeout)
        except Exception as exc:  # drain can fail while disconnected
            log.debug("drain failed: %s", exc)
        finally:
            if not self.nc.is_closed:
                try:
                    await self.nc.close()
                except Exception:
                    pass

    # ------------------------------------------------------------------ publishing

    @staticmethod
    def encode(model: BaseModel) -> bytes:
        return model.model_dump_json(exclude_defaults=False).encode()

    async def publish(self, subject: str, model: BaseModel | bytes) -> None:
        """Core NATS publish (at most once). Buffered by the client while reconnecting."""
        data = model if isinstance(model, bytes) else self.encode(model)
        await self.nc.publish(subject, data)
        self.published += 1

    async def js_publish(self, subject: str, model: BaseModel | bytes, msg_id: str | None = None,
                         stop: asyncio.Event | None = None, max_wait_s: float | None = None) -> None:
        """JetStream publish that waits for the ack; retried (same msg id) until stored.

        Gives up only when ``max_wait_s`` passes (raises TimeoutError).  A stop
        request does not abandon the message: stored data matters more than a
        fast exit, and the runner bounds the whole shutdown.
        """
        assert self.js is not None
        data = model if isinstance(model, bytes) else self.encode(model)
        headers = {"Nats-Msg-Id": msg_id or uuid.uuid4().hex}
        started = time.monotonic()
        delay = 0.05
        while True:
            try:
                await self.js.publish(subject, data, headers=headers, timeout=5)
                self.published += 1
                return
            except Exception as exc:
                self.publish_retries += 1
                if max_wait_s is not None and time.monotonic() - started > max_wait_s:
                    raise TimeoutError(f"JetStream publish to {subject} not acknowledged: {exc}") from exc
                self._rlog.warning("jspub", "JetStream publish to %s failed (%s); retrying", subject, safe_text(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    # ------------------------------------------------------------------ subscribing

    def parse(self, msg: Msg) -> Event | EventBatch | None:
        """Parse a message against the contract; None (counted, logged) when malformed."""
        try:
            return parse_event(msg.data)
        except (ValidationError, ValueError) as exc:
            self.malformed += 1
            first = exc.errors()[0] if isinstance(exc, ValidationError) and exc.errors() else {"msg": str(exc)}
            self._rlog.warning(
                "malformed:" + msg.subject,
                "malformed message on %s rejected (%d so far): %s at %s; data %s",
                safe_text(msg.subject, 80), self.malformed, safe_text(first.get("msg", "")),
                safe_text(".".join(str(p) for p in first.get("loc", ()))), safe_text(msg.data[:80]),
            )
            return None

    async def subscribe(self, subject: str, handler: Handler, queue: str = "",
                        types: Iterable[type] | None = None, batched: bool = False,
                        when: Callable[[], bool] | None = None) -> Any:
        """Subscribe; ``handler`` gets each valid event (batches are unpacked).

        ``types`` restricts which event classes reach the handler (others are
        ignored silently: they are valid, just not for this subscriber).  With
        ``batched`` the handler gets the list of wanted events of one message
        instead, so it can answer a batch with a batch.  With ``when``, a
        message that arrives while ``when()`` is false is dropped before it is
        parsed (counted in ``skipped``): for a subscriber with nothing to do.
        """
        wanted = tuple(types) if types else None

        async def _cb(msg: Msg) -> None:
            if when is not None and not when():
                self.skipped += 1
                return
            parsed = self.parse(msg)
            if parsed is None:
                return
            events = [ev for ev in events_of(parsed) if wanted is None or isinstance(ev, wanted)]
            for item in ([events] if batched else events):
                if batched and not item:
                    continue
                try:
                    await handler(item)
                except Exception as exc:
                    self.handler_errors += 1
                    log.exception("handler for %s failed: %s", safe_text(msg.subject, 80), safe_text(exc))

        sub = await self.nc.subscribe(subject, queue=queue, cb=_cb,
                                      pending_msgs_limit=2_000_000, pending_bytes_limit=2 * 1024**3)
        self._subs.append(sub)
        return sub

    # ------------------------------------------------------------------ JetStream

    def stream_config(self) -> StreamConfig:
        """The stream: ``FT_STREAM_REPLICAS`` copies; with ``FT_STREAM_SOURCES`` a subject-less
        aggregate sourcing the same-named stream of each leaf probe's JetStream domain."""
        s = self.settings
        domains = s.source_domains
        sources = [StreamSource(name=s.stream_name, external=ExternalStream(api=f"$JS.{d}.API"))
                   for d in domains] or None
        return StreamConfig(
            name=s.stream_name,
            subjects=None if sources else [all_of(k) for k in STORED_KINDS],
            sources=sources,
            num_replicas=s.stream_replicas,
            retention=RetentionPolicy.LIMITS,
            max_age=s.stream_max_age_s,
            max_bytes=s.stream_max_bytes,
            storage=StorageType.FILE if s.stream_storage == "file" else StorageType.MEMORY,
            discard=DiscardPolicy.OLD,
            duplicate_window=120.0,
        )

    async def ensure_stream(self, stop: asyncio.Event | None = None) -> None:
        """Create the stream, or update its limits; retried while NATS is unavailable (until ``stop``)."""
        assert self.js is not None
        cfg = self.stream_config()
        delay = 0.2
        for _ in range(60):
            try:
                try:
                    await self.js.stream_info(cfg.name)
                    await self.js.update_stream(cfg)
                except NotFoundError:
                    await self.js.add_stream(cfg)
                return
            except Exception as exc:
                if stop is not None and stop.is_set():
                    raise RuntimeError(f"JetStream stream {cfg.name} not set up: {exc}") from exc
                self._rlog.warning("stream", "JetStream stream setup failed (%s); retrying", safe_text(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise RuntimeError(f"could not set up JetStream stream {cfg.name}")
