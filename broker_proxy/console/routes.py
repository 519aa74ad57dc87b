"""The console's routes on the admin listener, and the door the console's cookie opens.

`/ui/...` serves the static pages (no secrets in them: anyone may load the page, only a signed-in
session can call the API) and the session endpoints. `/v1/audit`, `/v1/policy` and
`/v1/console/login-links` are ordinary admin API routes, used by the console and by scripts.
An API call may be authenticated by the bearer token or by a console session cookie together
with that session's CSRF token in `X-CSRF-Token`, on every method: a page of another site can
neither read that token nor, with SameSite=Strict, make the browser send the cookie.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http.cookies import CookieError, SimpleCookie
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs

from broker_proxy.console.audit_index import FILTERS, AuditIndex
from broker_proxy.console.sessions import COOKIE, ConsoleSessions, Session
from broker_proxy.console.views import ChainStatus, policy_view
from broker_proxy.http_routes import ApiError, Route
from broker_proxy.identity.roles import Action
from broker_proxy.policy.sign_in_fields import SignInPolicy
from broker_proxy.sign_in.access import BREAK_GLASS, oidc_configured

CSRF_HEADER = "X-CSRF-Token"
# Who a person says they are at sign-in (or `broker-proxy console --as`): audited as
# `console:<name>` with every decision of the session.
NAME = re.compile(r"[A-Za-z0-9._@+-][A-Za-z0-9._@:+-]{0,63}")
NAME_RULE = "name must be 1-64 letters, digits or ._@:+- (who you are, for the audit log)"
STATIC = {"index.html": "text/html; charset=utf-8", "console.js": "text/javascript",
          "console.css": "text/css"}
SECURITY_HEADERS = {
    # Everything comes from this origin; no inline script, no framing (clickjacking).
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass(slots=True)
class Console:
    sessions: ConsoleSessions
    audit: AuditIndex
    chain: ChainStatus
    policy_loaded_at: Callable[[], datetime | None] = lambda: None
    # Audits a sign-in (who as the audit names them, how: admin_token, login_link or oidc)
    # before the session starts; an audit log that cannot take it refuses the sign-in (its
    # error reaches the admin API).
    record_sign_in: Callable[[str, str], object] = lambda by, how: None
    # SIGN-IN HOOK: the policy's sign_in section (None: admin token and login links only).
    sign_in: Callable[[], SignInPolicy | None] = lambda: None
    _static: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def for_home(cls, audit_log: Path, audit_key: Path, checkpoints: Path,
                 sessions: ConsoleSessions | None = None) -> Console:
        return cls(sessions or ConsoleSessions(), AuditIndex(audit_log),
                   ChainStatus(audit_log, audit_key, checkpoints))


@dataclass(frozen=True, slots=True)
class UiAnswer:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str]


class Headers(Protocol):
    """A request's headers: the admin server's email.message.Message, or a dict in tests."""

    def get(self, name: str, /) -> str | None: ...


def cookie_of(headers: Headers) -> str | None:
    raw = headers.get("Cookie")
    if not raw:
        return None
    try:
        jar = SimpleCookie(raw)
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel else None


def session_allows(console: Console | None, headers: Headers) -> Session | None:
    """The live session, with its CSRF token; None without one; 403 for a session without it."""
    if console is None:
        return None
    session = console.sessions.get(cookie_of(headers))
    if session is None:
        return None
    if not session.csrf_matches(headers.get(CSRF_HEADER)):
        raise ApiError(403, "csrf_token_invalid",
                         f"a console request must carry its session's {CSRF_HEADER}")
    return session


def ui_route(console: Console, method: str, path: str, headers: Headers,
             body: Callable[[], dict[str, Any]], admin_token: str) -> UiAnswer:
    if path in ("/ui", "/ui/"):
        path = "/ui/index.html"
    name = path.removeprefix("/ui/")
    if name == "session":
        return _session(console, method, headers, body, admin_token)
    if name not in STATIC:
        return _json(404, {"error": "not_found", "message": "no such page"})
    if method not in ("GET", "HEAD"):
        return _json(405, {"error": "method_not_allowed", "message": "use GET"},
                     {"Allow": "GET"})
    if name not in console._static:
        console._static[name] = resources.files("broker_proxy.console").joinpath(
            "static", name).read_bytes()
    return UiAnswer(200, STATIC[name], console._static[name], dict(SECURITY_HEADERS))


def _session(console: Console, method: str, headers: Headers,
             body: Callable[[], dict[str, Any]], admin_token: str) -> UiAnswer:
    sessions = console.sessions
    if method == "GET":  # a reloaded page asks whether its cookie still holds
        session = sessions.get(cookie_of(headers))
        if session is None:
            return _json(401, {"error": "unauthorized", "message": "sign in",
                               "oidc": oidc_configured(console.sign_in())})
        return _json(200, _session_view(session))
    if method == "DELETE":
        current = sessions.get(cookie_of(headers))
        if current is not None and not current.csrf_matches(headers.get(CSRF_HEADER)):
            return _json(403, {"error": "csrf_token_invalid", "message": "no CSRF token"})
        sessions.end(cookie_of(headers))
        return _json(200, {"status": "signed_out"}, {"Set-Cookie": _cookie("", 0)})
    if method != "POST":
        return _json(405, {"error": "method_not_allowed", "message": "use GET, POST, DELETE"},
                     {"Allow": "GET, POST, DELETE"})
    fields = body()
    token, code, name = fields.get("token"), fields.get("code"), fields.get("name")
    how = "admin_token" if isinstance(token, str) else "login_link"
    if isinstance(token, str):
        # A wrong token is a failed sign-in whatever name comes with it (slowed, audited).
        if not hmac.compare_digest(token.strip().encode("utf-8", "replace"),
                                   admin_token.encode()):
            return _json(401, {"error": "unauthorized",
                               "message": "wrong admin token or used/expired login link"})
        # The admin token names nobody: whoever holds it says who they are.
        if not isinstance(name, str) or not NAME.fullmatch(name):
            return _json(400, {"error": "invalid_request", "message": NAME_RULE})
    else:
        name = sessions.redeem_login_link(code) if isinstance(code, str) else None
    if name is None:
        return _json(401, {"error": "unauthorized",
                           "message": "wrong admin token or used/expired login link"})
    # The name is what the person says (with the admin token) or what the link was made for:
    # the audit says which, so a review can weigh it. SIGN-IN HOOK: once a provider signs
    # people in by name, the admin token is break-glass and is audited as such.
    identity = BREAK_GLASS if how == "admin_token" and oidc_configured(console.sign_in()) \
        else None
    console.record_sign_in(identity or f"console:{name}", how)
    cookie, session = sessions.start(name, identity=identity)
    max_age = int(sessions.ttl.total_seconds())
    return _json(200, _session_view(session), {"Set-Cookie": _cookie(cookie, max_age)})


def _session_view(session: Session) -> dict[str, object]:
    """What the page needs: its CSRF token, and who it is and may do (to hide the rest)."""
    principal = session.principal
    return {"csrf": session.csrf, "expires_at": _iso(session.expires_at), "name": session.name,
            "identity": principal.identity, "role": principal.role.label}


def _cookie(value: str, max_age: int) -> str:
    return (f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}")


def routes(console: Console, active_policy: Callable[[], Any],
           file_problem: Callable[[], str | None]) -> list[Route]:
    """/v1/audit, /v1/audit/status, /v1/audit/verify, /v1/policy, /v1/console/login-links.

    Checking the chain reads it and changes nothing, so anyone who may read may verify; a
    login link signs someone in, so only an admin makes one.
    """
    return [
        Route("GET", "/v1/audit", lambda call: (200, _audit_page(console, call.query)),
              Action.READ),
        Route("GET", "/v1/audit/status", lambda call: (200, console.chain.status()),
              Action.READ),
        Route("POST", "/v1/audit/verify", lambda call: (200, console.chain.verify()),
              Action.READ),
        Route("GET", "/v1/policy", lambda call: (200, policy_view(
            active_policy(), console.policy_loaded_at(), file_problem())), Action.READ),
        Route("POST", "/v1/console/login-links", lambda call: _login_link(console, call.body()),
              Action.ADMINISTER),
    ]


def _login_link(console: Console, fields: dict[str, Any]) -> tuple[int, object]:
    if set(fields) - {"name"}:
        raise ApiError(400, "invalid_request", "the only field is name")
    name = fields.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ApiError(400, "invalid_request", f"{NAME_RULE}; the link signs in as it")
    code = console.sessions.new_login_link(name)
    return 201, {"path": f"/ui/#login={code}", "expires_in_s": 120, "name": name}


def _audit_page(console: Console, query: str) -> dict[str, object]:
    # Blank values kept, so a nameless or misspelt parameter is refused even when empty; an
    # empty filter means no filter.
    params = parse_qs(query, keep_blank_values=True)
    allowed = {*FILTERS, "before", "limit"}
    if unknown := set(params) - allowed:
        raise ApiError(400, "invalid_request", f"unknown parameters: {sorted(unknown)}")
    if any(len(values) != 1 for values in params.values()):
        raise ApiError(400, "invalid_request", "each parameter at most once")
    values = {name: v[0] for name, v in params.items() if v[0] or name not in FILTERS}
    numbers: dict[str, int] = {}
    for name in ("before", "limit"):
        if name in values:
            if not values[name].isdigit() or len(values[name]) > 12:
                raise ApiError(400, "invalid_request", f"{name} must be a whole number")
            numbers[name] = int(values.pop(name))
    page = console.audit.page(values, numbers.get("before"), numbers.get("limit", 50))
    return {"records": page.records, "next_before": page.next_before,
            "total_lines": page.total_lines}


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> UiAnswer:
    return UiAnswer(status, "application/json", json.dumps(body).encode() + b"\n",
                    {**SECURITY_HEADERS, **(headers or {})})


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
