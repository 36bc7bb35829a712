"""HTTP/1.x (RFC 9112) requests and responses, and the HTTP/2 connection preface (RFC 9113).

Names as nDPI gives them: ``HTTP``; ``HTTP_Connect`` for a CONNECT request;
``HTTP_Proxy`` for a request with an absolute URI (a request to a proxy);
``HTTP2`` for the clear-text HTTP/2 preface.  Metadata: method, Host, URL,
User-Agent, response status, Content-Type, Server.
"""

from __future__ import annotations

import re
from functools import lru_cache

from services.classify.dissectors.base import Dissector, Match
from shared.models import FlowSample, HttpInfo, Verdict
from shared.text import wire_text

METHODS = (
    b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"CONNECT", b"PATCH", b"TRACE",
    b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK", b"UNLOCK", b"REPORT",
    b"SEARCH", b"NOTIFY", b"SUBSCRIBE", b"UNSUBSCRIBE", b"MKCALENDAR", b"CHECKOUT", b"MERGE",
    b"M-SEARCH", b"PURGE", b"BPROPFIND", b"POLL", b"BCOPY", b"BDELETE", b"BMOVE", b"BPROPPATCH",
    b"RPC_IN_DATA", b"RPC_OUT_DATA", b"SOURCE",
)
# methods that name an application over HTTP, as nDPI does: WebDAV (RFC 4918), RPC over HTTP
# (MS-RPCH, [MS-RPCH] 2.1.2.1), an Icecast source client (SOURCE)
_METHOD_APPS = {
    b"PROPFIND": "WebDAV", b"PROPPATCH": "WebDAV", b"MKCOL": "WebDAV", b"COPY": "WebDAV", b"MOVE": "WebDAV",
    b"LOCK": "WebDAV", b"UNLOCK": "WebDAV", b"RPC_IN_DATA": "MS-RPCH", b"RPC_OUT_DATA": "MS-RPCH",
    b"SOURCE": "IceCast",
}
_FIRST = frozenset(m[0] for m in METHODS) | {ord("H"), ord("P")}
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# content types / URL endings that nDPI reports as an application over HTTP
_CT_APPS = {
    "application/ocsp-request": "OCSP", "application/ocsp-response": "OCSP",
    "application/dash+xml": "MpegDash", "video/iso.segment": "MpegDash", "application/ipp": "IPP",
    "application/soap+xml": "SOAP", "application/json-rpc": "JSON-RPC",
    # HTTP Live Streaming playlists (RFC 8216 4)
    "application/vnd.apple.mpegurl": "HLS", "application/x-mpegurl": "HLS", "audio/mpegurl": "HLS",
    "audio/x-mpegurl": "HLS",
}


def _txt(b: bytes, limit: int) -> str:
    return b[:limit].decode("latin-1")


def _request_line(buf: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(method, target, version) when buf starts with an HTTP/1.x request line, else None."""
    sp = buf.find(b" ", 0, 16)
    if sp <= 0:
        return None
    method = buf[:sp]
    if method not in METHODS:
        return None
    eol = buf.find(b"\r\n", sp)
    line = buf[sp + 1:eol] if eol >= 0 else buf[sp + 1:sp + 1 + 4096]
    sp2 = line.rfind(b" ")
    if sp2 < 0:
        if line.startswith(b"HTTP/1."):
            return method, b"", line      # no request target: nDPI still reads the header lines
        if eol >= 0:
            return None
        return method, line, b""          # truncated request line
    ver = line[sp2 + 1:]
    if not ver.startswith(b"HTTP/"):
        if eol >= 0:
            return None                   # RTSP/SIP/... use the same shape; not ours
        return method, line, b""
    return method, line[:sp2], ver


def _headers(buf: bytes, start: int) -> dict[bytes, bytes]:
    end = buf.find(b"\r\n\r\n", start)
    block = buf[start:end if end >= 0 else len(buf)]
    out: dict[bytes, bytes] = {}
    for line in block.split(b"\r\n")[:64]:
        k, sep, val = line.partition(b":")
        if sep:
            out.setdefault(k.strip().lower(), val.strip())
    return out


class HttpDissector(Dissector):
    name = "HTTP"
    transports = frozenset({"TCP"})
    ports = frozenset({80})

    def could_be(self, s: FlowSample) -> bool:
        p = s.src_payloads
        if p and p[0] and p[0][0] in _FIRST:
            return True
        p = s.dst_payloads
        return bool(p and p[0] and p[0][0] in _FIRST)

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        c = b"".join(s.src_payloads)
        sv = b"".join(s.dst_payloads)
        if c.startswith(b"PRI * HTTP/2") or sv.startswith(b"PRI * HTTP/2"):
            v.app_protocol = "HTTP2"
            return Match.FINAL
        req = _request_line(c)
        if req is None:
            # reversed flow: the request came from "dst"
            req2 = _request_line(sv)
            if req2 is not None:
                c, sv, req = sv, c, req2
        resp = sv.startswith(b"HTTP/1.") or sv.startswith(b"HTTP/0.9")
        icy = sv.startswith(b"ICY ")            # SHOUTcast/Icecast v1 answer to a GET
        resp = resp or icy
        if req is None:
            if c.startswith(b"HTTP/1."):
                c, sv, resp = sv, c, True
            elif not resp:
                return Match.NO
        info = HttpInfo()
        proto = "HTTP"
        app = ""
        if req is not None:
            method, target, _ver = req
            info.method = _txt(method, 32)
            info.url = _txt(target, 4096)
            hdr = _headers(c, c.find(b"\r\n") + 2) if b"\r\n" in c else {}
            host = hdr.get(b"host", b"")
            if host:
                info.host = _txt(host, 512)
            ua = hdr.get(b"user-agent")
            if ua:
                info.user_agent = _txt(ua, 1024)
            ct = hdr.get(b"content-type")
            if ct:
                app = _CT_APPS.get(_txt(ct, 256).split(";")[0].strip().lower(), "")
            if method == b"CONNECT":
                proto = "HTTP_Connect"
                if not info.host:
                    info.host = info.url
            elif target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
                proto = "HTTP_Proxy"
                if not info.host:
                    info.host = _txt(target.split(b"/")[2] if target.count(b"/") >= 2 else b"", 512)
            if b"soapaction" in hdr and not app:
                app = "SOAP"
            if not app:
                app = _METHOD_APPS.get(method, "")
            tl = target.lower()
            if not app and (tl.endswith(b".m3u8") or b".m3u8?" in tl):
                app = "HLS"
            if not app and (tl.endswith(b".mpd") or b".mpd?" in tl or tl.endswith(b".m4s") or b"/dash/" in tl):
                app = "MpegDash"
        if resp:
            eol = sv.find(b"\r\n")
            code = sv[9:12]
            if code.isdigit():
                info.status_code = int(code)
            if eol > 0:
                rh = _headers(sv, eol + 2)
                ct = rh.get(b"content-type")
                if ct:
                    info.content_type = _txt(ct, 256)
                    if not app:
                        app = _CT_APPS.get(info.content_type.split(";")[0].strip().lower(), "")
                srv = rh.get(b"server")
                if srv:
                    info.server = _txt(srv, 256)
                if not app and (icy or b"icy-name" in rh or b"icy-metaint" in rh or (srv or b"")[:7].lower() == b"icecast"):
                    app = "IceCast"
        v.app_protocol = proto
        txs = transactions(c, sv) if req is not None else []
        if txs:
            first = txs[0]
            if not first.host and info.host:
                first.host = _wt(info.host.encode("latin-1"), 512)
            v.http = first
            v.http_transactions = txs
        else:
            v.http = info
        if info.host:
            h = info.host
            if h.startswith("[") and "]" in h:
                pass
            elif h.count(":") == 1:
                h = h.split(":", 1)[0]
            v.host = h
        if app:
            v.application = app
        if req is not None and resp:
            return Match.FINAL
        return Match.PARTIAL


def wants_more(s: FlowSample) -> bool:
    """For a flow classified HTTP: whether later samples can add request/response pairs (every
    request answered, the connection kept open), so the verdict must not end sampling yet."""
    c = b"".join(s.src_payloads)
    sv = b"".join(s.dst_payloads)
    if _request_line(c) is None and _request_line(sv) is not None:
        c, sv = sv, c
    if c.startswith(b"PRI * HTTP/2") or c.startswith(b"CONNECT ") or b" 101 " in sv:
        return False                    # a tunnel or an upgrade: no further HTTP/1 messages
    return not connection_closes(c, sv)


# --------------------------------------------------------------------------- the HTTP log

MAX_TRANSACTIONS = 64
_NO_BODY_STATUS = (204, 304)


_PLAIN = re.compile(rb"[^\x20-\x5b\x5d-\x7e]")       # anything but printable ASCII without a backslash


def _wt(b: bytes, limit: int) -> str:
    """Wire bytes as represented text (shared/text.py) of at most ``limit`` characters."""
    if not b:
        return ""
    if _PLAIN.search(b) is None:
        return b[:limit].decode("ascii")
    return wire_text(b, limit)


def _message(buf: bytes, pos: int) -> tuple[dict[bytes, bytes], int] | None:
    """(headers, position after the header block) of the message at pos; None when its header
    block is not complete in buf."""
    end = buf.find(b"\r\n\r\n", pos)
    if end < 0:
        return None
    eol = buf.find(b"\r\n", pos)
    hdr: dict[bytes, bytes] = {}
    if eol < end:
        for line in buf[eol + 2:end].split(b"\r\n")[:128]:
            k, sep, val = line.partition(b":")
            if sep:
                k = k.strip().lower()
                if k not in hdr:
                    hdr[k] = val.strip()
    return hdr, end + 4


def _body(buf: bytes, pos: int, hdr: dict[bytes, bytes], until_close: bool) -> tuple[int, int, bool]:
    """(body bytes seen, position after the body, complete) of a message body starting at pos."""
    te = hdr.get(b"transfer-encoding")
    if te is not None and b"chunked" in te.lower():
        n, p = 0, pos
        while True:
            eol = buf.find(b"\r\n", p)
            if eol < 0:
                return n, len(buf), False
            size_txt = buf[p:eol].split(b";")[0].strip()
            try:
                size = int(size_txt, 16)
            except ValueError:
                return n, len(buf), False
            if size < 0:
                return n, len(buf), False
            p = eol + 2
            if size == 0:
                end = buf.find(b"\r\n\r\n", p - 2)
                return n, (end + 4 if end >= 0 else len(buf)), end >= 0
            if p + size > len(buf):
                return n + len(buf) - p, len(buf), False
            n += size
            p += size + 2
    cl = hdr.get(b"content-length")
    if cl is not None and cl.isdigit():
        ln = int(cl)
        if pos + ln > len(buf):
            return ln, len(buf), False          # announced length; the samples hold only its start
        return ln, pos + ln, True
    if until_close:
        return len(buf) - pos, len(buf), False
    return 0, pos, True


@lru_cache(maxsize=1024)
def _requests(c: bytes) -> tuple[tuple[tuple[tuple[str, object], ...], bytes], ...]:
    """The requests of a client byte stream: (fields, method) each (memoised: every later sample of
    the flow carries the same client bytes again, or more of them)."""
    reqs: list[tuple[tuple[tuple[str, object], ...], bytes]] = []
    pos = 0
    n = len(c)
    while pos < n and len(reqs) < MAX_TRANSACTIONS:
        req = _request_line(c[pos:pos + 4200] if pos else c)
        if req is None:
            break
        method, target, ver = req
        f: list[tuple[str, object]] = [("method", _wt(method, 32)), ("url", _wt(target, 4096)),
                                       ("version", _wt(ver[5:], 16)), ("trans_depth", len(reqs) + 1)]
        msg = _message(c, pos)
        if msg is None:
            reqs.append((tuple(f), method))
            break                                   # header block cut by the sample's end
        hdr, body_at = msg
        get = hdr.get
        ln, pos, complete = _body(c, body_at, hdr, False)
        f += [("host", _wt(get(b"host", b""), 512)), ("user_agent", _wt(get(b"user-agent", b""), 1024)),
              ("referer", _wt(get(b"referer", b""), 4096)),
              ("request_content_type", _wt(get(b"content-type", b""), 256)), ("request_body_len", ln)]
        reqs.append((tuple(f), method))
        if not complete:
            break
    return tuple(reqs)


@lru_cache(maxsize=1024)
def _responses(sv: bytes, heads: tuple[bool, ...]) -> tuple[tuple[tuple[str, object], ...], ...]:
    """The responses of a server byte stream, one per request (``heads``: the request was HEAD)."""
    out: list[tuple[tuple[str, object], ...]] = []
    pos = 0
    n = len(sv)
    while pos < n and len(out) < len(heads):
        if not (sv.startswith(b"HTTP/1.", pos) or sv.startswith(b"HTTP/0.9", pos)):
            break
        msg = _message(sv, pos)
        eol = sv.find(b"\r\n", pos)
        parts = sv[pos:eol if eol >= 0 else n].split(b" ", 2)
        code = int(parts[1]) if len(parts) > 1 and len(parts[1]) == 3 and parts[1].isdigit() else 0
        if 100 <= code < 200 and code != 101 and msg is not None:
            pos = msg[1]                            # an interim response: the real one follows
            continue
        f: list[tuple[str, object]] = [("status_code", code),
                                       ("status_msg", _wt(parts[2], 256) if len(parts) > 2 else "")]
        if msg is None:
            out.append(tuple(f))
            break
        hdr, body_at = msg
        if heads[len(out)] or code in _NO_BODY_STATUS or code == 101:
            ln, pos, complete = 0, body_at, code != 101
        else:
            ln, pos, complete = _body(sv, body_at, hdr, True)
        f += [("content_type", _wt(hdr.get(b"content-type", b""), 256)), ("server", _wt(hdr.get(b"server", b""), 256)),
              ("response_body_len", ln)]
        out.append(tuple(f))
        if not complete:
            break
    return tuple(out)


def transactions(c: bytes, sv: bytes) -> list[HttpInfo]:
    """Every request of the client stream ``c`` with its response from ``sv`` (in order, as
    HTTP/1.x pipelining and keep-alive put them), as far as the bytes reach.  Strings are
    represented text (shared/text.py)."""
    reqs = _requests(c)
    if not reqs:
        return []
    resps = _responses(sv, tuple(m == b"HEAD" for _f, m in reqs)) if sv else ()
    out = []
    for i, (f, _m) in enumerate(reqs):
        d = dict(f)
        if i < len(resps):
            d.update(resps[i])
        out.append(HttpInfo(**d))
    return out


def connection_closes(c: bytes, sv: bytes) -> bool:
    """True when the last message seen asks to close the connection (no further request can come)."""
    for buf in (sv, c):
        k = buf.rfind(b"\r\nConnection:")
        if k < 0:
            k = buf.lower().rfind(b"\r\nconnection:")
        if k >= 0:
            eol = buf.find(b"\r\n", k + 2)
            if b"close" in buf[k:eol if eol >= 0 else len(buf)].lower():
                return True
    return False
