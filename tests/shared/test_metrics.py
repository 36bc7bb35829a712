"""shared.metrics: registered stats become Prometheus families; /healthz follows NATS and readiness."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared import metrics
from shared.bus import Bus
from shared.metrics import flatten, is_gauge, metric_name, register_stats, set_ready, start_metrics_server
from shared.settings import CommonSettings
from flowtarget.embedded import free_port


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_names_kinds_and_flattening():
    assert metric_name("flowtarget", "capture", "bad key-1") == "flowtarget_capture_bad_key_1"
    assert is_gauge("flows_active") and is_gauge("consumer_lag") and is_gauge("points_per_s")
    assert not is_gauge("packets") and not is_gauge("rate_limited") and not is_gauge("incidents_opened")
    assert is_gauge("anything", gauges=("anything",))
    assert flatten({"a": 1, "b": {"c": 2, "d": "text"}, "e": None, "f": True, "g": float("nan")}) == \
        {"a": 1.0, "b_c": 2.0, "f": 1.0}


def test_endpoint_metrics_and_health(nats_server):
    async def scenario() -> None:
        port = free_port()
        settings = CommonSettings(nats_url=nats_server.url, probe="p7", metrics_port=port, metrics_addr="127.0.0.1")
        bus = await Bus.connect(settings, "unit")
        counters = {"packets": 0, "flows_active": 0, "counters": {"samples_sent": 0}}
        register_stats("unit", lambda: counters)
        register_stats("broken", lambda: 1 / 0)
        server = start_metrics_server(settings, "unit", bus)
        assert server is not None
        try:
            counters.update(packets=41, flows_active=3)
            counters["counters"]["samples_sent"] = 5
            bus.published += 2
            status, body = await asyncio.to_thread(_get, server.url + "/metrics")
            assert status == 200
            fam = _families(body.decode())
            pk = fam["flowtarget_unit_packets"]
            assert pk.type == "counter"
            assert pk.samples[0].value == 41 and pk.samples[0].labels == {"service": "unit", "probe": "p7"}
            assert fam["flowtarget_unit_flows_active"].type == "gauge"
            assert fam["flowtarget_unit_counters_samples_sent"].samples[0].value == 5
            assert fam["flowtarget_bus_published"].samples[0].value == 2
            assert fam["flowtarget_nats_connected"].samples[0].value == 1
            assert fam["flowtarget_metrics_stats_errors"].samples[0].value >= 1  # "broken" counted, not fatal

            status, body = await asyncio.to_thread(_get, server.url + "/healthz")
            assert status == 200 and json.loads(body)["healthy"] is True
            set_ready(False)
            status, body = await asyncio.to_thread(_get, server.url + "/healthz")
            assert status == 503 and json.loads(body)["ready"] is False
            set_ready(True)
            nats_server.stop()
            for _ in range(100):
                if not bus.connected:
                    break
                await asyncio.sleep(0.05)
            status, body = await asyncio.to_thread(_get, server.url + "/healthz")
            assert status == 503 and json.loads(body)["nats_connected"] is False
            # the container health check command agrees
            code = await asyncio.to_thread(metrics.check, server.port, "127.0.0.1")
            assert code == 1
            nats_server.start()
            for _ in range(200):
                if bus.connected:
                    break
                await asyncio.sleep(0.05)
            assert await asyncio.to_thread(metrics.check, server.port, "127.0.0.1") == 0
        finally:
            server.close()
            metrics.unregister_stats("unit")
            metrics.unregister_stats("broken")
            metrics.STATE.ready = None
            await bus.close()
        # closed: nothing listens any more
        with pytest.raises(OSError):
            urllib.request.urlopen(server.url + "/healthz", timeout=1)

    asyncio.run(scenario())


def test_port_zero_means_off():
    assert start_metrics_server(CommonSettings(metrics_port=0), "x") is None
