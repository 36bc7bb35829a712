"""Per-rule statistics: hits and outcomes, shared by every block replica.

Each BlockAction counts as one hit of its rule and one of its outcome.  A
replica counts locally (exported as Prometheus metrics per rule id:
``flowtarget_block_rule_hits_total{rule_id}``,
``flowtarget_block_rule_outcomes_total{rule_id,outcome}``,
``flowtarget_block_rule_last_hit_timestamp_seconds{rule_id}``) and adds what it
counted since its last flush to the JetStream KV bucket ``FT_RULE_STATS_BUCKET``
(default ``ft_rule_stats``, one key per rule id, JSON) every
``FT_RULE_STATS_FLUSH_S`` and at stop.  The add is a compare-and-set on the
key's revision, retried on conflict, so replicas never overwrite each other's
counts.  ``flowtarget rules list`` shows the bucket's totals.
"""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger("flowtarget.block.stats")

DEFAULT_BUCKET = "ft_rule_stats"
OUTCOMES = ("won", "lost", "not_possible", "dry_run", "rate_limited", "allowlisted", "unknown")
FIELDS = ("hits", *OUTCOMES)
MAX_RULES = 10_000  # rule ids tracked locally (rules are bounded too); beyond it counted in "untracked"


def empty() -> dict[str, Any]:
    d: dict[str, Any] = {f: 0 for f in FIELDS}
    d["last_hit"] = 0.0
    return d


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = empty()
    for f in FIELDS:
        out[f] = int(a.get(f, 0) or 0) + int(b.get(f, 0) or 0)
    out["last_hit"] = max(float(a.get("last_hit", 0) or 0), float(b.get("last_hit", 0) or 0))
    return out


def parse(value: bytes | None) -> dict[str, Any]:
    """A bucket value; an unreadable one counts as empty (and is overwritten by the next add)."""
    if not value:
        return empty()
    try:
        d = json.loads(value)
    except ValueError:
        return empty()
    if not isinstance(d, dict):
        return empty()
    try:
        return merge(empty(), d)
    except (TypeError, ValueError):
        return empty()


class RuleStats:
    """This replica's counts (totals since start, and what is not yet in the bucket)."""

    def __init__(self) -> None:
        self.total: dict[str, dict[str, Any]] = {}
        self.pending: dict[str, dict[str, Any]] = {}
        self.untracked = 0
        self.flush_errors = 0
        self.flush_conflicts = 0

    def record(self, rule_id: str, outcome: str, ts: float) -> None:
        if rule_id not in self.total and len(self.total) >= MAX_RULES:
            self.untracked += 1
            return
        for table in (self.total, self.pending):
            d = table.get(rule_id)
            if d is None:
                d = table[rule_id] = empty()
            d["hits"] += 1
            if outcome in d:
                d[outcome] += 1
            d["last_hit"] = max(d["last_hit"], ts)

    async def flush(self, kv: Any) -> int:
        """Add the pending counts to the bucket; returns the rules written.  What fails stays pending."""
        from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError

        written = 0
        for rid in list(self.pending):
            # taken out before the first await: a BlockAction recorded while this flush waits for the
            # bucket goes into a new pending entry instead of into a delta already written (it was lost)
            delta = self.pending.pop(rid)
            done = False
            for _ in range(20):
                try:
                    try:
                        entry = await kv.get(rid)
                        current, revision = parse(entry.value), entry.revision
                    except (KeyNotFoundError, KeyDeletedError):
                        current, revision = empty(), None
                    value = json.dumps(merge(current, delta), separators=(",", ":")).encode()
                    if revision is None:
                        try:
                            await kv.create(rid, value)
                        except KeyWrongLastSequenceError:
                            # created meanwhile by another replica, or a deleted key: update that revision
                            entry = await kv.get(rid)
                            await kv.update(rid, json.dumps(merge(parse(entry.value), delta)).encode(),
                                            last=entry.revision)
                    else:
                        await kv.update(rid, value, last=revision)
                except KeyWrongLastSequenceError:
                    self.flush_conflicts += 1
                    continue
                except Exception as exc:  # NATS down: keep the counts, try at the next flush
                    self.flush_errors += 1
                    log.debug("rule stats flush of %s failed: %s", rid, exc)
                    self._keep(rid, delta)
                    return written
                written += 1
                done = True
                break
            if not done:
                self._keep(rid, delta)
        return written

    def _keep(self, rid: str, delta: dict[str, Any]) -> None:
        """A delta not written stays pending, with what was recorded meanwhile."""
        later = self.pending.get(rid)
        self.pending[rid] = merge(delta, later) if later is not None else delta

    def metric_families(self) -> list[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        hits = CounterMetricFamily("flowtarget_block_rule_hits", "BlockActions of a rule (matching flows and DNS queries)",
                                   labels=["rule_id"])
        outs = CounterMetricFamily("flowtarget_block_rule_outcomes", "BlockActions of a rule by outcome",
                                   labels=["rule_id", "outcome"])
        last = GaugeMetricFamily("flowtarget_block_rule_last_hit_timestamp_seconds", "Time of a rule's latest hit",
                                 labels=["rule_id"])
        for rid, d in sorted(self.total.items()):
            hits.add_metric([rid], d["hits"])
            for o in OUTCOMES:
                outs.add_metric([rid, o], d[o])
            last.add_metric([rid], d["last_hit"])
        return [hits, outs, last]


async def open_stats_bucket(js: Any, bucket: str = DEFAULT_BUCKET, replicas: int | None = None) -> Any:
    """The statistics bucket (created on first use, with ``replicas`` copies: default FT_KV_REPLICAS)."""
    from nats.js.api import KeyValueConfig
    from nats.js.errors import BucketNotFoundError, NotFoundError

    try:
        return await js.key_value(bucket)
    except (BucketNotFoundError, NotFoundError):
        pass
    if replicas is None:
        from shared.settings import CommonSettings
        replicas = CommonSettings().kv_replicas
    try:
        return await js.create_key_value(KeyValueConfig(bucket=bucket, history=1, replicas=replicas,
                                                        description="FlowTarget per-rule block statistics"))
    except Exception:
        return await js.key_value(bucket)


async def read_stats(js: Any, bucket: str = DEFAULT_BUCKET) -> dict[str, dict[str, Any]]:
    """Every rule's totals in the bucket ({} when there is no bucket yet)."""
    from nats.js.errors import BucketNotFoundError, NotFoundError

    from shared.bus import kv_keys

    try:
        kv = await js.key_value(bucket)
    except (BucketNotFoundError, NotFoundError):
        return {}
    out = {}
    for k in await kv_keys(kv):
        try:
            entry = await kv.get(k)
        except Exception:
            continue
        out[k] = parse(entry.value)
    return out
