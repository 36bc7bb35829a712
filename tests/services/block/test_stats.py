"""Per-rule statistics: shared by replicas through the KV bucket, shown by rules list, exported per rule id."""

from __future__ import annotations

import asyncio
import json

import nats
from prometheus_client.exposition import generate_latest

from services.block.rules import rules_command
from services.block.stats import RuleStats, open_stats_bucket, read_stats


def test_replicas_add_up_in_the_bucket_and_rules_list_shows_it(nats_server, capsys):
    async def go():
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        kv = await open_stats_bucket(js, "ft_rule_stats")
        a, b = RuleStats(), RuleStats()
        for i in range(30):
            a.record("r1", "won", 1000.0 + i)
            b.record("r1", "lost" if i % 3 == 0 else "won", 2000.0 + i)
            b.record("r2", "dry_run", 1500.0)
        a.record("r1", "not_possible", 1.0)
        # both replicas add concurrently, several rounds: compare-and-set never loses a count
        await asyncio.gather(a.flush(kv), b.flush(kv))
        a.record("r1", "won", 3000.0)
        await asyncio.gather(a.flush(kv), b.flush(kv))
        assert not a.pending and not b.pending
        st = await read_stats(js)
        await nc.close()
        return st

    st = asyncio.run(go())
    assert st["r1"]["hits"] == 62 and st["r1"]["won"] == 51 and st["r1"]["lost"] == 10
    assert st["r1"]["not_possible"] == 1 and st["r1"]["last_hit"] == 3000.0
    assert st["r2"] == {**st["r2"], "hits": 30, "dry_run": 30}
    base = ["--nats", nats_server.url]
    assert rules_command([*base, "add", "--id", "r1", "--action", "reset", "--host", "bad.test"]) == 0
    assert rules_command([*base, "add", "--id", "r3", "--action", "reset", "--host", "never.test"]) == 0
    capsys.readouterr()
    assert rules_command([*base, "list"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("r1\t"))
    assert "hits=62 won=51 lost=10 not_possible=1 dry_run=0" in line and "last_hit=1970-01-01T00:50:00" in line
    assert "hits=0" in next(x for x in out.splitlines() if x.startswith("r3\t")) and "last_hit=never" in out
    assert rules_command([*base, "list", "--json"]) == 0
    listed = {d["id"]: d for d in map(json.loads, capsys.readouterr().out.splitlines())}
    assert listed["r1"]["stats"]["won"] == 51 and listed["r3"]["stats"]["hits"] == 0


def test_flush_keeps_counts_while_nats_is_down(nats_server):
    async def go():
        nc = await nats.connect(nats_server.url)
        kv = await open_stats_bucket(nc.jetstream(), "ft_rule_stats")
        s = RuleStats()
        s.record("r1", "won", 5.0)
        await nc.close()
        assert await s.flush(kv) == 0 and s.pending["r1"]["won"] == 1 and s.flush_errors == 1
    asyncio.run(go())


def test_an_action_recorded_while_a_flush_waits_is_not_lost(nats_server):
    """The delta being written was the pending dict itself: a BlockAction recorded while the flush awaited
    the bucket was added to it after its value was serialised, then deleted with it (the N=100 tunnel lab
    listed 102 hits for 103 actions)."""
    async def go():
        nc = await nats.connect(nats_server.url)
        kv = await open_stats_bucket(nc.jetstream(), "ft_rule_stats")
        s = RuleStats()
        for i in range(50):
            s.record("r1", "won", float(i))

        async def more():
            for i in range(50):
                s.record("r1", "won", 100.0 + i)
                await asyncio.sleep(0)

        for _ in range(20):   # flushes interleaved with actions
            await asyncio.gather(s.flush(kv), more())
        while s.pending:
            await s.flush(kv)
        stats = await read_stats(nc.jetstream(), "ft_rule_stats")
        await nc.close()
        return stats

    stats = asyncio.run(go())
    assert stats["r1"]["hits"] == 50 + 20 * 50 and stats["r1"]["won"] == 1050


def test_prometheus_metrics_per_rule_id():
    from shared import metrics

    s = RuleStats()
    s.record("r-a", "won", 10.0)
    s.record("r-a", "won", 11.0)
    s.record("r-b", "not_possible", 12.0)
    metrics.register_families("block_rules_test", s.metric_families)
    try:
        text = generate_latest(metrics.new_registry()).decode()
    finally:
        with metrics.STATE.lock:
            metrics.STATE.families.pop("block_rules_test", None)
    assert 'flowtarget_block_rule_hits_total{rule_id="r-a"} 2.0' in text
    assert 'flowtarget_block_rule_outcomes_total{outcome="won",rule_id="r-a"} 2.0' in text
    assert 'flowtarget_block_rule_outcomes_total{outcome="not_possible",rule_id="r-b"} 1.0' in text
    assert 'flowtarget_block_rule_last_hit_timestamp_seconds{rule_id="r-a"} 11.0' in text
