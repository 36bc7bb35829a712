"""What every dissector is: a cheap "could this be mine" test and a dissect step.

A dissector sees a whole ``FlowSample`` (everything captured of the flow so
far) and fills in a ``Verdict``.  The engine calls ``could_be`` on every
dissector in registry order and ``dissect`` on those that say yes, until one
returns ``Match.FINAL``.  A dissector must never raise on hostile input; if
it does anyway, the engine counts and logs the exception and goes on with the
next one.
"""

from __future__ import annotations

import enum

from shared.models import FlowSample, Verdict


class Match(enum.IntEnum):
    NO = 0          # not this protocol (or cannot tell yet)
    PARTIAL = 1     # looks like it, but more packets may change or complete the answer
    FINAL = 2       # identified; more packets will not change the protocol


class Dissector:
    """Base class.  Subclasses set ``name`` (nDPI's protocol name) and override both methods."""

    name: str = ""
    transports: frozenset[str] = frozenset({"TCP", "UDP"})
    ports: frozenset[int] = frozenset()   # well-known ports: a hint for ordering and port guesses only
    #: optional declared gate, per transport: ``{"TCP": (n, b"GR")}`` says that on TCP this dissector
    #: returns NO without touching the verdict (and without raising) unless one of the first ``n``
    #: payloads in arrival order (``breadth_util.ordered``) starts with one of those bytes; the engine
    #: then skips both calls for such a sample (a cheap test in its loop instead of two calls).
    lead: dict[str, tuple[int, bytes]] = {}
    #: optional declared gate, per transport: ``{"TCP": b"IRA"}`` says that on TCP ``could_be`` is False
    #: unless the first src payload or the first dst payload starts with one of those bytes.  The engine
    #: leaves such a dissector out of its cached candidate lists for other first bytes (no call, no step of
    #: its loop); ``could_be`` still decides for the samples that pass.  A test checks every declaration
    #: against ``could_be`` (tests/services/classify/test_engine_gates.py).
    first_bytes: dict[str, bytes] = {}

    def could_be(self, s: FlowSample) -> bool:
        """Cheap test on the first bytes / ports. Must be fast: it runs for every sample."""
        return s.transport in self.transports

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        """Inspect the payloads; on a match set v.app_protocol (and host, metadata...) and return PARTIAL/FINAL."""
        raise NotImplementedError
