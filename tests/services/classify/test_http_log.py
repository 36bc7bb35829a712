"""The HTTP log: one record per request/response pair, keep-alive and pipelining, as far as the samples reach."""

from __future__ import annotations

from services.classify.apps import Apps
from services.classify.dissectors.http import transactions
from services.classify.engine import Engine
from shared.text import wire_bytes
from tests.services.capture.test_flows import ACK, FIN, MAC_C, MAC_S, PSH, SYN, C, S, meter, tcpf

REQ1 = b"GET /one HTTP/1.1\r\nHost: a.example\r\nUser-Agent: curl/8.5\r\nReferer: http://r.example/\r\n\r\n"
REQ2 = b"POST /two?x=1 HTTP/1.1\r\nHost: a.example\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
REQ3 = b"HEAD /three HTTP/1.0\r\nHost: a.example\r\n\r\n"
RESP1 = b"HTTP/1.1 200 OK\r\nServer: t\r\nContent-Type: text/html\r\nContent-Length: 3\r\n\r\nabc"
RESP2 = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n")
RESP3 = b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nConnection: close\r\n\r\n"


def test_pipelined_pairs_every_field():
    got = transactions(REQ1 + REQ2 + REQ3, RESP1 + RESP2 + RESP3)
    assert [(t.trans_depth, t.method, t.url, t.version, t.status_code, t.status_msg) for t in got] == [
        (1, "GET", "/one", "1.1", 200, "OK"), (2, "POST", "/two?x=1", "1.1", 201, "Created"),
        (3, "HEAD", "/three", "1.0", 404, "Not Found")]
    assert (got[0].host, got[0].user_agent, got[0].referer, got[0].content_type, got[0].server) == (
        "a.example", "curl/8.5", "http://r.example/", "text/html", "t")
    assert [(t.request_body_len, t.response_body_len) for t in got] == [(0, 3), (5, 6), (0, 0)]
    assert got[1].request_content_type == "text/plain"


def test_truncated_samples_give_what_they_reach():
    got = transactions(REQ1 + REQ2[:30], RESP1[:20])
    assert [t.url for t in got] == ["/one", "/two?x=1"]
    assert got[0].status_code == 200 and got[1].status_code == 0


def test_wire_strings_are_recoverable():
    req = b"GET /\xff\x1b[2J HTTP/1.1\r\nHost: h\r\nUser-Agent: a\\b\r\n\r\n"
    (t,) = transactions(req, b"")
    assert t.url == "/\\xff\\x1b[2J" and t.user_agent == "a\\\\b"
    assert wire_bytes(t.url) == b"/\xff\x1b[2J" and wire_bytes(t.user_agent) == b"a\\b"


def _session(m, t0, exchanges, cport=41000):
    """A keep-alive TCP session carrying several request/response pairs."""
    m.process(t0, tcpf(C, cport, S, 80, SYN, seq=100))
    m.process(t0 + 0.001, tcpf(S, 80, C, cport, SYN | ACK, seq=500, ack=101, smac=MAC_S, dmac=MAC_C))
    cs, ss, t = 101, 501, t0 + 0.002
    m.process(t, tcpf(C, cport, S, 80, ACK, seq=cs, ack=ss))
    for req, resp in exchanges:
        t += 0.01
        m.process(t, tcpf(C, cport, S, 80, PSH | ACK, seq=cs, ack=ss, data=req))
        cs += len(req)
        t += 0.01
        m.process(t, tcpf(S, 80, C, cport, PSH | ACK, seq=ss, ack=cs, data=resp, smac=MAC_S, dmac=MAC_C))
        ss += len(resp)
        yield t
    m.process(t + 0.01, tcpf(C, cport, S, 80, FIN | ACK, seq=cs, ack=ss))


def test_keep_alive_connection_logs_every_pair_through_capture():
    """capture -> classify -> verdict back to capture: the second and third requests of the
    connection reach the log (this failed: the first answer's final verdict ended sampling)."""
    m, sink = meter(verdict_wait_s=0)
    e = Engine(apps=Apps({}))
    best = None
    for _ in _session(m, 1000.0, [(REQ1, RESP1), (REQ2, RESP2), (REQ3, RESP3)]):
        while sink.samples:
            v = e.classify(sink.samples.pop(0))
            m.on_verdict(v)
            if best is None or v.sample_seq_no >= best.sample_seq_no:
                best = v
    assert best.app_protocol == "HTTP"
    assert [t.url for t in best.http_transactions] == ["/one", "/two?x=1", "/three"]
    assert [t.status_code for t in best.http_transactions] == [200, 201, 404]
    assert best.final                      # "Connection: close" ends it
    assert e.counters["http_keep_sampling"] >= 2


def test_connection_close_gives_a_final_verdict_at_once():
    m, sink = meter(verdict_wait_s=0)
    e = Engine(apps=Apps({}))
    close = RESP1.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
    verdicts = []
    for _ in _session(m, 2000.0, [(REQ1, close)]):
        while sink.samples:
            verdicts.append(e.classify(sink.samples.pop(0)))
            m.on_verdict(verdicts[-1])
    assert verdicts[-1].final and len(verdicts[-1].http_transactions) == 1



def test_tunnels_and_upgrades_end_sampling():
    from services.classify.dissectors.http import wants_more
    from tests.services.classify.test_engine import sample

    def more(c, sv):
        return wants_more(sample(src_payloads=[c], dst_payloads=[sv], payload_dirs="sd"))

    assert more(REQ1, RESP1)
    assert not more(b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", b"HTTP/1.1 200 Connection established\r\n\r\n")
    assert not more(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    assert not more(REQ1, RESP3)
