"""Issue 13 item 3: allowlist and probe addresses are ip objects; a typo stops block at start."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest
from pydantic import ValidationError

from shared.models import Verdict
from shared.settings import BlockSettings

from services.block.guard import AddressSet, Allowlist, Guard, parse_allow_entry
from services.block.rules import RuleSet, parse_rules_text
from services.block.service import Blocker

RULES = parse_rules_text("rules:\n  - {id: r-reset, host: 'bad.test', action: reset}\n")


def _verdict(src: str, dst: str) -> Verdict:
    return Verdict(timestamp=time.time(), probe="unit", flow_id=f"f-{src}-{dst}", transport="TCP", src_ip=src,
                   src_port=40000, dst_ip=dst, dst_port=80, app_protocol="HTTP", host="bad.test",
                   src_mac="02:00:00:00:00:02", dst_mac="02:00:00:00:00:03", src2dst_next_seq=100,
                   src2dst_ack=200, trigger_time=time.time())


def _outcomes(settings: BlockSettings, *pairs: tuple[str, str]) -> list[str]:
    b = Blocker(settings, bus=None)
    b.on_rules_changed(RuleSet(RULES), [])

    async def go():
        for src, dst in pairs:
            await b.on_verdict(_verdict(src, dst))
    asyncio.run(go())
    return [a.outcome for a in b.recent_actions]


@pytest.mark.parametrize("env,value", [
    ("allowlist", ["10.50.0.0/16", "10.60.0.1/99"]),
    ("allowlist", ["10.60.0"]),
    ("allowlist", ["fd00::zz"]),
    ("allowlist", ["bad host"]),
    ("probe_addresses", ["10.98.0.0/24", "not-an-address"]),
    ("probe_addresses", ["10.98.0.0/33"]),
])
def test_bad_entries_are_refused_naming_the_entry(env, value):
    with pytest.raises(ValidationError) as exc:
        BlockSettings(**{env: value})
    assert repr(value[-1]) in str(exc.value)


def test_good_entries_are_normalized():
    s = BlockSettings(allowlist=["10.50.0.1/16", "FD00:9::/32", "*.Trusted.Test.", "10.7.7.7"],
                      probe_addresses=["10.98.0.0/24", "FD00::1"])
    assert s.allowlist == ["10.50.0.0/16", "fd00:9::/32", "*.trusted.test", "10.7.7.7/32"]
    assert s.probe_addresses == ["10.98.0.0/24", "fd00::1/128"]
    assert parse_allow_entry("host-1.example") == "host-1.example"


def test_probe_networks_and_ipv6_in_any_case_are_never_targeted():
    s = BlockSettings(probe="unit", probe_addresses=["10.98.0.0/24", "FD00::1"])
    out = _outcomes(s, ("10.1.0.2", "10.98.0.7"), ("10.98.0.9", "10.1.0.3"), ("fd00::2", "fd00:0::0001"),
                    ("10.1.0.2", "10.99.0.7"))
    assert out == ["not_possible", "not_possible", "not_possible", "dry_run"]


def test_allowlist_cidrs_and_names_compare_as_ip_objects():
    s = BlockSettings(probe="unit", allowlist=["10.60.0.1", "FD00:60::/32"])
    out = _outcomes(s, ("10.1.0.2", "10.60.0.1"), ("fd00:60::7", "fd00::3"), ("FD00:60::8", "fd00::3"),
                    ("10.1.0.2", "10.60.0.2"))
    assert out == ["allowlisted", "allowlisted", "allowlisted", "dry_run"]
    a = Allowlist(["10.9.0.0/16", "*.trusted.test"])
    assert a.hit(["10.9.3.3"], "") and a.hit(["1.1.1.1"], "WWW.Trusted.Test") and not a.hit(["10.10.0.1"], "x.test")
    own = AddressSet(["fd00::1", "10.0.0.0/8"])
    assert "FD00::1" in own and "::ffff:10.1.2.3" in own and "11.0.0.1" not in own and "junk" not in own
    g = Guard([], ["10.0.0.1"])
    g.own_mac = "02:aa:00:00:00:01"
    assert g.check(["10.0.0.2"], ["02:AA:00:00:00:01"], "")[0] == "not_possible"
    assert g.check(["10.0.0.2"], ["02:00:00:00:00:01"], "") is None


@pytest.mark.parametrize("var,value", [
    ("FT_ALLOWLIST", '["10.50.0.0/16","10.60.0.1/99"]'),
    ("FT_PROBE_ADDRESSES", '["10.98.0.0/24","FD00::1","nohost/5"]'),
])
def test_block_refuses_to_start_with_one_line_naming_the_variable(var, value):
    env = dict(os.environ, **{var: value, "FT_NATS_URL": "nats://127.0.0.1:1"})
    p = subprocess.run([sys.executable, "-m", "flowtarget.cli", "block"], env=env, capture_output=True, text=True,
                       timeout=60)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr
    assert len(lines) == 1 and var in lines[0] and "configuration error" in lines[0], p.stderr
