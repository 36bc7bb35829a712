"""Rules: parsing with field-naming errors, matching, the KV bucket, live watching, ``flowtarget rules``."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from services.block.rules import (
    MatchContext,
    Rule,
    RuleError,
    RuleSet,
    RuleWatcher,
    open_bucket,
    parse_rule,
    parse_rules_text,
    put_rules,
    read_rules,
    rules_command,
)

GOOD = """
rules:
  - {id: r1, host: "*.bad.test", action: reset}
  - {id: r2, host: "ads.test", action: dns_block, dns_answer: 0.0.0.0}
  - {id: r3, cidr: 192.0.2.0/24, port: 8443, transport: tcp, action: alert}
"""


def test_parse_good_file():
    rules = parse_rules_text(GOOD)
    assert [r.id for r in rules] == ["r1", "r2", "r3"]
    assert rules[0].host == ["*.bad.test"]
    assert rules[1].dns_answer == "0.0.0.0"
    assert rules[2].cidr == ["192.0.2.0/24"] and rules[2].port == [8443] and rules[2].transport == ["TCP"]


@pytest.mark.parametrize("bad,field", [
    ({"id": "x", "action": "explode", "host": "a.test"}, "action"),
    ({"id": "x", "action": "reset", "cidr": "10.0.0.300/8"}, "cidr"),
    ({"id": "x", "action": "reset", "port": 70000}, "port"),
    ({"id": "x y", "action": "reset", "host": "a.test"}, "id"),
    ({"id": "x", "action": "reset", "host": "a b.test"}, "host"),
    ({"id": "x", "action": "reset", "host": "a.test", "expires": "soon"}, "expires"),
    ({"id": "x", "action": "dns_block", "host": "a.test", "dns_answer": "not-an-ip"}, "dns_answer"),
    ({"id": "x", "action": "http_block", "host": "a.test", "redirect": "javascript:alert(1)"}, "redirect"),
    ({"id": "x", "action": "reset", "host": "a.test", "colour": "red"}, "colour"),
])
def test_malformed_rule_names_the_field(bad, field):
    with pytest.raises(RuleError) as ei:
        parse_rule(bad)
    assert f"'{field}'" in str(ei.value)


def test_rule_without_match_field_is_refused():
    with pytest.raises(RuleError, match="at least one of"):
        parse_rule({"id": "all", "action": "reset"})


def test_bad_yaml_and_duplicates_are_refused():
    with pytest.raises(RuleError, match="YAML"):
        parse_rules_text("rules: [ {id: r1")
    with pytest.raises(RuleError, match="duplicate"):
        parse_rules_text("rules: [{id: a, host: x.test, action: reset}, {id: a, host: y.test, action: reset}]")
    with pytest.raises(RuleError, match="rule #2"):
        parse_rules_text("rules: [{id: a, host: x.test, action: reset}, {id: b, action: reset, port: -1}]")


def test_host_wildcards_and_case():
    r = parse_rule({"id": "w", "host": "*.Example.COM", "action": "reset"})
    m = lambda h: r.matches(MatchContext(host=h))  # noqa: E731
    assert m("www.example.com") and m("a.b.example.com") and m("WWW.EXAMPLE.COM.")
    assert m("www.example.com:8080")
    assert not m("example.com") and not m("badexample.com") and not m("") and not m("example.com.evil.test")
    exact = parse_rule({"id": "e", "host": "ads.test", "action": "dns_block"})
    assert exact.matches(MatchContext(host="ads.test")) and not exact.matches(MatchContext(host="x.ads.test"))


def test_fields_combine_with_and_lists_with_or():
    r = parse_rule({"id": "c", "cidr": ["10.1.0.0/16", "2001:db8::/32"], "port": [80, 443], "transport": "TCP",
                    "action": "reset"})
    ok = MatchContext(src_ip="192.168.1.5", dst_ip="10.1.2.3", src_port=50000, dst_port=443, transport="TCP")
    assert r.matches(ok)
    assert r.matches(MatchContext(src_ip="2001:db8::1", dst_ip="2001:db9::1", src_port=80, dst_port=1, transport="tcp"))
    assert not r.matches(MatchContext(src_ip="10.2.0.1", dst_ip="10.3.0.1", src_port=1, dst_port=443, transport="TCP"))
    assert not r.matches(MatchContext(src_ip="10.1.0.1", dst_ip="10.3.0.1", src_port=1, dst_port=22, transport="TCP"))
    assert not r.matches(MatchContext(src_ip="10.1.0.1", dst_ip="10.3.0.1", src_port=1, dst_port=443, transport="UDP"))
    app = parse_rule({"id": "a", "app_protocol": "bittorrent", "category": ["Download", "P2P"], "action": "alert"})
    assert app.matches(MatchContext(app_protocol="BitTorrent", category="download"))
    assert not app.matches(MatchContext(app_protocol="BitTorrent", category="Web"))


def test_expires_and_priority():
    past = parse_rule({"id": "old", "host": "a.test", "action": "reset", "expires": "2020-01-01T00:00:00Z"})
    future = parse_rule({"id": "new", "host": "a.test", "action": "alert", "expires": time.time() + 3600, "priority": 5})
    later = parse_rule({"id": "b", "host": "a.test", "action": "reset"})
    assert past.expired() and not past.matches(MatchContext(host="a.test"))
    rs = RuleSet([past, later, future])
    assert [r.id for r in rs.matching(MatchContext(host="a.test"))] == ["new", "b"]
    assert [r.id for r in rs.matching(MatchContext(host="a.test"), ("reset",))] == ["b"]


async def _kv(url: str):
    import nats

    nc = await nats.connect(url)
    return nc, await open_bucket(nc.jetstream(), "ft_rules_test")


def test_cli_add_list_remove_load(nats_server, tmp_path, capsys):
    url = nats_server.url
    base = ["--nats", url, "--bucket", "ft_rules_test"]
    assert rules_command([*base, "add", "--id", "r1", "--action", "reset", "--host", "*.bad.test"]) == 0
    assert rules_command([*base, "add", "--id", "bad", "--action", "reset", "--cidr", "10.0.0.999/8"]) == 2
    assert "'cidr'" in capsys.readouterr().err
    f = tmp_path / "rules.yaml"
    f.write_text(GOOD)
    assert rules_command([*base, "load", str(f)]) == 0
    capsys.readouterr()
    assert rules_command([*base, "list", "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(r["id"] for r in listed) == ["r1", "r2", "r3"]
    # a malformed file is refused as a whole and existing rules are kept
    f.write_text("rules:\n  - {id: r9, host: x.test, action: reset}\n  - {id: r10, host: y.test, action: nuke}\n")
    assert rules_command([*base, "load", str(f)]) == 2
    err = capsys.readouterr().err
    assert "r10" in err and "'action'" in err
    assert rules_command([*base, "remove", "r2"]) == 0
    assert rules_command([*base, "remove", "nope"]) == 1

    async def check():
        nc, kv = await _kv(url)
        try:
            rules, errors = await read_rules(kv)
            return sorted(r.id for r in rules), errors
        finally:
            await nc.close()

    assert asyncio.run(check()) == (["r1", "r3"], [])
    # load --replace removes rules that are not in the file
    f.write_text("rules: [{id: only, host: only.test, action: alert}]\n")
    assert rules_command([*base, "load", "--replace", str(f)]) == 0
    assert asyncio.run(check()) == (["only"], [])


def test_watcher_follows_the_bucket_live_and_skips_malformed(nats_server):
    async def run():
        nc, kv = await _kv(nats_server.url)
        await put_rules(kv, [Rule(id="a", host=["a.test"], action="reset")])
        changes: list[list[str]] = []
        w = RuleWatcher(nc.jetstream(), "ft_rules_test", on_change=lambda rs, ch: changes.append([r.id for r in ch]))
        await w.start()
        await asyncio.wait_for(w.ready.wait(), 10)
        assert [r.id for r in w.rules] == ["a"]

        async def until(pred):
            for _ in range(100):
                if pred():
                    return True
                await asyncio.sleep(0.05)
            return False

        await put_rules(kv, [Rule(id="b", host=["b.test"], action="dns_block")])
        assert await until(lambda: w.rules.get("b") is not None)
        assert ["b"] in changes
        await kv.put("c", b'{"id": "c", "action": "reset", "port": 99999}')
        await kv.put("a", b"not json")
        assert await until(lambda: w.malformed == 2)
        assert w.rules.get("c") is None and w.rules.get("a") is not None  # previous version of a kept
        await kv.delete("b")
        assert await until(lambda: w.rules.get("b") is None)
        await w.stop()
        await nc.close()

    asyncio.run(run())


def test_watcher_keeps_at_most_max_rules(nats_server):
    """A peer that writes the bucket cannot grow block's rule set past FT_MAX_RULES; updates still apply."""
    async def run():
        nc, kv = await _kv(nats_server.url)
        await put_rules(kv, [Rule(id=f"r{i}", host=[f"h{i}.test"], action="alert") for i in range(5)])
        w = RuleWatcher(nc.jetstream(), "ft_rules_test", max_rules=3)
        await w.start()
        await asyncio.wait_for(w.ready.wait(), 10)
        assert len(w.rules) == 3 and w.over_limit == 2
        kept = sorted(r.id for r in w.rules)
        # an update of a rule in force still applies; a new one is still refused
        await put_rules(kv, [Rule(id=kept[0], host=["changed.test"], action="alert"),
                             Rule(id="new", host=["new.test"], action="alert")])
        for _ in range(100):
            if w.rules.get(kept[0]).host == ["changed.test"] and w.over_limit == 3:
                break
            await asyncio.sleep(0.05)
        assert w.rules.get(kept[0]).host == ["changed.test"]
        assert w.over_limit == 3 and w.rules.get("new") is None and len(w.rules) == 3
        # removing one makes room
        await kv.delete(kept[1])
        await put_rules(kv, [Rule(id="late", host=["late.test"], action="alert")])
        for _ in range(100):
            if w.rules.get("late") is not None:
                break
            await asyncio.sleep(0.05)
        assert w.rules.get("late") is not None and len(w.rules) == 3
        await w.stop()
        await nc.close()

    asyncio.run(run())


def test_watcher_survives_a_nats_restart(nats_server):
    from shared.bus import Bus
    from shared.settings import BlockSettings

    async def run():
        settings = BlockSettings(nats_url=nats_server.url, probe="unit")
        bus = await Bus.connect(settings, "block-test")
        kv = await open_bucket(bus.js, "ft_rules_test")
        await put_rules(kv, [Rule(id="before", host=["a.test"], action="reset")])
        w = RuleWatcher(bus.js, "ft_rules_test")
        await w.start()
        await asyncio.wait_for(w.ready.wait(), 10)
        await asyncio.get_running_loop().run_in_executor(None, nats_server.restart)
        for _ in range(100):
            if bus.connected:
                break
            await asyncio.sleep(0.1)
        nc, kv2 = await _kv(nats_server.url)
        await put_rules(kv2, [Rule(id="after", host=["b.test"], action="reset")])
        await nc.close()
        for _ in range(200):
            if w.rules.get("after") is not None:
                break
            await asyncio.sleep(0.1)
        seen = w.rules.get("after") is not None and w.rules.get("before") is not None
        await w.stop()
        await bus.close()
        return seen

    assert asyncio.run(run())


@pytest.mark.parametrize("data,why", [
    ({"host": "*"}, "host '*'"),
    ({"host": ["ok.test", "**"]}, "host '**'"),
    ({"cidr": "0.0.0.0/0"}, "cidr 0.0.0.0/0"),
    ({"cidr": "::/0", "host": "*"}, "host '*', cidr ::/0"),
    ({"transport": "TCP"}, "transport TCP only"),
    ({"cidr": "0.0.0.0/0", "transport": "UDP"}, "cidr 0.0.0.0/0, transport UDP only"),
])
def test_rules_that_match_everything_are_refused_unless_forced(data, why):
    with pytest.raises(RuleError) as exc:
        parse_rule({"id": "all", "action": "reset", **data})
    assert "matches every flow" in str(exc.value) and why in str(exc.value) and "force" in str(exc.value)
    r = parse_rule({"id": "all", "action": "reset", "force": True, **data})
    assert r.force and r.matches_everything()


def test_narrowed_broad_rules_are_accepted():
    for data in ({"cidr": "0.0.0.0/0", "port": 22}, {"host": "*", "app_protocol": "TLS"},
                 {"host": "*.bad.test"}, {"cidr": "10.0.0.0/8"}):
        assert parse_rule({"id": "n", "action": "reset", **data}).matches_everything() == ""


def test_rules_add_refuses_a_match_all_rule_without_force(capsys):
    assert rules_command(["--nats", "nats://127.0.0.1:1", "add", "--id", "x", "--action", "reset",
                          "--host", "*"]) == 2
    assert "matches every flow" in capsys.readouterr().err
