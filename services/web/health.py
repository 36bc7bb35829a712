"""The console's container health check: ``python -m services.web.health`` (exit 0 when healthy).

Healthy means both: the service's own /healthz on FT_METRICS_PORT (connected to NATS, ready: the same
check as every FlowTarget service, ``python -m shared.metrics check``) and the console's /healthz on
FT_WEB_ADDR:FT_WEB_PORT — the port the operator's browser uses — answering 200.
"""

from __future__ import annotations

import os
import sys

from shared.metrics import check, check_healthz


def check_console(timeout_s: float = 3.0) -> int:
    port = os.environ.get("FT_WEB_PORT", "8080").strip() or "8080"
    return check_healthz(os.environ.get("FT_WEB_ADDR", "127.0.0.1"), port, timeout_s)


def main() -> int:
    return check() or check_console()


if __name__ == "__main__":
    sys.exit(main())
