"""``flowtarget alerts [--follow] [--type T] [--json] [--nats URL]``.

Reads alerts from the JetStream stream (``FT_STREAM_NAME``, subjects
``ft.alert.>``) through an ordered, ephemeral consumer: without ``--follow`` it
prints what is stored and exits; with ``--follow`` it keeps printing new ones
until interrupted.  One line per alert update (an incident is re-published
while it lasts: same ``id``, growing ``count``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import signal
import sys
from typing import Any, TextIO, get_args

from shared.models import Alert, AlertType, events_of, parse_event

CONNECT_TIMEOUT_S = 5.0
IDLE_EXIT_S = 3.0  # without --follow: give up waiting for stored messages after this long


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "alerts", help="print alerts stored in JetStream (--follow for new ones)",
        description="Print the alerts stored in the FlowTarget JetStream stream, one line per alert update.")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new alerts until interrupted")
    p.add_argument("--type", "-t", choices=list(get_args(AlertType)), help="only this alert type")
    p.add_argument("--json", action="store_true", help="print each alert as one JSON object per line")
    p.add_argument("--nats", metavar="URL", help="NATS server URL (default: FT_NATS_URL)")
    p.set_defaults(func=run)
    return p


def _when(ts: float) -> str:
    try:
        return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    except (OverflowError, OSError, ValueError):
        return f"{ts:.3f}"


def _endpoint(ip: str, port: int) -> str:
    if not ip:
        return "*" if not port else f"*:{port}"
    if ":" in ip:
        return f"[{ip}]:{port}" if port else ip
    return f"{ip}:{port}" if port else ip


def format_alert(a: Alert) -> str:
    """One readable line; every wire-derived string is escaped to printable ASCII."""
    from shared.bus import safe_text

    state = a.details.get("state", "")
    parts = [
        _when(a.timestamp),
        f"{a.severity.upper():8}",
        f"{a.alert_type:10}",
        f"{state or '-':6}",
        safe_text(a.probe, 64),
        f"{_endpoint(a.src_ip, a.src_port)} -> {_endpoint(a.dst_ip, a.dst_port)}",
        f"count={a.count}",
        f"since={_when(a.first_seen)}",
        f"id={a.alert_id[:12]}",
    ]
    if a.rule_id:
        parts.append(f"rule={safe_text(a.rule_id, 128)}")
    if a.evidence_pcap:
        parts.append(f"pcap={safe_text(a.evidence_pcap, 300)}")
    line = "  ".join(parts)
    if a.message:
        line += "  " + safe_text(a.message, 500)
    return line


def print_message(data: bytes, args: argparse.Namespace, out: TextIO, counters: dict[str, int]) -> None:
    try:
        parsed = parse_event(data)
    except ValueError:
        counters["malformed"] += 1
        return
    for ev in events_of(parsed):
        if not isinstance(ev, Alert) or (args.type and ev.alert_type != args.type):
            continue
        counters["printed"] += 1
        out.write((ev.model_dump_json() if args.json else format_alert(ev)) + "\n")
    out.flush()


async def _connect(settings: Any) -> Any:
    from shared.bus import Bus

    return await Bus.connect(settings, "alerts", give_up_after_s=CONNECT_TIMEOUT_S)


async def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from nats.js.errors import NotFoundError

    from shared.settings import CommonSettings
    from shared.subjects import all_of, subject

    out = out or sys.stdout
    from shared.runner import ConfigError, load_settings

    try:
        settings = load_settings(CommonSettings, **({"nats_url": args.nats} if args.nats else {}))
    except ConfigError as exc:
        print(f"flowtarget alerts: configuration error: {exc}", file=sys.stderr)
        return 2
    filt = subject("alert", "*", args.type) if args.type else all_of("alert")
    try:
        bus = await _connect(settings)
    except ConnectionError as exc:
        print(f"flowtarget alerts: {exc}", file=sys.stderr)
        return 1
    counters = {"printed": 0, "malformed": 0}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    sub = None
    try:
        stored = 0
        try:
            info = await bus.js.stream_info(settings.stream_name, subjects_filter=filt)
            stored = sum((info.state.subjects or {}).values()) if info.state.subjects is not None else info.state.messages
        except NotFoundError:
            if not args.follow:
                print(f"flowtarget alerts: no stream {settings.stream_name!r} on {settings.nats_url}: nothing stored",
                      file=sys.stderr)
                return 0
            info = None
        if info is None:
            # no stream yet: follow live publications on core NATS
            sub = await bus.nc.subscribe(filt)
        else:
            sub = await bus.js.subscribe(filt, stream=settings.stream_name, ordered_consumer=True)
        if not args.follow and stored == 0:
            return 0
        while not stop.is_set():
            try:
                msg = await sub.next_msg(timeout=1.0 if args.follow else IDLE_EXIT_S)
            except asyncio.TimeoutError:
                if args.follow:
                    continue
                break
            except Exception:  # connection closed while waiting
                if args.follow and not stop.is_set():
                    await asyncio.sleep(0.5)
                    continue
                break
            try:
                print_message(msg.data, args, out, counters)
            except BrokenPipeError:  # the reader went away (| head): done
                break
            if not args.follow:
                try:
                    if msg.metadata.num_pending == 0:
                        break
                except Exception:
                    pass
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError):
                pass
        if sub is not None:
            try:
                await sub.unsubscribe()  # do not drain what we will not print
            except Exception:
                pass
        if counters["malformed"]:
            print(f"flowtarget alerts: {counters['malformed']} malformed message(s) skipped", file=sys.stderr)
        await bus.close(2.0)
