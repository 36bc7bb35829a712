"""The one explicit, ordered list of dissectors.

Order matters: the engine asks each dissector in this order and stops at the
first FINAL match.  Put specific, cheap tests before generic ones.
"""

from __future__ import annotations

from services.classify.dissectors.base import Dissector, Match

REGISTRY: list[Dissector] = [
    # core protocols (HTTP, TLS, QUIC, DNS, SSH, ...)
    # breadth protocols
]

__all__ = ["REGISTRY", "Dissector", "Match"]
