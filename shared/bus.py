"""The NATS bus helper every service uses.

- ``Bus.connect`` connects with endless reconnects and the credentials from the
  settings (``FT_NATS_USER``/``FT_NATS_PASSWORD``, ``FT_NATS_TOKEN`` or
  ``FT_NATS_CREDS``); a server that is down at start is retried until it is up
  or the service is asked to stop.
- ``publish`` sends a model on core NATS (hints: samples, packets, verdicts);
  ``js_publish`` sends it through JetStream and waits for the ack, retrying
  with the same ``Nats-Msg-Id`` so that a retry is not stored twice.
- ``subscribe`` decodes every message with the one safe decoder
  (``shared.codec``: size, depth, schema version, probe of the subject): a
  malformed message is counted (``bus.malformed``) and logged at most once per
  interval without a traceback, never raised into the handler; a batch's
  valid events survive a bad one beside them; a handler's exception is
  counted and logged (rate-limited) too.
- ``dead_letter`` moves a JetStream message a consumer cannot use to
  ``ft.dlq.<probe>`` (its own stream) with the reason in a header; a core NATS
  subscriber's unusable message (malformed, or a batch with rejected events)
  is copied there too, in the background, at most ``DLQ_INFLIGHT`` at a time
  (beyond that counted in ``dead_letter_dropped``: a flood of garbage must not
  stall the subscriber).
- ``ensure_stream`` creates (or updates) the one stream that holds every event
  that must be stored, and the dead-letter stream; then publishes, in the
  background, what an earlier run spooled (``shared.spool``).
- ``abandon`` (the runner calls it at shutdown when NATS is down or the
  shutdown deadline passed): every JetStream publish still waiting for its
  acknowledgement is written to the spool instead, and returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, ExternalStream, RetentionPolicy, StorageType, StreamConfig, StreamSource
from nats.js.errors import NotFoundError
from pydantic import BaseModel

from shared.codec import EVENT_MODELS, SCHEMA_HEADER, DecodeError, Decoder, kind_of, safe_line, subject_probe
from shared.models import SCHEMA_VERSION, Event, EventBatch
from shared.settings import CommonSettings
from shared.spool import Spool
from shared.subjects import DLQ_KIND, STORED_KINDS, all_of, dlq_subject

log = logging.getLogger("flowtarget.bus")


def _one_copy_pub_cmd(command: Any = None) -> bool:
    """nats-py 2.x builds a PUB command as ``line + payload + CRLF``: each ``+`` copies the whole payload, twice
    per message, which for capture is about 500 MB of copying a million packets (its batches are 250 MB).  The
    same bytes with one copy (bytes.join) replace it, if nats-py's own gives exactly these bytes; else (a later
    nats-py that builds it otherwise) it stays.  Whether it was replaced."""
    if command is None:
        from nats.protocol import command

    orig = command.pub_cmd
    if getattr(orig, "_ft_one_copy", False):
        return True

    def pub_cmd(subject: str, reply: str, payload: bytes) -> bytes:
        return b"".join((f"PUB {subject} {reply} {len(payload)}\r\n".encode(), payload, b"\r\n"))

    try:
        same = all(pub_cmd(s, r, p) == orig(s, r, p) for s, r, p in (
            ("ft.flow.p1", "", b'{"a":1}' * 3), ("x", "_INBOX.abc.1", b""), ("s.\u00fc", "r", bytearray(b"\r\n"))))
    except Exception:   # noqa: BLE001 - a nats-py whose pub_cmd takes other arguments: keep it
        same = False
    if same:
        pub_cmd._ft_one_copy = True   # type: ignore[attr-defined]
        pub_cmd._ft_orig = orig   # type: ignore[attr-defined]
        command.pub_cmd = pub_cmd
    return same


_one_copy_pub_cmd()

#: core NATS messages being dead-lettered at once (beyond that they are counted, not copied)
DLQ_INFLIGHT = 32

Handler = Callable[[Any], Awaitable[None]]


class RateLimitedLog:
    """Logs at most one line per ``interval_s`` per key, with the count of suppressed ones.

    At most ``max_keys`` keys are remembered (the oldest forgotten first), so
    keys built from what peers send cannot grow it without bound.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 5.0, max_keys: int = 256) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: Any, exc_info: Any = None) -> None:
        self.log(logging.WARNING, key, msg, *args, exc_info=exc_info)

    def log(self, level: int, key: str, msg: str, *args: Any, exc_info: Any = None) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        n = self._suppressed.pop(key, 0)
        self._last.pop(key, None)
        self._last[key] = now            # most recent last (dicts keep insertion order)
        while len(self._last) > self.max_keys:
            old = next(iter(self._last))
            del self._last[old]
            self._suppressed.pop(old, None)
        if n:
            msg += f" ({n} similar suppressed)"
        self.logger.log(level, msg, *args, exc_info=exc_info)


def safe_text(value: Any, limit: int = 200) -> str:
    """Text fit for one log line: printable ASCII only (repr-escaped), truncated."""
    return safe_line(value, limit)


async def kv_keys(kv: Any) -> list[str]:
    """The keys of a JetStream key-value bucket (``[]`` when it has none), from its stream's state.

    Not ``kv.keys()``: nats-py's key watcher can end its initial listing before a key written a
    moment earlier (seen as a rule missing from ``flowtarget rules list`` in a test).  Keys whose
    last entry is a delete marker are listed too: ``kv.get`` raises for them.  Falls back to the
    watcher where the bucket object or the server does not give the subjects.
    """
    from nats.js.errors import NoKeysError, NotFoundError

    js, stream, pre = getattr(kv, "_js", None), getattr(kv, "_stream", None), getattr(kv, "_pre", None)
    if js is not None and stream and pre:
        try:
            info = await js.stream_info(stream, subjects_filter=f"{pre}>")
        except NotFoundError:
            return []
        except Exception:  # noqa: BLE001 - an older server: the watcher's listing below
            info = None
        if info is not None and info.state.subjects is not None:
            return sorted(subj[len(pre):] for subj in info.state.subjects)
        if info is not None and not info.state.messages:
            return []
    try:
        return sorted(await kv.keys())
    except NoKeysError:
        return []


class Abandoned(Exception):
    """A JetStream publish given up at shutdown (and spooled, unless the caller asked otherwise)."""


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
        self.dead_lettered = 0
        self.dead_letter_failures = 0
        self.dead_letter_dropped = 0   # core NATS dead letters not sent: too many already in flight
        self.slow_consumer_drops = 0
        self.decoder = Decoder.from_settings(settings)
        self.spool: Spool | None = None
        if getattr(settings, "spool_dir", ""):
            shard = getattr(settings, "shard_index", -1)
            self.spool = Spool(settings.spool_dir, f"{name}-{settings.probe}" + (f"-shard{shard}" if shard >= 0 else ""),
                               settings.spool_max_bytes)
        self._abandon = asyncio.Event()
        self._js_inflight = 0
        self._replay_task: asyncio.Task[None] | None = None
        self._subs: list[Any] = []
        self._dlq_tasks: set[asyncio.Task[bool]] = set()
        self._readers: set[asyncio.Task[None]] = set()   # subscribe_in_order's tasks
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
        if isinstance(exc, nats.errors.SlowConsumerError):
            # a subscription's pending buffer (FT_SUB_PENDING_MB) is full: the message was dropped
            self.slow_consumer_drops += 1
            self._rlog.warning("slow", "subscription buffer full: %d message(s) dropped so far (FT_SUB_PENDING_MB)",
                               self.slow_consumer_drops)
            return
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
        """Spool unacknowledged JetStream publishes, then drain subscriptions and the connection (bounded)."""
        timeout = timeout_s if timeout_s is not None else self.settings.drain_timeout_s
        self._closing = True
        if self._dlq_tasks:   # dead letters already on their way get a moment
            await asyncio.wait(set(self._dlq_tasks), timeout=min(1.0, timeout))
        await self.abandon("closing")
        if self._replay_task is not None:
            self._replay_task.cancel()
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
            for task in list(self._readers):
                task.cancel()

    # ------------------------------------------------------------------ publishing

    @staticmethod
    def encode(model: BaseModel) -> bytes:
        return model.model_dump_json(exclude_defaults=False).encode()

    #: headers every publication through the bus carries (the body is the same for every version)
    SCHEMA_HEADERS = {SCHEMA_HEADER: SCHEMA_VERSION}

    async def publish(self, subject: str, model: BaseModel | bytes) -> None:
        """Core NATS publish (at most once). Buffered by the client while reconnecting."""
        data = model if isinstance(model, bytes) else self.encode(model)
        await self.nc.publish(subject, data, headers=self.SCHEMA_HEADERS)
        self.published += 1

    async def abandon(self, why: str = "shutdown") -> None:
        """Make every JetStream publish still waiting for its ack spool its message and return (bounded wait)."""
        if not self._abandon.is_set():
            self._abandon.set()
            if self._js_inflight:
                log.warning("%s: %d JetStream publication(s) not acknowledged (%s): spooling them",
                            self.name, self._js_inflight, why)
        deadline = time.monotonic() + 2.0
        while self._js_inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    @property
    def abandoning(self) -> bool:
        return self._abandon.is_set()

    def _spool(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        if self.spool is None:
            self._rlog.log(logging.ERROR, "nospool", "JetStream publish to %s abandoned and no FT_SPOOL_DIR: lost",
                           safe_text(subject, 80))
            return
        self.spool.put(subject, data, headers)

    async def js_publish(self, subject: str, model: BaseModel | bytes, msg_id: str | None = None,
                         stop: asyncio.Event | None = None, max_wait_s: float | None = None,
                         spool: bool = True, headers: dict[str, str] | None = None) -> None:
        """JetStream publish that waits for the ack; retried (same msg id) until stored.

        Gives up when ``max_wait_s`` passes (raises TimeoutError), or when the
        bus is abandoning (shutdown): then the message goes to the spool (with
        ``spool``, and returns) or ``Abandoned`` is raised.  A stop request
        alone does not abandon the message: the runner decides when to.
        """
        assert self.js is not None
        data = model if isinstance(model, bytes) else self.encode(model)
        hdrs = {**self.SCHEMA_HEADERS, **(headers or {}), "Nats-Msg-Id": msg_id or uuid.uuid4().hex}
        started = time.monotonic()
        delay = 0.05
        abandon = self._abandon
        self._js_inflight += 1
        try:
            while True:
                if abandon.is_set():
                    if not spool:
                        raise Abandoned(subject)
                    self._spool(subject, data, hdrs)
                    return
                try:
                    await self._publish_or_abandon(subject, data, hdrs)
                    self.published += 1
                    return
                except Abandoned:
                    continue
                except Exception as exc:
                    self.publish_retries += 1
                    if max_wait_s is not None and time.monotonic() - started > max_wait_s:
                        raise TimeoutError(f"JetStream publish to {subject} not acknowledged: {exc}") from exc
                    self._rlog.warning("jspub", "JetStream publish to %s failed (%s); retrying", safe_text(subject, 80),
                                       safe_text(exc))
                    try:
                        await asyncio.wait_for(abandon.wait(), delay)
                    except asyncio.TimeoutError:
                        pass
                    delay = min(delay * 2, 2.0)
        finally:
            self._js_inflight -= 1

    async def _publish_or_abandon(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        """One publish attempt that ``abandon()`` interrupts (raises Abandoned)."""
        assert self.js is not None
        pub = asyncio.ensure_future(self.js.publish(subject, data, headers=headers, timeout=5))
        waiter = asyncio.ensure_future(self._abandon.wait())
        try:
            await asyncio.wait({pub, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if pub.done():
            pub.result()
            return
        pub.cancel()
        raise Abandoned(subject)

    # ------------------------------------------------------------------ dead letters

    async def dead_letter(self, msg: Msg, reason: str, detail: str = "", max_wait_s: float = 5.0) -> bool:
        """Store a message a consumer cannot use on ``ft.dlq.<probe>`` with the reason; True when stored.

        The body is the message as it came; headers say why and where from
        (``Ft-Dlq-Reason``, ``Ft-Dlq-Detail``, ``Ft-Dlq-Subject``,
        ``Ft-Dlq-Stream-Seq``, ``Ft-Dlq-Delivered``).  A redelivered message
        is dead-lettered once (the message id is its stream sequence).
        """
        headers = {"Ft-Dlq-Reason": safe_text(reason, 64), "Ft-Dlq-Subject": safe_text(msg.subject, 256)}
        if detail:
            headers["Ft-Dlq-Detail"] = safe_text(detail, 512)
        msg_id = None
        try:
            md = msg.metadata
            headers["Ft-Dlq-Stream-Seq"] = str(md.sequence.stream)
            headers["Ft-Dlq-Delivered"] = str(md.num_delivered)
            msg_id = f"dlq-{safe_text(md.stream, 64)}-{md.sequence.stream}"
        except Exception:  # noqa: BLE001 - a core NATS message has no metadata
            pass
        try:
            await self.js_publish(dlq_subject(subject_probe(msg.subject)), bytes(msg.data or b""), msg_id=msg_id,
                                  max_wait_s=max_wait_s, spool=False, headers=headers)
        except Exception as exc:  # noqa: BLE001 - NATS down: the message stays unacknowledged
            self.dead_letter_failures += 1
            self._rlog.warning("dlqfail", "could not dead-letter a message from %s: %s", safe_text(msg.subject, 80),
                               safe_text(exc))
            return False
        self.dead_lettered += 1
        return True

    # ------------------------------------------------------------------ subscribing

    def decode(self, msg: Msg, kinds: Iterable[str] | None = None, dead_letter: bool = False,
               views: Mapping[str, Iterable[str]] | None = None) -> list[Event] | None:
        """The usable events of a message; None (counted, logged once per interval) when there are none.

        Events of a batch that were rejected (schema, probe of the subject) are
        counted and logged the same way; the others are returned.  With ``kinds``
        (event types) only events of those types are built, with ``views`` only the fields named
        (``Decoder.decode``).
        With ``dead_letter`` (core NATS subscriptions) the unusable message is
        also copied to ``ft.dlq.<probe>`` with the reason, in the background.
        """
        try:
            decoded = self.decoder.decode(msg.data, msg.subject, msg.headers, kinds=kinds, views=views)
        except DecodeError as exc:
            self.malformed += 1
            self._rlog.warning("malformed:" + exc.reason,
                               "malformed message on %s rejected (%d so far): %s %s; data %s",
                               safe_text(msg.subject, 80), self.malformed, exc.reason, safe_text(exc.detail, 200),
                               safe_text(msg.data[:80]))
            if dead_letter:
                self._dead_letter_soon(msg, exc.reason, exc.detail)
            return None
        if decoded.rejected:
            self._rlog.warning("rejected", "%d event(s) of a message on %s rejected (%d so far), the other %d kept: %s",
                               decoded.rejected, safe_text(msg.subject, 80), self.decoder.counters["rejected_events"],
                               len(decoded.events), safe_text("; ".join(decoded.reasons), 300))
            if dead_letter:
                self._dead_letter_soon(msg, "rejected_events", "; ".join(decoded.reasons))
        return decoded.events

    def _dead_letter_soon(self, msg: Msg, reason: str, detail: str) -> None:
        """Dead-letter a core NATS message without holding up its subscriber (bounded in flight)."""
        if self.js is None or self._closing or len(self._dlq_tasks) >= DLQ_INFLIGHT:
            self.dead_letter_dropped += 1
            return
        task = asyncio.get_running_loop().create_task(self.dead_letter(msg, reason, detail, max_wait_s=2.0))
        self._dlq_tasks.add(task)
        task.add_done_callback(self._dlq_tasks.discard)

    def parse(self, msg: Msg) -> Event | EventBatch | None:
        """``decode`` as one event or a batch (older callers); None when malformed."""
        events = self.decode(msg)
        if events is None:
            return None
        if len(events) == 1:
            return events[0]
        return EventBatch.model_construct(events=events)

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
        Events of other types are not even built (``Decoder.decode``'s ``kinds``).
        """
        wanted = tuple(types) if types else None
        kinds = None
        if wanted and all(t in EVENT_MODELS.values() for t in wanted):
            kinds = frozenset(kind_of(t) for t in wanted)

        async def _cb(msg: Msg) -> None:
            if when is not None and not when():
                self.skipped += 1
                return
            decoded = self.decode(msg, kinds, dead_letter=True)
            if decoded is None:
                return
            events = [ev for ev in decoded if wanted is None or isinstance(ev, wanted)]
            for item in ([events] if batched else events):
                if batched and not item:
                    continue
                try:
                    await handler(item)
                except Exception as exc:
                    self.handler_errors += 1
                    # the traceback once per interval: a peer's message must not flood the log
                    self._rlog.log(logging.ERROR, "handler:" + subject, "handler for %s failed (%d so far): %s",
                                   safe_text(msg.subject, 80), self.handler_errors, safe_text(exc), exc_info=exc)

        pending_bytes = int(getattr(self.settings, "sub_pending_mb", 2048)) * 1024**2
        sub = await self.nc.subscribe(subject, queue=queue, cb=_cb,
                                      pending_msgs_limit=2_000_000, pending_bytes_limit=pending_bytes)
        self._subs.append(sub)
        return sub

    async def subscribe_in_order(self, subjects: Iterable[str], cb: Callable[[Msg], Awaitable[None]],
                                 pending_msgs_limit: int = 2_000_000, pending_bytes_limit: int = 2 * 1024**3,
                                 fallback: str | None = None) -> list[Any]:
        """Several subjects, one raw-message callback, in the order the server delivered them.

        What one wildcard subscription gives (one queue, so capture's order of start, update
        and end records and of its final stats message is kept), without being delivered
        what the wildcard matches and the subscriber does not use (``ft.*.<probe>`` also
        matches samples and verdicts: most of the bytes on the bus).  nats-py gives every
        subscription its own queue and task, which would interleave the subjects in batches;
        here the subscriptions (made without a callback, so nats-py starts no task of its own)
        share one queue, read by one task.  tests/shared/test_bus.py checks the order on a
        real nats-server.  Should a nats-py release lack those internals, ``fallback`` (one
        wildcard covering the subjects; the callback filters) is subscribed instead.
        """
        queue: asyncio.Queue[Msg] = asyncio.Queue(maxsize=pending_msgs_limit)
        subs: dict[int, Any] = {}
        for subj in subjects:
            sub = await self.nc.subscribe(subj, pending_msgs_limit=pending_msgs_limit,
                                          pending_bytes_limit=pending_bytes_limit)
            if not all(hasattr(sub, a) for a in ("_pending_queue", "_pending_size", "_id")):
                await sub.unsubscribe()
                for other in subs.values():
                    await self.unsubscribe(other)
                if fallback is None:
                    raise RuntimeError("this nats-py has no per-subscription queue to share: pass a fallback")
                log.warning("nats-py without shareable subscription queues: subscribing %s instead", fallback)
                wide = await self.nc.subscribe(fallback, cb=cb, pending_msgs_limit=pending_msgs_limit,
                                               pending_bytes_limit=pending_bytes_limit)
                self._subs.append(wide)
                return [wide]
            own, sub._pending_queue = sub._pending_queue, queue    # nats-py puts each message there
            while not own.empty():                                 # arrived while subscribing
                queue.put_nowait(own.get_nowait())
            subs[sub._id] = sub
            self._subs.append(sub)

        async def reader() -> None:
            while True:
                msg = await queue.get()
                try:
                    sub = subs.get(getattr(msg, "_sid", None))
                    if sub is not None:
                        sub._pending_size -= len(msg.data)
                    await cb(msg)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.handler_errors += 1
                    self._rlog.log(logging.ERROR, "handler:ordered", "handler for %s failed (%d so far): %s",
                                   safe_text(msg.subject, 80), self.handler_errors, safe_text(exc), exc_info=exc)
                finally:
                    queue.task_done()

        task = asyncio.get_running_loop().create_task(reader(), name="ordered-subscription")
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)
        return list(subs.values())

    async def unsubscribe(self, sub: Any) -> None:
        """End a subscription made with ``subscribe`` (messages already queued for it are dropped)."""
        if sub in self._subs:
            self._subs.remove(sub)
        try:
            await sub.unsubscribe()
        except Exception as exc:  # closed or reconnecting connection: the server drops it with the connection
            log.debug("unsubscribe failed: %s", exc)

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
            max_msg_size=s.max_message_bytes,      # what no consumer would read is refused at the door
            storage=StorageType.FILE if s.stream_storage == "file" else StorageType.MEMORY,
            discard=DiscardPolicy.OLD,
            duplicate_window=120.0,
        )

    def dlq_stream_config(self) -> StreamConfig:
        s = self.settings
        return StreamConfig(
            name=s.dlq_stream_name,
            subjects=[all_of(DLQ_KIND)],
            num_replicas=s.stream_replicas,        # dead letters survive a node loss like the records do
            retention=RetentionPolicy.LIMITS,
            max_age=s.stream_max_age_s,
            max_bytes=s.dlq_max_bytes,
            storage=StorageType.FILE if s.stream_storage == "file" else StorageType.MEMORY,
            discard=DiscardPolicy.OLD,
            duplicate_window=120.0,
        )

    async def ensure_stream(self, stop: asyncio.Event | None = None) -> None:
        """Create the streams, or update their limits; retried while NATS is unavailable (until ``stop``).

        Then publishes what an earlier run of this service spooled, in the background.
        """
        assert self.js is not None
        cfgs = (self.stream_config(), self.dlq_stream_config())
        cfg = cfgs[0]
        delay = 0.2
        for _ in range(60):
            try:
                for cfg in cfgs:
                    try:
                        await self.js.stream_info(cfg.name)
                        await self.js.update_stream(cfg)
                    except NotFoundError:
                        await self.js.add_stream(cfg)
                self._start_replay()
                return
            except Exception as exc:
                if stop is not None and stop.is_set():
                    raise RuntimeError(f"JetStream stream {cfg.name} not set up: {exc}") from exc
                self._rlog.warning("stream", "JetStream stream setup failed (%s); retrying", safe_text(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise RuntimeError(f"could not set up JetStream stream {cfg.name}")

    # ------------------------------------------------------------------ spool

    def _start_replay(self) -> None:
        if self.spool is None or self._replay_task is not None or not self.spool.files():
            return
        self._replay_task = asyncio.create_task(self.replay_spool(), name=f"{self.name}-spool-replay")

    async def replay_spool(self) -> int:
        """Publish every spooled message (same message id), deleting each once stored; returns how many."""
        spool = self.spool
        if spool is None:
            return 0
        files = spool.files()
        if files:
            log.info("%s: publishing %d message(s) spooled by an earlier run from %s", self.name, len(files), spool.dir)
        n = 0
        for path in files:
            item = spool.load(path)
            if item is None:
                continue
            subj, headers, body = item
            msg_id = headers.pop("Nats-Msg-Id", None)
            try:
                await self.js_publish(subj, body, msg_id=msg_id, spool=False, headers=headers)
            except Abandoned:
                break      # shutting down again: the file stays for the next start
            spool.remove(path)
            spool.replayed += 1
            n += 1
        if n:
            log.info("%s: %d spooled message(s) published", self.name, n)
        return n

    def stats(self) -> dict[str, Any]:
        """Counters for /metrics: publishing, decoding (shared.codec), dead letters, spool."""
        out: dict[str, Any] = {
            "malformed": self.malformed, "handler_errors": self.handler_errors, "skipped": self.skipped,
            "published": self.published, "publish_retries": self.publish_retries, "reconnects": self.reconnects,
            "dead_lettered": self.dead_lettered, "dead_letter_failures": self.dead_letter_failures,
            "dead_letter_dropped": self.dead_letter_dropped, "slow_consumer_drops": self.slow_consumer_drops,
        }
        out.update({f"decode_{k}": v for k, v in self.decoder.counters.items()})
        if self.spool is not None:
            out.update(self.spool.stats())
        return out
