"""The optional libndpi engine: built with cffi against the installed headers, used for Unknown flows."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.classify import ndpi_engine
from services.classify.apps import Apps
from services.classify.engine import Engine
from shared.models import FlowSample

pytestmark = pytest.mark.skipif(not Path("/usr/include/ndpi/ndpi_api.h").is_file(),
                                reason="libndpi-dev not installed: no second engine")


@pytest.fixture(scope="module")
def ndpi(tmp_path_factory):
    out = tmp_path_factory.mktemp("ndpi")
    ndpi_engine.build(out)
    return ndpi_engine.NdpiEngine(ndpi_engine._import_binding(out))


def sample(transport, src, dst, dport):
    return FlowSample(timestamp=1.0, probe="t", flow_id="f", transport=transport, src_ip="192.168.1.2", src_port=43210,
                      dst_ip="192.168.1.3", dst_port=dport, first_seen=1000.0, src_payloads=src, dst_payloads=dst,
                      payload_dirs="s" * len(src) + "d" * len(dst))


def test_ndpi_names_http_and_host(ndpi):
    s = sample("TCP", [b"GET / HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: x\r\n\r\n"],
               [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"], 8081)
    got = ndpi(s)
    assert got is not None and got[0] == "HTTP" and got[2] == "www.example.com"


def test_ndpi_only_for_unknown_flows(ndpi):
    calls = []

    def second(s):
        calls.append(s)
        return ndpi(s)

    e = Engine(registry=[], apps=Apps({}), second=second, port_guess=False)
    v = e.classify(sample("TCP", [b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"], [], 8081))
    assert v.app_protocol == "HTTP" and v.confidence == "dpi" and v.host == "a.example"
    assert e.counters["second"] == 1
    v = e.classify(sample("UDP", [b"\x00" * 3], [], 40000))
    assert v.app_protocol == "Unknown"


def test_absent_library_is_absent_engine(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(ndpi_engine, "_tried", False)
    monkeypatch.setattr(ndpi_engine, "_loaded", None)
    monkeypatch.setenv("FT_NDPI_BUILD_DIR", str(tmp_path / "none"))
    with caplog.at_level("INFO"):
        assert ndpi_engine.load_ndpi(build_if_missing=False) is None
    assert "not" in caplog.text


def test_runtime_image_has_the_second_engine():
    """The Dockerfile compiles the libndpi binding in the build stage (setup.sh installs libndpi-dev
    there), and the runtime stage installs the library that binding links, points the engine at the
    binding and checks at build time that it loads."""
    import re
    import shutil
    import subprocess

    from tests.deploy.test_dockerfile import DOCKERFILE, parse_dockerfile

    stages = parse_dockerfile(DOCKERFILE.read_text())
    build, runtime = stages[0], stages[-1]
    built = re.search(r"FT_NDPI_BUILD_DIR=(\S+) \S*python -m services\.classify\.ndpi_engine --build",
                      " ".join(build.all("RUN")))
    assert built, "the build stage does not compile the libndpi binding"
    assert any(f"FT_NDPI_BUILD_DIR={built.group(1)}" in e for e in runtime.all("ENV"))
    apt = " ".join(runtime.all("RUN"))
    pkg = re.search(r"\b(libndpi[0-9][\w.]*)\b", apt)
    assert pkg, "the runtime stage does not install libndpi"
    assert "load_ndpi(build_if_missing=False)" in apt
    if shutil.which("apt-cache"):
        # the runtime package is the one the headers the binding was compiled against belong to
        dep = subprocess.run(["apt-cache", "depends", "libndpi-dev"], capture_output=True, text=True).stdout
        if dep.strip():
            assert pkg.group(1) in dep, dep


@pytest.mark.parametrize("ip", ["1.2.3.4", "0.0.0.0", "255.255.255.255", "::1", "::", "fe80::1", "::ffff:1.2.3.4",
                                "2001:db8::8a2e:370:7334", "fe80::1%eth0", "999.1.1.1", "01.2.3.4", "1.2.3", "",
                                "a:b", "1.2.3.4 ", "::1::2", "host.example"])
def test_packed_addresses_are_ipaddress_bytes(ip):
    """The synthetic packets' addresses: what ipaddress packs, None where it refuses (no packet is made)."""
    import ipaddress

    try:
        want = ipaddress.ip_address(ip).packed
    except ValueError:
        want = None
    assert ndpi_engine._packed(ip) == want
