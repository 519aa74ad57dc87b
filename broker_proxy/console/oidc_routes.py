"""`/ui/oidc/login` and `/ui/oidc/callback`: signing in to the console through the provider.

Login sets a short-lived cookie that binds the login to this browser (SameSite=Lax: it must come
back on the provider's top-level redirect, which a Strict cookie would not) and sends the browser
to the provider. The callback takes the state once, checks the binding, exchanges the code with
the PKCE verifier, validates the ID token (identity/oidc.py), maps it to a person and a role
(identity/role_mapping.py), audits the sign-in and starts an ordinary console session that
carries them. Any refusal is one line on a plain page, and a 401 the sign-in guard counts.
"""

from __future__ import annotations

import html
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs

from broker_proxy.console.routes import SECURITY_HEADERS, Console, Headers, UiAnswer, _cookie
from broker_proxy.policy.sign_in_fields import CALLBACK_PATH, OidcSettings, SignInPolicy
from broker_proxy.sign_in.oidc import Fetch, OidcClient, OidcRefused, PendingLogins, fetch_json
from broker_proxy.sign_in.role_mapping import principal_of

BINDING_COOKIE = "bp_oidc"
CALLBACK = CALLBACK_PATH
_STATUS = {"oidc_not_allowed": 403, "oidc_no_role": 403, "oidc_not_configured": 404,
           "oidc_provider_unreachable": 502}


@dataclass(slots=True)
class OidcDoor:
    """The provider sign-in of one admin listener; follows the policy's `sign_in` on reload."""

    sign_in: Callable[[], SignInPolicy | None]
    client_secret: Callable[[str], str]  # vault entry name -> value
    base_url: Callable[[], str]  # http://<admin address>, for the default redirect URI
    fetch: Fetch = fetch_json
    pending: PendingLogins = field(default_factory=PendingLogins)
    _client: OidcClient | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self) -> tuple[SignInPolicy, OidcClient]:
        policy = self.sign_in()
        if policy is None or policy.oidc is None:
            raise OidcRefused("oidc_not_configured", "sign-in with a provider is not configured")
        settings: OidcSettings = policy.oidc
        with self._lock:
            if self._client is None or self._client.settings != settings:
                self._client = OidcClient(settings,
                                          lambda: self.client_secret(settings.client_secret),
                                          self.fetch)
            return policy, self._client

    def redirect_uri(self, settings: OidcSettings | None = None) -> str:
        """The policy's `redirect_uri` (a console behind a reverse proxy), else the admin
        listener's own callback."""
        if settings is not None and settings.redirect_uri:
            return settings.redirect_uri
        return self.base_url().rstrip("/") + CALLBACK


def route(door: OidcDoor | None, console: Console, method: str, path: str, query: str,
          headers: Headers, source: str = "") -> UiAnswer:
    """The provider's login and callback; `source` is the client address (a login in progress
    is bounded per source, sign_in/oidc.py)."""
    if method not in ("GET", "HEAD"):
        return _page(405, "use GET", {"Allow": "GET"})
    try:
        if door is None:
            raise OidcRefused("oidc_not_configured", "sign-in with a provider is not configured")
        if path == "/ui/oidc/login":
            return _begin(door, source)
        if path == CALLBACK:
            return _finish(door, console, query, headers)
    except OidcRefused as refused:
        return _page(_STATUS.get(refused.code, 401), refused.message,
                     {"Set-Cookie": _binding_cookie("", 0)}, code=refused.code)
    return _page(404, "no such page")


def _begin(door: OidcDoor, source: str) -> UiAnswer:
    _policy, client = door.client()
    client.discovery()  # a provider that cannot be reached leaves no login pending
    binding = secrets.token_urlsafe(32)
    state, login = door.pending.begin(binding, door.redirect_uri(client.settings),
                                      source)
    location = client.authorization_url(state, login)
    return UiAnswer(302, "text/plain; charset=utf-8", b"", {
        **SECURITY_HEADERS, "Location": location,
        "Set-Cookie": _binding_cookie(binding, 600)})


def _finish(door: OidcDoor, console: Console, query: str, headers: Headers) -> UiAnswer:
    params = parse_qs(query, keep_blank_values=True)
    if any(len(values) != 1 for values in params.values()):
        raise OidcRefused("oidc_state_invalid", "each parameter at most once")
    state = params.get("state", [""])[0]
    if not state:
        raise OidcRefused("oidc_state_invalid", "the callback carries no state; sign in again")
    login = door.pending.take(state, _binding_of(headers))  # single use, whatever follows
    if "error" in params:
        raise OidcRefused("oidc_provider_refused",
                          f"the identity provider said: {params['error'][0][:80]}")
    code = params.get("code", [""])[0]
    if not code:
        raise OidcRefused("oidc_code_missing", "the callback carries no code; sign in again")
    policy, client = door.client()
    principal = principal_of(client.exchange(code, login), policy)
    console.record_sign_in(principal.identity, "oidc")
    name = principal.identity.removeprefix("oidc:")
    cookie, _session = console.sessions.start(name, identity=principal.identity,
                                              role=principal.role)
    max_age = int(console.sessions.ttl.total_seconds())
    answer = UiAnswer(302, "text/plain; charset=utf-8", b"", {
        **SECURITY_HEADERS, "Location": "/ui/"})
    # The binding cookie is left to expire: its login is spent and taken, so it opens nothing.
    answer.headers["Set-Cookie"] = _cookie(cookie, max_age)
    return answer


def _binding_of(headers: Headers) -> str | None:
    raw = headers.get("Cookie")
    if not raw:
        return None
    try:
        morsel = SimpleCookie(raw).get(BINDING_COOKIE)
    except CookieError:
        return None
    return morsel.value if morsel else None


def _binding_cookie(value: str, max_age: int) -> str:
    return (f"{BINDING_COOKIE}={value}; Path=/ui/oidc; HttpOnly; SameSite=Lax; "
            f"Max-Age={max_age}")


def _page(status: int, message: str, headers: dict[str, str] | None = None,
          code: str = "") -> UiAnswer:
    body = ("<!doctype html><html lang=en><meta charset=utf-8><title>Sign-in refused</title>"
            '<link rel="stylesheet" href="/ui/console.css">'
            "<header><strong>broker-proxy</strong></header><main><h1>Sign-in refused</h1>"
            f"<p id=oidc-error class=error data-code=\"{html.escape(code)}\">"
            f"{html.escape(message)}</p>"
            '<p><a href="/ui/">Back to the console</a></p></main></html>\n')
    return UiAnswer(status, "text/html; charset=utf-8", body.encode(),
                    {**SECURITY_HEADERS, **(headers or {})})
