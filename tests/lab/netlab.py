"""A network-namespace lab: real hosts on a bridge and a probe on a mirror.

``Lab`` builds, with a per-run unique name prefix (namespace names are global
on the host)::

    client (10.77.N.2, fd77:0:0:N::2) ──┐
    server (10.77.N.3, fd77:0:0:N::3) ──┤ br0 (bridge namespace, stp off)
    extra hosts (.4, .5, ...)  ─────────┤
    probe (no IP, IPv6 off) ◄───────────┘ hub mode (ageing_time 0: every frame
                                          flooded) or mirror mode (tc mirred
                                          from the host ports, probe port with
                                          learning/flooding off)

with offloads off on every veth end, and optionally a delay on the server side
(``sch_netem`` where the kernel has it, else the userspace delay line in
``delayline.py``) so that the probe wins races as it would across a WAN.

It is a context manager usable from scripts and from pytest fixtures; teardown
kills every process inside its namespaces and deletes them even after
failures, and ``cleanup_stale()`` removes namespaces left by dead runs.

    with Lab(mode="mirror", delay_ms=50) as lab:
        lab.run("client", "curl", "-s", f"http://{lab.server.ip}/")
        p = lab.popen("probe", "tcpdump", "-i", lab.probe_iface, "-w", "x.pcap")

``probe_in_root=True`` puts the probe's interface in the caller's own network
namespace instead (named ``lab.probe_iface``), so that code in the test process
(pypcap, NATS on 127.0.0.1) can use it directly; ``lab.netns(host)`` switches
the calling thread into a lab namespace for opening sockets there.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

PREFIX = "ftl"
_NAME_RE = re.compile(rf"^{PREFIX}(\d+)x(\d+)-")
_counter = itertools.count()
CLONE_NEWNET = 0x40000000
HERE = Path(__file__).resolve().parent


class LabError(RuntimeError):
    """A lab command failed; the message carries the command and its stderr."""


def _sh(*cmd: str, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise LabError(f"{' '.join(cmd)} -> rc={p.returncode}: {p.stderr.strip() or p.stdout.strip()}")
    return p


def lab_available() -> tuple[bool, str]:
    """(True, "") when this process can build a lab, else (False, reason)."""
    if os.geteuid() != 0:
        return False, "needs root for network namespaces"
    if shutil.which("ip") is None:
        return False, "iproute2 'ip' not installed"
    name = f"{PREFIX}{os.getpid()}x{next(_counter)}-chk"
    try:
        p = _sh("ip", "netns", "add", name, check=False)
        if p.returncode != 0:
            return False, f"'ip netns add' failed: {p.stderr.strip()}"
    finally:
        _sh("ip", "netns", "del", name, check=False)
    return True, ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _netns_list() -> list[str]:
    p = _sh("ip", "netns", "list", check=False)
    return [line.split()[0] for line in p.stdout.splitlines() if line.strip()]


def _kill_ns_pids(ns: str) -> None:
    p = _sh("ip", "netns", "pids", ns, check=False)
    pids = [int(x) for x in p.stdout.split() if x.isdigit()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                alive.append(pid)
        if not alive:
            return
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and any(_pid_alive(x) for x in alive):
            time.sleep(0.02)
        pids = [x for x in alive if _pid_alive(x)]


def cleanup_stale() -> list[str]:
    """Delete lab namespaces (and root-side probe interfaces) of runs whose process is gone."""
    removed = []
    for ns in _netns_list():
        m = _NAME_RE.match(ns)
        if m and not _pid_alive(int(m.group(1))):
            _kill_ns_pids(ns)
            _sh("ip", "netns", "del", ns, check=False)
            removed.append(ns)
    p = _sh("ip", "-o", "link", "show", check=False)
    for line in p.stdout.splitlines():
        m = re.match(r"^\d+:\s+(ftp(\d+)x\d+)[@:]", line)
        if m and not _pid_alive(int(m.group(2))):
            _sh("ip", "link", "del", m.group(1), check=False)
            removed.append(m.group(1))
    return removed


@dataclass
class Host:
    """One lab host: its namespace, addresses and the name of its interface."""

    name: str
    ns: str | None
    ip: str = ""
    ip6: str = ""
    mac: str = ""
    iface: str = "eth0"
    port: str = ""  # its veth end in the bridge namespace
    index: int = 0


@dataclass
class Lab:
    """The lab; see the module docstring.  All arguments are optional."""

    hosts: Sequence[str] = ("client", "server")
    mode: str = "hub"  # "hub" or "mirror"
    delay_ms: float = 0.0
    delay_host: str = "server"
    net: int = 0  # third octet: 10.77.<net>.0/24
    probe: bool = True
    probe_in_root: bool = False
    ipv6: bool = True

    # filled by start()
    prefix: str = ""
    bridge_ns: str = ""
    delay_method: str = ""
    _hosts: dict[str, Host] = field(default_factory=dict)
    _procs: list[subprocess.Popen] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)
    _root_links: list[str] = field(default_factory=list)
    _delay_proc: subprocess.Popen | None = None

    # ------------------------------------------------------------------ public

    def __post_init__(self) -> None:
        if self.mode not in ("hub", "mirror"):
            raise ValueError("mode must be 'hub' or 'mirror'")
        if "probe" in self.hosts:
            raise ValueError("'probe' is reserved")
        if not 0 <= self.net <= 255:
            raise ValueError("net must be 0..255")

    def __enter__(self) -> "Lab":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def client(self) -> Host:
        return self._hosts["client"]

    @property
    def server(self) -> Host:
        return self._hosts["server"]

    @property
    def probe_host(self) -> Host:
        return self._hosts["probe"]

    @property
    def probe_iface(self) -> str:
        """The probe's capture/injection interface (inside ``probe_ns``, or in the caller's namespace)."""
        return self._hosts["probe"].iface

    @property
    def probe_ns(self) -> str | None:
        return self._hosts["probe"].ns

    def host(self, name: str) -> Host:
        return self._hosts[name]

    def ns(self, name: str) -> str | None:
        return self._hosts[name].ns

    def exec_prefix(self, host: str) -> list[str]:
        """The command prefix that runs a command inside ``host``'s namespace."""
        ns = self._hosts[host].ns
        return ["ip", "netns", "exec", ns] if ns else []

    def run(self, host: str, *cmd: str, check: bool = False, timeout: float = 30.0,
            input: str | bytes | None = None, text: bool = True) -> subprocess.CompletedProcess:
        """Run ``cmd`` in ``host``'s namespace and wait; output captured."""
        full = self.exec_prefix(host) + [str(c) for c in cmd]
        p = subprocess.run(full, capture_output=True, text=text, timeout=timeout, input=input)
        if check and p.returncode != 0:
            raise LabError(f"[{host}] {' '.join(map(str, cmd))} -> rc={p.returncode}: {p.stderr!s:.500}")
        return p

    def popen(self, host: str, *cmd: str, **kw: object) -> subprocess.Popen:
        """Start ``cmd`` in ``host``'s namespace; it is killed at teardown."""
        full = self.exec_prefix(host) + [str(c) for c in cmd]
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(full, **kw)  # type: ignore[arg-type]
        self._procs.append(p)
        return p

    @contextlib.contextmanager
    def netns(self, host: str) -> Iterator[None]:
        """Switch the calling thread into ``host``'s namespace (sockets opened inside stay there)."""
        ns = self._hosts[host].ns
        if ns is None:
            yield
            return
        libc = ctypes.CDLL(None, use_errno=True)
        with open("/proc/thread-self/ns/net") as orig, open(f"/var/run/netns/{ns}") as target:
            if libc.setns(target.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {ns}")
            try:
                yield
            finally:
                if libc.setns(orig.fileno(), CLONE_NEWNET) != 0:  # pragma: no cover
                    raise OSError(ctypes.get_errno(), "setns back")

    def wait_listening(self, host: str, port: int, proto: str = "tcp", timeout: float = 10.0) -> None:
        """Wait until something listens on ``port`` in ``host``'s namespace."""
        flag = "-Hltn" if proto == "tcp" else "-Hlun"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            p = self.run(host, "ss", flag, f"sport = :{port}")
            if p.stdout.strip():
                return
            time.sleep(0.05)
        raise LabError(f"nothing listens on {proto}/{port} in {host} after {timeout}s")

    # ------------------------------------------------------------------ build

    def start(self) -> None:
        cleanup_stale()
        self.prefix = f"{PREFIX}{os.getpid()}x{next(_counter)}-"
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _new_ns(self, short: str, ipv6: bool) -> str:
        name = self.prefix + short
        _sh("ip", "netns", "add", name)
        self._namespaces.append(name)
        _sh("ip", "-n", name, "link", "set", "lo", "up")
        if not ipv6:
            self._sysctl(name, "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        else:
            self._sysctl(name, "net.ipv6.conf.all.router_solicitations=0",
                         "net.ipv6.conf.default.router_solicitations=0",
                         "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        return name

    @staticmethod
    def _sysctl(ns: str | None, *settings: str) -> None:
        cmd = (["ip", "netns", "exec", ns] if ns else []) + ["sysctl", "-q", "-w", *settings]
        _sh(*cmd, check=False)

    @staticmethod
    def _offloads_off(ns: str | None, dev: str) -> None:
        cmd = (["ip", "netns", "exec", ns] if ns else []) + [
            "ethtool", "-K", dev, "tx", "off", "rx", "off", "gso", "off", "gro", "off", "tso", "off"]
        _sh(*cmd, check=False)

    def _veth(self, host: Host, bridge_end: str) -> None:
        """A veth pair: ``bridge_end`` in the bridge namespace, ``host.iface`` in the host's."""
        target = host.ns if host.ns else str(os.getpid())
        _sh("ip", "-n", self.bridge_ns, "link", "add", bridge_end, "type", "veth",
            "peer", "name", host.iface, "netns", target)
        if host.mac:
            cmd = (["ip", "-n", host.ns] if host.ns else ["ip"]) + ["link", "set", host.iface, "address", host.mac]
            _sh(*cmd)
        self._offloads_off(self.bridge_ns, bridge_end)
        self._offloads_off(host.ns, host.iface)

    def _build(self) -> None:
        n = self.net
        self.bridge_ns = self._new_ns("br", ipv6=False)
        br = self.bridge_ns
        _sh("ip", "-n", br, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
        if self.mode == "hub":
            _sh("ip", "-n", br, "link", "set", "br0", "type", "bridge", "ageing_time", "0")
        _sh("ip", "-n", br, "link", "set", "br0", "up")

        names = list(self.hosts)
        for i, name in enumerate(names):
            idx = 2 + i
            h = Host(
                name=name, ns=self._new_ns(name[:12], ipv6=self.ipv6), index=idx,
                ip=f"10.77.{n}.{idx}", ip6=f"fd77:0:0:{n:x}::{idx:x}" if self.ipv6 else "",
                mac=f"02:77:{n:02x}:00:00:{idx:02x}", port=f"p-{name}"[:15],
            )
            self._hosts[name] = h
            self._veth(h, h.port)
            _sh("ip", "-n", h.ns, "addr", "add", f"{h.ip}/24", "dev", "eth0")
            if h.ip6:
                _sh("ip", "-n", h.ns, "addr", "add", f"{h.ip6}/64", "dev", "eth0", "nodad")
            _sh("ip", "-n", h.ns, "link", "set", "eth0", "up")

        delayed: Host | None = None
        if self.delay_ms > 0:
            delayed = self._hosts[self.delay_host]
        for h in self._hosts.values():
            if h is delayed:
                continue
            _sh("ip", "-n", br, "link", "set", h.port, "master", "br0")
            _sh("ip", "-n", br, "link", "set", h.port, "up")
        if delayed is not None:
            self._add_delay(delayed)

        if self.probe:
            if self.probe_in_root:
                pname = f"ftp{os.getpid()}x{self.prefix.split('x')[1].rstrip('-')}"[:15]
                probe = Host(name="probe", ns=None, iface=pname, port="p-probe")
                self._root_links.append(pname)
            else:
                probe = Host(name="probe", ns=self._new_ns("probe", ipv6=False), port="p-probe")
            self._hosts["probe"] = probe
            self._veth(probe, probe.port)
            if probe.ns is None:
                self._sysctl(None, f"net.ipv6.conf.{probe.iface}.disable_ipv6=1")
            cmd = (["ip", "-n", probe.ns] if probe.ns else ["ip"]) + ["link", "set", probe.iface, "up"]
            _sh(*cmd)
            _sh("ip", "-n", br, "link", "set", probe.port, "master", "br0")
            _sh("ip", "-n", br, "link", "set", probe.port, "up")
            _sh("bridge", "-n", br, "link", "set", "dev", probe.port, "learning", "off")
            if self.mode == "mirror":
                _sh("bridge", "-n", br, "link", "set", "dev", probe.port, "flood", "off",
                    "mcast_flood", "off", "bcast_flood", "off")
                for h in self._hosts.values():
                    if h.name == "probe":
                        continue
                    port = h.port if h is not delayed else f"q-{h.name}"[:15]
                    _sh("ip", "netns", "exec", br, "tc", "qdisc", "add", "dev", port, "ingress")
                    _sh("ip", "netns", "exec", br, "tc", "filter", "add", "dev", port, "parent", "ffff:",
                        "protocol", "all", "prio", "1", "u32", "match", "u32", "0", "0",
                        "action", "mirred", "egress", "mirror", "dev", probe.port)

    def _add_delay(self, h: Host) -> None:
        br = self.bridge_ns
        # try netem first: the host's bridge port joins the bridge directly
        r1 = _sh("ip", "netns", "exec", br, "tc", "qdisc", "add", "dev", h.port, "root", "netem",
                 "delay", f"{self.delay_ms}ms", check=False)
        if r1.returncode == 0:
            _sh("ip", "netns", "exec", h.ns, "tc", "qdisc", "add", "dev", h.iface, "root", "netem",
                "delay", f"{self.delay_ms}ms")
            _sh("ip", "-n", br, "link", "set", h.port, "master", "br0")
            _sh("ip", "-n", br, "link", "set", h.port, "up")
            self.delay_method = "netem"
            return
        # userspace delay line: h.port <-relay-> d-<name> ~veth~ q-<name> (bridged)
        d, q = f"d-{h.name}"[:15], f"q-{h.name}"[:15]
        _sh("ip", "-n", br, "link", "add", d, "type", "veth", "peer", "name", q)
        for dev in (d, q):
            self._offloads_off(br, dev)
        _sh("ip", "-n", br, "link", "set", q, "master", "br0")
        for dev in (h.port, d, q):
            _sh("ip", "-n", br, "link", "set", dev, "promisc", "on")
            _sh("ip", "-n", br, "link", "set", dev, "up")
        p = subprocess.Popen(
            ["ip", "netns", "exec", br, sys.executable, str(HERE / "delayline.py"),
             "--a", h.port, "--b", d, "--delay-ms", str(self.delay_ms)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        self._delay_proc = p
        line = p.stdout.readline() if p.stdout else ""
        if line.strip() != "READY":
            err = p.stderr.read() if p.stderr and p.poll() is not None else ""
            raise LabError(f"delay line did not start: {line!r} {err}")
        self.delay_method = "delayline"

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        for p in reversed(self._procs):
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.terminate()
        deadline = time.monotonic() + 2.0
        for p in self._procs:
            try:
                p.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                with contextlib.suppress(Exception):
                    p.wait(timeout=1)
        self._procs.clear()
        if self._delay_proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self._delay_proc.terminate()
            try:
                self._delay_proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._delay_proc.kill()
                self._delay_proc.wait()
            for s in (self._delay_proc.stdout, self._delay_proc.stderr):
                if s:
                    s.close()
            self._delay_proc = None
        for ns in reversed(self._namespaces):
            _kill_ns_pids(ns)
            _sh("ip", "netns", "del", ns, check=False)
        self._namespaces.clear()
        for link in self._root_links:
            _sh("ip", "link", "del", link, check=False)
        self._root_links.clear()
