"""store end to end with real parts: nats-server (JetStream) -> store -> victoria-metrics / InfluxDB 2.

victoria-metrics serves InfluxDB 2's /api/v2/write; each numeric field becomes
a series ``<measurement>_<field>`` with the point's tags.  (This Debian version
stores string fields as 0-valued samples; their text is checked by parsing the
produced line protocol, see test_lineproto.py.)  Where FT_TEST_INFLUX_URL
points at a real InfluxDB 2 (with FT_TEST_INFLUX_TOKEN and FT_TEST_INFLUX_ORG),
the same tests run there too, through Flux queries.

Fault tests count by a unique numeric field (flows' src2dst_bytes = record
number): afterwards every record published is stored exactly once.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
import uuid
from collections import Counter

import pytest

from shared.bus import Bus
from shared.models import Alert, BlockAction, DnsRecord, EventBatch, HttpInfo, TlsInfo, Verdict
from tests.services.store.conftest import (
    BASE_TS,
    InProcessStore,
    flow,
    publish_flows,
    store_settings,
    wait_until,
)

INFLUX_URL = os.environ.get("FT_TEST_INFLUX_URL", "")


class VmBackend:
    name = "victoria-metrics"

    def __init__(self, vm) -> None:
        self.vm = vm
        self.url = vm.url
        self.bucket = "flowtarget"

    def env(self) -> dict[str, str]:
        return {"FT_INFLUX_URL": self.url, "FT_INFLUX_BUCKET": self.bucket}

    def values(self, measurement: str, field: str, probe: str) -> list[float]:
        return self.vm.values(f'{measurement}_{field}{{probe="{probe}"}}')

    def series_tags(self, measurement: str, field: str, probe: str) -> list[dict]:
        out = []
        for s in self.vm.export(f'{measurement}_{field}{{probe="{probe}"}}'):
            tags = dict(s["metric"])
            tags.pop("__name__")
            out.append(tags)
        return out


class InfluxBackend:
    """A real InfluxDB 2; every test writes into a bucket of its own (store creates it)."""

    name = "influxdb2"

    def __init__(self) -> None:
        from influxdb_client import InfluxDBClient

        self.url = INFLUX_URL
        self.token = os.environ.get("FT_TEST_INFLUX_TOKEN", "")
        self.org = os.environ.get("FT_TEST_INFLUX_ORG", "flowtarget")
        self.bucket = f"ft-test-{uuid.uuid4().hex[:8]}"
        self.client = InfluxDBClient(url=self.url, token=self.token, org=self.org)

    def env(self) -> dict[str, str]:
        return {"FT_INFLUX_URL": self.url, "FT_INFLUX_TOKEN": self.token, "FT_INFLUX_ORG": self.org,
                "FT_INFLUX_BUCKET": self.bucket}

    def _tables(self, measurement: str, field: str, probe: str):
        q = (f'from(bucket: "{self.bucket}") |> range(start: 0) '
             f'|> filter(fn: (r) => r._measurement == "{measurement}" and r._field == "{field}" '
             f'and r.probe == "{probe}")')
        try:
            return self.client.query_api().query(q, org=self.org)
        except Exception:
            return []  # bucket not created yet

    def values(self, measurement: str, field: str, probe: str) -> list[float]:
        return [rec.get_value() for t in self._tables(measurement, field, probe) for rec in t.records]

    def series_tags(self, measurement: str, field: str, probe: str) -> list[dict]:
        out = []
        for t in self._tables(measurement, field, probe):
            rec = t.records[0].values
            out.append({k: v for k, v in rec.items() if not k.startswith("_") and k not in ("result", "table")})
        return out

    def close(self) -> None:
        try:
            b = self.client.buckets_api().find_bucket_by_name(self.bucket)
            if b is not None:
                self.client.buckets_api().delete_bucket(b)
        finally:
            self.client.close()


@pytest.fixture(params=["vm", "influx"])
def backend(request, tmp_path):
    if request.param == "influx":
        if not INFLUX_URL:
            pytest.skip("no real InfluxDB 2: set FT_TEST_INFLUX_URL (and FT_TEST_INFLUX_TOKEN, FT_TEST_INFLUX_ORG) "
                        "to run these tests against one; victoria-metrics runs them always")
        b = InfluxBackend()
        yield b
        b.close()
    else:
        vm = request.getfixturevalue("vm_server")
        yield VmBackend(vm)


def exactly_once(values: list[float], n: int) -> tuple[list[int], list[int]]:
    """(missing, duplicated) record numbers."""
    c = Counter(int(v) for v in values)
    return [i for i in range(n) if c[i] == 0], sorted(i for i, k in c.items() if k > 1 or i >= n)


# --------------------------------------------------------------------------- end to end


def test_points_arrive_with_tags_and_values(nats_server, backend, tmp_path):
    probe = "e2e"
    out_dir = tmp_path / "jsonl"

    async def go():
        env = backend.env()
        settings = store_settings(nats_server.url, env["FT_INFLUX_URL"], influx_bucket=backend.bucket,
                                  influx_token=env.get("FT_INFLUX_TOKEN", ""), influx_org=env.get("FT_INFLUX_ORG",
                                                                                                   "flowtarget"),
                                  out_dir=out_dir, line_protocol_file=True)
        bus = await Bus.connect(settings, "e2e-publisher")
        await bus.ensure_stream()
        # 40 flows with start/end records, one batch per 10 flows
        for k in range(0, 40, 10):
            evs = []
            for i in range(k, k + 10):
                evs.append(flow(i, probe=probe, phase="start"))
                evs.append(flow(i, probe=probe, app="HTTP" if i % 2 else "TLS"))
            await bus.js_publish(f"ft.flow.{probe}", EventBatch(events=evs))
        # short unknown flow: counted, not logged; long busy unknown flow: logged
        await bus.js_publish(f"ft.flow.{probe}", EventBatch(events=[
            flow(100, probe=probe, app="Unknown", category="", duration_ms=500.0),
            flow(41, probe=probe, app="Unknown", category="", duration_ms=30_000.0, src2dst_packets=100)]))
        await bus.js_publish(f"ft.dns.{probe}", DnsRecord(
            timestamp=BASE_TS, probe=probe, flow_id="d", transport="UDP", transaction_id=4242, is_response=True,
            query_name="x.example", query_type="AAAA", rcode="NXDOMAIN"))
        # the best verdict of a flow travels with its end record (see shared.subjects.STORED_KINDS)
        await bus.js_publish(f"ft.flow.{probe}", EventBatch(events=[Verdict(
            timestamp=BASE_TS, probe=probe, flow_id="v", transport="TCP", app_protocol="HTTP",
            http=HttpInfo(host="h.example", url="/x\ny", status_code=404), tls=TlsInfo(sni="s.example"))]))
        await bus.js_publish(f"ft.alert.port_scan.{probe}", Alert(
            timestamp=BASE_TS, probe=probe, alert_id="a", alert_type="port_scan", severity="high",
            first_seen=BASE_TS, last_seen=BASE_TS, count=17))
        await bus.js_publish(f"ft.block.{probe}", BlockAction(
            timestamp=BASE_TS, probe=probe, flow_id="b", rule_id="r", action="reset", outcome="won", attempts=3))
        # malformed: a whole message, and one bad event in an otherwise good batch
        await bus.nc.publish(f"ft.flow.{probe}", b'{"event_type": "flow", "oops": 1}')
        good = json.loads(EventBatch(events=[flow(42, probe=probe)]).model_dump_json())
        good["events"].append({"event_type": "flow", "probe": probe, "bad": True})
        await bus.js_publish(f"ft.flow.{probe}", json.dumps(good).encode())
        await bus.nc.flush()

        store = await InProcessStore(settings).start()
        try:
            ok = await wait_until(lambda: len(backend.values("flows", "src2dst_bytes", probe)) >= 42, 30)
            assert ok, f"only {len(backend.values('flows', 'src2dst_bytes', probe))} flows stored"
            await wait_until(lambda: store.metrics.consumer_lag == 0 and store.metrics.acked >= 10, 10)
            await asyncio.sleep(0.5)
        finally:
            await store.close()
            await bus.close()
        return store.metrics

    m = asyncio.run(go())
    # one flows point per flow: start records and the short unknown flow are not stored
    values = backend.values("flows", "src2dst_bytes", probe)
    expected = list(range(40)) + [41, 42]
    assert sorted(int(v) for v in values) == expected
    assert set(backend.values("flows", "dst2src_bytes", probe)) == {9000}
    assert set(backend.values("flows", "duration_ms", probe)) == {2000.0, 30000.0}
    tags = backend.series_tags("flows", "src2dst_bytes", probe)
    assert sorted((t["app_protocol"], t.get("category", "")) for t in tags) == [
        ("HTTP", "Web"), ("TLS", "Web"), ("Unknown", "")]
    assert all(t["probe"] == probe and t["transport"] == "TCP" and set(t) <= {
        "probe", "transport", "app_protocol", "category"} for t in tags)
    assert backend.values("dns", "transaction_id", probe) == [4242]
    assert backend.series_tags("dns", "transaction_id", probe)[0]["rcode"] == "NXDOMAIN"
    assert backend.values("http", "status_code", probe) == [404]
    assert backend.values("alerts", "count", probe) == [17]
    assert backend.series_tags("alerts", "count", probe)[0]["alert_type"] == "port_scan"
    assert backend.values("blocks", "attempts", probe) == [3]
    assert backend.series_tags("blocks", "attempts", probe)[0]["outcome"] == "won"
    # counters
    assert m.malformed_messages == 1 and m.malformed_events == 1
    assert m.unlogged_flows == 1 and m.unlogged_packets == 12
    assert m.points_by_measurement["flows"] == 42 and m.points_written == 42 + 5
    # the JSON-lines sink got exactly the same records
    flows = [json.loads(x) for x in (out_dir / "flows.jsonl").read_text().splitlines()]
    assert sorted(r["src2dst_bytes"] for r in flows) == expected
    http = [json.loads(x) for x in (out_dir / "http.jsonl").read_text().splitlines()]
    assert http[0]["url"] == "/x\\x0ay" and http[0]["status_code"] == 404
    assert len((out_dir / "points.lp").read_text().splitlines()) == 47


# --------------------------------------------------------------------------- faults

N_FAULT = 6000  # records; 100 per message, published over ~12 s


@pytest.mark.slow
def test_victoria_metrics_down_for_10s_mid_stream(nats_server, vm_server):
    backend = VmBackend(vm_server)
    probe = "vmdown"

    async def go():
        settings = store_settings(nats_server.url, vm_server.url)
        pub = await Bus.connect(settings, "publisher")
        store = await InProcessStore(settings).start()
        try:
            publishing = asyncio.create_task(publish_flows(pub, range(N_FAULT), pause_s=0.2, probe=probe))
            assert await wait_until(lambda: len(backend.values("flows", "src2dst_bytes", probe)) > 300, 20)
            await asyncio.to_thread(vm_server.stop)
            down_at = time.monotonic()
            await asyncio.sleep(10)
            # nothing acknowledged while the database was down: the messages wait in the stream
            acked_while_down = store.metrics.acked
            await asyncio.sleep(0.5)
            assert store.metrics.acked == acked_while_down
            await asyncio.to_thread(vm_server.start)
            assert time.monotonic() - down_at >= 10
            await publishing
            ok = await wait_until(lambda: len(backend.values("flows", "src2dst_bytes", probe)) >= N_FAULT, 60, 1.0)
            await asyncio.sleep(1.0)
            return ok, store.metrics
        finally:
            await store.close()
            await pub.close()

    ok, m = asyncio.run(go())
    missing, dup = exactly_once(backend.values("flows", "src2dst_bytes", probe), N_FAULT)
    assert not missing and not dup, f"missing {missing[:10]}... ({len(missing)}), duplicated {dup[:10]}"
    assert ok
    assert m.retries > 0 and m.write_errors > 0
    # the messages were kept ("in progress") through the 10 s outage, not redelivered meanwhile.
    # Without the keepalive every message in flight during the outage (~50 at one per 0.2 s) would come
    # back after the 10 s ack wait. One stray redelivery can happen without any fault: a pull request
    # that times out on the client just as messages arrive leaves them for redelivery (seen once in a
    # loaded CI run); those land on the same points, as the exactly-once check above shows.
    assert m.redelivered <= 2, m


@pytest.mark.slow
def test_store_sigkill_mid_stream_and_restart(nats_server, backend, store_process):
    probe = "sigkill"
    env = {"FT_NATS_URL": nats_server.url, "FT_RETRY_MAX_S": "1", "FT_FLUSH_INTERVAL_S": "0.2",
           "FT_BATCH_SIZE": "1000", "FT_LOG_LEVEL": "INFO", **backend.env()}

    async def go():
        settings = store_settings(nats_server.url)
        pub = await Bus.connect(settings, "publisher")
        await pub.ensure_stream()
        proc = store_process(env)
        proc.start()
        try:
            publishing = asyncio.create_task(publish_flows(pub, range(N_FAULT), pause_s=0.15, probe=probe))
            assert await wait_until(lambda: len(backend.values("flows", "src2dst_bytes", probe)) > 1000, 30)
            proc.kill()  # SIGKILL: no drain, no final flush, batches in flight unacknowledged
            await asyncio.sleep(1.0)
            stored_at_kill = len(backend.values("flows", "src2dst_bytes", probe))
            assert stored_at_kill < N_FAULT
            proc.start()
            await publishing
            ok = await wait_until(lambda: len(backend.values("flows", "src2dst_bytes", probe)) >= N_FAULT, 60, 1.0)
            await asyncio.sleep(1.0)
            return ok, await asyncio.to_thread(proc.terminate)
        finally:
            await pub.close()

    ok, exit_code = asyncio.run(go())
    assert exit_code == 0  # SIGTERM: drained and stopped cleanly
    missing, dup = exactly_once(backend.values("flows", "src2dst_bytes", probe), N_FAULT)
    assert not missing and not dup, f"missing {missing[:10]}... ({len(missing)}), duplicated {dup[:10]}"
    assert ok


@pytest.mark.slow
def test_nats_server_restart_mid_stream(nats_server, backend):
    probe = "natsrestart"

    async def go():
        env = backend.env()
        settings = store_settings(nats_server.url, env["FT_INFLUX_URL"], influx_bucket=backend.bucket,
                                  influx_token=env.get("FT_INFLUX_TOKEN", ""),
                                  influx_org=env.get("FT_INFLUX_ORG", "flowtarget"))
        pub = await Bus.connect(settings, "publisher")
        store = await InProcessStore(settings).start()
        try:
            publishing = asyncio.create_task(publish_flows(pub, range(N_FAULT), pause_s=0.15, probe=probe))
            assert await wait_until(lambda: len(backend.values("flows", "src2dst_bytes", probe)) > 1000, 30)
            await asyncio.to_thread(nats_server.restart, 1.0)
            await publishing
            ok = await wait_until(lambda: len(backend.values("flows", "src2dst_bytes", probe)) >= N_FAULT, 60, 1.0)
            await asyncio.sleep(1.0)
            return ok, store.bus.reconnects if store.bus else 0
        finally:
            await store.close()
            await pub.close()

    ok, reconnects = asyncio.run(go())
    missing, dup = exactly_once(backend.values("flows", "src2dst_bytes", probe), N_FAULT)
    assert not missing and not dup, f"missing {missing[:10]}... ({len(missing)}), duplicated {dup[:10]}"
    assert ok and reconnects >= 1


def test_hostile_tag_values_do_not_inject_into_victoria_metrics(vm_server):
    """A tag value with newline, comma, space, '=' and quotes stays one tag value of one point."""
    from services.store.lineproto import Point, represent, to_lines

    hostile = 'x\nflows,probe=inj src2dst_bytes=666i 1\n,a=b c"d\\'
    pts = [Point("flows", (("probe", "hostile"), ("category", hostile)), {"src2dst_bytes": 7, "host": hostile},
                 1_600_000_000_000_000_000)]
    req = urllib.request.Request(f"{vm_server.url}/api/v2/write?precision=ns", data=to_lines(pts).encode(),
                                 method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 204
    series = vm_server.export('{__name__=~"flows_.*"}')
    by_name = {s["metric"]["__name__"]: s for s in series}
    assert "flows_src2dst_bytes" in by_name and set(by_name) <= {"flows_src2dst_bytes", "flows_host"}
    assert by_name["flows_src2dst_bytes"]["values"] == [7]
    assert by_name["flows_src2dst_bytes"]["metric"]["category"] == represent(hostile)
    assert not vm_server.export('{probe="inj"}')


def test_replicas_share_the_durable_consumer(nats_server, vm_server):
    """Two store replicas: each message is written by one of them; every record stored once."""
    backend = VmBackend(vm_server)
    probe = "replicas"
    n = 4000

    async def go():
        settings = store_settings(nats_server.url, vm_server.url, batch_size=300)
        pub = await Bus.connect(settings, "publisher")
        await pub.ensure_stream()
        a = await InProcessStore(settings).start()
        b = await InProcessStore(settings).start()
        try:
            await publish_flows(pub, range(n), per_msg=50, pause_s=0.02, probe=probe)
            ok = await wait_until(lambda: len(backend.values("flows", "src2dst_bytes", probe)) >= n, 30)
            return ok, a.metrics, b.metrics
        finally:
            await a.close()
            await b.close()
            await pub.close()

    ok, ma, mb = asyncio.run(go())
    missing, dup = exactly_once(backend.values("flows", "src2dst_bytes", probe), n)
    assert ok and not missing and not dup
    assert ma.points_written > 0 and mb.points_written > 0
    assert ma.points_written + mb.points_written == n  # no message went to both
