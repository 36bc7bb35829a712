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

    def could_be(self, s: FlowSample) -> bool:
        """Cheap test on the first bytes / ports. Must be fast: it runs for every sample."""
        return s.transport in self.transports

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        """Inspect the payloads; on a match set v.app_protocol (and host, metadata...) and return PARTIAL/FINAL."""
        raise NotImplementedError
