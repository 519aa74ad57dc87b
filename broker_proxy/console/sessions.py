"""Console sessions and one-time login links.

A person signs in once with the admin token (or a one-time link from `broker-proxy console`) and
then holds only a session cookie: HttpOnly (page scripts cannot read it), SameSite=Strict
(another site's page cannot make the browser send it) and expiring. Every API call from the
console also carries the session's CSRF token in a header, which another origin cannot read or
set. Sessions live in memory: a restarted proxy signs everyone out, which is the safe direction.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from broker_proxy.identity.roles import Principal, Role
from broker_proxy.time_source import utc_now

COOKIE = "bp_console"
DEFAULT_SESSION_TTL = timedelta(hours=8)
LOGIN_LINK_TTL = timedelta(minutes=2)
MAX_SESSIONS = 1000
MAX_LINKS = 100


@dataclass(frozen=True, slots=True)
class Session:
    csrf: str
    expires_at: datetime
    # Who signed in: every decision made in this session is audited as `console:<name>`.
    name: str
    # SIGN-IN HOOK: set for a person signed in through the provider (`oidc:<email or sub>`)
    # or with the admin token once a provider is configured (`token:break-glass`); None keeps
    # `console:<name>`. The role bounds what the session may do (identity/roles.py).
    identity: str | None = None
    role: Role = Role.ADMIN

    @property
    def principal(self) -> Principal:
        return Principal(self.identity or f"console:{self.name}", self.role)

    def csrf_matches(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(
            presented.encode("utf-8", "replace"), self.csrf.encode())


def _key(secret: str) -> str:
    # Only hashes are kept: a heap dump or a debugger shows no usable session or link.
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


class ConsoleSessions:
    def __init__(self, ttl: timedelta = DEFAULT_SESSION_TTL,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._links: dict[str, tuple[datetime, str]] = {}  # code hash -> (expiry, for whom)

    def start(self, name: str, identity: str | None = None,
              role: Role = Role.ADMIN) -> tuple[str, Session]:
        """A new session for `name`: (cookie value, session with its CSRF token)."""
        now = self._clock()
        cookie = secrets.token_urlsafe(32)
        session = Session(csrf=secrets.token_urlsafe(32), expires_at=now + self.ttl, name=name,
                          identity=identity, role=role)
        with self._lock:
            self._forget_expired(now)
            if len(self._sessions) >= MAX_SESSIONS:  # drop the one that ends first
                del self._sessions[min(self._sessions,
                                       key=lambda k: self._sessions[k].expires_at)]
            self._sessions[_key(cookie)] = session
        return cookie, session

    def get(self, cookie: str | None) -> Session | None:
        if not cookie:
            return None
        now = self._clock()
        with self._lock:
            session = self._sessions.get(_key(cookie))
            if session is None or session.expires_at <= now:
                self._sessions.pop(_key(cookie), None)
                return None
            return session

    def end(self, cookie: str | None) -> None:
        if cookie:
            with self._lock:
                self._sessions.pop(_key(cookie), None)

    def new_login_link(self, name: str) -> str:
        """A one-time code for `broker-proxy console`: it works once, within two minutes, and
        signs in as `name` (who asked for it)."""
        code = secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            self._links = {k: v for k, v in self._links.items() if v[0] > now}
            if len(self._links) >= MAX_LINKS:
                self._links.pop(next(iter(self._links)))
            self._links[_key(code)] = (now + LOGIN_LINK_TTL, name)
        return code

    def redeem_login_link(self, code: str) -> str | None:
        """The name the link was made for, once; None for a used, expired or unknown code."""
        with self._lock:
            link = self._links.pop(_key(code), None)
        if link is None or self._clock() >= link[0]:
            return None
        return link[1]

    def _forget_expired(self, now: datetime) -> None:
        for key in [k for k, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[key]
