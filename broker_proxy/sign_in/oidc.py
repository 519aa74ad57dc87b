"""OpenID Connect, the client side: discovery, the authorization code flow with PKCE, and the
checks an ID token must pass before it names anyone.

What is checked, and why each one:
- state: single use, ten minutes, bound to the browser that started (a hash of a cookie set
  then), so a link forged by someone else or a replayed callback signs nobody in;
- PKCE (S256): an authorization code caught on its way back is useless without the verifier,
  which never left this process;
- the ID token (joserfc, not our own JOSE): signature by a key of the provider's JWKS, `iss`
  equal to the configured issuer, `aud` holding our client id (and `azp` naming us when there
  are several), `exp`/`iat` within a minute's leeway, `nonce` equal to the one of this login,
  so a token minted for another client, another login or another time is refused.
The provider is fetched without any proxy of the environment and with a bound on size and time.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker_proxy.policy.sign_in_fields import OidcSettings, issuer_problem

# joserfc is imported where an ID token is checked: about 0.05 s of CPU that every proxy start
# would pay, most of them with no OIDC sign-in configured.
if TYPE_CHECKING:
    from joserfc.jwk import KeySet

LEEWAY_S = 60
LOGIN_TTL_S = 600
MAX_PENDING = 500
# Logins in progress one source address may hold: past it, its own oldest gives way, so one
# client calling /ui/oidc/login in a loop cannot push out other people's logins.
MAX_PENDING_PER_SOURCE = 10
MAX_DOCUMENT = 1024 * 1024
FETCH_TIMEOUT_S = 10.0
DISCOVERY_TTL_S = 3600.0
DISCOVERY_RETRY_S = 5.0  # how long a failed discovery answers for the provider
# Asymmetric only: with HS256 the "key" would be the client secret, which we also hold.
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
              "ES512", "EdDSA"]
SCOPES = "openid email profile"


class OidcRefused(Exception):
    """A sign-in that does not go through; `code` is stable, the message is one line."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 section 4.2, S256."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class PendingLogin:
    nonce: str
    verifier: str
    binding: str  # sha256 of the browser's binding cookie
    expires: float  # time.monotonic()
    redirect_uri: str
    source: str = ""  # the client address that began it


class PendingLogins:
    """Logins begun and not yet finished, by the hash of their state; each taken once."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, PendingLogin] = {}

    def begin(self, binding: str, redirect_uri: str,
              source: str = "") -> tuple[str, PendingLogin]:
        """A new login from `source`; the source's own oldest gives way past
        MAX_PENDING_PER_SOURCE, and the oldest of all past MAX_PENDING."""
        state = secrets.token_urlsafe(32)
        login = PendingLogin(nonce=secrets.token_urlsafe(32),
                             verifier=secrets.token_urlsafe(48), binding=_hash(binding),
                             expires=self._clock() + LOGIN_TTL_S, redirect_uri=redirect_uri,
                             source=source)
        with self._lock:
            now = self._clock()
            self._pending = {k: v for k, v in self._pending.items() if v.expires > now}
            mine = [k for k, v in self._pending.items() if v.source == source]
            if len(mine) >= MAX_PENDING_PER_SOURCE:
                self._pending.pop(mine[0])
            elif len(self._pending) >= MAX_PENDING:  # the oldest gives way
                self._pending.pop(next(iter(self._pending)))
            self._pending[_hash(state)] = login
        return state, login

    def take(self, state: str, binding: str | None) -> PendingLogin:
        """The login this state began, once; refused when unknown, used, expired or started in
        another browser."""
        with self._lock:
            login = self._pending.pop(_hash(state), None)
        if login is None or login.expires <= self._clock():
            raise OidcRefused("oidc_state_invalid",
                              "this sign-in link is used, expired or unknown; sign in again")
        if binding is None or not secrets.compare_digest(_hash(binding), login.binding):
            raise OidcRefused("oidc_state_invalid",
                              "this sign-in was started in another browser; sign in again")
        return login


Fetch = Callable[[urllib.request.Request], dict[str, Any]]


def fetch_json(request: urllib.request.Request) -> dict[str, Any]:
    """GET or POST to the provider, no environment proxy, bounded in size and time."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=FETCH_TIMEOUT_S) as answer:
            raw = answer.read(MAX_DOCUMENT + 1)
    except urllib.error.HTTPError as error:
        raw = error.read(MAX_DOCUMENT + 1)
        detail = ""
        with contextlib.suppress(ValueError, AttributeError):
            detail = str(json.loads(raw).get("error", ""))[:80]
        raise OidcRefused("oidc_provider_refused", f"the identity provider answered "
                                                   f"{error.code} {detail}".strip()) from None
    except (OSError, ValueError) as error:
        raise OidcRefused("oidc_provider_unreachable", "the identity provider cannot be "
                                                       f"reached: {type(error).__name__}") from None
    if len(raw) > MAX_DOCUMENT:
        raise OidcRefused("oidc_provider_refused", "the identity provider's answer is too large")
    try:
        document = json.loads(raw)
    except ValueError:
        raise OidcRefused("oidc_provider_refused", "the identity provider's answer is not JSON"
                          ) from None
    if not isinstance(document, dict):
        raise OidcRefused("oidc_provider_refused", "the identity provider's answer is not an "
                                                   "object")
    return document


class OidcClient:
    """One provider as the policy configures it; `client_secret` is asked at each exchange so
    a `secret set` takes effect without a restart."""

    def __init__(self, settings: OidcSettings, client_secret: Callable[[], str],
                 fetch: Fetch = fetch_json) -> None:
        self.settings = settings
        self._client_secret = client_secret
        self._fetch = fetch
        self._lock = threading.Lock()
        self._discovery: tuple[float, dict[str, Any]] | None = None
        self._discovery_failed: tuple[float, OidcRefused] | None = None
        self._keys: KeySet | None = None

    def discovery(self) -> dict[str, Any]:
        """The provider's discovery document, kept an hour. A failed fetch is kept for
        DISCOVERY_RETRY_S: logins begun while the provider is down (anyone may begin one) are
        refused with the same line, not each sent on to the provider."""
        with self._lock:
            now = time.monotonic()
            if self._discovery and now < self._discovery[0]:
                return self._discovery[1]
            if self._discovery_failed and now < self._discovery_failed[0]:
                failed = self._discovery_failed[1]
                raise OidcRefused(failed.code, failed.message)
        try:
            document = self._discover()
        except OidcRefused as refused:
            with self._lock:
                self._discovery_failed = (time.monotonic() + DISCOVERY_RETRY_S, refused)
            raise
        with self._lock:
            self._discovery = (time.monotonic() + DISCOVERY_TTL_S, document)
            self._discovery_failed = None
        return document

    def _discover(self) -> dict[str, Any]:
        url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = self._fetch(_request(url))
        # OpenID Connect Discovery 1.0 section 4.3: the document must name the issuer asked.
        if document.get("issuer") != self.settings.issuer:
            raise OidcRefused("oidc_provider_refused",
                              "the discovery document names another issuer")
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(document.get(name), str) or issuer_problem(document[name]):
                raise OidcRefused("oidc_provider_refused",
                                  f"the discovery document has no usable {name}")
        return document

    def authorization_url(self, state: str, login: PendingLogin) -> str:
        endpoint = self.discovery()["authorization_endpoint"]
        query = urllib.parse.urlencode({
            "response_type": "code", "client_id": self.settings.client_id,
            "redirect_uri": login.redirect_uri, "scope": SCOPES, "state": state,
            "nonce": login.nonce, "code_challenge": pkce_challenge(login.verifier),
            "code_challenge_method": "S256"})
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    def exchange(self, code: str, login: PendingLogin) -> dict[str, Any]:
        """The code for an ID token, validated; its claims."""
        document = self.discovery()
        form = urllib.parse.urlencode({
            "grant_type": "authorization_code", "code": code,
            "redirect_uri": login.redirect_uri, "code_verifier": login.verifier}).encode()
        # client_secret_basic (RFC 6749 section 2.3.1): both parts form-encoded first.
        pair = (urllib.parse.quote(self.settings.client_id, safe="") + ":"
                + urllib.parse.quote(self._client_secret(), safe=""))
        request = _request(document["token_endpoint"], form, {
            "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json",
            "Authorization": "Basic " + base64.b64encode(pair.encode()).decode("ascii")})
        answer = self._fetch(request)
        id_token = answer.get("id_token")
        if not isinstance(id_token, str):
            raise OidcRefused("oidc_token_invalid", "the provider's answer has no ID token")
        return self.validate(id_token, login.nonce)

    def validate(self, id_token: str, nonce: str) -> dict[str, Any]:
        from joserfc import jwt
        from joserfc.errors import JoseError

        try:
            token = jwt.decode(id_token, self._key_set(id_token), algorithms=ALGORITHMS)
        except (JoseError, ValueError) as error:
            raise OidcRefused("oidc_token_invalid", "the ID token's signature does not verify "
                                                    f"({type(error).__name__})") from None
        claims = token.claims
        registry = jwt.JWTClaimsRegistry(
            leeway=LEEWAY_S,
            iss={"essential": True, "value": self.settings.issuer},
            aud={"essential": True, "value": self.settings.client_id},
            sub={"essential": True}, exp={"essential": True}, iat={"essential": True},
            nonce={"essential": True, "value": nonce})
        try:
            registry.validate(claims)
        except JoseError as error:
            raise OidcRefused("oidc_token_invalid",
                              f"the ID token is refused: {error.description or error.error}"
                              ) from None
        audience = claims.get("aud")
        if isinstance(audience, list) and len(audience) > 1 \
                and claims.get("azp") != self.settings.client_id:
            raise OidcRefused("oidc_token_invalid", "the ID token was issued to another party")
        if not isinstance(claims.get("iat"), int | float) \
                or claims["iat"] > time.time() + LEEWAY_S:
            raise OidcRefused("oidc_token_invalid", "the ID token is issued in the future")
        return claims

    def _key_set(self, id_token: str) -> KeySet:
        """The provider's keys; fetched again once for a key id not seen (a key rotation)."""
        from joserfc.errors import JoseError
        from joserfc.jwk import KeySet

        kid = _header_kid(id_token)
        with self._lock:
            keys = self._keys
        if keys is not None and (kid is None or any(k.kid == kid for k in keys.keys)):
            return keys
        document = self._fetch(_request(self.discovery()["jwks_uri"]))
        try:
            keys = KeySet.import_key_set(document)  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError, KeyError):
            raise OidcRefused("oidc_provider_refused", "the provider's JWKS cannot be read"
                              ) from None
        with self._lock:
            self._keys = keys
        return keys


def _request(url: str, form: bytes | None = None,
             headers: dict[str, str] | None = None) -> urllib.request.Request:
    # https, or http on this machine only (issuer_problem): never file: or other schemes.
    if issuer_problem(url.split("?", 1)[0]) is not None:
        raise OidcRefused("oidc_provider_refused", "the provider names a URL that is not https")
    return urllib.request.Request(url, data=form, headers=headers or {},  # noqa: S310
                                  method="POST" if form is not None else "GET")


def _header_kid(id_token: str) -> str | None:
    try:
        header = json.loads(base64.urlsafe_b64decode(id_token.split(".")[0] + "=="))
    except (ValueError, IndexError):
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None
