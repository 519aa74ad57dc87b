"""Every secret a grant holds, for scrubbing every answer on that grant's connections.

An answer can carry a secret its own request never carried: a session opened by an earlier
injected request reads a stored key back, or a grant holding two secrets injects one while the
upstream echoes the other. So what is scrubbed is the grant's, not the request's: every secret
the grant holds, under the placeholder this grant uses for it.

What each kind of secret contributes (what an upstream could have received):

- a plain secret: its value;
- ``oauth2``: the access token currently minted (under the secret's name) and the stored client
  secret or refresh token (``NAME.credential``); never a new mint just to scrub;
- ``sign: aws-sigv4``: the access key id, the secret access key and any session token;
- ``client_cert``: nothing: its key is only used in the proxy's own TLS handshake, no upstream
  ever receives it.

Values are resolved with the proxy's own resolver and cached for ``ttl`` seconds, so a
request costs a few dict lookups; a request that injects a value the cache does not hold (a
rotated secret, a new token) drops the entry, so the next answer already scrubs the new value.
A value that cannot be had makes the set incomplete (fail closed: the caller withholds the
answer); a failure is remembered for ``failure_ttl`` seconds so a broken backend is not asked
again by every answer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from broker_proxy.grants.model import Grant
from broker_proxy.policy.model import Policy, SecretPolicy
from broker_proxy.secrets.source import SecretSource
from broker_proxy.secrets.value import SecretValue
from broker_proxy.signing.aws_resign import parse_credentials

log = logging.getLogger("broker_proxy")

VALUES_TTL_SECONDS = 10.0
FAILURE_TTL_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class GrantScrub:
    """What to scrub from a grant's answers; ``complete`` is False if a value was missing."""

    # label -> (real value, placeholder); never shown.
    values: dict[str, tuple[str, str]] = field(repr=False)
    complete: bool = True


@dataclass(slots=True)
class _Entry:
    secret: SecretPolicy  # the policy object the values were resolved for (a reload changes it)
    until: float
    values: tuple[tuple[str, SecretValue], ...] | None  # None: resolving failed


class GrantScrubValues:
    """A cache of each secret's scrub values, shared by every grant that holds the secret."""

    def __init__(self, resolver: SecretSource, *, ttl: float = VALUES_TTL_SECONDS,
                 failure_ttl: float = FAILURE_TTL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._resolver = resolver
        self._ttl = ttl
        self._failure_ttl = failure_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def __repr__(self) -> str:
        return f"<GrantScrubValues {len(self._entries)} secrets>"

    def for_grant(self, grant: Grant, policy: Policy) -> GrantScrub:
        values: dict[str, tuple[str, str]] = {}
        complete = True
        for name in grant.secrets:
            secret = policy.secrets.get(name)
            if secret is None:  # outside the policy now: such a grant is refused anyway
                continue
            resolved = self._values_of(secret)
            if resolved is None:
                complete = False
                continue
            placeholder = grant.placeholder_of(name) or secret.placeholder
            for label, value in resolved:
                values[label] = (value.reveal(), placeholder)
        return GrantScrub(values, complete)

    def forget(self, label: str) -> None:
        """A request was just given another value under ``label`` (rotated in its backend, or a
        freshly minted token): resolve its secret again for the next answer, not after the TTL.
        """
        with self._lock:
            for name, entry in list(self._entries.items()):
                if entry.values and any(known == label for known, _ in entry.values):
                    del self._entries[name]

    def _values_of(self, secret: SecretPolicy) -> tuple[tuple[str, SecretValue], ...] | None:
        now = self._clock()
        with self._lock:
            entry = self._entries.get(secret.name)
        if entry is not None and entry.secret is secret and now < entry.until:
            return entry.values
        try:
            values: tuple[tuple[str, SecretValue], ...] | None = self._resolve(secret)
            until = now + self._ttl
        except Exception as error:  # fail closed: the answer is withheld, not passed on
            log.warning('secret "%s" cannot be resolved to scrub answers: %s', secret.name,
                        type(error).__name__)
            values, until = None, now + self._failure_ttl
        with self._lock:
            self._entries[secret.name] = _Entry(secret, until, values)
        return values

    def _resolve(self, secret: SecretPolicy) -> tuple[tuple[str, SecretValue], ...]:
        resolver = self._resolver
        name = secret.name
        if secret.client_cert is not None:
            return ()
        stored = resolver.stored_value
        if secret.sign is not None:
            credentials = parse_credentials(name, stored(secret))
            found = [(name, credentials.secret_access_key),
                     (f"{name}.access_key_id", credentials.access_key_id)]
            if credentials.session_token:
                found.append((f"{name}.session_token", credentials.session_token))
            return tuple((label, SecretValue(label, text)) for label, text in found)
        if secret.oauth2 is not None:
            found_values = [(f"{name}.credential", stored(secret))]
            token = resolver.minted_token(secret)
            if token is not None:
                found_values.append((name, token))
            return tuple(found_values)
        return ((name, resolver.resolve(secret)),)
