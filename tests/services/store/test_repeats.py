"""services.store.repeats: which redeliveries the store absorbs (the cluster test shows it end to end)."""

from types import SimpleNamespace

from services.store.repeats import TAKEN, WRITTEN, Repeats, stream_seq


def msg(seq):
    return SimpleNamespace(metadata=SimpleNamespace(sequence=SimpleNamespace(stream=seq)))


def test_taken_then_written_then_forgotten():
    r = Repeats(limit=3)
    assert r.state(1) is None
    r.take(1)
    r.take(2)
    assert r.state(1) == TAKEN
    r.written([msg(1), msg(9)])          # 9 was never taken: not remembered
    assert (r.state(1), r.state(2), r.state(9)) == (WRITTEN, TAKEN, None)
    r.forget([msg(2)])
    assert r.state(2) is None
    for s in (3, 4, 5):
        r.take(s)
    assert r.state(1) is None and r.state(5) == TAKEN   # bounded: the oldest go first
    assert stream_seq(object()) is None
