"""Blocking rules: the model, matching, the NATS KV bucket, and ``flowtarget rules``.

A rule has an ``id``, an ``action`` and any of the match fields below; every
field given must match (AND), and a list field matches when any element does
(OR).  A rule with no match field at all is refused (it would block everything).

- ``host``: names with shell wildcards (``*.example.com`` matches every name
  under example.com, not example.com itself), case-insensitive, matched
  against HTTP Host, TLS/QUIC SNI and DNS query names.
- ``cidr``: networks; either endpoint of the flow inside one matches.
- ``port``: ports; either endpoint's port matches.
- ``transport``: TCP, UDP, ... (nDPI names).
- ``app_protocol`` / ``application`` / ``category``: classify's names,
  case-insensitive.
- ``expires``: an ISO 8601 time or Unix epoch seconds; the rule is ignored
  afterwards.

Actions:

- ``alert``: monitor only — an Alert (``ft.alert.policy.<probe>``) and a
  BlockAction are published, nothing is injected.
- ``reset``: TCP RST to both ends.
- ``http_block``: an injected HTTP response to the client (a 403 block page, or
  a 302 to ``redirect``) and a RST to the server.  HTTPS cannot be answered
  with a page: TLS flows matched by an http_block rule are reset.
- ``dns_block``: a forged answer to matching DNS queries: the ``dns_answer``
  sinkhole address (A for IPv4, AAAA for IPv6; the other family gets the
  unspecified address of its kind), or NXDOMAIN when no answer is given.  Other
  query types get an empty NOERROR answer (sinkhole) or NXDOMAIN.
- ``drop``: for an inline deployment (a bridge or router that forwards the
  traffic itself) only.  From a mirror port nothing can be dropped: block
  reports ``not_possible`` for it.

A rules file is YAML::

    rules:
      - {id: r1, host: "*.bad.test", action: reset}
      - {id: r2, host: "ads.test", action: dns_block, dns_answer: 0.0.0.0}

The rules live in a JetStream KV bucket (``FT_RULES_BUCKET``, default
``ft_rules``), one key per rule id with the rule as JSON; every block replica
watches it live.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import fnmatch
import ipaddress
import json
import logging
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.codec import loads_small

log = logging.getLogger("flowtarget.block.rules")
# a rule in the KV bucket is decoded with these bounds (a peer writes the bucket)
RULE_MAX_BYTES = 1024 * 1024
RULE_MAX_DEPTH = 8

DEFAULT_BUCKET = "ft_rules"
Action = Literal["alert", "reset", "http_block", "dns_block", "drop"]
ENFORCING: tuple[str, ...] = ("reset", "http_block", "drop")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_HOST = re.compile(r"^[A-Za-z0-9*?._-]{1,253}$")
MATCH_FIELDS = ("host", "cidr", "port", "transport", "app_protocol", "application", "category")


def _as_list(v: Any) -> Any:
    if v is None:
        return []
    if isinstance(v, (str, int)):
        return [v]
    return v


def normalize_host(name: str) -> str:
    """Lower case, no trailing dot, no port."""
    name = name.strip().lower().rstrip(".")
    if name.startswith("[") and "]" in name:  # [v6]:port
        return name[1:name.index("]")]
    if name.count(":") == 1:
        name = name.split(":", 1)[0]
    return name


class Rule(BaseModel):
    """One blocking rule (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="Unique id: 1-64 letters, digits, '_' or '-'.")
    action: Action
    host: list[str] = Field(default_factory=list, description="Name patterns with * and ? wildcards.")
    cidr: list[str] = Field(default_factory=list, description="Networks, either side.")
    port: list[int] = Field(default_factory=list, description="Ports, either side.")
    transport: list[str] = Field(default_factory=list)
    app_protocol: list[str] = Field(default_factory=list)
    application: list[str] = Field(default_factory=list)
    category: list[str] = Field(default_factory=list)
    expires: float | None = Field(default=None, description="Unix epoch seconds (ISO 8601 accepted on input).")
    dns_answer: str | None = Field(default=None, description="dns_block: sinkhole address; NXDOMAIN when absent.")
    redirect: str | None = Field(default=None, description="http_block: 302 to this URL instead of the block page.")
    message: str = Field(default="", max_length=512, description="Shown on the block page and in events.")
    priority: int = Field(default=100, description="Lower acts first when several rules match.")
    enabled: bool = True
    force: bool = Field(default=False, description="Accept a rule that matches every flow (host '*', cidr 0.0.0.0/0 or ::/0, transport only).")

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError("must be 1-64 letters, digits, '_' or '-'")
        return v

    @field_validator("host", "cidr", "port", "transport", "app_protocol", "application", "category", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return _as_list(v)

    @field_validator("host")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        out = []
        for h in v:
            n = normalize_host(str(h))
            if not _HOST.match(n):
                raise ValueError(f"invalid host pattern {h!r}")
            out.append(n)
        return out

    @field_validator("cidr")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        out = []
        for c in v:
            try:
                out.append(str(ipaddress.ip_network(str(c), strict=False)))
            except ValueError:
                raise ValueError(f"invalid network {c!r}") from None
        return out

    @field_validator("port")
    @classmethod
    def _ports(cls, v: list[int]) -> list[int]:
        for p in v:
            if not 0 <= int(p) <= 65535:
                raise ValueError(f"port {p} out of range 0-65535")
        return [int(p) for p in v]

    @field_validator("transport")
    @classmethod
    def _transports(cls, v: list[str]) -> list[str]:
        return [str(t).upper() for t in v]

    @field_validator("app_protocol", "application", "category")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        return [str(t).lower() for t in v]

    @field_validator("expires", mode="before")
    @classmethod
    def _expires(cls, v: Any) -> Any:
        if v is None or isinstance(v, (int, float)):
            return v
        if isinstance(v, _dt.datetime):
            d = v
        else:
            try:
                d = _dt.datetime.fromisoformat(str(v).replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"not an ISO 8601 time or epoch seconds: {v!r}") from None
        if d.tzinfo is None:
            d = d.replace(tzinfo=_dt.timezone.utc)
        return d.timestamp()

    @field_validator("dns_answer")
    @classmethod
    def _dns_answer(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        try:
            return str(ipaddress.ip_address(str(v)))
        except ValueError:
            raise ValueError(f"not an IP address: {v!r}") from None

    @field_validator("redirect")
    @classmethod
    def _redirect(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not re.match(r"^https?://[\x21-\x7e]+$", v):
            raise ValueError("must be an http:// or https:// URL without spaces or control characters")
        return v

    @field_validator("message")
    @classmethod
    def _message(cls, v: str) -> str:
        return "".join(c for c in v if c.isprintable())

    @model_validator(mode="after")
    def _needs_a_match(self) -> "Rule":
        if not any(getattr(self, f) for f in MATCH_FIELDS):
            raise ValueError(f"a rule needs at least one of {', '.join(MATCH_FIELDS)}")
        broad = self.matches_everything()
        if broad and not self.force:
            raise ValueError(f"matches every flow ({broad}); narrow it, or say force: true if that is meant")
        if self.dns_answer is not None and self.action != "dns_block":
            raise ValueError("dns_answer is only for action dns_block")
        if self.redirect is not None and self.action != "http_block":
            raise ValueError("redirect is only for action http_block")
        return self

    def matches_everything(self) -> str:
        """Why the rule matches every flow ('' when it does not): all its match fields are match-alls.

        Match-alls: a host pattern made of wildcards only (``*``, ``*?``), a /0 network, and
        ``transport`` (which narrows only to a whole protocol).  A field that is a list matches
        everything when any element does.
        """
        why = []
        narrowing = False
        if self.host:
            wild = [h for h in self.host if set(h) <= {"*", "?", "."} and "*" in h]
            if wild:
                why.append(f"host {wild[0]!r}")
            else:
                narrowing = True
        if self.cidr:
            zero = [c for c in self.cidr if c.endswith("/0")]
            if zero:
                why.append(f"cidr {zero[0]}")
            else:
                narrowing = True
        if self.port or self.app_protocol or self.application or self.category:
            narrowing = True
        if narrowing:
            return ""
        if self.transport:
            why.append("transport " + ",".join(self.transport) + " only")
        return ", ".join(why) or "no match field"

    # ------------------------------------------------------------------ matching

    def expired(self, now: float | None = None) -> bool:
        return self.expires is not None and (now if now is not None else time.time()) >= self.expires

    def matches(self, ctx: "MatchContext", now: float | None = None) -> bool:
        if not self.enabled or self.expired(now):
            return False
        if self.host:
            h = normalize_host(ctx.host) if ctx.host else ""
            if not h or not any(fnmatch.fnmatchcase(h, p) for p in self.host):
                return False
        if self.transport and ctx.transport.upper() not in self.transport:
            return False
        if self.port and ctx.src_port not in self.port and ctx.dst_port not in self.port:
            return False
        if self.app_protocol and ctx.app_protocol.lower() not in self.app_protocol:
            return False
        if self.application and ctx.application.lower() not in self.application:
            return False
        if self.category and ctx.category.lower() not in self.category:
            return False
        if self.cidr:
            nets = _networks(self.cidr)
            addrs = [a for a in (_addr(ctx.src_ip), _addr(ctx.dst_ip)) if a is not None]
            if not any(a in n for a in addrs for n in nets if a.version == n.version):
                return False
        return True


_net_cache: dict[tuple[str, ...], list[Any]] = {}


def _networks(cidrs: list[str]) -> list[Any]:
    key = tuple(cidrs)
    nets = _net_cache.get(key)
    if nets is None:
        nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
        if len(_net_cache) > 4096:
            _net_cache.clear()
        _net_cache[key] = nets
    return nets


def _addr(s: str) -> Any:
    try:
        return ipaddress.ip_address(s)
    except ValueError:
        return None


@dataclass(frozen=True)
class MatchContext:
    """What a rule is matched against: one flow (from a verdict) or one DNS query."""

    host: str = ""
    src_ip: str = ""
    dst_ip: str = ""
    src_port: int = 0
    dst_port: int = 0
    transport: str = ""
    app_protocol: str = ""
    application: str = ""
    category: str = ""


class RuleSet:
    """The current rules, ordered by (priority, id)."""

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self._rules: dict[str, Rule] = {}
        self._ordered: list[Rule] = []
        for r in rules:
            self._rules[r.id] = r
        self._order()

    def _order(self) -> None:
        self._ordered = sorted(self._rules.values(), key=lambda r: (r.priority, r.id))

    def put(self, rule: Rule) -> None:
        self._rules[rule.id] = rule
        self._order()

    def remove(self, rule_id: str) -> None:
        if self._rules.pop(rule_id, None) is not None:
            self._order()

    def __len__(self) -> int:
        return len(self._rules)

    def __iter__(self):
        return iter(self._ordered)

    def get(self, rule_id: str) -> Rule | None:
        return self._rules.get(rule_id)

    def matching(self, ctx: MatchContext, actions: Iterable[str] | None = None, now: float | None = None) -> list[Rule]:
        wanted = set(actions) if actions is not None else None
        return [r for r in self._ordered if (wanted is None or r.action in wanted) and r.matches(ctx, now)]


# --------------------------------------------------------------------------- parsing


class RuleError(ValueError):
    """A malformed rule; the message names the rule and the field."""


def describe_error(exc: ValidationError, where: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "rule"
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        parts.append(f"field '{loc}': {msg}")
    return f"{where}: " + "; ".join(parts)


def parse_rule(data: Any, where: str = "rule") -> Rule:
    if not isinstance(data, dict):
        raise RuleError(f"{where}: a rule must be a mapping, got {type(data).__name__}")
    rid = data.get("id")
    if isinstance(rid, str) and rid:
        where = f"{where} {rid!r}"
    try:
        return Rule.model_validate(data)
    except ValidationError as exc:
        raise RuleError(describe_error(exc, where)) from None


def parse_rules_text(text: str, source: str = "rules") -> list[Rule]:
    """Rules from YAML (``rules: [...]`` or a bare list); RuleError naming the bad rule and field."""
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RuleError(f"{source}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if doc is None:
        return []
    if isinstance(doc, dict):
        if set(doc) - {"rules"}:
            raise RuleError(f"{source}: unknown top-level key(s) {sorted(set(doc) - {'rules'})}; expected 'rules'")
        doc = doc.get("rules") or []
    if not isinstance(doc, list):
        raise RuleError(f"{source}: 'rules' must be a list")
    rules, seen = [], set()
    for i, item in enumerate(doc):
        r = parse_rule(item, f"{source}: rule #{i + 1}")
        if r.id in seen:
            raise RuleError(f"{source}: rule #{i + 1}: field 'id': duplicate id {r.id!r}")
        seen.add(r.id)
        rules.append(r)
    return rules


def parse_rules_file(path: str | os.PathLike[str]) -> list[Rule]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise RuleError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise RuleError(f"{path}: not a text file") from None
    return parse_rules_text(text, str(path))


# --------------------------------------------------------------------------- the KV bucket


async def open_bucket(js: Any, bucket: str = DEFAULT_BUCKET, create: bool = True, replicas: int | None = None) -> Any:
    """The rules bucket (created on first use, with ``replicas`` copies: default FT_KV_REPLICAS)."""
    from nats.js.api import KeyValueConfig
    from nats.js.errors import BucketNotFoundError, NotFoundError

    try:
        return await js.key_value(bucket)
    except (BucketNotFoundError, NotFoundError):
        if not create:
            raise
    try:
        if replicas is None:
            from shared.settings import CommonSettings
            replicas = CommonSettings().kv_replicas
        return await js.create_key_value(KeyValueConfig(bucket=bucket, history=5, description="FlowTarget blocking rules",
                                                        replicas=replicas))
    except Exception:
        return await js.key_value(bucket)  # created concurrently


async def put_rules(kv: Any, rules: Iterable[Rule]) -> int:
    n = 0
    for r in rules:
        await kv.put(r.id, r.model_dump_json(exclude_defaults=True).encode())
        n += 1
    return n


async def read_rules(kv: Any) -> tuple[list[Rule], list[str]]:
    """Every rule in the bucket, plus error lines for entries that do not parse."""
    from shared.bus import kv_keys

    rules, errors = [], []
    for k in await kv_keys(kv):
        try:
            entry = await kv.get(k)
        except Exception:  # deleted meanwhile
            continue
        if not entry.value:
            continue
        try:
            rules.append(parse_rule(loads_small(entry.value, RULE_MAX_BYTES, RULE_MAX_DEPTH), f"bucket key {k!r}"))
        except (RuleError, ValueError) as exc:
            errors.append(str(exc))
    return rules, errors


class RuleWatcher:
    """Keeps a RuleSet in step with the bucket; ``on_change`` runs after every update.

    A malformed entry in the bucket is logged and counted and the previous
    version of that rule (if any) stays in force.
    """

    def __init__(self, js: Any, bucket: str = DEFAULT_BUCKET,
                 on_change: Callable[[RuleSet, list[Rule]], Awaitable[None] | None] | None = None,
                 max_rules: int = 10_000) -> None:
        self.js = js
        self.bucket = bucket
        self.rules = RuleSet()
        self.on_change = on_change
        self.max_rules = max_rules
        self.malformed = 0
        self.over_limit = 0       # new rules ignored because max_rules were in force (FT_MAX_RULES)
        self.updates = 0
        self.ready = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rules-watch")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    def _reconnects(self) -> int:
        nc = getattr(self.js, "_nc", None)
        try:
            return int(nc.stats["reconnects"]) if nc is not None else 0
        except (AttributeError, KeyError, TypeError, ValueError):
            return 0

    async def _run(self) -> None:
        """Watch; start over after a NATS reconnect (a JetStream consumer may not survive a server restart)."""
        delay = 0.2
        while True:
            seen_reconnects = self._reconnects()
            inner = asyncio.create_task(self._watch_once())
            try:
                while not inner.done():
                    await asyncio.wait({inner}, timeout=0.5)
                    if not inner.done() and self._reconnects() != seen_reconnects:
                        log.info("NATS reconnected: watching the rules bucket again")
                        break
            finally:
                if not inner.done():
                    inner.cancel()
                    try:
                        await inner
                    except (asyncio.CancelledError, Exception):
                        pass
            if inner.done() and not inner.cancelled() and inner.exception() is not None:
                log.warning("rules watch failed (%s); retrying", type(inner.exception()).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                delay = 0.2

    async def _watch_once(self) -> None:
        watcher = None
        try:
            kv = await open_bucket(self.js, self.bucket)
            watcher = await kv.watchall()
            seen: set[str] = set()
            initial = True
            async for entry in watcher:
                if entry is None:  # end of the initial values
                    if initial:
                        for rid in [r.id for r in self.rules if r.id not in seen]:
                            self.rules.remove(rid)  # deleted while we were away
                        initial = False
                        self.ready.set()
                        await self._changed(list(self.rules))
                    continue
                if initial:
                    seen.add(entry.key)
                changed = self._apply(entry)
                if changed is not None and not initial:
                    await self._changed([changed] if isinstance(changed, Rule) else [])
        finally:
            if watcher is not None:
                try:
                    await watcher.stop()
                except Exception:
                    pass

    def _apply(self, entry: Any) -> Rule | bool | None:
        self.updates += 1
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            self.rules.remove(entry.key)
            log.info("rule %s removed", entry.key)
            return True
        try:
            rule = parse_rule(loads_small(entry.value, RULE_MAX_BYTES, RULE_MAX_DEPTH), f"bucket key {entry.key!r}")
        except (RuleError, ValueError) as exc:
            self.malformed += 1
            log.warning("malformed rule ignored: %s", str(exc)[:300])
            return None
        if rule.id != entry.key:
            self.malformed += 1
            log.warning("rule under key %r has id %r; ignored", entry.key, rule.id)
            return None
        if self.rules.get(rule.id) is None and len(self.rules) >= self.max_rules:
            # a peer that can write the bucket must not grow block's memory without bound
            self.over_limit += 1
            if self.over_limit == 1 or self.over_limit % 1000 == 0:
                log.warning("rule %s ignored: %d rules already in force (FT_MAX_RULES); %d ignored so far",
                            rule.id, len(self.rules), self.over_limit)
            return None
        self.rules.put(rule)
        log.info("rule %s: %s %s", rule.id, rule.action, ",".join(rule.host) or "")
        return rule

    async def _changed(self, rules: list[Rule]) -> None:
        if self.on_change is None:
            return
        res = self.on_change(self.rules, rules)
        if asyncio.iscoroutine(res):
            await res


# --------------------------------------------------------------------------- CLI: flowtarget rules


async def _with_kv(nats_url: str, bucket: str, fn: Callable[..., Awaitable[int]], with_js: bool = False) -> int:
    import nats

    try:
        nc = await nats.connect(servers=[u.strip() for u in nats_url.split(",")], connect_timeout=3,
                                max_reconnect_attempts=2, allow_reconnect=False)
    except Exception as exc:
        print(f"flowtarget rules: cannot connect to NATS at {nats_url}: {exc}", file=sys.stderr)
        return 1
    try:
        js = nc.jetstream(timeout=5)
        kv = await open_bucket(js, bucket)
        return await (fn(kv, js) if with_js else fn(kv))
    except Exception as exc:
        print(f"flowtarget rules: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        await nc.close()


def load_rules_file(nats_url: str, probe: str, path: str, bucket: str | None = None, replace: bool = False) -> int:
    """Validate a YAML rules file and put its rules into the bucket (all or none).

    Returns 0 on success, 2 for a malformed file (the bucket is left as it was),
    1 when NATS is unreachable.
    """
    try:
        rules = parse_rules_file(path)
    except RuleError as exc:
        print(f"flowtarget rules: refused: {exc}", file=sys.stderr)
        return 2

    async def go(kv: Any) -> int:
        n = await put_rules(kv, rules)
        removed = 0
        if replace:
            existing, _ = await read_rules(kv)
            keep = {r.id for r in rules}
            for r in existing:
                if r.id not in keep:
                    await kv.delete(r.id)
                    removed += 1
        print(f"flowtarget rules: loaded {n} rule(s) from {path}" + (f", removed {removed}" if replace else ""),
              file=sys.stderr)
        return 0

    return asyncio.run(_with_kv(nats_url, bucket or _bucket_default(), go))


def _bucket_default() -> str:
    return os.environ.get("FT_RULES_BUCKET", DEFAULT_BUCKET)


def _rule_from_args(args: argparse.Namespace) -> dict[str, Any]:
    data: dict[str, Any] = {"id": args.id, "action": args.action}
    for f in ("host", "cidr", "port", "transport", "app_protocol", "application", "category"):
        v = getattr(args, f)
        if v:
            data[f] = v
    for f in ("expires", "dns_answer", "redirect", "message", "priority"):
        v = getattr(args, f)
        if v is not None:
            data[f] = v
    if getattr(args, "force", False):
        data["force"] = True
    return data


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """``flowtarget rules add|list|remove|load`` (the CLI calls ``run(args)``)."""
    rp = sub.add_parser("rules", help="manage blocking rules in the NATS KV bucket")
    rp.add_argument("--nats", default=os.environ.get("FT_NATS_URL", "nats://127.0.0.1:4222"), help="NATS URL (FT_NATS_URL)")
    rp.add_argument("--bucket", default=_bucket_default(), help="KV bucket (FT_RULES_BUCKET)")
    rs = rp.add_subparsers(dest="rules_cmd", required=True)
    a = rs.add_parser("add", help="add or replace one rule")
    a.add_argument("--id", required=True)
    a.add_argument("--action", required=True, choices=["alert", "reset", "http_block", "dns_block", "drop"])
    a.add_argument("--host", action="append", help="name pattern (repeatable)")
    a.add_argument("--cidr", action="append")
    a.add_argument("--port", action="append")
    a.add_argument("--transport", action="append")
    a.add_argument("--app-protocol", dest="app_protocol", action="append")
    a.add_argument("--application", action="append")
    a.add_argument("--category", action="append")
    a.add_argument("--expires", help="ISO 8601 time or epoch seconds")
    a.add_argument("--dns-answer", dest="dns_answer")
    a.add_argument("--redirect")
    a.add_argument("--message")
    a.add_argument("--priority", type=int)
    a.add_argument("--force", action="store_true", help="accept a rule that matches every flow (host '*', 0.0.0.0/0, ::/0)")
    ls = rs.add_parser("list", help="list the rules")
    ls.add_argument("--json", action="store_true", help="one JSON object per line (the rule plus its 'stats')")
    ls.add_argument("--stats-bucket", default=os.environ.get("FT_RULE_STATS_BUCKET", "ft_rule_stats"),
                    help="KV bucket of per-rule statistics (FT_RULE_STATS_BUCKET)")
    rm = rs.add_parser("remove", help="remove rules by id")
    rm.add_argument("ids", nargs="+", metavar="ID")
    ld = rs.add_parser("load", help="load a YAML rules file (all rules or none)")
    ld.add_argument("file")
    ld.add_argument("--replace", action="store_true", help="also remove rules that are not in the file")
    rp.set_defaults(func=run)
    return rp


def run(args: argparse.Namespace) -> int:
    cmd = args.rules_cmd
    if cmd == "load":
        return load_rules_file(args.nats, "", args.file, args.bucket, args.replace)
    if cmd == "add":
        try:
            rule = parse_rule(_rule_from_args(args), "rule")
        except RuleError as exc:
            print(f"flowtarget rules: refused: {exc}", file=sys.stderr)
            return 2

        async def add(kv: Any) -> int:
            await put_rules(kv, [rule])
            print(f"flowtarget rules: rule {rule.id} stored", file=sys.stderr)
            return 0

        return asyncio.run(_with_kv(args.nats, args.bucket, add))
    if cmd == "remove":
        async def remove(kv: Any) -> int:
            existing = {r.id for r in (await read_rules(kv))[0]}
            code = 0
            for rid in args.ids:
                if rid not in existing:
                    print(f"flowtarget rules: no rule {rid!r}", file=sys.stderr)
                    code = 1
                    continue
                await kv.delete(rid)
                print(f"flowtarget rules: rule {rid} removed", file=sys.stderr)
            return code

        return asyncio.run(_with_kv(args.nats, args.bucket, remove))

    async def show(kv: Any, js: Any) -> int:
        from services.block.stats import empty, read_stats

        rules, errors = await read_rules(kv)
        try:
            stats = await read_stats(js, args.stats_bucket)
        except Exception as exc:
            print(f"flowtarget rules: statistics unavailable: {type(exc).__name__}: {exc}", file=sys.stderr)
            stats = {}
        now = time.time()
        for r in rules:
            st = stats.get(r.id) or empty()
            if args.json:
                d = json.loads(r.model_dump_json(exclude_defaults=True))
                d["stats"] = st
                print(json.dumps(d))
                continue
            match = " ".join(f"{f}={','.join(map(str, getattr(r, f)))}" for f in MATCH_FIELDS if getattr(r, f))
            extra = []
            if r.dns_answer:
                extra.append(f"dns_answer={r.dns_answer}")
            if r.redirect:
                extra.append(f"redirect={r.redirect}")
            if r.expires is not None:
                extra.append(("expired " if r.expired(now) else "expires ")
                             + _dt.datetime.fromtimestamp(r.expires, _dt.timezone.utc).isoformat())
            if not r.enabled:
                extra.append("disabled")
            counts = (f"hits={st['hits']} won={st['won']} lost={st['lost']} not_possible={st['not_possible']} "
                      f"dry_run={st['dry_run']}")
            others = " ".join(f"{k}={st[k]}" for k in ("rate_limited", "allowlisted", "unknown") if st[k])
            last = ("last_hit=" + _dt.datetime.fromtimestamp(st["last_hit"], _dt.timezone.utc).isoformat(timespec="seconds")
                    if st["last_hit"] else "last_hit=never")
            print(f"{r.id}\t{r.action}\t{match}\t{counts} {others + ' ' if others else ''}{last}\t{' '.join(extra)}".rstrip())
        for e in errors:
            print(f"flowtarget rules: {e}", file=sys.stderr)
        if not rules and not args.json:
            print("(no rules)", file=sys.stderr)
        return 0

    return asyncio.run(_with_kv(args.nats, args.bucket, show, with_js=True))


def rules_command(argv: list[str]) -> int:
    """``flowtarget rules ...`` as a function of its arguments (for scripts and tests)."""
    ap = argparse.ArgumentParser(prog="flowtarget")
    sub = ap.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = ap.parse_args(["rules", *argv])
    return run(args)
