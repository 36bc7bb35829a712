"""HTTP/1.x (RFC 9112) requests and responses, and the HTTP/2 connection preface (RFC 9113).

Names as nDPI gives them: ``HTTP``; ``HTTP_Connect`` for a CONNECT request;
``HTTP_Proxy`` for a request with an absolute URI (a request to a proxy);
``HTTP2`` for the clear-text HTTP/2 preface.  Metadata: method, Host, URL,
User-Agent, response status, Content-Type, Server.
"""

from __future__ import annotations

from services.classify.dissectors.base import Dissector, Match
from shared.models import FlowSample, HttpInfo, Verdict

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
