"""The compose stack's wiring, run on this machine without Docker.

Reads docker-compose.yml and starts every FlowTarget service's ``command`` as a
process with exactly the environment compose would give its container (the
``environment:`` mapping interpolated from .env.example-style values, plus the
image's ``ENV``), in ``depends_on`` order, waiting on each ``service_healthy``
dependency with that service's own compose health check command.  The
infrastructure services are real local servers standing in for the containers:

- ``nats``: nats-server started with the compose service's command, its mounted
  deploy/nats/nats.conf and its environment (so authentication and JetStream
  come from the same file and variables as in the container);
- ``influxdb``: victoria-metrics (tests/vm.py), which serves InfluxDB 2's write API.

What is rewritten, and why (Docker would provide it): the hostnames ``nats`` and
``influxdb`` and the host port NATS is published on point at those local
servers; paths that are volume or bind-mount targets point at temporary
directories or the repository files mounted there; each bridge-network
container's metrics port (the same 9100 in every container) gets its own free
port here, since these processes share one network namespace.

A capture (samples/sample.pcap plus a crafted ARP flood, handed over as
``FT_PCAP`` like ``docker compose run -e FT_PCAP=...``) must end up in
victoria-metrics and its alert must reach a NATS subscriber.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flowtarget.embedded import find_nats_server, free_port, wait_port
from tests.deploy.composeenv import REPO, example_env, interpolate, load_compose, service_env
from tests.deploy.test_dockerfile import DOCKERFILE, parse_dockerfile

FT_SERVICES = ("classify", "store", "block", "capture")
SCALE = {"classify": 2, "store": 2}  # docker compose up --scale classify=2 --scale store=2
SAMPLE = REPO / "samples" / "sample.pcap"

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------- inputs


def write_arp_flood(path: Path, start: float, n: int = 300, interval_s: float = 0.003) -> None:
    """n ARP who-has requests from one MAC, interval_s apart (333/s: over the 50/s threshold)."""
    mac = bytes.fromhex("026600000066")
    recs = []
    for i in range(n):
        arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, bytes([10, 77, 0, 66]), b"\0" * 6,
                          bytes([10, 77, 1, i % 250 + 1]))
        frame = b"\xff" * 6 + mac + b"\x08\x06" + arp + b"\0" * 18
        ts = start + i * interval_s
        sec, usec = int(ts), int(round((ts - int(ts)) * 1e6))
        recs.append(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + b"".join(recs))


# --------------------------------------------------------------------------- the stand-in "docker"


class Stack:
    def __init__(self, tmp: Path, nats_port: int, nats_mon: int, vm_url: str) -> None:
        self.tmp = tmp
        self.env_file = example_env()
        # this machine's .env: the NIC names must exist here (capture replays FT_PCAP anyway)
        self.env_file.update(FT_IFACE="lo", FT_BLOCK_IFACE="lo")
        self.raw = load_compose()
        self.doc = interpolate(self.raw, self.env_file)
        self.services = self.doc["services"]
        self.nats_port, self.nats_mon, self.vm_url = nats_port, nats_mon, vm_url
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.metrics_ports: dict[str, int] = {}
        # host port compose publishes NATS on ("BIND:HOST:CONTAINER")
        published = self.services["nats"]["ports"][0].split(":")
        self.nats_published = int(published[-2])
        self.image_env = self._image_env()

    def _image_env(self) -> dict[str, str]:
        runtime = parse_dockerfile(DOCKERFILE.read_text())[-1]
        env: dict[str, str] = {}
        for arg in runtime.all("ENV"):
            for m in re.finditer(r"(\w+)=(\S+)", arg):
                env[m.group(1)] = m.group(2)
        return env

    # --- what Docker would do to paths and names
    def mounts(self, name: str) -> dict[str, str]:
        out = {}
        for v in self.services[name].get("volumes") or []:
            src, target = v.split(":")[:2]
            if src.startswith("./"):
                out[target] = str(REPO / src[2:])
            else:
                d = self.tmp / "volumes" / src
                d.mkdir(parents=True, exist_ok=True)
                out[target] = str(d)
        return out

    def rewrite(self, value: str, mounts: dict[str, str]) -> str:
        if value in mounts:
            return mounts[value]
        local_nats = f"127.0.0.1:{self.nats_port}"
        value = re.sub(r"(nats|tls)://nats:4222", rf"\1://{local_nats}", value)
        value = re.sub(rf"(nats|tls)://(127\.0\.0\.1|localhost):{self.nats_published}\b", rf"\1://{local_nats}", value)
        vm = urllib.parse.urlsplit(self.vm_url)
        return re.sub(r"http://influxdb:8086", f"http://{vm.netloc}", value)

    def env(self, name: str, extra: dict[str, str] | None = None, replica: int = 1) -> dict[str, str]:
        mounts = self.mounts(name)
        env = {"HOME": str(self.tmp), "LANG": "C.UTF-8"}
        env.update(self.image_env)
        env["PATH"] = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        for k, v in service_env(self.doc, name).items():
            env[k] = self.rewrite(v, mounts)
        if "FT_METRICS_PORT" in env:
            env["FT_METRICS_PORT"] = str(self.metrics_ports.setdefault(f"{name}-{replica}", free_port()))
        env.update(extra or {})
        return env

    def argv(self, cmd: list[str]) -> list[str]:
        if cmd[0] == "flowtarget":
            exe = Path(sys.executable).parent / "flowtarget"
            return ([str(exe)] if exe.exists() else [sys.executable, "-m", "flowtarget"]) + cmd[1:]
        if cmd[0] == "python":
            return [sys.executable] + cmd[1:]
        return cmd

    # --- nats, from the compose service
    def start_nats(self) -> None:
        svc = self.services["nats"]
        mounts = self.mounts("nats")
        args = [mounts.get(a, a) for a in svc["command"]]
        env = {k: self.rewrite(v, mounts) for k, v in service_env(self.doc, "nats").items()}
        log = self.tmp / "nats.log"
        self.logs["nats"] = log
        self.procs["nats"] = subprocess.Popen(
            [find_nats_server(), *args, "-a", "127.0.0.1", "-p", str(self.nats_port), "-m", str(self.nats_mon)],
            env={"PATH": "/usr/bin:/bin", **env}, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
            start_new_session=True)
        assert wait_port("127.0.0.1", self.nats_port, 15), log.read_text()[-2000:]

    def nats_healthy(self) -> bool:
        test = self.services["nats"]["healthcheck"]["test"]
        url = next(a for a in test if a.startswith("http://")).replace(":8222", f":{self.nats_mon}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    # --- FlowTarget services
    def start(self, name: str, extra: dict[str, str] | None = None, replica: int = 1) -> subprocess.Popen:
        key = f"{name}-{replica}"
        log = self.tmp / f"{key}.log"
        self.logs[key] = log
        p = subprocess.Popen(self.argv(self.services[name]["command"]), env=self.env(name, extra, replica),
                             cwd=self.tmp, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[key] = p
        return p

    def healthy(self, name: str, replica: int = 1) -> bool:
        if name == "nats":
            return self.nats_healthy()
        if name == "influxdb":
            try:
                with urllib.request.urlopen(self.vm_url + "/health", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False
        test = self.services[name]["healthcheck"]["test"]
        assert test[0] == "CMD"
        r = subprocess.run(self.argv(test[1:]), env=self.env(name, replica=replica), cwd=self.tmp,
                           capture_output=True, timeout=30)
        return r.returncode == 0

    def wait_healthy(self, name: str, timeout_s: float = 60.0) -> None:
        """Every replica of ``name`` healthy (compose's service_healthy)."""
        for replica in range(1, (SCALE.get(name, 1) if name in FT_SERVICES else 1) + 1):
            key = f"{name}-{replica}" if name in FT_SERVICES else name
            deadline = time.monotonic() + timeout_s
            while True:
                p = self.procs.get(key)
                if p is not None and p.poll() is not None:
                    raise AssertionError(f"{key} exited with {p.returncode}:\n{self.tail(key)}")
                if self.healthy(name, replica):
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"{key} not healthy after {timeout_s}s:\n{self.tail(key)}")
                time.sleep(0.3)

    def wait_dependencies(self, name: str) -> None:
        for dep, cond in (self.services[name].get("depends_on") or {}).items():
            if cond["condition"] == "service_healthy":
                self.wait_healthy(dep)

    def tail(self, name: str, n: int = 40) -> str:
        log = self.logs.get(name)
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:]) if log and log.exists() else ""

    def stop(self, name: str, timeout_s: float = 20.0) -> int | None:
        p = self.procs.get(name)
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
                return None
        return p.returncode

    def close(self) -> None:
        for name in list(self.procs)[::-1]:
            self.stop(name)


def start_order(services: dict) -> list[str]:
    """FlowTarget services in depends_on order (what compose does)."""
    order: list[str] = []

    def visit(n: str) -> None:
        if n in order or n not in FT_SERVICES:
            return
        for dep in services[n].get("depends_on") or {}:
            visit(dep)
        order.append(n)

    for n in FT_SERVICES:
        visit(n)
    return order


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# --------------------------------------------------------------------------- the test


def test_compose_wiring_stores_a_capture_and_delivers_its_alerts(tmp_path, vm_server):
    import nats

    from flowtarget.cli import service_available
    from shared.models import Alert, events_of, parse_event

    if not SAMPLE.is_file():
        pytest.skip("samples/sample.pcap missing")
    flood = tmp_path / "arp-flood.pcap"
    write_arp_flood(flood, time.time() - 120)

    stack = Stack(tmp_path, free_port(), free_port(), vm_server.url)
    order = start_order(stack.services)
    assert order.index("capture") > order.index("classify")  # capture waits for classify (depends_on)
    # block needs its interface and CAP_NET_RAW (the container gets it by cap_add; here: root)
    skipped = [n for n in order if not service_available(n) or (n == "block" and os.geteuid() != 0)]
    assert "capture" not in skipped and "classify" not in skipped and "store" not in skipped
    alerts: list[Alert] = []
    try:
        stack.start_nats()
        stack.wait_healthy("nats", 20)
        creds = service_env(stack.doc, "classify")

        async def subscribe_and_run() -> list[Alert]:
            nc = await nats.connect(f"nats://127.0.0.1:{stack.nats_port}", user=creds["FT_NATS_USER"],
                                    password=creds["FT_NATS_PASSWORD"])

            async def on_alert(msg) -> None:
                for ev in events_of(parse_event(msg.data)):
                    if isinstance(ev, Alert):
                        alerts.append(ev)

            await nc.subscribe("ft.alert.>", cb=on_alert)
            await nc.flush()
            for name in order:
                if name in skipped:
                    continue
                await asyncio.to_thread(stack.wait_dependencies, name)
                extra = {"FT_PCAP": json.dumps([str(SAMPLE), str(flood)])} if name == "capture" else None
                for replica in range(1, SCALE.get(name, 1) + 1):
                    stack.start(name, extra, replica)
                if name != "capture":
                    await asyncio.to_thread(stack.wait_healthy, name)
            cap = stack.procs["capture-1"]
            deadline = time.monotonic() + 120
            while cap.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert cap.returncode == 0, f"capture exited {cap.returncode}:\n{stack.tail('capture-1')}"
            for _ in range(50):
                if any(a.alert_type == "arp_flood" for a in alerts):
                    break
                await asyncio.sleep(0.1)
            await nc.close()
            return alerts

        asyncio.run(subscribe_and_run())

        # the subscriber got the ARP flood alert, from this probe
        probe = stack.env_file["FT_PROBE"]
        flood_alerts = [a for a in alerts if a.alert_type == "arp_flood"]
        assert flood_alerts, f"no arp_flood alert on ft.alert.>: {[a.alert_type for a in alerts]}\n" \
                             f"{stack.tail('capture-1')}"
        assert all(a.probe == probe for a in flood_alerts)

        # stored: the sample's flows by protocol, its DNS, and the alert
        want = {"HTTP", "TLS", "DNS", "SSH"}
        deadline = time.monotonic() + 60
        protos: set[str] = set()
        while time.monotonic() < deadline:
            series = vm_server.export('{__name__="flows_src2dst_bytes"}')
            protos = {s["metric"].get("app_protocol", "") for s in series if s["metric"].get("probe") == probe}
            stored_alerts = vm_server.export('{__name__="alerts_count",alert_type="arp_flood"}')
            dns = vm_server.export('{__name__=~"dns_.*"}')
            if want <= protos and stored_alerts and dns:
                break
            time.sleep(0.5)
        assert want <= protos, f"stored protocols {protos}\nstore log:\n{stack.tail('store-1')}"
        assert stored_alerts and dns

        # the running services' endpoints: healthy, connected, counting
        for name in ("classify-1", "classify-2", "store-1", "store-2"):
            port = stack.metrics_ports[name]
            status, body = _get(f"http://127.0.0.1:{port}/healthz")
            assert status == 200 and json.loads(body)["nats_connected"] is True
            status, text = _get(f"http://127.0.0.1:{port}/metrics")
            assert status == 200
            fams = {f.name: f for f in text_string_to_metric_families(text)}
            sample = fams["flowtarget_nats_connected"].samples[0]
            assert sample.value == 1 and sample.labels == {"service": name.split("-")[0], "probe": probe}
            assert "flowtarget_bus_malformed_total" in text
        written = []
        for name in ("store-1", "store-2"):
            _, store_metrics = _get(f"http://127.0.0.1:{stack.metrics_ports[name]}/metrics")
            m = re.search(r"^flowtarget_store_points_written_total\{[^}]*\} (\S+)$", store_metrics, re.M)
            if m:  # once the store registers its stats (register_stats("store", ...))
                written.append(float(m.group(1)))
        if written:
            assert sum(written) > 0

        # the pipeline-health dashboard's PromQL runs against what the services expose:
        # their /metrics imported into victoria-metrics (MetricsQL accepts PromQL)
        for name, port in stack.metrics_ports.items():
            proc = stack.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            _, text = _get(f"http://127.0.0.1:{port}/metrics")
            # stamped a minute back: victoria-metrics hides the last 30 s from queries (-search.latencyOffset)
            ms = int((time.time() - 60) * 1000)
            text = "\n".join(ln if not ln or ln.startswith("#") else f"{ln} {ms}" for ln in text.splitlines()) + "\n"
            job, instance = name.rsplit("-", 1)
            url = (f"{vm_server.url}/api/v1/import/prometheus?extra_label=job={job}"
                   f"&extra_label=instance={job}-{instance}")
            with urllib.request.urlopen(urllib.request.Request(url, data=text.encode(), method="POST"), timeout=10):
                pass
        vm_server.flush()
        board = json.loads((REPO / "deploy/grafana/dashboards/pipeline-health.json").read_text())
        answered = {}
        for panel in board["panels"]:
            for t in panel["targets"]:
                if "expr" not in t:
                    continue
                expr = t["expr"].replace("$probe", ".*")
                status, body = _get(f"{vm_server.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
                assert status == 200 and json.loads(body)["status"] == "success", f"{panel['title']}: {body[:300]}"
                answered[panel["title"]] = json.loads(body)["data"]["result"]
        ready = {r["metric"].get("service"): float(r["value"][1]) for r in answered["Services healthy"]}
        assert ready.get("classify") == 2 and ready.get("store") == 2, ready  # two replicas each, all ready

        # a clean stop: SIGTERM (docker stop) ends every service with status 0
        for name in ("block-1", "store-1", "store-2", "classify-1", "classify-2"):
            if name in stack.procs:
                assert stack.stop(name) == 0, f"{name}:\n{stack.tail(name)}"
    finally:
        stack.close()
