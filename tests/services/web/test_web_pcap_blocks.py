"""The pcap export form's request and the blocks page's "client's view", one function at a time.

The pages themselves run in tests/services/web/test_web_browser.py (export against a real capture with a
packet recorder) and test_web_block_lab.py (a rule added in the console blocks a real client).
"""

from __future__ import annotations

import pytest

from services.capture.export import ExportError, Query, parse_time
from services.web.app import describe_export, export_request
from services.web.blockview import client_view


def test_the_export_form_builds_capture_s_request_with_the_same_validation_as_flowtarget_pcap():
    probe, req = export_request({"host": " 10.0.0.5 ", "port": "443", "since": "2026-12-04T09:00",
                                 "until": "2026-12-04T09:10", "bpf": "tcp"}, "probe1")
    assert probe == "probe1"
    assert req == {"host": "10.0.0.5", "port": 443, "bpf": "tcp", "since": parse_time("2026-12-04T09:00"),
                   "until": parse_time("2026-12-04T09:10")}
    assert export_request({"flow_id": "abc-7", "probe": "p2"}, "probe1") == ("p2", {"flow_id": "abc-7"})
    assert describe_export(req) == ("host 10.0.0.5, port 443, from 2026-12-04 09:00:00.000 to "
                                    "2026-12-04 09:10:00.000, filter 'tcp'")
    # refused with capture's own reasons (services/capture/export.py Query.check), never sent
    for form, reason in (({"host": "10.0.0.x"}, "bad host"), ({}, "say what to export"),
                         ({"port": "70000"}, "bad port"), ({"port": "http"}, "bad port"),
                         ({"since": "yesterday"}, "bad time"), ({"since": "200", "until": "100"}, "ends before"),
                         ({"host": "10.0.0.5", "probe": "a.b"}, "bad probe name"),
                         ({"flow_id": "f" * 65}, "too long")):
        with pytest.raises(ValueError, match=reason):
            export_request(form, "probe1")
    with pytest.raises(ExportError):        # the same refusal `flowtarget pcap` gives for the same input
        Query(host="10.0.0.x").check()


def act(action: str, outcome: str, message: str = "", **kw):
    return {"action": action, "outcome": outcome, "message": message, "attempts": 1, "dst_port": 80, **kw}


@pytest.mark.parametrize("event, kind, words", [
    (act("reset", "won", "client answered with RST (its socket is gone)"), "blocked",
     "got a reset before any of the server's data"),
    (act("reset", "lost", "the server's answer was captured before the injection; reset again with the next "
                          "observed sequence numbers (2 attempts)", attempts=2), "partly",
     "real server's answer first; block reset the connection again after it (2 attempts)"),
    (act("reset", "lost", "client acknowledged real server data or kept sending"), "partly", "the reset came too late"),
    (act("http_block", "won", "client acknowledged the block page"), "blocked", "got the block page"),
    (act("http_block", "won", "client answered with RST (its socket is gone)", dst_port=443), "blocked",
     "TLS: a reset instead of a page"),
    (act("reset", "unknown", "photo finish: the server answered while we injected"), "undecided", "Photo finish"),
    (act("reset", "unknown", "the flow sent no further packet after the rule appeared"), "undecided", "idle"),
    (act("dns_block", "won", "forged answer sent before the real one; answered 0.0.0.0"), "blocked",
     "got the forged answer 0.0.0.0 before the real one"),
    (act("dns_block", "won", "forged answer sent; no real answer seen; answered NXDOMAIN"), "blocked",
     "forged answer NXDOMAIN (no such name); no real answer"),
    (act("dns_block", "lost", "the real answer was captured before the forged one was sent; answered 0.0.0.0"),
     "passed", "got the real answer: it arrived before the forged one (0.0.0.0)"),
    (act("reset", "dry_run", "dry run"), "passed", "nothing was sent (dry run)"),
    (act("reset", "dry_run", "no injection interface (FT_IFACE): report only"), "passed", "report only"),
    (act("dns_block", "allowlisted", "allowlisted"), "passed", "from the real resolver: nothing was sent: the flow is allowlisted"),
    (act("reset", "rate_limited", "injection rate limit reached"), "passed", "rate limit"),
    (act("drop", "not_possible", "drop needs an inline deployment"), "passed", "nothing could be sent"),
    (act("alert", "unknown", "alert only (monitor)"), "passed", "monitoring rule"),
])
def test_the_client_s_view_of_each_outcome(event, kind, words):
    v = client_view(event)
    assert v["kind"] == kind and words in v["saw"], v
    assert v["evidence"] == event["message"]          # block's own evidence, shown as it wrote it


def test_the_client_s_view_of_a_malformed_record_is_still_a_sentence():
    assert client_view({})["kind"] == "undecided"
    assert client_view({"action": "reset", "outcome": "won", "attempts": "x", "dst_port": "y"})["kind"] == "blocked"


def test_a_block_action_links_to_its_client_port_s_packets_around_its_time():
    from services.web.app import connection_query

    q = connection_query({"src_ip": "10.0.0.5", "src_port": 40000, "timestamp": 1000.4, "probe": "p1"})
    assert q == {"host": "10.0.0.5", "port": "40000", "since": "880", "until": "1120", "probe": "p1"}
    assert export_request(q, "x") == ("p1", {"host": "10.0.0.5", "port": 40000, "since": 880.0, "until": 1120.0})
    for bad in ({"src_ip": "x", "src_port": 1, "timestamp": 1}, {"src_ip": "10.0.0.5", "src_port": 0, "timestamp": 1},
                {"src_ip": "10.0.0.5", "src_port": 1, "timestamp": "soon"}, {}):
        assert connection_query(bad) is None
