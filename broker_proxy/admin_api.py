"""The admin API: grants over JSON/HTTP for orchestrators, on its own port.

Every route but the probes (/healthz, /readyz) and the OpenAPI document needs the bearer token
from <home>/admin.token, and the token is checked before the route is even looked at, so an
unauthenticated caller learns nothing, not even which routes exist. It is the standard library's
threaded HTTP server: the core stays free of mitmproxy and of any web framework, and the grant
store and audit log it shares with the proxy are already thread-safe.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from broker_proxy import strict_json
from broker_proxy.approvals import admin_routes
from broker_proxy.approvals.chat_door import ChatDoor
from broker_proxy.approvals.desk import ApprovalDesk
from broker_proxy.audit.log import AuditError, AuditLog
from broker_proxy.console import oidc_routes
from broker_proxy.console import routes as console_routes
from broker_proxy.console.separation import refuse_own_grant
from broker_proxy.console.sessions import Session
from broker_proxy.decision.active_policy import ActivePolicy
from broker_proxy.durations import DurationError, parse_duration
from broker_proxy.grants.actions import GRANT_ACTIONS, GrantAction, change_grant, issue_audited
from broker_proxy.grants.issuer import GrantPolicyError
from broker_proxy.grants.limits_view import limits_view
from broker_proxy.grants.listing import ListingError, list_page, parse_query
from broker_proxy.grants.store import GrantNotFound, GrantStateError, GrantStore, GrantStoreError
from broker_proxy.http_routes import (
    ApiError,
    Handler,
    Route,
    RouteCall,
    find_route,
    require_action,
    require_method,
)
from broker_proxy.identity.roles import Action, Principal
from broker_proxy.policy.sign_in_fields import SignInPolicy
from broker_proxy.sign_in import access
from broker_proxy.signin_guard import SigninGuard
from broker_proxy.time_source import utc_now

log = logging.getLogger("broker_proxy.admin")

MAX_BODY = 64 * 1024
_GRANT_ID = re.compile(r"g_[0-9a-f]{16}")
_BY = re.compile(r"[A-Za-z0-9._@:+-]{1,64}")
MAX_USES = 10**9  # far above any task's need; bounded so every store can count it
_ISSUE_FIELDS = frozenset({"agent", "task", "secrets", "ttl", "max_uses", "by", "rates",
                           "concurrency", "cost_usd", "input_tokens", "output_tokens"})
# The caller's label on a change (or the body's "by"): audited as `admin-api:<label>`.
ACTOR_HEADER = "X-Broker-Actor"
_OPEN_ROUTES = frozenset({"/healthz", "/readyz", "/openapi.json"})
# The id a readiness probe looks up: well-formed, never issued (ids are random 64-bit hex).
_PROBE_ID = "g_0000000000000000"


def openapi_document() -> bytes:
    return resources.files("broker_proxy").joinpath("admin_openapi.json").read_bytes()


@dataclass(slots=True)
class AdminContext:
    """What the handlers work on; `policy` is read on every request, so reloads apply."""

    token: str
    policy: Callable[[], ActivePolicy]
    grants: GrantStore
    audit: AuditLog
    proxy_listen: str | None = None  # set once the proxy listens; goes into issued proxy URLs
    # Why the policy file on disk is rejected while the last good policy serves, or None.
    policy_file_problem: Callable[[], str | None] = lambda: None
    approvals: ApprovalDesk | None = None  # requests held for approval, in the proxy process
    console: console_routes.Console | None = None  # the web console at /ui/ and its sessions
    # /readyz probes beyond a look (see readiness.py): each answers a problem or None.
    store_write_problem: Callable[[], str | None] | None = None
    vault_problem: Callable[[], str | None] | None = None  # asked when a secret is `from: vault`
    # Checkpoints (a --audit-checkpoint-copy) that cannot be written: degraded, still ready.
    checkpoint_problem: Callable[[], str | None] | None = None
    # Failed sign-ins (a wrong token, a refused console sign-in): slowed and audited per source.
    signin_guard: SigninGuard | None = None
    # SIGN-IN HOOK: OpenID Connect sign-in at /ui/oidc/ (console/oidc_routes.py), when set.
    oidc: oidc_routes.OidcDoor | None = None
    # /v1/chat/...: Slack and signed webhooks, authenticated by their signatures (chat_door.py).
    chat: ChatDoor | None = None


# Who a caller with the bearer token is when it names nobody: the holder of admin.token.
TOKEN_HOLDER = "token-holder"


def _content_length(value: str | None) -> int | None:
    """The header's byte count; None unless it is ASCII digits. str.isdigit() alone also
    passes "²" (a latin-1 header byte), which int() refuses: unauthenticated callers (the chat
    door reads the body before the signature is checked) must get a 400, not an error."""
    value = value or "0"
    return int(value) if value.isascii() and value.isdigit() else None


def caller_principal(session: Session | None, sign_in: SignInPolicy | None) -> Principal:
    """Who a signed-in caller is and what role it acts under: the one place that says so.

    Every route's action is checked against what this returns. A console session carries its
    own principal: a provider's sign-in its mapped role, the admin token or a login link an
    admin made the admin role. The bearer token (admin.token) is the admin, recorded as
    `token:break-glass` once a provider signs people in.
    """
    if session is not None:
        return session.principal
    return access.bearer_principal(TOKEN_HOLDER, sign_in)


class AdminHandler(BaseHTTPRequestHandler):
    server_version = "broker-proxy-admin"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    context: AdminContext  # set on the subclass made per server

    def __getattr__(self, name: str) -> Callable[[], None]:
        # Every method (TRACE, PROPFIND, ...) goes through the same door: token first, then a
        # JSON 404/405, instead of the stdlib's HTML 501 for methods it has no do_ for.
        if name.startswith("do_"):
            return lambda: self._handle(name[3:])
        raise AttributeError(name)

    def log_message(self, format: str, *args: Any) -> None:
        # The default writes every request to stderr; the audit log is the record that matters.
        return

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        path = url.path
        self._allow: str | None = None
        self._body_read = False
        self._total: int | None = None  # a paged list's size before paging (offset paging)
        self._next: str | None = None  # where a listing's next page starts
        self._session: Session | None = None  # the console session that calls, if any
        try:
            if path == "/favicon.ico" and method in ("GET", "HEAD"):
                # Browsers ask for it on every console tab: an empty answer, not a refusal in
                # the proxy's log or the browser's console.
                self._drain()
                self._send(204, "image/x-icon", b"")
                return
            if method == "GET" and path in _OPEN_ROUTES:
                self._drain()
                self._open_route(path)
                return
            if path == "/ui" or path.startswith("/ui/"):
                self._console_page(method, path)
                return
            if self.context.chat is not None and self.context.chat.serves(path):
                # No admin token: the chat tool's signature is the credential (chat_door.py).
                status, body = self.context.chat.answer(
                    method, path, self.headers, self._raw_body, self.client_address[0],
                    self.context.signin_guard)
                self._drain()
                self._send_json(status, body)
                return
            # The bearer token, or a console session with its CSRF token (console/routes.py).
            if not self._signed_in():
                raise ApiError(401, "unauthorized",
                               "send Authorization: Bearer <the token in admin.token>")
            status, body = self._route(method, path, url.query)
        except ApiError as error:
            status, body = error.status, {"error": error.code, "message": error.message}
            self._allow = error.allow
        except GrantStoreError:
            status, body = 503, {"error": "grant_store_unavailable",
                                 "message": "the grant store cannot be used"}
        except AuditError:
            status, body = 503, {"error": "audit_unavailable",
                                 "message": "the audit log cannot be written"}
        except Exception as error:  # one bad request must not take the admin thread down
            log.error("admin API request failed: %s", type(error).__name__)
            status, body = 500, {"error": "internal_error", "message": "internal error"}
        self._drain()
        self._send_json(status, body)

    def _signed_in(self) -> bool:
        """The bearer token or a console session; presented credentials that fail are a
        failed sign-in (slowed, audited). No credentials at all are only a 401."""
        def verify() -> bool:
            if self._authorized():
                self._session = None
                return True
            self._session = console_routes.session_allows(self.context.console, self.headers)
            return self._session is not None

        guard = self.context.signin_guard
        presented = "Authorization" in self.headers or \
            console_routes.cookie_of(self.headers) is not None
        if guard is None or not presented:
            return verify()
        return guard.check(self.client_address[0], "admin_api_token", verify)

    def _console_page(self, method: str, path: str) -> None:
        console = self.context.console
        if console is None:
            raise ApiError(404, "not_found", "the console is off")
        answers: list[console_routes.UiAnswer] = []

        def sign_in() -> bool:
            if path.startswith("/ui/oidc/"):  # SIGN-IN HOOK: the provider's login, callback
                answers.append(oidc_routes.route(self.context.oidc, console, method, path,
                                                 urlsplit(self.path).query, self.headers,
                                                 self.client_address[0]))
            else:
                answers.append(console_routes.ui_route(
                    console, method, path, self.headers,
                    lambda: self._json_body(required=False), self.context.token))
            return answers[-1].status != 401

        guard = self.context.signin_guard
        if guard is not None and method == "POST" and path == "/ui/session":
            guard.check(self.client_address[0], "console_signin", sign_in)
        elif guard is not None and path == oidc_routes.CALLBACK:
            guard.check(self.client_address[0], "oidc_callback", sign_in)
        else:
            sign_in()
        answer = answers[-1]
        self._drain()
        self._send(answer.status, answer.content_type, answer.body, answer.headers)

    def _drain(self) -> None:
        """Read a body nobody looked at (a 401 never does) before answering.

        Closing a socket with unread bytes makes the kernel send a reset, and the client may
        then lose the answer; bodies over the limit are not worth reading and are cut off.
        """
        if self._body_read:
            return
        self._body_read = True
        length = _content_length(self.headers.get("Content-Length"))
        if length is not None and 0 < length <= MAX_BODY:
            self.rfile.read(length)

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        expected = self.context.token.encode()
        # Always compare (against the real token length) so a missing header takes as long as
        # a wrong one; compare_digest keeps the comparison itself constant-time.
        ok = hmac.compare_digest(presented.strip().encode("utf-8", "replace"), expected)
        return ok and scheme.lower() == "bearer"

    def _open_route(self, path: str) -> None:
        if path == "/healthz":
            self._send_json(200, {"status": "ok"})
        elif path == "/readyz":
            checks = readiness(self.context)
            ready = all(check["ok"] or check.get("degraded") for check in checks.values())
            status = "not_ready" if not ready else \
                "degraded" if any(not check["ok"] for check in checks.values()) else "ready"
            self._send_json(200 if ready else 503, {"status": status, "checks": checks})
        else:
            self._send(200, "application/json", openapi_document())

    def _route(self, method: str, path: str, query: str) -> tuple[int, object]:
        """Find the route (404, 405), check the caller's role for it (403), then answer."""
        if path in _OPEN_ROUTES:
            require_method(method, "GET")  # the probes' other methods, once signed in
        route, params = find_route(self._routes(), method, path)
        principal = caller_principal(self._session, self._sign_in())
        require_action(principal, route.action)
        if route.action is Action.DECIDE:  # SIGN-IN HOOK: nobody approves their own grant
            self._check_separation(method, path, principal)
        return route.handler(RouteCall(method, params, query,
                                       lambda: self._json_body(required=False), self._by,
                                       principal))

    def _routes(self) -> list[Route]:
        """The grant routes, and those of the parts this listener serves (approvals, console)."""
        table = [
            Route("GET", "/v1/grants", lambda call: (200, self._list(call.query)), Action.READ),
            Route("POST", "/v1/grants", lambda call: (201, self._issue()), Action.ADMINISTER),
            Route("GET", "/v1/grants/{id}", lambda call: self._show(call.params["id"]),
                  Action.READ),
        ]
        for action in GRANT_ACTIONS:
            # Deciding a pending grant is an approver's; revoking one is an admin's.
            needs = Action.ADMINISTER if action == "revoke" else Action.DECIDE
            table.append(Route("POST", f"/v1/grants/{{id}}/{action}", self._changer(action),
                               needs))
        if self.context.approvals is not None:
            table += admin_routes.routes(self.context.approvals)
        if self.context.console is not None:
            table += console_routes.routes(self.context.console, self.context.policy,
                                           self.context.policy_file_problem)
        return table

    def _show(self, grant_id: str) -> tuple[int, object]:
        grant = self.context.grants.get(grant_id) if _GRANT_ID.fullmatch(grant_id) else None
        if grant is None:
            raise ApiError(404, "grant_not_found", "no such grant")
        limits = limits_view(self.context.grants, grant.id, grant.secrets,
                             self.context.policy().policy.secrets)
        return 200, grant.to_public_dict(utc_now()) | ({"limits": limits} if limits else {})

    def _changer(self, action: GrantAction) -> Handler:
        return lambda call: self._change(call.params["id"], action)

    def _change(self, grant_id: str, action: GrantAction) -> tuple[int, object]:
        if not _GRANT_ID.fullmatch(grant_id):
            raise ApiError(404, "grant_not_found", "no such grant")
        by, reason = self._decider()
        try:
            grant = change_grant(self.context.grants, self.context.audit, grant_id, action,
                                 by=by, now=utc_now(), reason=reason)
        except GrantNotFound:
            raise ApiError(404, "grant_not_found", "no such grant") from None
        except GrantStateError as error:
            raise ApiError(409, "grant_state_conflict", str(error)) from None
        return 200, grant.to_public_dict(utc_now())

    def _list(self, query: str) -> list[dict[str, Any]]:
        """One page of grants (listing.py); the next page's cursor goes in X-Next-Cursor."""
        try:
            listing = parse_query(parse_qs(query, keep_blank_values=True))
        except ListingError as error:
            raise ApiError(400, "invalid_request", str(error)) from None
        now = utc_now()
        page = list_page(self.context.grants, listing, now)
        self._total, self._next = page.total, page.next_cursor
        return [g.to_public_dict(now) for g in page.grants]

    def _issue(self) -> dict[str, Any]:
        body = self._json_body(required=True)
        if set(body) - _ISSUE_FIELDS:
            raise ApiError(400, "invalid_request",
                           f"unknown fields: {', '.join(sorted(set(body) - _ISSUE_FIELDS))}")
        agent, task, names = body.get("agent"), body.get("task"), body.get("secrets")
        ttl, max_uses = body.get("ttl"), body.get("max_uses")
        rates = body.get("rates") or []
        if not isinstance(rates, list) or len(rates) > 64 \
                or not all(isinstance(r, str) for r in rates):
            raise ApiError(400, "invalid_request", "rates must be a list of [SECRET=]N/PER")
        tighter: dict[str, list[str]] = {}
        for field_name in ("concurrency", "cost_usd", "input_tokens", "output_tokens"):
            listed = body.get(field_name) or []
            if not isinstance(listed, list) or len(listed) > 64 \
                    or not all(isinstance(item, str) for item in listed):
                raise ApiError(400, "invalid_request",
                               f"{field_name} must be a list of [SECRET=]VALUE")
            tighter[field_name] = listed
        if not isinstance(agent, str) or not isinstance(task, str):
            raise ApiError(400, "invalid_request", "agent and task must be strings")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ApiError(400, "invalid_request", "secrets must be a non-empty list of names")
        if ttl is not None and not isinstance(ttl, str):
            raise ApiError(400, "invalid_request", "ttl must be a duration like 15m")
        if max_uses is not None and (type(max_uses) is not int
                                     or not 1 <= max_uses <= MAX_USES):
            raise ApiError(400, "invalid_request",
                           f"max_uses must be an integer from 1 to {MAX_USES}")
        try:
            lifetime = parse_duration(ttl) if ttl is not None else None
            issued = issue_audited(
                self.context.policy().policy, self.context.grants, self.context.audit,
                agent=agent, task=task, secrets=names, ttl=lifetime, max_uses=max_uses,
                now=utc_now(), proxy_url_base=self.context.proxy_listen, by=self._by(body),
                rates=rates, concurrency=tighter["concurrency"], cost_usd=tighter["cost_usd"],
                input_tokens=tighter["input_tokens"], output_tokens=tighter["output_tokens"])
        except DurationError as error:
            raise ApiError(400, "invalid_request", str(error)) from None
        except GrantPolicyError as error:
            raise ApiError(422, "grant_not_allowed", str(error)) from None
        return issued.grant.to_public_dict(utc_now()) | {
            "token": issued.token, "proxy_url": issued.proxy_url,
            "placeholders": issued.placeholders}

    def _sign_in(self) -> SignInPolicy | None:
        return self.context.policy().policy.sign_in

    def _check_separation(self, method: str, path: str, principal: Principal) -> None:
        """403 `separation_of_duties` (audited) for a person approving a grant they issued, or
        a held request made on it."""
        parts = path.strip("/").split("/")
        if method != "POST" or len(parts) != 4 or parts[3] != "approve":
            return
        grant_id: str | None = parts[2]
        if parts[1] == "requests":
            held = self.context.approvals.get(parts[2]) if self.context.approvals else None
            grant_id = held.grant if held is not None else None
        if grant_id is None:
            return
        console = self.context.console
        try:
            refuse_own_grant(principal, grant_id, grants=self.context.grants,
                             audit=console.audit if console is not None else None,
                             sign_in=self._sign_in(), chat=self.context.policy().policy.chat)
        except ApiError:
            self.context.audit.append("decision_refused", decision="deny",
                                      reason="separation_of_duties", grant=grant_id,
                                      by=principal.identity)
            raise

    def _decider(self) -> tuple[str, str | None]:
        """Who decided, as the caller names itself (the audit record adds that it came here),
        and why, in their words."""
        body = self._json_body(required=False)
        if set(body) - {"by", "reason"}:
            raise ApiError(400, "invalid_request", "the only fields are by and reason")
        reason = body.get("reason")
        if reason is not None and (not isinstance(reason, str) or not 0 < len(reason) <= 500
                                   or any(ord(c) < 0x20 for c in reason)):
            raise ApiError(400, "invalid_request", "reason must be one line, 1-500 characters")
        return self._by(body), reason

    def _by(self, body: dict[str, Any]) -> str:
        """Who changes something, for its audit record: never an anonymous `admin-api`.

        A console session decides as the name it signed in with (`console:<name>`); a caller
        with the bearer token names itself in the `X-Broker-Actor` header or a `by` field
        (`admin-api:<label>`); without one it is recorded as `admin-api:token-holder`.
        """
        by = body.get("by")
        if self._session is not None:
            if by is not None:
                raise ApiError(400, "invalid_request",
                               "a console session decides as the name it signed in with")
            return self._session.principal.identity
        header = self.headers.get(ACTOR_HEADER)
        if header is not None and by is not None and header != by:
            raise ApiError(400, "invalid_request",
                           f"{ACTOR_HEADER} and the by field name different callers")
        label = by if by is not None else header
        if label is None:
            # Scripts written to the bearer-token contract keep working; the record then names
            # the one identity known: whoever holds admin.token (a shared, break-glass one).
            label = TOKEN_HOLDER
        if not isinstance(label, str) or not _BY.fullmatch(label):
            raise ApiError(400, "invalid_request", "by must be 1-64 letters, digits or ._@:+-")
        return access.bearer_identity(label, self._sign_in())  # SIGN-IN HOOK: break-glass

    def _raw_body(self) -> bytes:
        """The body's bytes, at most MAX_BODY, sent with Content-Length."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise ApiError(411, "length_required", "send the body with Content-Length")
        length = _content_length(self.headers.get("Content-Length"))
        if length is None:
            raise ApiError(400, "invalid_request", "bad Content-Length")
        if length > MAX_BODY:
            raise ApiError(413, "body_too_large", f"at most {MAX_BODY} bytes")
        raw = self.rfile.read(length) if length else b""
        self._body_read = True
        return raw

    def _json_body(self, *, required: bool) -> dict[str, Any]:
        raw = self._raw_body()
        if not raw.strip():
            if required:
                raise ApiError(400, "invalid_request", "send a JSON object")
            return {}
        try:
            body = strict_json.loads(raw)
        except strict_json.JsonRefused as error:
            raise ApiError(400, "invalid_request", f"the body is refused: {error}") from None
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "invalid_request", "the body is not JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_request", "the body must be a JSON object")
        return body

    def _send_json(self, status: int, body: object) -> None:
        self._send(status, "application/json", json.dumps(body).encode() + b"\n")

    def _send(self, status: int, content_type: str, data: bytes,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if (total := getattr(self, "_total", None)) is not None:
            self.send_header("X-Total-Count", str(total))
        if next_cursor := getattr(self, "_next", None):
            self.send_header("X-Next-Cursor", next_cursor)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")  # answers carry grant tokens
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="broker-proxy-admin"')
        if status == 405 and self._allow:
            self.send_header("Allow", str(self._allow))
        if status >= 400:
            # The request body may be unread (a 401 never reads it): do not parse it as the
            # next request on this connection.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def readiness(context: AdminContext) -> dict[str, dict[str, object]]:
    """Can the proxy decide right now: store readable and writable, vault open, audit log
    writable, a policy loaded. Not ready while every request needing one of them would be
    refused; degraded (still 200) while only a checkpoint copy fails."""
    checks: dict[str, dict[str, object]] = {}
    try:
        context.grants.get(_PROBE_ID)
        problem = context.store_write_problem() if context.store_write_problem else None
        checks["grant_store"] = {"ok": problem is None} | ({"problem": problem} if problem
                                                            else {})
    except GrantStoreError:
        checks["grant_store"] = {"ok": False}
    # Look at the file as an append would (identity, size, last record) and at whether the last
    # append failed (a full disk): a writable path alone says nothing about either.
    problem = context.audit.problem()
    checks["audit_log"] = {"ok": problem is None} | ({"problem": problem} if problem else {})
    active = context.policy()
    if context.vault_problem is not None and any(
            secret.source == "vault" for secret in active.policy.secrets.values()):
        problem = context.vault_problem()
        checks["vault"] = {"ok": problem is None} | ({"problem": problem} if problem else {})
    if context.checkpoint_problem is not None:
        problem = context.checkpoint_problem()
        checks["audit_checkpoints"] = {"ok": problem is None} | (
            {"degraded": True, "problem": problem} if problem else {})
    checks["policy"] = {"ok": active is not None, "digest": active.policy.digest}
    if (rejected := context.policy_file_problem()) is not None:
        # Still ready (the last good policy serves), but the file on disk is not what runs.
        checks["policy"] |= {"file_rejected": True, "problem": rejected}
    return checks


class _QuietServer(ThreadingHTTPServer):
    """A client that went away (a console tab closed during a long poll) is one debug line.

    The stdlib prints a traceback to stderr for any exception a handler lets out; a closed
    connection is routine for a live view, and anything else is said in one line.
    """

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            log.debug("admin API client %s went away: %s", client_address[0],
                      type(error).__name__)
        else:
            log.error("admin API connection failed: %s", type(error).__name__)


class AdminServer:
    """The admin API on its own daemon thread, like the metrics endpoint."""

    def __init__(self, host: str, port: int, context: AdminContext) -> None:
        handler = type("BoundAdminHandler", (AdminHandler,), {"context": context})
        self.context = context
        self._server = _QuietServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="admin-api",
                                        daemon=True)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> AdminServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
