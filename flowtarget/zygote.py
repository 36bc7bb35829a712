"""Start the pipeline's services by fork from one process that has already imported them.

Every service process used to start as ``python -m flowtarget <service>`` and
spend 0.2-0.3 CPU-s importing pydantic, pydantic-settings, nats-py and the
project's models before its first event (issue 12: five of them per
``flowtarget analyze``, about 1.3 of its 18 CPU-s, and a 1-packet file cost
2 CPU-s).  ``flowtarget run`` and ``analyze`` now start one *zygote*
(``python -m flowtarget.zygote``): a clean, single-threaded process that
imports the services' modules once and then forks each service on request.
A forked service is the same program ``python -m flowtarget <service>`` runs
(``flowtarget.cli.main([service])``) with its own environment, log file and
process name (``ft-<service>`` in ``ps -o comm``/``top``); it is as separate a
process as before: it stops, fails and restarts on its own.  docker compose
runs each service in its own container and does not use the zygote.

The zygote reaps its children and reports each one's exit status and CPU
time to the parent (``Forked.rusage``), and the parent reaps the zygote, so
``/usr/bin/time`` and ``bench pipeline`` still count every CPU second.  A
child whose environment differs in a variable read at import time
(``IMPORT_TIME_VARS``) is started the old way, by exec.

Capture forks its detectors' process the same way (``fork_service``): it has
imported everything the detectors need.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace
from typing import Any, NoReturn

#: the modules the zygote imports before it forks anything (their imports are what every service pays)
PRELOAD = ("flowtarget.cli", "flowtarget.orchestrate", "shared.runner", "shared.bus",
           "services.capture.service", "services.capture.detect", "services.classify.service",
           "services.store.service", "services.block.service")
#: environment variables read while a module is imported (services/capture/fastpath.py, recorder.py):
#: a child that differs from the zygote in one of them is started by exec instead
IMPORT_TIME_VARS = ("FT_PURE_PYTHON",)


def _import_time_env(env: dict[str, str]) -> tuple[Any, ...]:
    return tuple(env.get(k) for k in IMPORT_TIME_VARS) + tuple(
        sorted((k, v) for k, v in env.items() if k.startswith("PYTHON")))


def set_process_name(name: str) -> None:
    """The kernel's name of this process (``/proc/self/comm``, 15 bytes): what ``top`` and ``ps -o comm`` show."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(15, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)   # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def become(service: str, env: dict[str, str], log: str | None = None, name: str | None = None,
           parent: int = 0) -> NoReturn:
    """In a freshly forked child: run ``flowtarget <service>`` as ``python -m flowtarget <service>`` would
    with environment ``env`` (stdout and stderr appended to ``log`` if given), then exit with its status.
    ``name``: the process's name (default ``ft-<service>``); ``parent``: the pid that forked us."""
    from flowtarget.embedded import die_with_parent

    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)      # as Python starts a program
        signal.signal(signal.SIGINT, signal.default_int_handler)
        die_with_parent()
        if parent and os.getppid() != parent:   # the parent died before we asked to die with it
            os._exit(1)
        if log is not None:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
        os.environ.clear()
        os.environ.update(env)
        set_process_name(name or f"ft-{service}")
        sys.argv = [sys.argv[0], service]
        from flowtarget.cli import main

        main([service])
        code = 0
    except SystemExit as exc:
        c = exc.code
        if c is None or isinstance(c, int):
            code = c or 0
        else:
            print(c, file=sys.stderr)
            code = 1
    except BaseException:   # noqa: BLE001 - a child never returns into its parent's stack
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        exit_now(code)


def exit_now(code: int) -> NoReturn:
    """End this process with ``code`` after its exit functions (atexit: logging's flush, temporary
    directories' clean-up) and a flush of stdout and stderr, without the interpreter's teardown.

    The teardown (modules cleared, a last collection over pydantic's schemas and the services'
    tables) costs a service 0.08-0.1 s at every exit, as long as the user waits for a replay to
    end; a forked child must skip it anyway (it would run its parent's state's finalizers).  Only
    for a process whose own cleanup has run (its ``finally`` blocks) and that has no other thread.
    """
    try:
        import atexit

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code & 0xFF)


def _rusage(ru: Any) -> SimpleNamespace:
    return SimpleNamespace(ru_utime=ru.ru_utime, ru_stime=ru.ru_stime)


class Forked:
    """A forked service, with the part of ``subprocess.Popen``'s interface the orchestrator uses.

    ``rusage`` (``ru_utime``, ``ru_stime``) is set once it has been reaped.
    """

    def __init__(self, pid: int, args: list[str], zygote: Zygote | None = None) -> None:
        self.pid = pid
        self.args = args
        self.returncode: int | None = None
        self.rusage: Any = None
        self._zygote = zygote

    def _reap(self, block: bool) -> None:
        if self.returncode is not None:
            return
        if self._zygote is not None:       # the zygote's child: it reports the exit
            got = self._zygote.exit_of(self.pid)
            if got is not None:
                self.returncode, self.rusage = got
            return
        try:                               # our own child
            pid, status, ru = os.wait4(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            self.returncode = self.returncode if self.returncode is not None else 0
            return
        if pid == self.pid:
            self.returncode = os.waitstatus_to_exitcode(status)
            self.rusage = _rusage(ru)

    def poll(self) -> int | None:
        self._reap(False)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self._zygote is not None:
            if not self._zygote.wait_exit(self.pid, timeout):
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            self._reap(False)
        elif timeout is None:
            self._reap(True)
        else:
            deadline = time.monotonic() + timeout
            delay = 0.0005
            while self.poll() is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout)
                time.sleep(min(delay, left, 0.05))
                delay *= 2
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def fork_service(service: str, env: dict[str, str], name: str | None = None) -> Forked:
    """Fork this process into ``flowtarget <service>`` with ``env`` and process name ``name`` (this
    process must be single-threaded; what it has imported the child need not import again)."""
    sys.stdout.flush()
    sys.stderr.flush()
    me = os.getpid()
    pid = os.fork()
    if pid == 0:
        become(service, env, name=name, parent=me)
    return Forked(pid, [sys.executable, "-m", "flowtarget", service])


class Zygote:
    """The parent's side: starts ``python -m flowtarget.zygote`` and asks it for services."""

    def __init__(self, env: dict[str, str]) -> None:
        from flowtarget.embedded import die_with_parent

        cmd_r, cmd_w = os.pipe()
        rep_r, rep_w = os.pipe()
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "flowtarget.zygote", str(cmd_r), str(rep_w),
                                          str(os.getpid())],
                                         env=env, pass_fds=(cmd_r, rep_w), preexec_fn=die_with_parent)
        except BaseException:
            for fd in (cmd_r, cmd_w, rep_r, rep_w):
                os.close(fd)
            raise
        os.close(cmd_r)
        os.close(rep_w)
        self._key = _import_time_env(env)
        self._cmd = os.fdopen(cmd_w, "wb", buffering=0)
        self._rep = os.fdopen(rep_r, "rb")
        self._cond = threading.Condition()
        self._pids: dict[int, int] = {}            # request id -> pid (or -1: the fork failed)
        self._exits: dict[int, tuple[int, Any]] = {}
        self._next = 0
        self.gone = False
        self.rusage: Any = None                    # the zygote's own CPU (imports, forks), at close
        self._reader = threading.Thread(target=self._read, name="zygote-reports", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._rep:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                if "pid" in msg:
                    self._pids[msg["id"]] = msg["pid"]
                elif "exit" in msg:
                    self._exits[msg["exit"]] = (msg["code"], SimpleNamespace(ru_utime=msg["cpu"][0],
                                                                             ru_stime=msg["cpu"][1]))
                elif "self" in msg:
                    self.rusage = SimpleNamespace(ru_utime=msg["self"][0], ru_stime=msg["self"][1])
                self._cond.notify_all()
        with self._cond:
            self.gone = True
            self._cond.notify_all()

    def can_start(self, env: dict[str, str]) -> bool:
        return not self.gone and self.proc.poll() is None and _import_time_env(env) == self._key

    def spawn(self, service: str, env: dict[str, str], log: str | None = None,
              timeout_s: float = 60.0) -> Forked | None:
        """The forked service, or None when the zygote cannot start it (the caller execs it instead)."""
        if not self.can_start(env):
            return None
        with self._cond:
            self._next += 1
            rid = self._next
        try:
            self._cmd.write(json.dumps({"id": rid, "service": service, "env": env, "log": log}).encode() + b"\n")
        except OSError:
            return None
        with self._cond:
            if not self._cond.wait_for(lambda: rid in self._pids or self.gone, timeout_s):
                return None
            pid = self._pids.pop(rid, -1)
        if pid <= 0:
            return None
        return Forked(pid, [sys.executable, "-m", "flowtarget", service], self)

    def exit_of(self, pid: int) -> tuple[int, Any] | None:
        with self._cond:
            got = self._exits.get(pid)
            if got is None and self.gone:     # the zygote died before it could report: its children too
                got = self._exits[pid] = (-int(signal.SIGTERM), None)
            return got

    def wait_exit(self, pid: int, timeout: float | None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: pid in self._exits or self.gone, timeout)

    def close(self, timeout_s: float = 15.0) -> None:
        """No more services: the zygote reaps the ones still running (stop them first) and exits."""
        try:
            self._cmd.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5.0)


# --------------------------------------------------------------------------- the zygote process


def _report(fd: int, msg: dict[str, Any]) -> None:
    try:
        os.write(fd, json.dumps(msg).encode() + b"\n")
    except OSError:       # the parent is gone; nothing to tell
        pass


def serve(cmd_fd: int, rep_fd: int) -> int:
    """The zygote's loop: fork a service per request line, report pids and exits; at EOF wait for the rest."""
    import importlib

    signal.signal(signal.SIGINT, signal.SIG_IGN)    # Ctrl-C reaches the services themselves (same group)
    for mod in PRELOAD:
        try:
            importlib.import_module(mod)
        except ImportError:    # an optional service not installed: its child reports the error itself
            pass
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda _s, _f: None)
    children: set[int] = set()

    def reap(block: bool) -> None:
        while children:
            try:
                pid, status, ru = os.wait4(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                children.clear()
                return
            if pid == 0:
                return
            children.discard(pid)
            _report(rep_fd, {"exit": pid, "code": os.waitstatus_to_exitcode(status),
                             "cpu": [ru.ru_utime, ru.ru_stime]})

    buf = b""
    while True:
        try:
            ready, _, _ = select.select([cmd_fd, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            try:
                os.read(wake_r, 4096)
            except BlockingIOError:
                pass
            reap(False)
        if cmd_fd not in ready:
            continue
        data = os.read(cmd_fd, 1 << 20)
        if not data:
            break
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            try:
                req = json.loads(line)
                service, env, log, rid = str(req["service"]), dict(req["env"]), req.get("log"), req["id"]
            except (ValueError, KeyError, TypeError):
                continue
            me = os.getpid()
            try:
                pid = os.fork()
            except OSError:
                _report(rep_fd, {"id": rid, "pid": -1})
                continue
            if pid == 0:
                for fd in (cmd_fd, rep_fd, wake_r, wake_w):
                    os.close(fd)
                become(service, env, log, parent=me)
            children.add(pid)
            _report(rep_fd, {"id": rid, "pid": pid})
    reap(True)
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    _report(rep_fd, {"self": [ru.ru_utime, ru.ru_stime]})
    return 0


if __name__ == "__main__":
    if os.getppid() != int(sys.argv[3]):    # the parent died before we could ask to die with it
        raise SystemExit(1)
    set_process_name("ft-zygote")
    raise SystemExit(serve(int(sys.argv[1]), int(sys.argv[2])))
