"""The console's pages (Starlette): overview, flows, DNS, alerts, blocks, rules.

Pages are rendered on the server with Jinja2 (autoescaping on: every string
from the wire is escaped); the only script is static/app.js (no inline
script, and a Content-Security-Policy that forbids any), which updates the
overview from a server-sent-events stream with ``textContent``.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import ipaddress
import json
import logging
import re
import time
import urllib.parse
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from services.web import history
from services.web.auth import COOKIE, Auth, Session, client_addr
from services.web.blockview import client_view
from services.web.live import LiveHub
from shared.bus import Bus, RateLimitedLog, kv_keys, safe_text
from shared.codec import loads_small
from shared.models import Evidence
from shared.settings import WebSettings
from shared.subjects import subject

log = logging.getLogger("flowtarget.web")
HERE = Path(__file__).resolve().parent
MAX_FORM_BYTES = 256 * 1024
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")

SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _ts(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return ""
    if v <= 0:
        return ""
    try:
        return _dt.datetime.fromtimestamp(v, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    except (OverflowError, OSError, ValueError):
        return str(v)


def _num(value: Any) -> str:
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return ""


def _endpoint(ip: Any, port: Any) -> str:
    ip = str(ip or "")
    if not port:
        return ip
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class EvidenceIndex:
    """Evidence pcaps announced on ``ft.evidence.<probe>`` and the recordings this console asked for."""

    def __init__(self) -> None:
        self.by_ref: OrderedDict[str, str] = OrderedDict()      # alert_id -> path
        self.pending: list[tuple[str, float]] = []               # (alert_id, asked at) in order asked
        self.recorded: OrderedDict[str, str] = OrderedDict()     # alert_id -> path of its recording

    def add(self, ev: Evidence) -> None:
        if ev.reason == "alert" and ev.ref:
            self.by_ref[ev.ref] = ev.path
        elif ev.reason == "request" and self.pending:
            # capture names a requested recording only by its tag: this console asks for
            # recordings of one length, so they end in the order they were asked for
            alert_id, _ = self.pending.pop(0)
            self.recorded[alert_id] = ev.path
        for d in (self.by_ref, self.recorded):
            while len(d) > 10_000:
                d.popitem(last=False)

    def path_for(self, alert_id: str, alert_path: str = "") -> str:
        return self.recorded.get(alert_id) or alert_path or self.by_ref.get(alert_id, "")


def bpf_for_alert(a: dict[str, Any]) -> str:
    """A BPF filter selecting an incident's traffic, built only from validated addresses."""
    details = a.get("details") or {}
    if str(a.get("alert_type", "")).startswith("arp"):
        mac = str(details.get("src_mac") or details.get("new_mac") or "").lower()
        return f"arp and ether src {mac}" if _MAC.match(mac) else "arp"
    hosts = []
    for k in ("src_ip", "dst_ip"):
        try:
            hosts.append(str(ipaddress.ip_address(str(a.get(k) or ""))))
        except ValueError:
            pass
    return " and ".join(f"host {h}" for h in hosts)


EXPORT_FIELDS = ("probe", "host", "port", "flow_id", "since", "until", "bpf")


def export_request(form: dict[str, str], default_probe: str) -> tuple[str, dict[str, Any]]:
    """The export form -> (probe, the ``ft.ctl.<probe>.export`` request), validated as `flowtarget pcap` does.

    Raises ValueError with the reason (the same messages as the command: capture's own Query.check)."""
    from services.capture.export import ExportError, Query, parse_time

    probe = (form.get("probe") or "").strip() or default_probe
    try:
        subject("ctl", probe, "export")
    except ValueError:
        raise ValueError(f"bad probe name {probe[:64]!r}") from None
    port_text = (form.get("port") or "").strip()
    try:
        port = int(port_text) if port_text else 0
    except ValueError:
        raise ValueError(f"bad port {port_text[:16]!r}: a number 1-65535") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"bad port {port}: a number 1-65535")
    req: dict[str, Any] = {}
    try:
        q = Query(host=(form.get("host") or "").strip(), port=port, flow_id=(form.get("flow_id") or "").strip(),
                  bpf=(form.get("bpf") or "").strip(), since=parse_time((form.get("since") or "").strip() or None),
                  until=parse_time((form.get("until") or "").strip() or None))
        q.check()
    except ExportError as exc:
        raise ValueError(str(exc).replace("--host, --port, --flow-id, --bpf and/or --since/--until",
                                          "a host, port, flow id, filter and/or time window")) from None
    if q.since is not None and q.until is not None and q.until < q.since:
        raise ValueError("the time window ends before it starts")
    for k in ("host", "flow_id", "bpf"):
        if getattr(q, k):
            req[k] = getattr(q, k)
    if q.port:
        req["port"] = q.port
    for k in ("since", "until"):
        if getattr(q, k) is not None:
            req[k] = getattr(q, k)
    return probe, req


def connection_query(b: dict[str, Any], around_s: float = 120.0) -> dict[str, str] | None:
    """The export form's fields for a block action's client address and port around its time (the
    connection's packets while capture's current store file has no index yet), or None."""
    try:
        ts, port, ip = float(b.get("timestamp") or 0), int(b.get("src_port") or 0), str(b.get("src_ip") or "")
        ipaddress.ip_address(ip)
    except (TypeError, ValueError):
        return None
    if ts <= 0 or not 0 < port <= 65535:
        return None
    return {"host": ip, "port": str(port), "since": f"{ts - around_s:.0f}", "until": f"{ts + around_s:.0f}",
            "probe": str(b.get("probe") or "")}


def describe_export(req: dict[str, Any]) -> str:
    """One line naming what an export request asks for (for the page, the flash and the audit log)."""
    parts = []
    if req.get("flow_id"):
        parts.append(f"flow {req['flow_id']}")
    if req.get("host"):
        parts.append(f"host {req['host']}")
    if req.get("port"):
        parts.append(f"port {req['port']}")
    if req.get("since") is not None or req.get("until") is not None:
        parts.append(f"from {_ts(req.get('since')) or 'the start'} to {_ts(req.get('until')) or 'now'}")
    if req.get("bpf"):
        parts.append(f"filter '{req['bpf']}'")
    return safe_text(", ".join(parts) or "everything", 400)


class Console:
    """Everything a request needs: settings, bus, live hub, auth, evidence index, templates."""

    def __init__(self, settings: WebSettings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        self.hub = LiveHub(settings, bus)
        self.auth = Auth(settings)
        self.evidence = EvidenceIndex()
        self.exports: OrderedDict[str, dict[str, Any]] = OrderedDict()   # file name -> an export this console made
        self.stopping = asyncio.Event()
        self.flashes: dict[str, str] = {}
        self.rlog = RateLimitedLog(log)
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")),
                                      autoescape=True, undefined=jinja2.StrictUndefined)
        self.env.filters["ts"] = _ts
        self.env.filters["num"] = _num
        self.env.globals["endpoint"] = _endpoint

    # ------------------------------------------------------------------ helpers

    def flash(self, session: Session | None, msg: str) -> None:
        """A message for the session's next page (kept server-side: no text comes back through the URL)."""
        if session is not None and session.sid:
            self.flashes[session.sid] = msg
            while len(self.flashes) > 10_000:
                self.flashes.pop(next(iter(self.flashes)))

    def pop_flash(self, session: Session | None) -> str:
        return self.flashes.pop(session.sid, "") if session is not None and session.sid else ""

    def render(self, request: Request, session: Session | None, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        tpl = self.env.get_template(name)
        html = tpl.render(session=session, csrf=session.csrf if session else "", probe=self.settings.probe,
                          path=request.url.path, **ctx)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    async def form(self, request: Request) -> dict[str, str]:
        """An urlencoded form body (bounded); repeated keys are joined with commas."""
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            raise ValueError("form too large")
        out: dict[str, list[str]] = {}
        for k, v in urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
            out.setdefault(k, []).append(v)
        return {k: ",".join(v) if len(v) > 1 else v[0] for k, v in out.items()}

    async def scan(self, kind: str, keep: Any, limit: int) -> history.ScanResult:
        assert self.bus.js is not None
        return await history.scan(self.bus.js, self.settings.stream_name, kind, keep, limit,
                                  self.settings.web_scan_max_messages)

    async def rules_bucket(self) -> Any:
        from services.block.rules import open_bucket

        assert self.bus.js is not None
        return await open_bucket(self.bus.js, self.settings.rules_bucket)

    def evidence_file(self, path: str) -> Path | None:
        """``path`` if it is a regular file inside the evidence directory (no traversal, no symlink out)."""
        if not path:
            return None
        try:
            root = self.settings.evidence_dir.resolve()
            p = Path(path)
            if not p.is_absolute():
                p = root / p
            p = p.resolve()
        except (OSError, RuntimeError, ValueError):
            return None
        if root not in p.parents or not p.is_file():
            return None
        return p


# --------------------------------------------------------------------------- request guard


def guarded(console: Console, handler: Any, change: bool = False, public: bool = False) -> Any:
    """Wrap a handler: session lookup, login required, CSRF on every POST, security headers."""

    async def endpoint(request: Request) -> Response:
        session = console.auth.session(request.cookies.get(COOKIE))
        authz = request.headers.get("authorization", "")
        bearer = False
        if authz:   # a script's token: failures count against the address like failed logins
            addr = client_addr(request.scope)
            if console.auth.login_blocked(addr):
                return PlainTextResponse("too many failed logins; wait a minute", status_code=429,
                                         headers=SECURITY_HEADERS)
            bearer = console.auth.check_bearer(authz)
            if not bearer:
                console.auth.login_failed(addr)
        if bearer and (session is None or not session.authenticated):
            session = Session(sid="", csrf="", created=time.time(), user="token")
        if not public and (session is None or not session.authenticated):
            if request.method == "GET" and not request.url.path.startswith(("/api/", "/events")):
                nxt = urllib.parse.quote(request.url.path + (("?" + request.url.query) if request.url.query else ""))
                return RedirectResponse(f"/login?next={nxt}", status_code=303, headers=SECURITY_HEADERS)
            return PlainTextResponse("login required", status_code=401, headers=SECURITY_HEADERS)
        form: dict[str, str] = {}
        if request.method == "POST":
            origin = request.headers.get("origin")
            if origin and origin != "null":
                host = request.headers.get("host", "")
                if urllib.parse.urlsplit(origin).netloc != host:
                    return PlainTextResponse("cross-origin request refused", status_code=403, headers=SECURITY_HEADERS)
            try:
                form = await console.form(request)
            except ValueError:
                return PlainTextResponse("form too large", status_code=413, headers=SECURITY_HEADERS)
            if not (bearer and session is not None and session.sid == "") and not console.auth.csrf_ok(session, form.get("csrf", "")):
                console.auth.record(session.user if session else "-", f"refused {request.url.path}: bad CSRF token",
                                    client_addr(request.scope))
                return PlainTextResponse("bad or missing CSRF token; reload the page", status_code=403,
                                         headers=SECURITY_HEADERS)
        resp = await handler(request, session, form)
        for k, v in SECURITY_HEADERS.items():
            resp.headers.setdefault(k, v)
        return resp

    return endpoint


# --------------------------------------------------------------------------- pages


def build_app(console: Console) -> Starlette:
    c = console
    s = c.settings

    async def login_page(request: Request, session: Session | None, form: dict[str, str]) -> Response:
        if session is None or session.sid == "":
            session = c.auth.new_session()
        resp = c.render(request, session, "login.html", error="", nxt=request.query_params.get("next", "/"),
                        token_login=bool(s.web_token.get_secret_value()),
                        password_login=bool(s.web_user and s.web_password.get_secret_value()))
        _set_cookie(resp, session.sid)
        return resp

    async def login_post(request: Request, session: Session | None, form: dict[str, str]) -> Response:
        addr = client_addr(request.scope)
        nxt = form.get("next", "/")
        if not nxt.startswith("/") or nxt.startswith("//") or "\\" in nxt:
            nxt = "/"
        if c.auth.login_blocked(addr):
            return c.render(request, session, "login.html", status=429, error="too many failed logins; wait a minute",
                            nxt=nxt, token_login=bool(s.web_token.get_secret_value()),
                            password_login=bool(s.web_user))
        user = c.auth.check_login(form.get("user", ""), form.get("password", ""), form.get("token", ""))
        if user is None:
            c.auth.login_failed(addr)
            return c.render(request, session, "login.html", status=401, error="wrong credentials", nxt=nxt,
                            token_login=bool(s.web_token.get_secret_value()), password_login=bool(s.web_user))
        if session is not None:
            c.auth.drop(session.sid)          # a fresh id after login (no session fixation)
        new = c.auth.new_session(user)
        c.auth.record(user, "login", addr)
        resp = RedirectResponse(nxt, status_code=303)
        _set_cookie(resp, new.sid)
        return resp

    async def logout(request: Request, session: Session | None, form: dict[str, str]) -> Response:
        if session is not None:
            c.auth.record(session.user, "logout", client_addr(request.scope))
            c.auth.drop(session.sid)
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE)
        return resp

    def _set_cookie(resp: Response, sid: str) -> None:
        resp.set_cookie(COOKIE, sid, httponly=True, samesite="strict", secure=s.web_cookie_secure,
                        max_age=int(s.web_session_ttl_s), path="/")

    # -- overview

    async def overview(request: Request, session: Session | None, form: dict[str, str]) -> Response:
        return c.render(request, session, "overview.html", snap=c.hub.snapshot(), interval=s.web_live_interval_s,
                        services=sorted(s.web_health_urls))

    async def events(request: Request, session: Session | None, form: dict[str, str]) -> Response:
        async def stream() -> Any:
            await c.hub.join()
            try:
                yield "retry: 2000\n\n"
                while not c.stopping.is_set():
                    yield "data: " + json.dumps(c.hub.snapshot()) + "\n\n"
                    try:
                        await asyncio.wait_for(c.stopping.wait(), s.web_live_interval_s)
                    except asyncio.TimeoutError:
                        pass
            finally:
                await c.hub.leave()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def api_live(request: Request, session: Session | None, form: dict[str, str]) -> Response:
        return JSONResponse(c.hub.snapshot())

    # -- flows, DNS, blocks

    def _limit(q: dict[str, str], default: int = 500) -> int:
        try:
            n = int(q.get("limit") or default)
        except ValueError:
            n = default
        return max(1, min(n, s.web_page_max))

    async def flows(request: Request, session: Session | None, form: dict[str, str]) -> Response:
        q = dict(request.query_params)
        error, res = "", history.ScanResult()
        try:
            res = await c.scan("flow", history.flow_filter(q), _limit(q))
        except history.FilterError as exc:
            error = str(exc)
        return c.render(request, session, "flows.html", q=q, res=res, error=error, limit=_limit(q))

    async def dns(request: Request, session: Session | None, form: dict[str, str]) -> Response:
        q = dict(request.query_params)
        error, res = "", history.ScanResult()
        try:
            res = await c.scan("dns", history.dns_filter(q), _limit(q))
        except history.FilterError as exc:
            error = str(exc)
        names = Counter(r.get("query_name", "") for r in res.rows if not r.get("is_response"))
        return c.render(request, session, "dns.html", q=q, res=res, error=error, limit=_limit(q),
                        top_names=names.most_common(10))

    async def blocks(request: Request, session: Session | None, form: dict[str, str]) -> Response:
        q = dict(request.query_params)
        res = await c.scan("block", history.block_filter(q), _limit(q))
        for r in res.rows:
            r["client_view"] = client_view(r)
            r["conn_query"] = connection_query(r)
        outcomes = Counter(r.get("outcome", "") for r in res.rows)
        lat = [float(r.get("latency_ms") or 0) for r in res.rows if r.get("latency_ms")]
        summary = {"p50": history.percentile(lat, 0.5), "p99": history.percentile(lat, 0.99), "n": len(lat)}
        return c.render(request, session, "blocks.html", q=q, res=res, outcomes=sorted(outcomes.items()),
                        summary=summary, limit=_limit(q))

    # -- alerts

    async def alerts(request: Request, session: Session | None, form: dict[str, str]) -> Response:
        q = dict(request.query_params)
        typ = q.get("type", "")
        res = await c.scan("alert", (lambda d: d.get("alert_type") == typ) if typ else (lambda d: True),
                           s.web_page_max)
        incidents = history.fold_incidents(res.rows)
        state = q.get("state", "")
        if state in ("open", "closed"):
            incidents = [i for i in incidents if i["state"] == state]
        for i in incidents:
            i["evidence"] = c.evidence.path_for(i.get("alert_id", ""), i.get("evidence_pcap", ""))
        return c.render(request, session, "alerts.html", q=q, res=res, incidents=incidents)

    async def _incident(alert_id: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        res = await c.scan("alert", lambda d: d.get("alert_id") == alert_id, 1000)
        inc = history.fold_incidents(res.rows)
        return (inc[0] if inc else None), res.rows

    async def alert_detail(request: Request, session: Session | None, form: dict[str, str]) -> Response:
        alert_id = request.path_params["alert_id"]
        inc, updates = await _incident(alert_id)
        if inc is None:
            return c.render(request, session, "message.html", status=404, title="No such alert",
                            message=f"No alert {alert_id} in the stream (it may have aged out).")
        path = c.evidence.path_for(alert_id, inc.get("evidence_pcap", ""))
        return c.render(request, session, "alert.html", a=inc, updates=updates, evidence=path,
                        evidence_ok=c.evidence_file(path) is not None, bpf=bpf_for_alert(inc),
                        recording=any(aid == alert_id for aid, _ in c.evidence.pending),
                        record_s=s.web_evidence_record_s, message=c.pop_flash(session))

    async def alert_pcap(request: Request, session: Session | None, form: dict[str, str]) -> Response:
        alert_id = request.path_params["alert_id"]
        inc, _ = await _incident(alert_id)
        path = c.evidence.path_for(alert_id, inc.get("evidence_pcap", "") if inc else "")
        f = c.evidence_file(path)
        if f is None:
            return c.render(request, session, "message.html", status=404, title="No evidence",
                            message="No evidence pcap for this alert is readable here "
                                    f"(expected inside {s.evidence_dir}).")
        c.auth.record(session.user if session else "-", f"downloaded evidence {f.name} of alert {alert_id}",
                      client_addr(request.scope))
        safe_name = re.sub(r"[^A-Za-z0-9._-]", "_", f.name)[:200]
        return FileResponse(str(f), media_type="application/vnd.tcpdump.pcap", filename=safe_name)

    async def alert_record(request: Request, session: Session | None, form: dict[str, str]) -> Response:
        alert_id = request.path_params["alert_id"]
        inc, _ = await _incident(alert_id)
        if inc is None:
            return PlainTextResponse("no such alert", status_code=404)
        bpf = bpf_for_alert(inc)
        probe = str(inc.get("probe") or s.probe)
        try:
            ctl_pcap, ctl_evidence = subject("ctl", probe, "pcap"), subject("ctl", probe, "evidence")
        except ValueError:
            return PlainTextResponse("the alert names no valid probe", status_code=400)
        who = session.user if session else "-"
        if inc.get("flow_id"):
            # an incident about a flow: capture writes that flow's recent packets if it still holds them
            # (the same request the detectors make; answered at once, idempotent per alert)
            req = json.dumps({"key": alert_id, "flow_id": str(inc["flow_id"])[:64],
                              "tag": str(inc.get("alert_type", "alert"))[:32]}).encode()
            try:
                reply = await c.bus.nc.request(ctl_evidence, req, timeout=2)
                path = str(json.loads(reply.data).get("path", ""))[:1024]
            except Exception:  # noqa: BLE001 - no capture answered, or it no longer holds the flow
                path = ""
            if path:
                c.evidence.recorded[alert_id] = path
                msg = "capture wrote the flow's recent packets"
                c.auth.record(who, f"asked capture ({probe}) for the evidence of alert {alert_id}: {msg}",
                              client_addr(request.scope))
                c.flash(session, msg)
                return RedirectResponse(f"/alerts/{urllib.parse.quote(alert_id)}", status_code=303)
        if not bpf:
            return PlainTextResponse("nothing to record: the alert names no address", status_code=400)
        req = json.dumps({"bpf": bpf, "duration_s": s.web_evidence_record_s}).encode()
        try:
            reply = await c.bus.nc.request(ctl_pcap, req, timeout=3)
            answer = json.loads(reply.data)
        except Exception as exc:  # noqa: BLE001 - no capture answered
            answer = {"status": "error", "error": f"capture did not answer: {type(exc).__name__}"}
        if answer.get("status") == "recording":
            c.evidence.pending.append((alert_id, time.time()))
            msg = f"capture records '{bpf}' for {s.web_evidence_record_s:g} s"
        else:
            msg = "capture refused: " + str(answer.get("error", "unknown"))
        c.auth.record(who, f"asked capture ({probe}) to record '{bpf}' "
                      f"for alert {alert_id}: {msg}", client_addr(request.scope))
        c.flash(session, msg)
        return RedirectResponse(f"/alerts/{urllib.parse.quote(alert_id)}", status_code=303)

    # -- rules

    async def rules_page(request: Request, session: Session | None, form: dict[str, str], status: int = 200,
                         result: str = "", error: str = "", draft: dict[str, str] | None = None) -> Response:
        from services.block import rules as R

        kv = await c.rules_bucket()
        entries, errors = await read_rules_with_stats(kv)
        counts = await rule_counts(c.bus.js, s.rule_stats_bucket)
        for e in entries:
            e["stats"] = {**counts.get(e["rule"].id, {}), **e["stats"]}
        return c.render(request, session, "rules.html", status=status, entries=entries, errors=errors,
                        result=result, error=error, draft=draft or {}, actions=list(R.Action.__args__),
                        match_fields=R.MATCH_FIELDS, audit=list(c.auth.audit)[::-1][:50])

    async def rules_add(request: Request, session: Session | None, form: dict[str, str]) -> Response:
        from services.block import rules as R

        who = session.user if session else "-"
        dry = form.get("dry_run") == "1"
        try:
            if form.get("yaml", "").strip():
                new = R.parse_rules_text(form["yaml"], "rules")          # exactly `flowtarget rules load`
            else:
                new = [R.parse_rule(rule_from_form(form), "rule")]       # exactly `flowtarget rules add`
        except R.RuleError as exc:
            c.auth.record(who, f"rule refused: {exc}", client_addr(request.scope))
            return await rules_page(request, session, form, status=400, error=f"refused: {exc}", draft=form)
        ids = ", ".join(r.id for r in new)
        if dry:
            shown = "; ".join(r.model_dump_json(exclude_defaults=True) for r in new)
            return await rules_page(request, session, form, result=f"dry run: valid, would store {shown}", draft=form)
        kv = await c.rules_bucket()
        await R.put_rules(kv, new)
        c.auth.record(who, f"stored rule(s) {ids}: " + "; ".join(r.model_dump_json(exclude_defaults=True) for r in new),
                      client_addr(request.scope))
        return await rules_page(request, session, form, result=f"stored {len(new)} rule(s): {ids}")

    async def rules_remove(request: Request, session: Session | None, form: dict[str, str]) -> Response:
        rid = request.path_params["rule_id"]
        kv = await c.rules_bucket()
        try:
            exists = bool((await kv.get(rid)).value)
        except Exception:  # noqa: BLE001 - no such key, or deleted (nats-py's KeyNotFoundError family)
            exists = False
        if not exists:
            return await rules_page(request, session, form, status=404, error=f"no rule {rid!r}")
        await kv.delete(rid)
        c.auth.record(session.user if session else "-", f"removed rule {rid}", client_addr(request.scope))
        return await rules_page(request, session, form, result=f"removed rule {rid}")

    async def rules_enable(request: Request, session: Session | None, form: dict[str, str]) -> Response:
        from services.block import rules as R

        rid = request.path_params["rule_id"]
        enable = form.get("enabled") == "1"
        kv = await c.rules_bucket()
        entries, _ = await read_rules_with_stats(kv)      # an entry with statistics beside it is still found
        rule = next((e["rule"] for e in entries if e["rule"].id == rid), None)
        if rule is None:
            return await rules_page(request, session, form, status=404, error=f"no rule {rid!r}")
        data = json.loads(rule.model_dump_json(exclude_defaults=True))
        data["enabled"] = enable
        new = R.parse_rule(data, "rule")
        await R.put_rules(kv, [new])
        what = "enabled" if enable else "disabled"
        c.auth.record(session.user if session else "-", f"{what} rule {rid}", client_addr(request.scope))
        return await rules_page(request, session, form, result=f"{what} rule {rid}")

    # -- pcap export (capture's packet recorder, over ft.ctl.<probe>.export)

    def _pcap_page(request: Request, session: Session | None, draft: dict[str, str], status: int = 200,
                   error: str = "") -> Response:
        return c.render(request, session, "pcap.html", status=status, draft=draft, error=error,
                        message=c.pop_flash(session), exports=list(c.exports.values())[::-1],
                        default_probe=s.probe)

    async def pcap_export(request: Request, session: Session | None, form: dict[str, str]) -> Response:
        draft = {k: request.query_params.get(k, "")[:1024] for k in EXPORT_FIELDS}
        return _pcap_page(request, session, draft)

    async def pcap_export_post(request: Request, session: Session | None, form: dict[str, str]) -> Response:
        who = session.user if session else "-"
        draft = {k: form.get(k, "")[:1024] for k in EXPORT_FIELDS}
        try:
            probe, req = export_request(draft, s.probe)
        except ValueError as exc:
            c.auth.record(who, f"pcap export refused: {exc}", client_addr(request.scope))
            return _pcap_page(request, session, draft, status=400, error=f"refused: {exc}")
        what = describe_export(req)
        try:
            reply = await c.bus.nc.request(subject("ctl", probe, "export"), json.dumps(req).encode(),
                                           timeout=s.web_export_timeout_s)
            answer = loads_small(reply.data, 64 * 1024, 4)
            if not isinstance(answer, dict):
                raise ValueError("not a JSON object")
        except Exception as exc:  # noqa: BLE001 - no responders, a timeout, or a bad answer
            name = type(exc).__name__
            error = (f"no capture with a packet recorder (FT_RECORD_DIR) answers for probe {probe}"
                     if "NoResponders" in name else
                     f"capture did not answer within {s.web_export_timeout_s:g} s" if "Timeout" in name else
                     f"capture's answer was not readable ({name})")
            c.auth.record(who, f"pcap export of {what} ({probe}) failed: {error}", client_addr(request.scope))
            return _pcap_page(request, session, draft, status=502, error=error)
        if answer.get("status") != "ok":
            error = f"capture refused: {safe_text(answer.get('error') or answer.get('status') or 'unknown', 300)}"
            c.auth.record(who, f"pcap export of {what} ({probe}) refused: {error}", client_addr(request.scope))
            return _pcap_page(request, session, draft, status=409 if answer.get("status") == "busy" else 400,
                              error=error)
        f = c.evidence_file(str(answer.get("path", ""))[:1024])
        if f is None:
            error = (f"capture wrote {safe_text(answer.get('path', ''), 200)}, which is not readable here "
                     f"(expected inside {s.evidence_dir}: the console must see capture's FT_EVIDENCE_DIR)")
            c.auth.record(who, f"pcap export of {what} ({probe}): {error}", client_addr(request.scope))
            return _pcap_page(request, session, draft, status=502, error=error)
        entry = {"name": f.name, "path": str(f), "what": what, "probe": probe, "who": who, "time": time.time(),
                 "packets": int(answer.get("packets") or 0), "size": int(answer.get("size") or 0),
                 "truncated": bool(answer.get("truncated")), "files_read": int(answer.get("files_read") or 0)}
        c.exports[f.name] = entry
        while len(c.exports) > 200:
            c.exports.popitem(last=False)
        msg = (f"exported {entry['packets']:,} packets ({entry['size']:,} bytes) of {what}"
               + (" — cut short by capture's export limit" if entry["truncated"] else ""))
        c.auth.record(who, f"pcap export of {what} ({probe}): {msg} -> {f.name}", client_addr(request.scope))
        c.flash(session, msg)
        return RedirectResponse("/pcap", status_code=303)

    async def pcap_download(request: Request, session: Session | None, form: dict[str, str]) -> Response:
        name = request.path_params["name"]
        entry = c.exports.get(name)
        f = c.evidence_file(entry["path"]) if entry else None
        if f is None:
            return c.render(request, session, "message.html", status=404, title="No such export",
                            message="This console made no such export, or its file is gone (capture's evidence "
                                    "directory is bounded).")
        c.auth.record(session.user if session else "-", f"downloaded export {f.name}", client_addr(request.scope))
        return FileResponse(str(f), media_type="application/vnd.tcpdump.pcap",
                            filename=re.sub(r"[^A-Za-z0-9._-]", "_", f.name)[:200])

    async def healthz(request: Request) -> Response:
        ok = c.bus.connected
        return JSONResponse({"healthy": ok, "nats_connected": ok}, status_code=200 if ok else 503)

    async def not_found(request: Request, exc: Exception) -> Response:
        return PlainTextResponse("not found", status_code=404, headers=SECURITY_HEADERS)

    def page(path: str, handler: Any, methods: tuple[str, ...] = ("GET",), **kw: Any) -> Route:
        return Route(path, guarded(c, handler, **kw), methods=list(methods))

    routes = [
        page("/login", login_page, public=True),
        page("/login", login_post, ("POST",), public=True),
        page("/logout", logout, ("POST",)),
        page("/", overview),
        page("/events", events),
        page("/api/live", api_live),
        page("/flows", flows),
        page("/dns", dns),
        page("/alerts", alerts),
        page("/alerts/{alert_id}", alert_detail),
        page("/alerts/{alert_id}/pcap", alert_pcap),
        page("/alerts/{alert_id}/record", alert_record, ("POST",)),
        page("/blocks", blocks),
        page("/rules", rules_page),
        page("/rules", rules_add, ("POST",)),
        page("/rules/{rule_id}/remove", rules_remove, ("POST",)),
        page("/rules/{rule_id}/enable", rules_enable, ("POST",)),
        page("/pcap", pcap_export),
        page("/pcap", pcap_export_post, ("POST",)),
        page("/pcap/exports/{name}", pcap_download),
        Route("/healthz", healthz),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found}, middleware=[Middleware(SecurityHeaders)])


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response that does not set them itself (static files, errors)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                have = {k.lower() for k, _ in headers}
                static = scope.get("path", "").startswith("/static/")
                for k, v in SECURITY_HEADERS.items():
                    if static and k == "Cache-Control":
                        continue          # the script and the style sheet may be cached
                    if k.lower().encode() not in have:
                        headers.append((k.lower().encode(), v.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def rule_counts(js: Any, bucket: str) -> dict[str, dict[str, Any]]:
    """block's per-rule counts (hits, won, lost, ..., last hit) from its stats bucket, non-zero ones only;
    {} when this block has no statistics or the bucket does not exist yet."""
    try:
        from services.block.stats import read_stats
    except ImportError:
        return {}
    try:
        raw = await read_stats(js, bucket)
    except Exception as exc:  # noqa: BLE001 - statistics are a nicety: the rules page still works
        log.warning("rule statistics not readable: %s", safe_text(exc))
        return {}
    out: dict[str, dict[str, Any]] = {}
    for rid, st in raw.items():
        d: dict[str, Any] = {k: v for k, v in st.items() if k != "last_hit" and isinstance(v, int) and v}
        if st.get("last_hit"):
            d["last hit"] = _ts(st["last_hit"])
        if d:
            out[rid] = d
    return out


def rule_from_form(form: dict[str, str]) -> dict[str, Any]:
    """The add form -> the same dict `flowtarget rules add` builds from its options (comma = several values)."""
    from services.block.rules import MATCH_FIELDS

    data: dict[str, Any] = {"id": form.get("id", "").strip(), "action": form.get("action", "").strip()}
    for f in MATCH_FIELDS:
        vals = [v.strip() for v in form.get(f, "").split(",") if v.strip()]
        if vals:
            data[f] = vals
    for f in ("expires", "dns_answer", "redirect", "message"):
        v = form.get(f, "").strip()
        if v:
            data[f] = v
    if form.get("priority", "").strip():
        data["priority"] = form["priority"].strip()
    if form.get("disabled") == "1":
        data["enabled"] = False
    if form.get("force") == "1":      # `rules add --force`: a rule that matches every flow is meant
        data["force"] = True
    return data


async def read_rules_with_stats(kv: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """The rules in the bucket, each with any statistics stored beside its fields.

    A rule is validated by block's own ``parse_rule``; fields of the entry that
    are not rule fields (per-rule counters such as hits/won/lost, where block
    writes them) are shown as its statistics, never interpreted.
    """
    from services.block.rules import Rule, RuleError, parse_rule

    entries, errors = [], []
    for k in await kv_keys(kv):   # sorted
        try:
            entry = await kv.get(k)
        except Exception:  # noqa: BLE001 - deleted meanwhile
            continue
        if not entry.value:
            continue
        try:
            data = loads_small(entry.value, 1024 * 1024, 8)    # bounded like block's rules (shared.codec)
        except ValueError:
            errors.append(f"bucket key {safe_text(k, 64)}: not JSON")
            continue
        if not isinstance(data, dict):
            errors.append(f"bucket key {safe_text(k, 64)}: not a rule")
            continue
        stats = {kk: v for kk, v in data.items() if kk not in Rule.model_fields}
        if isinstance(stats.get("stats"), dict):
            stats = {**{kk: v for kk, v in stats.items() if kk != "stats"}, **stats["stats"]}
        try:
            rule = parse_rule({kk: v for kk, v in data.items() if kk in Rule.model_fields}, f"bucket key {k!r}")
        except RuleError as exc:
            errors.append(str(exc))
            continue
        match = {f: getattr(rule, f) for f in ("host", "cidr", "port", "transport", "app_protocol", "application",
                                                "category") if getattr(rule, f)}
        entries.append({"rule": rule, "match": match, "stats": {kk: v for kk, v in stats.items()
                                                                if isinstance(v, (int, float, str))},
                        "expired": rule.expired()})
    return entries, errors
