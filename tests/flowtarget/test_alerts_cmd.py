"""`flowtarget alerts` against a real nats-server with JetStream."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys

from shared.bus import Bus
from shared.models import Alert, EventBatch, FlowRecord
from shared.settings import CommonSettings
from shared.subjects import subject

from flowtarget import alerts_cmd

T0 = 1_750_000_000.0


def alert(i: int, kind="port_scan", state="open", message="port scan from 10.0.0.66") -> Alert:
    return Alert(timestamp=T0 + i, probe="p1", alert_id=f"inc{i // 2}", alert_type=kind, severity="high",
                 first_seen=T0, last_seen=T0 + i, count=10 * (i + 1), src_ip="10.0.0.66", dst_ip="10.0.0.9",
                 message=message, details={"state": state})


def args(url, **kw) -> argparse.Namespace:
    return argparse.Namespace(follow=kw.get("follow", False), type=kw.get("type"), json=kw.get("json", False), nats=url)


async def _publish(url: str, items) -> None:
    bus = await Bus.connect(CommonSettings(nats_url=url), "test")
    await bus.ensure_stream()
    for subj, payload in items:
        await bus.js_publish(subj, payload)
    await bus.close()


def _seed(url: str) -> None:
    items = [
        (subject("alert", "p1", "port_scan"), EventBatch(events=[alert(0)])),  # batched, as capture publishes
        (subject("alert", "p1", "port_scan"), alert(1, state="update")),
        (subject("alert", "p1", "arp_spoof"), alert(2, kind="arp_spoof", message="evil\nline\x1b[31m")),
        (subject("alert", "p1", "port_scan"), b"{not json"),
        (subject("flow", "p1"), FlowRecord(timestamp=T0, probe="p1", phase="start", first_seen=T0, last_seen=T0)),
    ]
    asyncio.run(_publish(url, items))


def _run(a) -> tuple[int, str]:
    out = io.StringIO()
    code = asyncio.run(alerts_cmd.run(a, out=out))
    return code, out.getvalue()


def test_prints_stored_alerts_and_exits(nats_server):
    _seed(nats_server.url)
    code, text = _run(args(nats_server.url))
    lines = text.splitlines()
    assert code == 0 and len(lines) == 3, text
    assert "port_scan" in lines[0] and "open" in lines[0] and "count=10" in lines[0]
    assert "10.0.0.66 -> 10.0.0.9" in lines[0]
    assert "update" in lines[1] and "count=20" in lines[1]
    assert "arp_spoof" in lines[2] and "\x1b" not in text and "evil\\nline" in lines[2]

    code, text = _run(args(nats_server.url, type="arp_spoof", json=True))
    (line,) = text.splitlines()
    assert json.loads(line)["alert_type"] == "arp_spoof" and json.loads(line)["details"]["state"] == "open"


def test_empty_or_missing_stream(nats_server):
    code, text = _run(args(nats_server.url))
    assert code == 0 and text == ""


def test_follow_prints_new_alerts(nats_server):
    _seed(nats_server.url)

    async def main() -> str:
        out = io.StringIO()
        task = asyncio.create_task(alerts_cmd.run(args(nats_server.url, follow=True, type="syn_flood"), out=out))
        await asyncio.sleep(1.0)
        await _publish(nats_server.url, [(subject("alert", "p1", "syn_flood"), alert(7, kind="syn_flood"))])
        for _ in range(100):
            if out.getvalue():
                break
            await asyncio.sleep(0.05)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return out.getvalue()

    text = asyncio.run(main())
    assert len(text.splitlines()) == 1 and "syn_flood" in text


def test_console_script(nats_server):
    _seed(nats_server.url)
    exe = os.path.join(os.path.dirname(sys.executable), "flowtarget")
    r = subprocess.run([exe, "alerts", "--nats", nats_server.url, "--type", "port_scan"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 2 and "1 malformed" in r.stderr


def test_unreachable_nats_fails_with_one_line():
    code, _ = _run(args("nats://127.0.0.1:1"))
    assert code == 1
