"""Run FlowTarget services as real processes against a lab's probe interface.

    with Services(nats_url, probe="lab1", iface=lab.probe_iface, log_dir=tmp) as svc:
        svc.start("capture"); svc.start("classify"); svc.start("block", FT_DRY_RUN="0")
        ...

Each service is ``python -m flowtarget <name>`` configured from ``FT_*``
variables, its stderr written to ``log_dir/<name>.log`` (``svc.log(name)``
returns it for failure messages).  Stopped with SIGTERM (then SIGKILL) at exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class Services:
    def __init__(self, nats_url: str, probe: str, iface: str, log_dir: Path, **env: str) -> None:
        self.nats_url = nats_url
        self.probe = probe
        self.iface = iface
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "FT_NATS_URL": nats_url, "FT_PROBE": probe, "FT_IFACE": iface,
                    "FT_LOG_LEVEL": "INFO", "FT_STREAM_STORAGE": "memory", **env}
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: dict[str, object] = {}
        self._offsets: dict[str, int] = {}

    def start(self, name: str, *args: str, **env: str) -> subprocess.Popen:
        path = self.log_dir / f"{name}.log"
        self._offsets[name] = path.stat().st_size if path.exists() else 0
        log = open(path, "ab")  # noqa: SIM115 - closed in stop()
        self._logs[name] = log
        p = subprocess.Popen([sys.executable, "-m", "flowtarget", name, *args], env={**self.env, **env},
                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        self.procs[name] = p
        return p

    def log(self, name: str, tail: int = 4000) -> str:
        try:
            return (self.log_dir / f"{name}.log").read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def wait_log(self, name: str, text: str, timeout: float = 20.0) -> bool:
        """Wait until ``text`` appears in the log of the service's latest start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(self.log_dir / f"{name}.log", "rb") as f:
                    f.seek(self._offsets.get(name, 0))
                    current = f.read().decode(errors="replace")
            except OSError:
                current = ""
            if text in current:
                return True
            p = self.procs.get(name)
            if p is not None and p.poll() is not None:
                return False
            time.sleep(0.1)
        return False

    def alive(self) -> dict[str, int | None]:
        return {n: p.poll() for n, p in self.procs.items()}

    def stop(self, name: str | None = None, timeout: float = 10.0) -> None:
        names = [name] if name else list(self.procs)
        for n in names:
            p = self.procs.get(n)
            if p is not None and p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for n in names:
            p = self.procs.pop(n, None)
            if p is None:
                continue
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
            log = self._logs.pop(n, None)
            if log is not None:
                log.close()  # type: ignore[attr-defined]

    def __enter__(self) -> "Services":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
