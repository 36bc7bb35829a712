"""Services forked from one zygote (flowtarget/zygote.py), with a real nats-server and real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from flowtarget.orchestrate import Pipeline, RusagePopen, base_env, wait_ready
from flowtarget.zygote import Forked
from shared.settings import CommonSettings
from tests.conftest import REPO, SAMPLE_PCAP
from tests.procs import alive, children_of


def comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as fh:
        return fh.read().strip()


def ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        data = fh.read()
    return int(data[data.rfind(b")") + 2:].split()[1])


def wait_until(pred, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def test_services_are_forked_from_one_zygote_that_reports_their_exit_and_cpu(nats_server, tmp_path):
    p = Pipeline(base_env(nats_server.url, "zyg", {"FT_SPOOL_DIR": ""}), log_dir=tmp_path)
    cls = p.start("classify")
    store = p.start("store", {"FT_OUT_DIR": str(tmp_path / "out")})
    try:
        assert isinstance(cls, Forked) and isinstance(store, Forked)
        zpid = p.zygote.proc.pid
        assert ppid(cls.pid) == zpid and ppid(store.pid) == zpid
        assert wait_until(lambda: comm(cls.pid) == "ft-classify" and comm(store.pid) == "ft-store", 10)
        assert asyncio.run(wait_ready(CommonSettings(nats_url=nats_server.url, probe="zyg"), "classify",
                                      alive=lambda: cls.poll() is None))
        assert cls.poll() is None and store.poll() is None
    finally:
        codes = p.stop()
    assert codes == {"classify": 0, "store": 0}
    assert cls.rusage.ru_utime + cls.rusage.ru_stime > 0
    assert p.zygote.proc.returncode == 0 and not alive(zpid)
    assert p.zygote.rusage is not None and p.zygote.rusage.ru_utime > 0     # its imports
    assert (tmp_path / "out").is_dir()          # store ran with its own FT_OUT_DIR
    assert (tmp_path / "classify.log").exists() and (tmp_path / "store.log").exists()


def test_a_forked_service_refuses_bad_configuration_as_an_execd_one_does(nats_server, tmp_path):
    env = base_env(nats_server.url, "zyg", {"FT_SPOOL_DIR": "", "FT_MAX_MESSAGE_BYTES": "not-a-number"})
    p = Pipeline(env, log_dir=tmp_path)
    proc = p.start("store")
    assert isinstance(proc, Forked)
    code = proc.wait(60)
    p.stop()
    execd = subprocess.run([sys.executable, "-m", "flowtarget", "store"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert code == execd.returncode == 2
    forked_err = (tmp_path / "store.log").read_text().strip().splitlines()[-1]
    assert forked_err == execd.stderr.strip().splitlines()[-1]
    assert "FT_MAX_MESSAGE_BYTES" in forked_err


def test_a_service_with_another_import_time_variable_is_execd(nats_server, tmp_path):
    p = Pipeline(base_env(nats_server.url, "zyg", {"FT_SPOOL_DIR": ""}), log_dir=tmp_path)
    proc = p.start("classify", {"FT_PURE_PYTHON": "1" if os.environ.get("FT_PURE_PYTHON") != "1" else "0"})
    try:
        assert isinstance(proc, RusagePopen)
        assert asyncio.run(wait_ready(CommonSettings(nats_url=nats_server.url, probe="zyg"), "classify",
                                      alive=lambda: proc.poll() is None))
    finally:
        codes = p.stop()
    assert codes == {"classify": 0} and proc.rusage is not None


def test_zygote_and_services_die_with_a_killed_parent(nats_server, tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from flowtarget.orchestrate import Pipeline, base_env
        p = Pipeline(base_env({nats_server.url!r}, "zyg", {{"FT_SPOOL_DIR": ""}}), log_dir=None)
        c = p.start("classify")
        print(p.zygote.proc.pid, c.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    zpid, cpid = (int(x) for x in parent.stdout.readline().split())
    assert alive(zpid) and alive(cpid)
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    assert wait_until(lambda: not alive(zpid) and not alive(cpid), 30), "the zygote or its service outlived the parent"


@pytest.mark.slow
def test_capture_forks_its_detectors_process(nats_server, tmp_path):
    env = dict(os.environ, FT_NATS_URL=nats_server.url, FT_PROBE="zygdet", FT_PCAP=f'["{SAMPLE_PCAP}"]',
               FT_REPLAY_REALTIME="true", FT_EVIDENCE_DIR=str(tmp_path), FT_SPOOL_DIR="",
               FT_DETECT_INLINE="false")   # a file replay runs them inline unless told otherwise
    cap = subprocess.Popen([sys.executable, "-m", "flowtarget", "capture"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: bool(children_of(cap.pid)) or cap.poll() is not None, 30)
        kids = children_of(cap.pid)
        assert len(kids) == 1 and wait_until(lambda: comm(kids[0]) == "ft-detect", 10)
        assert asyncio.run(wait_ready(CommonSettings(nats_url=nats_server.url, probe="zygdet"), "detect",
                                      alive=lambda: alive(kids[0]),
                                      subject="ft.ctl.zygdet.detect_ready"))
        time.sleep(3)     # capture itself starts after its detectors are ready; a SIGTERM before then kills it
    finally:
        cap.send_signal(signal.SIGTERM)
        _, err = cap.communicate(timeout=60)
    assert cap.returncode == 0, err
    assert not alive(kids[0])
    assert "did not start" not in err


def test_exit_now_runs_exit_functions_and_flushes_but_skips_the_teardown(tmp_path):
    """exit_now (a stopped service's end): atexit functions run and buffered output is written, but no
    object is finalised by the interpreter's teardown (a __del__ at teardown would print)."""
    marker = tmp_path / "atexit.txt"
    code = textwrap.dedent(f"""
        import atexit, sys
        from flowtarget.zygote import exit_now

        class Finalised:
            def __del__(self):
                sys.stdout.write("teardown ran\\n")

        keep = Finalised()
        atexit.register(lambda: open({str(marker)!r}, "w").write("atexit ran"))
        sys.stdout.write("buffered line")    # stdout is a pipe: block-buffered, not yet written
        exit_now(3)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert proc.stdout == "buffered line"
    assert marker.read_text() == "atexit ran"


def test_capture_program_exits_with_its_status_and_output_after_a_replay(nats_server, tmp_path):
    """`python -m flowtarget capture` ends through exit_now: its status and its last log lines still come out."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}    # stderr buffered as a user's is
    env.update(FT_NATS_URL=nats_server.url, FT_PROBE="exitnow", FT_PCAP=str(SAMPLE_PCAP),
               FT_VERDICT_WAIT_S="0", FT_METRICS_PORT="0", FT_LOG_LEVEL="INFO", FT_DETECTORS="",
               FT_STREAM_STORAGE="memory")
    proc = subprocess.run([sys.executable, "-m", "flowtarget", "capture"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.rstrip().endswith("capture stopped")   # its last log line, flushed before the end
    bad = subprocess.run([sys.executable, "-m", "flowtarget", "capture"], cwd=REPO,
                         env=dict(env, FT_PCAP=str(tmp_path / "missing.pcap")),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "configuration error" in bad.stderr
