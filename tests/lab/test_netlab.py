"""The lab itself: hosts reach each other, the probe sees their traffic once, teardown leaves nothing."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.lab import Lab, skip_unless_lab
from tests.lab.netlab import _netns_list

TOOLS = str(__import__("pathlib").Path(__file__).with_name("tools.py"))

pytestmark = pytest.mark.root


@pytest.mark.parametrize("mode,delay_ms", [("hub", 0), ("mirror", 30)])
def test_probe_sees_each_frame_once_and_teardown_is_clean(mode, delay_ms):
    skip_unless_lab()
    with Lab(mode=mode, delay_ms=delay_ms) as lab:
        prefix = lab.prefix
        td = lab.popen("probe", "tcpdump", "-n", "-l", "-i", lab.probe_iface, "icmp",
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        time.sleep(0.5)
        t0 = time.monotonic()
        r = lab.run("client", sys.executable, TOOLS, "ping", lab.server.ip, "--count", "3", "--interval", "0.05")
        rtt = time.monotonic() - t0
        assert r.stdout.strip() == "replies=3"
        time.sleep(0.3)
        td.terminate()
        lines = [line for line in td.communicate()[0].splitlines() if "ICMP echo" in line]
        assert sum("echo request" in line for line in lines) == 3
        assert sum("echo reply" in line for line in lines) == 3
        if delay_ms:
            assert lab.delay_method in ("netem", "delayline")
            assert rtt >= 3 * 2 * delay_ms / 1000.0
        # the probe is silent: no IPv4 and no IPv6 address
        addrs = lab.run("probe", "ip", "-o", "addr", "show", "dev", lab.probe_iface).stdout
        assert "inet" not in addrs
    assert not [ns for ns in _netns_list() if ns.startswith(prefix)]


def test_teardown_after_failure_removes_everything():
    skip_unless_lab()
    prefix = ""
    with pytest.raises(RuntimeError):
        with Lab(delay_ms=10) as lab:
            prefix = lab.prefix
            lab.popen("server", "sleep", "60")
            raise RuntimeError("boom")
    assert prefix and not [ns for ns in _netns_list() if ns.startswith(prefix)]
