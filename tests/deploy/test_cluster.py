"""FlowTarget on a 3-node JetStream cluster (real nats-servers on loopback, an R3 stream):
a replay through ``flowtarget run --nats URL1,URL2,URL3`` while one node, then the
stream's leader, is killed (SIGKILL) and restarted stores every flow record exactly once."""

from __future__ import annotations

import signal
import time

import pytest

from flowtarget.embedded import EmbeddedCluster, EmbeddedNats
from shared.bus import Bus
from shared.settings import CommonSettings
from tests.deploy.clusterlab import build_replay, flow_ids, flow_keys, lines, start_run, stream_info, stream_leader, wait_until

# --------------------------------------------------------------------------- settings (fast)


def test_replicas_and_sources_settings_shape_the_stream():
    s = CommonSettings(nats_url="nats://a:4222, nats://b:4222,nats://c:4222", stream_replicas=3)
    assert s.nats_servers == ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
    cfg = Bus(s, "t").stream_config()
    assert cfg.num_replicas == 3 and cfg.subjects and not cfg.sources
    # the central aggregate of leaf probes: sources, no subjects of its own
    s = CommonSettings(stream_sources="branch-1, branch-2", stream_replicas=3)
    cfg = Bus(s, "t").stream_config()
    assert cfg.subjects is None
    assert [(x.name, x.external.api) for x in cfg.sources] == [
        ("FLOWTARGET", "$JS.branch-1.API"), ("FLOWTARGET", "$JS.branch-2.API")]


@pytest.mark.parametrize("field, value", [("stream_replicas", 0), ("stream_replicas", 7), ("kv_replicas", 0),
                                          ("js_domain", "a.b"), ("stream_sources", "ok,bad domain")])
def test_bad_cluster_settings_are_refused(field, value):
    with pytest.raises(ValueError):
        CommonSettings(**{field: value})


def test_env_variables(monkeypatch):
    monkeypatch.setenv("FT_STREAM_REPLICAS", "3")
    monkeypatch.setenv("FT_KV_REPLICAS", "3")
    monkeypatch.setenv("FT_JS_DOMAIN", "hub")
    monkeypatch.setenv("FT_STREAM_SOURCES", "p1,p2")
    s = CommonSettings()
    assert (s.stream_replicas, s.kv_replicas, s.js_domain, s.source_domains) == (3, 3, "hub", ["p1", "p2"])


# --------------------------------------------------------------------------- the cluster (slow)


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    return build_replay(tmp_path_factory.mktemp("replay") / "replay.pcap")


@pytest.fixture(scope="module")
def baseline(replay, tmp_path_factory):
    """Flow ids of the same replay through one nats-server, nothing killed."""
    d = tmp_path_factory.mktemp("baseline")
    with EmbeddedNats(store_dir=str(d / "nats")) as server:
        proc = start_run(replay, server.url, d / "out", d / "run.log")
        assert proc.wait(300) == 0, (d / "run.log").read_text()[-3000:]
    ids, keys = flow_ids(d / "out"), flow_keys(d / "out")
    assert ids and max(ids.values()) == 1 and sum(keys.values()) == len(ids)
    return keys


@pytest.mark.slow
def test_client_fails_over_between_the_listed_servers(tmp_path, monkeypatch):
    """A Bus given three URLs keeps publishing to the R3 stream while the server it uses dies;
    the rules and rule-statistics buckets get FT_KV_REPLICAS copies."""
    import asyncio

    node = None
    with EmbeddedCluster(3, base_dir=str(tmp_path)) as cluster:
        async def go():
            bus = await Bus.connect(CommonSettings(nats_url=cluster.url, stream_replicas=3), "t")
            await bus.ensure_stream()
            first = bus.nc.connected_url.port
            await bus.js_publish("ft.flow.t", b'{"x":1}')
            nonlocal node
            node = next(n for n in cluster.nodes if n.port == first)
            node.kill()
            for i in range(20):
                await bus.js_publish("ft.flow.t", b'{"x":%d}' % i, max_wait_s=30)
            assert bus.nc.connected_url.port != first and bus.reconnects >= 1
            si = await bus.js.stream_info("FLOWTARGET")
            await bus.close()
            return si

        si = asyncio.run(go())
        node.start()
        cluster.wait_jetstream()
        assert si.state.messages == 21 and si.config.num_replicas == 3

        async def kv():
            from services.block.rules import open_bucket

            bus = await Bus.connect(CommonSettings(nats_url=cluster.url), "t")
            try:
                from services.block.stats import open_stats_bucket

                await open_bucket(bus.js, "ft_rules")          # FT_KV_REPLICAS from the environment
                await open_stats_bucket(bus.js, "ft_rule_stats")
                return [await bus.js.stream_info(f"KV_{b}") for b in ("ft_rules", "ft_rule_stats")]
            finally:
                await bus.close()

        monkeypatch.setenv("FT_KV_REPLICAS", "3")
        assert [si.config.num_replicas for si in asyncio.run(kv())] == [3, 3]


@pytest.mark.slow
def test_r3_stream_node_then_leader_killed_every_flow_stored_once(replay, baseline, tmp_path):
    with EmbeddedCluster(3, base_dir=str(tmp_path / "cluster")) as cluster:
        out, log = tmp_path / "out", tmp_path / "run.log"
        proc = start_run(replay, cluster.url, out, log, env={"FT_STREAM_REPLICAS": "3"})
        try:
            # the replay is under way once store wrote its first flows
            wait_until(lambda: lines(out / "flows.jsonl") > 0 or proc.poll() is not None, 120, "first flows stored")
            first_at = time.monotonic()
            leader = stream_leader(cluster.url)
            assert stream_info(cluster.url).config.num_replicas == 3
            # 1. a node that is not the stream leader
            victim = next(i for i in range(3) if cluster.server_name(i) != leader)
            cluster.nodes[victim].kill()
            time.sleep(3)
            cluster.nodes[victim].start()
            time.sleep(2)
            # 2. the stream leader itself
            leader = stream_leader(cluster.url)
            li = cluster.index_of(leader)
            cluster.nodes[li].stop(signal.SIGKILL)
            new_leader = stream_leader(cluster.url)
            time.sleep(2)
            assert proc.poll() is None, (f"the replay ended before the leader was killed ({time.monotonic() - first_at:.1f} s "
                                         f"after the first flows were stored): raise FT_TEST_REPLAY_S")
            cluster.nodes[li].start()
            assert new_leader != leader
            assert proc.wait(300) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
        ids = flow_ids(out)
        dup = {k: v for k, v in ids.items() if v > 1}
        assert not dup, f"{len(dup)} flows stored more than once, e.g. {list(dup.items())[:5]}"
        keys = flow_keys(out)
        assert keys == baseline, f"{sum((baseline - keys).values())} flows missing, {sum((keys - baseline).values())} unexpected"


@pytest.mark.slow
def test_analyze_takes_a_list_of_servers_whose_first_is_down(tmp_path):
    """``flowtarget analyze --nats URL1,URL2,URL3`` with URL1's node stopped: every part connects to another."""
    import subprocess

    from tests.conftest import SAMPLE_PCAP
    from tests.deploy.clusterlab import FLOWTARGET

    with EmbeddedCluster(3, base_dir=str(tmp_path / "cluster")) as cluster:
        cluster.nodes[0].stop()
        env = dict(__import__("os").environ, FT_STREAM_REPLICAS="2")
        r = subprocess.run([FLOWTARGET, "analyze", str(SAMPLE_PCAP), "--nats", cluster.url, "--out", str(tmp_path / "out"),
                            "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "flows" in r.stdout and len(flow_ids(tmp_path / "out")) > 0
        assert stream_info(cluster.url).config.num_replicas == 2
