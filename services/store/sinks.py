"""Where points go: InfluxDB 2 (influxdb-client) and JSON-lines files.

Every sink has ``start()``, ``write(points)`` (raises on failure; the caller
retries and does not acknowledge) and ``close()``.  ``write`` runs blocking
I/O in a worker thread so the event loop keeps serving NATS.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import threading
from pathlib import Path
from typing import Protocol

import orjson

from services.store.lineproto import Point, to_line, to_lines, to_record

log = logging.getLogger("flowtarget.store.sinks")


class SinkError(RuntimeError):
    pass


class Sink(Protocol):
    name: str

    async def start(self) -> None: ...

    async def write(self, points: list[Point]) -> None: ...

    async def close(self) -> None: ...


# --------------------------------------------------------------------------- InfluxDB 2


class InfluxSink:
    """InfluxDB 2 ``/api/v2/write`` through influxdb-client, line-protocol batches, gzip.

    Batches of ``batch_size`` lines go in one request each, gzip-compressed at
    level 1 (the client's own gzip uses level 9: ~65 MB/s against ~770 MB/s
    here, for 10 % less size), so the body is compressed here and sent with
    ``Content-Encoding: gzip`` through the client's WriteService.  The client
    does no retries of its own: the store retries whole batches, unacked.
    victoria-metrics serves the same write endpoint but no bucket API: a
    failing bucket lookup is logged and tolerated.
    """

    name = "influx"

    def __init__(self, url: str, token: str, org: str, bucket: str, create_bucket: bool = True,
                 batch_size: int = 5000, timeout_s: float = 30.0, gzip_level: int = 1) -> None:
        self.url = url
        self.token = token
        self.org = org
        self.bucket = bucket
        self.create_bucket = create_bucket
        self.batch_size = max(1, batch_size)
        self.timeout_s = timeout_s
        self.gzip_level = gzip_level
        self._client = None
        self._write_service = None
        self.bucket_api_available: bool | None = None
        self.bytes_sent = 0
        self.rejected_points = 0  # points the server refused as bad, dropped after isolating them

    async def start(self) -> None:
        from influxdb_client import InfluxDBClient
        from influxdb_client.service.write_service import WriteService

        self._client = InfluxDBClient(url=self.url, token=self.token or None, org=self.org,
                                      timeout=int(self.timeout_s * 1000), enable_gzip=False)
        self._write_service = WriteService(self._client.api_client)
        if self.create_bucket:
            await asyncio.to_thread(self._ensure_bucket)

    def _ensure_bucket(self) -> None:
        assert self._client is not None
        try:
            buckets = self._client.buckets_api()
            if buckets.find_bucket_by_name(self.bucket) is not None:
                self.bucket_api_available = True
                return
            orgs = self._client.organizations_api().find_organizations(org=self.org)
            if not orgs:
                log.warning("InfluxDB org %r not found: bucket %r not created", self.org, self.bucket)
                return
            buckets.create_bucket(bucket_name=self.bucket, org_id=orgs[0].id)
            self.bucket_api_available = True
            log.info("created InfluxDB bucket %r in org %r", self.bucket, self.org)
        except Exception as exc:  # victoria-metrics (no bucket API), no permission, server down
            self.bucket_api_available = False
            log.warning("InfluxDB bucket check/creation not possible (%s); writing to %r anyway",
                        str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__, self.bucket)

    def _post(self, body: bytes) -> None:
        assert self._write_service is not None
        data = gzip.compress(body, compresslevel=self.gzip_level) if self.gzip_level else body
        kwargs = {"content_encoding": "gzip"} if self.gzip_level else {}
        self._write_service.post_write(org=self.org, bucket=self.bucket, body=data, precision="ns",
                                       content_type="text/plain; charset=utf-8", **kwargs)
        self.bytes_sent += len(data)

    def _post_lines(self, lines: list[str]) -> None:
        """POST lines; a request the server refuses as bad (400/413/422) is split in halves
        until the bad points are isolated: those are counted and dropped, the rest written.

        Such a refusal cannot be cured by waiting (a field type conflict, a point the server
        rejects, a body too large); retrying the whole batch forever would stop the store.
        InfluxDB writes the good lines of a partially bad request, so re-sending them in the
        halves only overwrites them.  Other errors (connection, 5xx, 401/403/404, 429) raise:
        the store retries the batch later.
        """
        from influxdb_client.rest import ApiException

        body = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
        try:
            self._post(body)
        except ApiException as exc:
            if exc.status not in (400, 413, 422):
                raise
            if len(lines) == 1:
                self.rejected_points += 1
                if self.rejected_points <= 10 or self.rejected_points % 1000 == 0:
                    reason = str(getattr(exc, "body", "") or exc).splitlines()
                    log.warning("InfluxDB refused a point (HTTP %s, %d so far): %s", exc.status,
                                self.rejected_points, reason[0][:300] if reason else "")
                return
            half = len(lines) // 2
            self._post_lines(lines[:half])
            self._post_lines(lines[half:])

    def _post_all(self, chunks: list[list[str]]) -> None:
        for lines in chunks:
            self._post_lines(lines)

    async def write(self, points: list[Point]) -> None:
        if not points:
            return
        # rendering is pure Python (holds the GIL): do it here, not in the thread, so the
        # thread only encodes, compresses and waits on the socket (the last two release the GIL)
        lines = list(map(to_line, points))
        chunks = [lines[i:i + self.batch_size] for i in range(0, len(lines), self.batch_size)]
        try:
            await asyncio.to_thread(self._post_all, chunks)
        except Exception as exc:
            status = getattr(exc, "status", None)
            reason = (getattr(exc, "body", None) or str(exc) or type(exc).__name__)
            raise SinkError(f"InfluxDB write failed{f' (HTTP {status})' if status else ''}: "
                            f"{str(reason).splitlines()[0][:300] if str(reason) else ''}") from exc

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


# --------------------------------------------------------------------------- JSON lines

MEASUREMENTS = ("flows", "flow_updates", "dns", "http", "tls", "ssh", "alerts", "blocks")


def record_json(rec: dict) -> str:
    """One JSON-lines record: orjson (a fifth of json.dumps' cost, issue 12), the same document as
    ``json.dumps(rec, ensure_ascii=False)``; json writes what orjson refuses (a lone surrogate)."""
    try:
        return orjson.dumps(rec).decode()
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(rec, ensure_ascii=False)


def record_bytes(rec: dict) -> bytes:
    """``record_json(rec)`` as the file holds it (UTF-8, a lone surrogate as its surrogatepass bytes),
    without decoding orjson's bytes to text and encoding them again."""
    try:
        return orjson.dumps(rec)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(rec, ensure_ascii=False).encode("utf-8", "surrogatepass")


class JsonlSink:
    """One JSON-lines file per measurement in a directory, plus optional ``points.lp``.

    Each line is exactly the point InfluxDB gets (``lineproto.to_record``):
    ``time_ns``, the tags, the fields.  Files are appended and flushed +
    fsynced after every batch before the batch is acknowledged.  A redelivered
    batch (store killed between write and ack) appears again here: unlike
    InfluxDB, appending files cannot overwrite a point; readers can drop
    repeats by (measurement, tags, time_ns).
    """

    name = "jsonl"

    def __init__(self, out_dir: Path | str, line_protocol: bool = False, fsync: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.line_protocol = line_protocol
        self.fsync = fsync
        self._files: dict[str, object] = {}
        self._lock = threading.Lock()  # batches may be written from two threads at once

    async def start(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for m in MEASUREMENTS:
            self._file(m)
        if self.line_protocol:
            self._file("points", ".lp")

    def _file(self, name: str, suffix: str = ".jsonl"):
        f = self._files.get(name + suffix)
        if f is None:
            # binary: lines are UTF-8 bytes already (orjson), text as if written through
            # encoding="utf-8", errors="surrogatepass"
            f = open(self.out_dir / f"{name}{suffix}", "ab")
            self._files[name + suffix] = f
        return f

    def _render(self, points: list[Point]) -> tuple[dict[str, bytes], bytes | None]:
        """The bytes each file gets: JSON lines per measurement, line protocol when asked."""
        by_meas: dict[str, list[bytes]] = {}
        for p in points:
            lines = by_meas.get(p.measurement)
            if lines is None:
                lines = by_meas[p.measurement] = []
            lines.append(record_bytes(to_record(p)))
        out = {}
        for m, lines in by_meas.items():
            lines.append(b"")
            out[m] = b"\n".join(lines)
        lp = to_lines(points).encode("utf-8", "surrogatepass") if self.line_protocol else None
        return out, lp

    def _write_blocking(self, rendered: tuple[dict[str, bytes], bytes | None]) -> None:
        with self._lock:
            self._write_locked(rendered)

    def _write_locked(self, rendered: tuple[dict[str, bytes], bytes | None]) -> None:
        by_meas, lp = rendered
        touched = []
        for m, data in by_meas.items():
            f = self._file(m)
            f.write(data)
            touched.append(f)
        if lp is not None:
            f = self._file("points", ".lp")
            f.write(lp)
            touched.append(f)
        for f in touched:
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())

    async def write(self, points: list[Point]) -> None:
        if not points:
            return
        # rendering is pure Python (holds the GIL): done here, as InfluxSink does, so the thread only
        # writes and fsyncs (GIL released) instead of taking turns for the GIL with the event loop
        rendered = self._render(points)
        try:
            await asyncio.to_thread(self._write_blocking, rendered)
        except OSError as exc:
            raise SinkError(f"writing JSON lines into {self.out_dir} failed: {exc}") from exc

    async def close(self) -> None:
        for f in self._files.values():
            try:
                f.close()
            except OSError:
                pass
        self._files.clear()


class EveSink:
    """``eve.json`` in a directory: Suricata eve.json-compatible lines (``services/store/eve.py``).

    Appended, flushed and fsynced after every batch before it is acknowledged, like
    ``JsonlSink``; a batch redelivered after a crash appears twice.
    """

    name = "eve"

    def __init__(self, out_dir: Path | str, fsync: bool = True) -> None:
        from services.store.eve import EveWriter

        self.out_dir = Path(out_dir)
        self.fsync = fsync
        self.writer = EveWriter()
        self._f = None
        self._lock = threading.Lock()

    async def start(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._f = open(self.out_dir / "eve.json", "a", encoding="utf-8", errors="surrogatepass")

    def _write_blocking(self, points: list[Point]) -> None:
        line = self.writer.line
        lines = [x for x in map(line, points) if x is not None]
        with self._lock:
            if self._f is None:
                raise OSError("eve sink is closed")
            if lines:
                self._f.write("\n".join(lines) + "\n")
                self._f.flush()
                if self.fsync:
                    os.fsync(self._f.fileno())

    async def write(self, points: list[Point]) -> None:
        if not points:
            return
        try:
            await asyncio.to_thread(self._write_blocking, points)
        except OSError as exc:
            raise SinkError(f"writing eve.json into {self.out_dir} failed: {exc}") from exc

    async def close(self) -> None:
        if self._f is not None:
            try:
                self._f.close()
            except OSError:
                pass
            self._f = None


def sinks_from_settings(settings) -> list:
    """The sinks a StoreSettings asks for (InfluxDB when FT_INFLUX_URL, files when FT_OUT_DIR in
    FT_OUT_FORMAT: jsonl or eve)."""
    sinks: list = []
    if settings.influx_url:
        sinks.append(InfluxSink(
            url=settings.influx_url, token=settings.influx_token.get_secret_value(), org=settings.influx_org,
            bucket=settings.influx_bucket, create_bucket=settings.influx_create_bucket,
            batch_size=settings.batch_size,
        ))
    if settings.out_dir is not None:
        if getattr(settings, "out_format", "jsonl") == "eve":
            sinks.append(EveSink(settings.out_dir))
        else:
            sinks.append(JsonlSink(settings.out_dir, line_protocol=settings.line_protocol_file))
    return sinks
