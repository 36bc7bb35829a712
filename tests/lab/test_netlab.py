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


from tests.lab import lab_fixture, servers  # noqa: E402

served = lab_fixture(scope="module", mode="hub", net=71)


def test_servers_answer_real_clients(served, tmp_path):
    lab = served
    srv = lab.server.ip
    servers.start_http(lab)
    servers.start_https(lab, tmp_path, names=["tls.lab.test"])
    servers.start_dnsmasq(lab, {"name.lab.test": [srv, lab.server.ip6]})
    servers.start_sshd(lab, tmp_path)
    r = lab.run("client", "curl", "-s", f"http://{srv}/")
    assert r.stdout == servers.BODY.decode()
    r = lab.run("client", "curl", "-s", "-k", "-v", "--tlsv1.3", "--resolve", f"tls.lab.test:443:{srv}",
                "https://tls.lab.test/")
    assert r.stdout == servers.BODY.decode() and "TLSv1.3" in r.stderr and "CN=tls.lab.test" in r.stderr
    assert lab.run("client", "dig", "+short", f"@{srv}", "name.lab.test", "A").stdout.strip() == srv
    assert lab.run("client", "dig", "+short", f"@{srv}", "name.lab.test", "AAAA").stdout.strip() == lab.server.ip6
    r = lab.run("client", "ssh", "-v", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o",
                "UserKnownHostsFile=/dev/null", f"x@{srv}", "true")
    assert r.returncode == 255 and "Remote protocol version 2.0" in r.stderr


def test_netns_switch_opens_sockets_inside_the_probe_namespace():
    """``lab.netns("probe")`` lets in-process code (pypcap here) use the probe's own namespace."""
    import select

    skip_unless_lab()
    from services.capture.sources import LiveSource

    import os

    own = os.stat("/proc/thread-self/ns/net").st_ino
    with Lab(mode="mirror", net=73) as lab:
        with lab.netns("probe"):
            inside = os.stat("/proc/thread-self/ns/net").st_ino
            src = LiveSource(lab.probe_iface, bpf="icmp", direction_in=True)
        assert inside != own and os.stat("/proc/thread-self/ns/net").st_ino == own
        try:
            r = lab.run("client", sys.executable, TOOLS, "ping", lab.server.ip, "--count", "2", "--interval", "0.05")
            assert r.stdout.strip() == "replies=2"
            got, deadline = [], time.monotonic() + 3
            while len(got) < 4 and time.monotonic() < deadline:
                select.select([src.fileno()], [], [], 0.1)
                got += src.read_available()
            assert len(got) == 4  # 2 requests + 2 replies, each seen once through the mirror
        finally:
            src.close()
