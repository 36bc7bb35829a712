"""``flowtarget bench block``: trigger-to-injection latency in a real namespace lab.

Builds the lab from the repository's ``tests/lab`` (root needed; run from a
checkout), starts an embedded nats-server and capture, classify and block as
processes on the probe interface, then runs ``--count`` blocked requests of
each kind (HTTP reset, HTTPS SNI reset, DNS forged answer) one after another
and prints, from the BlockActions: how many were won, and the latency from the
trigger packet's capture to the injection (p50/p99/max).  With ``--json`` the
last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--count", type=int, default=50, help="requests of each kind")
    p.add_argument("--delay-ms", type=float, default=50.0, help="server-side delay in the lab")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def _pct(v: list[float], q: float) -> float:
    v = sorted(v)
    return round(v[min(len(v) - 1, int(round(q * (len(v) - 1))))], 3) if v else 0.0


def bench_command(args: argparse.Namespace) -> int:
    if not (REPO / "tests" / "lab" / "netlab.py").exists():
        print("flowtarget bench block: needs the repository checkout (tests/lab)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))
    from tests.lab import Lab, lab_available, servers  # noqa: PLC0415
    from tests.lab.pipeline import Services  # noqa: PLC0415

    ok, why = lab_available()
    if not ok:
        print(f"flowtarget bench block: {why}", file=sys.stderr)
        return 2
    from flowtarget.embedded import EmbeddedNats  # noqa: PLC0415
    from services.block.rules import load_rules_file  # noqa: PLC0415

    tmp = Path(tempfile.mkdtemp(prefix="ft-bench-block-"))
    (tmp / "rules.yaml").write_text(
        "rules:\n"
        "  - {id: b-http, host: http.bench.test, action: reset}\n"
        "  - {id: b-tls, host: tls.bench.test, action: reset}\n"
        "  - {id: b-dns, host: '*.dns.bench.test', action: dns_block, dns_answer: 0.0.0.0}\n")
    nats = EmbeddedNats(store_dir=str(tmp / "js"), log_file=str(tmp / "nats.log"))
    nats.start()
    actions: list[dict[str, Any]] = []
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def collect() -> Any:
        import nats as natspy

        nc = await natspy.connect(nats.url)

        async def cb(msg: Any) -> None:
            actions.append(json.loads(msg.data))

        await nc.subscribe("ft.block.bench", cb=cb)
        await nc.flush()
        ready.set()
        return nc

    conn: list[Any] = []

    def run_loop() -> None:
        asyncio.set_event_loop(loop)
        conn.append(loop.run_until_complete(collect()))
        loop.run_forever()

    t = threading.Thread(target=run_loop, daemon=True)
    t.start()
    ready.wait(10)
    n = args.count
    try:
        if load_rules_file(nats.url, "bench", str(tmp / "rules.yaml")) != 0:
            return 1
        with Lab(mode="mirror", delay_ms=args.delay_ms, probe_in_root=True, net=66) as lab:
            srv, cli = lab.server.ip, lab.client.ip
            servers.start_http(lab)
            servers.start_https(lab, tmp, names=["tls.bench.test"])
            servers.start_dnsmasq(lab, {"dns.bench.test": [srv]})
            with Services(nats.url, "bench", lab.probe_iface, tmp / "logs", FT_DRY_RUN="false") as svc:
                for name in ("capture", "classify", "block"):
                    svc.start(name)
                if not svc.wait_log("block", "rule b-dns", 30):
                    print(svc.log("block"), file=sys.stderr)
                    return 1
                time.sleep(1.0)
                for i in range(3):  # warm-up, not counted
                    lab.run("client", "curl", "-s", "-m", "3", "--local-port", str(29990 + i), "--resolve",
                            f"http.bench.test:80:{srv}", "http://http.bench.test/")
                for i in range(n):
                    lab.run("client", "curl", "-s", "-m", "3", "--local-port", str(30000 + i), "--resolve",
                            f"http.bench.test:80:{srv}", "http://http.bench.test/")
                for i in range(n):
                    lab.run("client", "curl", "-s", "-k", "-m", "3", "--local-port", str(31000 + i), "--resolve",
                            f"tls.bench.test:443:{srv}", "https://tls.bench.test/")
                for i in range(n):
                    lab.run("client", "dig", "+short", "+tries=1", "+time=2", "-b", f"{cli}#{32000 + i}",
                            f"@{srv}", f"q{i}.dns.bench.test")
                deadline = time.monotonic() + 10
                while len(actions) < 3 * n + 3 and time.monotonic() < deadline:
                    time.sleep(0.2)
    finally:
        if conn:
            try:
                asyncio.run_coroutine_threadsafe(conn[0].close(), loop).result(5)
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)
        nats.close()
    result: dict[str, Any] = {"count": n, "delay_ms": args.delay_ms}
    for kind, lo in (("http_reset", 30000), ("https_reset", 31000), ("dns_block", 32000)):
        mine = [a for a in actions if lo <= a["src_port"] < lo + n]
        lat = [a["latency_ms"] for a in mine]
        result[kind] = {"actions": len(mine), "won": sum(a["outcome"] == "won" for a in mine),
                        "p50_ms": _pct(lat, 0.5), "p99_ms": _pct(lat, 0.99), "max_ms": max(lat, default=0.0)}
        r = result[kind]
        print(f"{kind:12s} won {r['won']}/{n}  trigger->injection p50 {r['p50_ms']:.2f} ms  "
              f"p99 {r['p99_ms']:.2f} ms  max {r['max_ms']:.2f} ms")
    every = [a["latency_ms"] for a in actions if a["src_port"] < 29990 or a["src_port"] > 29999]
    result["all"] = {"p50_ms": _pct(every, 0.5), "p99_ms": _pct(every, 0.99)}
    print(f"{'all':12s} n={len(every)}  p50 {result['all']['p50_ms']:.2f} ms  p99 {result['all']['p99_ms']:.2f} ms")
    if args.json:
        print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point with its own argument list (``flowtarget bench block [--count N] [--json]``)."""
    ap = argparse.ArgumentParser(prog="flowtarget bench block", description=__doc__.splitlines()[0])
    add_arguments(ap)
    return bench_command(ap.parse_args([a for a in (argv or []) if a != "--"]))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
