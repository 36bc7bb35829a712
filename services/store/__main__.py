"""``python -m services.store``: the store service configured from FT_* variables."""

from __future__ import annotations

import sys

from shared.runner import run_service
from shared.settings import StoreSettings

from services.store.service import main

if __name__ == "__main__":
    sys.exit(run_service("store", StoreSettings, main))
