"""Login, sessions, CSRF and the audit log of the console.

- Credentials come from the environment only (``FT_WEB_TOKEN``, or
  ``FT_WEB_USER`` + ``FT_WEB_PASSWORD``); nothing is shipped.  Compared in
  constant time; failed logins from one address are rate-limited.
- A session is a random id in an HttpOnly, SameSite=Strict cookie, kept in
  memory (a restart logs everyone out).  Each session, also the anonymous one
  the login form gets, has its own CSRF token; every POST must carry it.
- Scripts may send ``Authorization: Bearer <FT_WEB_TOKEN>`` instead of a
  cookie (a browser never adds that header by itself, so no CSRF token is
  needed there).
- Every change is logged as who / what / when on ``flowtarget.web.audit`` and
  kept (the last 200) for the rules page.
"""

from __future__ import annotations

import collections
import hmac
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from shared.bus import safe_text
from shared.settings import WebSettings

audit_log = logging.getLogger("flowtarget.web.audit")

COOKIE = "ft_session"
MAX_SESSIONS = 10_000
LOGIN_FAILURES = 5          # per address within LOGIN_WINDOW_S, then refused until the window passes
LOGIN_WINDOW_S = 60.0


@dataclass
class Session:
    sid: str
    csrf: str
    created: float
    user: str = ""           # empty: not logged in (the login form's session)

    @property
    def authenticated(self) -> bool:
        return bool(self.user)


@dataclass
class AuditEntry:
    when: float
    who: str
    what: str
    source: str


@dataclass
class Auth:
    settings: WebSettings
    sessions: dict[str, Session] = field(default_factory=dict)
    failures: dict[str, collections.deque[float]] = field(default_factory=dict)
    audit: collections.deque[AuditEntry] = field(default_factory=lambda: collections.deque(maxlen=200))

    # ------------------------------------------------------------------ sessions

    def new_session(self, user: str = "") -> Session:
        if len(self.sessions) >= MAX_SESSIONS:
            self.expire()
            if len(self.sessions) >= MAX_SESSIONS:   # still full: drop the oldest anonymous ones first
                for sid, s in sorted(self.sessions.items(), key=lambda kv: (kv[1].authenticated, kv[1].created)):
                    del self.sessions[sid]
                    if len(self.sessions) < MAX_SESSIONS // 2:
                        break
        s = Session(sid=secrets.token_urlsafe(32), csrf=secrets.token_urlsafe(32), created=time.time(), user=user)
        self.sessions[s.sid] = s
        return s

    def expire(self) -> None:
        cut = time.time() - self.settings.web_session_ttl_s
        for sid in [sid for sid, s in self.sessions.items() if s.created < cut]:
            del self.sessions[sid]

    def session(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        s = self.sessions.get(sid)
        if s is None:
            return None
        if s.created < time.time() - self.settings.web_session_ttl_s:
            del self.sessions[sid]
            return None
        return s

    def drop(self, sid: str | None) -> None:
        if sid:
            self.sessions.pop(sid, None)

    # ------------------------------------------------------------------ credentials

    def check_login(self, user: str, password: str, token: str) -> str | None:
        """The user name on success (``token`` for a token login), else None."""
        s = self.settings
        want_token = s.web_token.get_secret_value()
        if token and want_token and hmac.compare_digest(token.encode(), want_token.encode()):
            return "token"
        want_pw = s.web_password.get_secret_value()
        if s.web_user and want_pw and user and password:
            ok_user = hmac.compare_digest(user.encode(), s.web_user.encode())
            ok_pw = hmac.compare_digest(password.encode(), want_pw.encode())
            if ok_user and ok_pw:
                return s.web_user
        return None

    def check_bearer(self, header: str) -> bool:
        want = self.settings.web_token.get_secret_value()
        if not want or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].strip().encode(), want.encode())

    def login_blocked(self, addr: str) -> bool:
        dq = self.failures.get(addr)
        if not dq:
            return False
        cut = time.monotonic() - LOGIN_WINDOW_S
        while dq and dq[0] < cut:
            dq.popleft()
        return len(dq) >= LOGIN_FAILURES

    def login_failed(self, addr: str) -> None:
        if len(self.failures) > 10_000:
            self.failures.clear()
        self.failures.setdefault(addr, collections.deque(maxlen=LOGIN_FAILURES * 2)).append(time.monotonic())
        self.record("-", "login failed", addr)

    @staticmethod
    def csrf_ok(session: Session | None, token: str) -> bool:
        return session is not None and bool(token) and hmac.compare_digest(token.encode(), session.csrf.encode())

    # ------------------------------------------------------------------ audit

    def record(self, who: str, what: str, source: str = "") -> None:
        """Who did what when: one escaped log line, and the in-memory list."""
        e = AuditEntry(when=time.time(), who=safe_text(who, 64), what=safe_text(what, 500), source=safe_text(source, 64))
        self.audit.append(e)
        audit_log.info("audit who=%s what=%s when=%s from=%s", e.who, e.what,
                       time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.when)), e.source)


def client_addr(scope: dict[str, Any]) -> str:
    c = scope.get("client")
    return str(c[0]) if c else "?"
