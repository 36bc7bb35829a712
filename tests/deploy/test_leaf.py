"""A probe behind a NATS leaf node with its own JetStream domain (real nats-servers on loopback).

The probe runs capture, classify and a local store against its leaf nats-server
(``flowtarget run --nats LEAF``): its stream lives in the probe's domain.  The
centre's stream has no subjects: it *sources* the probe's stream across the
leaf connection (``FT_STREAM_SOURCES=<probe domain>``), and a central store
writes it.  The centre is cut off (its nats-server stopped) for
``FT_TEST_LEAF_OUTAGE_S`` seconds (12 in CI; the issue asks for 60: run with
``FT_TEST_LEAF_OUTAGE_S=60 FT_TEST_REPLAY_S=90``) while the replay goes on:
the probe keeps capturing, classifying and storing locally, and once the link
is back the centre holds every record exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from flowtarget.embedded import EmbeddedNats, free_port
from tests.deploy.clusterlab import (FLOWTARGET, build_replay, flow_ids, flow_keys, lines, start_run, stream_info,
                                     wait_until)

OUTAGE_S = float(os.environ.get("FT_TEST_LEAF_OUTAGE_S", "12"))
DOMAIN = "branch-1"


def hub_server(tmp_path) -> EmbeddedNats:
    leaf_port = free_port()
    hub = EmbeddedNats(store_dir=str(tmp_path / "hub"), log_file=str(tmp_path / "hub.log"),
                       extra_conf=f"server_name: hub\njetstream {{ domain: hub }}\n"
                                  f"leafnodes {{ listen: \"127.0.0.1:{leaf_port}\" }}\n")
    hub.leaf_port = leaf_port
    return hub


def leaf_server(tmp_path, hub: EmbeddedNats) -> EmbeddedNats:
    return EmbeddedNats(store_dir=str(tmp_path / "leaf"), log_file=str(tmp_path / "leaf.log"),
                        extra_conf=f"server_name: {DOMAIN}-nats\njetstream {{ domain: {DOMAIN} }}\n"
                                   f"leafnodes {{ reconnect: \"1s\", remotes: [ {{ url: \"nats-leaf://127.0.0.1:{hub.leaf_port}\" }} ] }}\n")


def central_store(hub: EmbeddedNats, out, log) -> subprocess.Popen[bytes]:
    env = dict(os.environ, FT_NATS_URL=hub.url, FT_PROBE="central", FT_STREAM_SOURCES=DOMAIN,
               FT_OUT_DIR=str(out), FT_LOG_ALL_FLOWS="true")
    return subprocess.Popen([FLOWTARGET, "store"], env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_leaf_probe_keeps_working_through_a_centre_outage_and_the_centre_gets_everything_once(tmp_path):
    replay = build_replay(tmp_path / "replay.pcap")
    hub = hub_server(tmp_path).start()
    leaf = leaf_server(tmp_path, hub).start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        central_out, probe_out = tmp_path / "central", tmp_path / "probe"
        procs.append(central_store(hub, central_out, tmp_path / "central-store.log"))
        wait_until(lambda: _has_stream(hub.url), 60, "the central stream")
        cfg = stream_info(hub.url).config
        assert not cfg.subjects and [s.external.api for s in cfg.sources] == [f"$JS.{DOMAIN}.API"]

        run = start_run(replay, leaf.url, probe_out, tmp_path / "probe-run.log", probe=DOMAIN)
        procs.append(run)
        wait_until(lambda: lines(probe_out / "flows.jsonl") > 0 or run.poll() is not None, 120,
                   "the first flows stored at the probe")
        assert run.poll() is None, "the replay ended before the outage: raise FT_TEST_REPLAY_S"
        # the centre goes away while the probe replays
        hub.stop()
        cut_at, local_at_cut = time.monotonic(), lines(probe_out / "flows.jsonl")
        time.sleep(OUTAGE_S / 2)   # the central store may still write what it fetched before the cut
        central_in_outage = lines(central_out / "flows.jsonl")
        time.sleep(OUTAGE_S / 2)
        assert lines(probe_out / "flows.jsonl") > local_at_cut, "the probe stopped storing while cut off"
        assert lines(central_out / "flows.jsonl") == central_in_outage, "the centre got records while cut off"
        hub.start()
        outage = time.monotonic() - cut_at
        assert run.wait(300) == 0, (tmp_path / "probe-run.log").read_text()[-3000:]
        local = flow_keys(probe_out)
        assert sum(local.values()) == len(flow_ids(probe_out)) and max(flow_ids(probe_out).values()) == 1
        # after the link is back the centre catches up: every record, once
        wait_until(lambda: lines(central_out / "flows.jsonl") >= sum(local.values()), 180,
                   f"the centre to catch up ({sum(local.values())} flows)", step_s=0.5)
        time.sleep(2)   # nothing more may come
        ids = flow_ids(central_out)
        dup = {k: v for k, v in ids.items() if v > 1}
        assert not dup, f"{len(dup)} flows stored more than once centrally"
        assert flow_keys(central_out) == local
        # the very same records (classified at the probe, also while cut off)
        probe_lines = sorted((probe_out / "flows.jsonl").read_text().splitlines())
        assert sorted((central_out / "flows.jsonl").read_text().splitlines()) == probe_lines
        classified = sum(1 for line in probe_lines if json.loads(line).get("app_protocol") not in (None, "", "Unknown"))
        assert classified > len(probe_lines) / 2, f"only {classified} of {len(probe_lines)} flows classified"
        assert outage >= OUTAGE_S
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        leaf.close()
        hub.close()


def _has_stream(url: str) -> bool:
    try:
        stream_info(url)
        return True
    except Exception:  # noqa: BLE001 - not yet
        return False
