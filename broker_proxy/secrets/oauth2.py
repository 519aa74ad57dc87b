"""OAuth2 access tokens minted by the proxy from a client secret it holds (RFC 6749).

The agent sends the secret's placeholder; the broker swaps in an access token from here, never
the client secret. Tokens are cached per secret until ``expires_in`` minus a margin, and a 401
from an upstream drops the token it carried (``token_rejected``) so the next request mints a
fresh one. The token endpoint is called by the proxy process itself over TLS verified against
the same trust as upstreams (system roots plus ``--upstream-ca``) and honouring ``--resolve``
pins, with the standard library only.

What the secret's value holds depends on the grant type:

- ``client_credentials``: the client secret.
- ``refresh_token``: the refresh token alone (a public client), or a JSON object
  ``{"refresh_token": "...", "client_secret": "..."}`` (a confidential client). A refresh token
  the endpoint rotates is kept in memory only: the backend is never written to, so after a
  restart the stored one is used again (rotate it in the backend if the server revokes old ones).

Errors are ``SecretUnavailable`` (the broker answers 503 secret_unavailable, audited) whose
reason names the status or the failure kind, never the endpoint's body: it may echo the secret.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

from broker_proxy import strict_json
from broker_proxy.policy.model import OAuth2Config, SecretPolicy
from broker_proxy.policy.resolve_pins import ResolvePins
from broker_proxy.secrets.backends import SecretUnavailable
from broker_proxy.secrets.value import SecretValue

MINT_TIMEOUT_SECONDS = 10.0
EXPIRY_MARGIN_SECONDS = 30.0
DEFAULT_LIFETIME_SECONDS = 300.0  # when the endpoint sends no expires_in (RFC 6749 5.1 allows it)
MAX_ANSWER_BYTES = 1024 * 1024
# A retry storm against the token endpoint must not follow an upstream that 401s everything.
MIN_SECONDS_BETWEEN_REJECTIONS = 1.0


@dataclass(frozen=True, slots=True)
class UpstreamTrust:
    """What the proxy trusts upstream: the same settings mitmproxy gets from `run`."""

    ca_bundle: Path | None = None  # None: certifi's roots, like mitmproxy's default
    resolve: ResolvePins = field(default_factory=ResolvePins)  # --resolve pins

    def tls_context(self) -> ssl.SSLContext:
        if self.ca_bundle is not None:
            context = ssl.create_default_context(cafile=str(self.ca_bundle))
        else:
            import certifi

            context = ssl.create_default_context(cafile=certifi.where())
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


@dataclass(slots=True)
class _Cached:
    token: SecretValue
    refresh_at: float  # monotonic
    minted_at: float


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """Connects to the pinned address but verifies the certificate for the URL's host."""

    def __init__(self, host: str, port: int, address: tuple[str, int] | None,
                 context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._pinned_address = address
        self._tls = context

    def connect(self) -> None:
        sock = socket.create_connection(self._pinned_address or (self.host, self.port),
                                        self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


class TokenMinter:
    """Access tokens per OAuth2 secret, minted on demand and cached until shortly before expiry."""

    def __init__(self, trust: UpstreamTrust | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 timeout: float = MINT_TIMEOUT_SECONDS) -> None:
        self._trust = trust or UpstreamTrust()
        self._context: ssl.SSLContext | None = None
        self._clock = clock
        self._timeout = timeout
        self._lock = threading.Lock()
        self._key_locks: dict[tuple[str, OAuth2Config], threading.Lock] = {}
        self._cache: dict[tuple[str, OAuth2Config], _Cached] = {}
        # Rotated refresh tokens, keyed by the stored value's digest so a new stored value wins.
        self._rotated: dict[tuple[str, bytes], str] = {}

    def access_token(self, secret: SecretPolicy, credential: SecretValue) -> SecretValue:
        """A valid access token for ``secret``, minting one with ``credential`` if needed."""
        assert secret.oauth2 is not None
        key = (secret.name, secret.oauth2)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # concurrent requests for one secret mint once
            cached = self._cache.get(key)
            now = self._clock()
            if cached is not None and now < cached.refresh_at:
                return cached.token
            token, lifetime = self._mint(secret, secret.oauth2, credential)
            now = self._clock()
            margin = min(EXPIRY_MARGIN_SECONDS, lifetime / 2)
            self._cache[key] = _Cached(token, now + lifetime - margin, now)
            return token

    def cached_token(self, secret: SecretPolicy) -> SecretValue | None:
        """The token held for ``secret`` (also one due for refresh), or None; never mints."""
        assert secret.oauth2 is not None
        with self._lock:
            cached = self._cache.get((secret.name, secret.oauth2))
        return cached.token if cached is not None else None

    def token_rejected(self, secret_name: str, token: str) -> bool:
        """An upstream answered 401 to ``token``: drop it so the next request mints afresh.

        Only the token that was rejected is dropped (a newer one minted meanwhile stays), and a
        token minted less than a second ago is kept: an upstream that refuses every token must
        not turn each request into a round trip to the token endpoint.
        """
        with self._lock:
            for key, cached in list(self._cache.items()):
                if key[0] != secret_name or cached.token.reveal() != token:
                    continue
                if self._clock() - cached.minted_at < MIN_SECONDS_BETWEEN_REJECTIONS:
                    return False
                del self._cache[key]
                return True
        return False

    def _mint(self, secret: SecretPolicy, oauth2: OAuth2Config,
              credential: SecretValue) -> tuple[SecretValue, float]:
        form: dict[str, str] = {"grant_type": oauth2.grant_type}
        client_secret: str | None = credential.reveal()
        stored_digest = hashlib.sha256(credential.reveal().encode()).digest()
        if oauth2.grant_type == "refresh_token":
            refresh_token, client_secret = _refresh_parts(secret.name, credential)
            form["refresh_token"] = self._rotated.get((secret.name, stored_digest),
                                                      refresh_token)
        if oauth2.scope:
            form["scope"] = oauth2.scope
        headers = {"Content-Type": "application/x-www-form-urlencoded",
                   "Accept": "application/json", "Cache-Control": "no-store"}
        if client_secret is not None and oauth2.auth == "basic":
            # RFC 6749 2.3.1: both parts form-urlencoded before the Basic encoding.
            pair = f"{quote(oauth2.client_id, safe='')}:{quote(client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = oauth2.client_id
            if client_secret is not None:
                form["client_secret"] = client_secret
        status, answer = self._post(secret.name, oauth2.token_url, urlencode(form), headers)
        if status != 200:
            raise SecretUnavailable(secret.name, f"the token endpoint answered {status}")
        token, lifetime, rotated = _parse_answer(secret.name, answer)
        if rotated is not None and oauth2.grant_type == "refresh_token":
            self._rotated[(secret.name, stored_digest)] = rotated
        return token, lifetime

    def _post(self, name: str, url: str, body: str,
              headers: dict[str, str]) -> tuple[int, bytes]:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or 443
        if self._context is None:
            self._context = self._trust.tls_context()
        connection = _PinnedHTTPSConnection(host, port, self._trust.resolve.lookup(host, port),
                                            self._context, self._timeout)
        try:
            connection.request("POST", parts.path or "/", body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read(MAX_ANSWER_BYTES + 1)
            return response.status, answer
        except ssl.SSLCertVerificationError:
            raise SecretUnavailable(name, "the token endpoint's certificate is not trusted") \
                from None
        except (OSError, http.client.HTTPException) as error:
            # The type name only: messages of some errors quote what was sent or received.
            raise SecretUnavailable(
                name, f"the token endpoint cannot be reached ({type(error).__name__})") from None
        finally:
            connection.close()


def _refresh_parts(name: str, credential: SecretValue) -> tuple[str, str | None]:
    value = credential.reveal()
    if not value.lstrip().startswith("{"):
        return value, None
    try:
        parsed = strict_json.loads(value)
    except ValueError:
        raise SecretUnavailable(name, "the stored value is not valid JSON") from None
    refresh_token = parsed.get("refresh_token") if isinstance(parsed, dict) else None
    client_secret = parsed.get("client_secret") if isinstance(parsed, dict) else None
    if not isinstance(refresh_token, str) or not refresh_token:
        raise SecretUnavailable(name, 'the stored JSON has no "refresh_token" string')
    if client_secret is not None and not isinstance(client_secret, str):
        raise SecretUnavailable(name, 'the stored "client_secret" is not a string')
    return refresh_token, client_secret


def _parse_answer(name: str, answer: bytes) -> tuple[SecretValue, float, str | None]:
    if len(answer) > MAX_ANSWER_BYTES:
        raise SecretUnavailable(name, "the token endpoint's answer is too large")
    try:
        parsed = strict_json.loads(answer)
    except ValueError:
        raise SecretUnavailable(name, "the token endpoint's answer is not JSON") from None
    if not isinstance(parsed, dict):
        raise SecretUnavailable(name, "the token endpoint's answer is not a JSON object")
    token = parsed.get("access_token")
    if not isinstance(token, str) or not token or not token.isprintable():
        raise SecretUnavailable(name, "the token endpoint's answer has no usable access_token")
    token_type = parsed.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise SecretUnavailable(name, "the token endpoint issued a token that is not a Bearer "
                                      "token")
    expires_in = parsed.get("expires_in", DEFAULT_LIFETIME_SECONDS)
    if isinstance(expires_in, str) and expires_in.isdigit():
        expires_in = int(expires_in)  # some servers send it as a string
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0:
        raise SecretUnavailable(name, "the token endpoint's expires_in is not a positive number")
    rotated = parsed.get("refresh_token")
    return (SecretValue(name, token), float(expires_in),
            rotated if isinstance(rotated, str) and rotated else None)
