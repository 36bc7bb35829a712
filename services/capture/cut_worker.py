"""The process that cuts pcaps out of the packet store: alerts' and blocks' evidence
(store_evidence.py) and operators' exports over ``ft.ctl.<probe>.export`` (export.py).

A cut reads store files in Python.  In a thread of capture's process it held the
GIL against capture's own loop: every time capture's thread went into a system
call (a NATS write, a file read), the cut took the interpreter for up to a switch
interval, and a replay with recording and the detectors inline ran a third slower
(122 k against 167 k packets/s on the issue-12 file) although the cuts used only
1.1 CPU-s.  In its own process a cut costs capture nothing but a pipe write.

Protocol, over the child's stdin and stdout: frames of a 4-byte big-endian length
and a pickle.  A request is ``(store_dir, query, out_path, max_bytes, options)`` (options: export's keyword
arguments, e.g. ``fmt`` and ``iface``); the answer
is ``("ok", result)`` (export's result dict), ``("export_error", message)`` or
``("error", message)``.  The child exits at end of input (its parent closed the
pipe, or died), ignores SIGINT (a terminal's Ctrl-C is its parent's to handle)
and is named ``ft-evidence``.  Only its parent talks to it, over an anonymous pipe.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["CutProcess", "main"]

_LEN = struct.Struct("!I")
MAX_FRAME = 64 << 20


def _read_frame(fh: BinaryIO) -> bytes | None:
    head = fh.read(4)
    if len(head) < 4:
        return None
    (n,) = _LEN.unpack(head)
    if n > MAX_FRAME:
        raise ValueError(f"frame of {n} bytes")
    data = fh.read(n)
    return data if len(data) == n else None


def _write_frame(fh: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    fh.write(_LEN.pack(len(data)) + data)
    fh.flush()


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from flowtarget.zygote import set_process_name
    from services.capture.export import ExportError, export

    set_process_name("ft-evidence")
    rd = sys.stdin.buffer
    wr = os.fdopen(os.dup(1), "wb")  # the answers' pipe, on a descriptor of its own
    os.dup2(2, 1)                    # anything else written to stdout (a library, C code) goes to stderr
    sys.stdout = sys.stderr
    while True:
        data = _read_frame(rd)
        if data is None:
            return 0
        try:
            store, query, out, max_bytes, options = pickle.loads(data)
            answer: tuple[Any, ...] = ("ok", export(store, query, out, max_bytes=max_bytes, **options))
        except ExportError as exc:
            answer = ("export_error", str(exc))
        except Exception as exc:  # noqa: BLE001 - one bad cut never ends the worker
            answer = ("error", f"{type(exc).__name__}: {exc}")
        _write_frame(wr, answer)


class CutProcess:
    """capture's side: one ``ft-evidence`` child, started on the first cut and again after it died.

    ``cut`` blocks the calling thread (store_evidence's worker) on the pipe, not on the GIL.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.started = 0

    def _start(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])      # where `services` is importable from
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.started += 1
        return subprocess.Popen([sys.executable, "-m", "services.capture.cut_worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=env, close_fds=True)

    def cut(self, store: str, query: Any, out: str, max_bytes: int, **options: Any) -> dict[str, Any]:
        from services.capture.export import ExportError

        with self._lock:
            for attempt in (0, 1):
                if self._closed:          # capture is stopping: no new child
                    raise RuntimeError("the evidence cutting process is closed")
                if self._proc is None or self._proc.poll() is not None:
                    self._proc = self._start()
                p = self._proc
                assert p.stdin is not None and p.stdout is not None
                try:
                    _write_frame(p.stdin, (store, query, out, max_bytes, options))    # type: ignore[arg-type]
                    data = _read_frame(p.stdout)                               # type: ignore[arg-type]
                except (OSError, ValueError):
                    data = None
                if data is None:              # the child died (killed, out of memory): once more with a new one
                    self._kill()
                    if attempt:
                        raise RuntimeError("the evidence cutting process died")
                    continue
                try:
                    kind, value = pickle.loads(data)
                except Exception:  # noqa: BLE001 - out of step with the child: start afresh next time
                    self._kill()
                    raise RuntimeError("the evidence cutting process answered garbage") from None
                if kind == "ok":
                    return value
                if kind == "export_error":
                    raise ExportError(value)
                raise RuntimeError(value)
        raise RuntimeError("unreachable")

    def _kill(self) -> None:
        p, self._proc = self._proc, None
        if p is not None:
            try:
                p.kill()
                p.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass

    def close(self) -> None:
        """End the child (it exits at end of input); kill it if it does not within a few seconds,
        or at once when a cut is still running after 5 s.  No child is started after this."""
        self._closed = True
        if self._lock.acquire(timeout=5):
            p, self._proc = self._proc, None
            self._lock.release()
        else:
            p = self._proc
            if p is not None:
                p.kill()
        if p is None:
            return
        try:
            if p.stdin is not None:
                p.stdin.close()
            p.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            p.kill()
            p.wait()
        finally:
            if p.stdout is not None:
                p.stdout.close()


if __name__ == "__main__":
    sys.exit(main())
