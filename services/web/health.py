"""The console's container health check: ``python -m services.web.health`` (exit 0 when healthy).

Healthy means both: the service's own /healthz on FT_METRICS_PORT (connected to NATS, ready: the same
check as every FlowTarget service, ``python -m shared.metrics check``) and the console's /healthz on
FT_WEB_ADDR:FT_WEB_PORT — the port the operator's browser uses — answering 200.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def check_console(timeout_s: float = 3.0) -> int:
    addr = os.environ.get("FT_WEB_ADDR", "127.0.0.1").strip() or "127.0.0.1"
    if addr in ("0.0.0.0", "::"):
        addr = "127.0.0.1"
    port = os.environ.get("FT_WEB_PORT", "8080").strip() or "8080"
    host = f"[{addr}]" if ":" in addr else addr
    url = f"http://{host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            print(r.read().decode(errors="replace").strip())
            return 0 if r.status == 200 else 1
    except urllib.error.HTTPError as exc:
        print(exc.read().decode(errors="replace").strip() or f"{url}: HTTP {exc.code}")
        return 1
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


def main() -> int:
    from shared.metrics import check

    return check() or check_console()


if __name__ == "__main__":
    sys.exit(main())
