"""Every configuration error, of every service and command: one line naming the variable or option,
exit status 2, before anything connects (issue 13 item 4); unreachable NATS for a client command:
one line, no tracebacks (item 5)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flowtarget.embedded import free_port

REPO = Path(__file__).resolve().parents[2]
SAMPLE = str(REPO / "samples" / "sample.pcap")


def run(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("FT_")}
    # nothing listens there: a case that got past its configuration would hang, not pass
    full.update({"FT_NATS_URL": f"nats://127.0.0.1:{free_port()}", **env})
    return subprocess.run([sys.executable, "-m", "flowtarget", *args], env=full, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


CASES = [
    (["block"], {"FT_ALLOWLIST": '["10.50.0.0/16", 10.60'}, "FT_ALLOWLIST"),
    (["block"], {"FT_PROBE_ADDRESSES": '["10.0.0.1"'}, "FT_PROBE_ADDRESSES"),
    (["block"], {"FT_RATE_BURST": "many"}, "FT_RATE_BURST"),
    (["capture"], {"FT_PCAP": "notjson"}, "FT_PCAP"),
    (["capture"], {"FT_PCAP": '["/nonexistent.pcap"]'}, "FT_PCAP"),
    (["capture"], {"FT_IFACE": "nonexist0"}, "FT_IFACE"),
    (["capture"], {"FT_IFACE": "lo", "FT_BPF": "this is not bpf"}, "FT_BPF"),
    (["capture"], {"FT_PCAP": SAMPLE, "FT_SNAPLEN": "big"}, "FT_SNAPLEN"),
    (["capture"], {}, "FT_IFACE"),
    (["capture"], {"FT_PCAP": SAMPLE, "FT_ARP_FLOOD_PPS": "abc"}, "FT_ARP_FLOOD_PPS"),
    (["analyze", SAMPLE], {"FT_SCAN_WINDOW_S": "-1"}, "FT_SCAN_WINDOW_S"),
    (["store"], {"FT_INFLUX_URL": "notaurl"}, "FT_INFLUX_URL"),
    (["classify"], {"FT_NATS_URL": "localhost:4222"}, "FT_NATS_URL"),
    (["classify"], {"FT_PROBE": "a.b"}, "FT_PROBE"),
    (["run", "--iface", "nonexist0"], {}, "--iface"),
    (["run", "--pcap", SAMPLE], {"FT_ALLOWLIST": "[x"}, "FT_ALLOWLIST"),
    (["analyze", SAMPLE], {"FT_INFLUX_URL": "notaurl"}, "FT_INFLUX_URL"),
    (["analyze", SAMPLE], {"FT_BPF": "not ( bpf"}, "FT_BPF"),
]


@pytest.mark.parametrize("args,env,name", CASES, ids=[f"{' '.join(a)}:{n}" for a, _e, n in CASES])
def test_configuration_error_is_one_line_naming_it(args, env, name):
    p = run(args, env)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert len(lines) == 1, p.stderr[-2000:]
    assert name in lines[0] and "configuration error" in lines[0] or name == "--iface" and "--iface" in lines[0]
    assert "Traceback" not in p.stderr + p.stdout


def test_lists_take_json_or_comma_separated(monkeypatch):
    from shared.settings import BlockSettings, CaptureSettings, DetectSettings

    monkeypatch.setenv("FT_ALLOWLIST", "10.0.0.0/8, 192.168.1.1")
    monkeypatch.setenv("FT_PROBE_ADDRESSES", '["10.0.0.1", "fd00::1"]')
    b = BlockSettings()
    # block normalizes each entry to a network (a host is a /32 or /128)
    assert b.allowlist == ["10.0.0.0/8", "192.168.1.1/32"] and b.probe_addresses == ["10.0.0.1/32", "fd00::1/128"]
    monkeypatch.setenv("FT_PCAP", "/a.pcap,/b.pcap")
    assert CaptureSettings().pcap == [Path("/a.pcap"), Path("/b.pcap")]
    monkeypatch.setenv("FT_PCAP", "")
    assert CaptureSettings().pcap == []
    monkeypatch.setenv("FT_ARP_PROTECTED_IPS", "10.0.0.1")
    assert DetectSettings().arp_protected_ips == ["10.0.0.1"]


def test_analyze_with_unreachable_nats_fails_fast_in_one_line():
    p = run(["analyze", "--nats", f"nats://127.0.0.1:{free_port()}", SAMPLE], {}, timeout=30)
    assert p.returncode == 1, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "--nats" in lines[0] and "cannot connect" in lines[0], p.stderr[-2000:]


def test_alerts_with_nats_down_or_a_bad_url_is_one_line():
    p = run(["alerts"], {}, timeout=60)
    assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1 and "NATS" in p.stderr, p.stderr
    p = run(["alerts", "--nats", "notaurl"], {}, timeout=60)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "FT_NATS_URL" in p.stderr, p.stderr


def test_rules_list_with_nats_down_is_one_line():
    p = run(["rules", "list"], {}, timeout=30)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "NATS" in lines[0], p.stderr[-2000:]
    assert "Traceback" not in p.stderr
