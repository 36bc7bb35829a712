"""The TCP race judge (services/block/tcp_race.py): what each packet after the injection proves."""

from __future__ import annotations

import time

from services.block.service import Blocker
from tests.services.block.test_decisions import RULES, _blocker

class _CountingInjector:
    """Stands in for the raw socket in this unit test of the judging rules: counts what would be sent."""

    def __init__(self) -> None:
        self.sent = 0

    def send(self, *frames: bytes) -> int:
        self.sent += len(frames)
        return len(frames)


def _page_watch(b: Blocker):
    from services.block import inject as inj
    from services.block.rules import MatchContext
    from services.block.service import FlowInfo, Watch

    flow = FlowInfo(flow_id="f1", transport="TCP", client=inj.Endpoint("10.1.0.2", 40000, "02:00:00:00:00:02"),
                    server=inj.Endpoint("10.1.0.3", 80, "02:00:00:00:00:03"), vlan_ids=[],
                    ctx=MatchContext(host="bad.test"), seen=time.time())
    rule = next(r for r in RULES if r.id == "r-reset")
    w = Watch(flow=flow, rule=rule, action="http_block", c_next=1000, s_next=5000, page_len=300, attempts=1,
              t_send=100.0, t_inj=100.001)
    b.watches.append(w)
    return w


def test_a_client_ack_of_real_data_before_the_injection_arrived_means_lost():
    """No-delay race: the real answer (120 bytes) reached the client and was acknowledged before our frames
    were all out; our longer page's tail is then accepted and the client's closing RST acknowledges the
    page's end, the same ack a won race gives.  The early ACK decides: lost (and reset again)."""
    from services.block.service import TH_ACK, TH_RST

    b = _blocker()
    b.injector = _CountingInjector()
    w = _page_watch(b)
    b._judge(w, True, 100.0005, 1000, 5000 + 120, TH_ACK, 0)           # ACK of the real answer, before t_inj
    assert w.lost and w.attempts == 2 and b.injector.sent > 0
    b._judge(w, True, 100.01, 1000, 5000 + 300 + 1, TH_RST | TH_ACK, 0)  # the closing RST
    assert w.lost and not w.done   # finished as lost at the race deadline, never as won


def test_an_ack_of_our_page_before_t_inj_is_not_evidence_of_loss_and_the_rst_then_wins():
    from services.block.service import TH_ACK, TH_RST

    b = _blocker()
    b.injector = _CountingInjector()
    w = _page_watch(b)
    b._judge(w, True, 100.0005, 1000, 5000 + 300 + 1, TH_ACK, 0)        # our page (and FIN) acknowledged
    b._judge(w, True, 100.0006, 1000, 5000, TH_ACK, 0)                  # an old ACK: no evidence either
    assert not w.lost and w.attempts == 1 and b.injector.sent == 0
    b._judge(w, True, 100.01, 1000, 5000 + 300 + 1, TH_RST | TH_ACK, 0)
    assert w.done and not w.lost
