"""Redeliveries of what this store replica already took: absorbed, not written twice.

JetStream redelivers a message whose acknowledgement it did not get within the
ack wait, and in a cluster an acknowledgement can be lost while a stream or
consumer leader changes (the old leader dies before it replicated the ack, or
the ack travels while no leader is elected).  InfluxDB absorbs the repeated
points (same series and timestamp), an appended JSON-lines file would not.  So
the store remembers the stream sequences of the last ``limit`` messages it took
into a batch and whether their batch was written:

- a repeat of a written message is acknowledged again and not written;
- a repeat of a message whose batch is still being written is dropped without
  an ack: the first delivery's ack follows its write, and if that ack is lost
  too, the next redelivery finds the message written.

Per replica: a redelivery that goes to another store replica is written by it
(InfluxDB's idempotent points absorb that one).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

TAKEN, WRITTEN = 1, 2


def stream_seq(msg: Any) -> int | None:
    try:
        return int(msg.metadata.sequence.stream)
    except Exception:  # not a JetStream message (tests), no metadata
        return None


class Repeats:
    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self._state: OrderedDict[int, int] = OrderedDict()

    def state(self, seq: int) -> int | None:
        return self._state.get(seq)

    def take(self, seq: int) -> None:
        self._state[seq] = TAKEN
        if len(self._state) > self.limit:
            self._state.popitem(last=False)

    def written(self, msgs: list) -> None:
        for msg in msgs:
            seq = stream_seq(msg)
            if seq is not None and seq in self._state:
                self._state[seq] = WRITTEN

    def forget(self, msgs: list) -> None:
        """Messages given back (nak'ed): their redelivery must be written."""
        for msg in msgs:
            seq = stream_seq(msg)
            if seq is not None:
                self._state.pop(seq, None)
