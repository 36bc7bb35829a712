"""The one explicit, ordered list of dissectors.

Order matters: the engine asks each dissector in this order and stops at the
first FINAL match.  Put specific, cheap tests before generic ones.
"""

from __future__ import annotations

from services.classify.dissectors.base import Dissector, Match
from services.classify.dissectors.dns import DnsDissector
from services.classify.dissectors.http import HttpDissector
from services.classify.dissectors.quic import QuicDissector
from services.classify.dissectors.ssh import SshDissector
from services.classify.dissectors.tls import DtlsDissector, TlsDissector

REGISTRY: list[Dissector] = [
    # core protocols (HTTP, TLS, QUIC, DNS, SSH, ...)
    TlsDissector(),
    QuicDissector(),
    HttpDissector(),
    SshDissector(),
    DtlsDissector(),
    DnsDissector(),
    # breadth protocols
]

__all__ = ["REGISTRY", "Dissector", "Match"]
