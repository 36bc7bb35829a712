"""InfluxSink against a minimal /api/v2/write stub: gzip body, bad points isolated, errors raised.

(The real write path is tested against victoria-metrics in test_store_e2e.py; this stub only
plays an InfluxDB that refuses some points with 400, which victoria-metrics never does.)
"""

from __future__ import annotations

import asyncio
import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from services.store.lineproto import Point, parse_lines
from services.store.sinks import InfluxSink, SinkError


class _Stub:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.requests = 0
        self.status_for_all: int | None = None
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                stub.requests += 1
                body = self.rfile.read(int(self.headers["Content-Length"]))
                assert self.headers.get("Content-Encoding") == "gzip"
                assert "precision=ns" in self.path and "bucket=b" in self.path
                text = gzip.decompress(body).decode()
                if stub.status_for_all:
                    self.send_response(stub.status_for_all)
                    self.end_headers()
                    return
                if "poison" in text:
                    # like InfluxDB's partial write: good lines stored, 400 for the request
                    stub.lines += [x for x in text.splitlines() if "poison" not in x]
                    msg = b'{"code":"invalid","message":"partial write: field type conflict"}'
                    self.send_response(400)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                stub.lines += text.splitlines()
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    s = _Stub()
    yield s
    s.close()


def _points(n: int, poison: set[int] = frozenset()) -> list[Point]:
    return [Point("flows", (("probe", "p"),), {"n": i, "host": "poison" if i in poison else "ok"}, 1000 + i)
            for i in range(n)]


def test_batches_are_gzipped_and_bad_points_isolated(stub):
    sink = InfluxSink(stub.url, "", "o", "b", create_bucket=False, batch_size=16)

    async def go():
        await sink.start()
        await sink.write(_points(40, poison={3, 27}))
        await sink.close()

    asyncio.run(go())
    stored = sorted(p.fields["n"] for p in parse_lines("\n".join(stub.lines)))
    # every good point stored (some twice: re-sent halves overwrite in InfluxDB), the 2 bad ones dropped
    assert sorted(set(stored)) == [i for i in range(40) if i not in (3, 27)]
    assert sink.rejected_points == 2


def test_server_errors_raise_for_a_retry(stub):
    sink = InfluxSink(stub.url, "", "o", "b", create_bucket=False)
    stub.status_for_all = 503

    async def go():
        await sink.start()
        try:
            with pytest.raises(SinkError, match="503"):
                await sink.write(_points(3))
        finally:
            await sink.close()

    asyncio.run(go())
    assert sink.rejected_points == 0 and stub.requests == 1


def test_record_json_is_the_document_json_dumps_writes():
    """The JSON-lines sink writes with orjson (issue 12): the same document as json.dumps(ensure_ascii=False);
    what orjson refuses (a lone surrogate, an int past 64 bits) still goes out through json."""
    import json

    from services.store.sinks import record_json

    recs = [{"time_ns": 1700000000123456789, "host": "münchen.example", "rtt_ms": 0.1 + 0.2, "n": -3, "ok": True,
             "answers": [{"name": "a\u2028b", "ttl_s": 60}], "q": 'quote " and \\ back'},
            {"time_ns": 1, "bad": "\ud800x"},
            {"time_ns": 2, "big": 2**70}]
    for rec in recs:
        line = record_json(rec)
        assert "\n" not in line
        assert json.loads(line) == json.loads(json.dumps(rec, ensure_ascii=False))
