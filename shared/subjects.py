"""The one subject builder: ``ft.<kind>.<probe>[.<qualifier>]``.

Alerts put their type before the probe (``ft.alert.<alert_type>.<probe>``) so
that ``ft.alert.>`` and ``ft.alert.arp_flood.>`` both subscribe naturally.
"""

from __future__ import annotations

import re
from typing import Literal

PREFIX = "ft"

Kind = Literal["sample", "packet", "flow", "verdict", "dns", "alert", "block", "stats", "ctl", "evidence", "live",
               "dlq"]
KINDS: tuple[str, ...] = ("sample", "packet", "flow", "verdict", "dns", "alert", "block", "stats", "ctl", "evidence",
                          "live", "dlq")

# Kinds whose messages must reach storage go through JetStream (one stream).
# Verdicts travel on core NATS (capture and block need them at once, one per
# sample); the best verdict of each flow that carries HTTP, TLS, QUIC or SSH
# metadata is stored with the flow's end record in the same batch on
# ft.flow.<probe>, so storage gets at most one per flow (the end record has
# the verdict's protocol, application, category and host in any case).
STORED_KINDS: tuple[str, ...] = ("flow", "dns", "alert", "block")
# ``ft.live.<probe>``: flow records only the alert detectors read and no store keeps: capture's
# start records (batched) and hot records (busy flows, half-open TCP), on core NATS only, so a
# flood adds nothing to storage; ``ft.flow`` carries update and end records.

# Dead letters: messages a JetStream consumer could not use, kept (in a stream of
# their own, FT_DLQ_STREAM_NAME) with the reason in the Ft-Dlq-Reason header.
DLQ_KIND = "dlq"
#: the probe token of a dead letter whose own subject named no valid probe
DLQ_NO_PROBE = "_unknown"

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_token(value: str, what: str = "token") -> str:
    """A subject token: letters, digits, '_' and '-' only (no '.', '*', '>', spaces)."""
    if not _TOKEN.match(value):
        raise ValueError(f"invalid {what} {value!r}: use 1-64 letters, digits, '_' or '-'")
    return value


def subject(kind: str, probe: str = "*", qualifier: str | None = None) -> str:
    """Build a subject. ``probe`` may be ``*`` and ``qualifier`` ``>`` for subscriptions."""
    if kind not in KINDS:
        raise ValueError(f"unknown subject kind {kind!r}")
    if probe != "*":
        check_token(probe, "probe")
    if qualifier is not None and qualifier not in ("*", ">"):
        check_token(qualifier, "qualifier")
    if kind == "alert":
        # ft.alert.<alert_type>.<probe>
        return f"{PREFIX}.alert.{qualifier or '*'}.{probe}"
    parts = [PREFIX, kind, probe]
    if qualifier is not None:
        parts.append(qualifier)
    return ".".join(parts)


def all_of(kind: str) -> str:
    """Subscription wildcard for every message of a kind from every probe."""
    if kind not in KINDS:
        raise ValueError(f"unknown subject kind {kind!r}")
    return f"{PREFIX}.{kind}.>"


def dlq_subject(probe: str | None) -> str:
    """``ft.dlq.<probe>``: where a consumer dead-letters what it could not use from ``probe``.

    A probe that is not a valid token (the message came on a subject no
    FlowTarget publisher builds) goes to ``ft.dlq._unknown``.
    """
    if not probe or not _TOKEN.match(probe):
        probe = DLQ_NO_PROBE
    return subject(DLQ_KIND, probe)
