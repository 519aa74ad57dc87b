"""Which values an answer is scrubbed for: by grant, by destination, current and retired.

An answer can carry a secret its own request never carried:

- a session opened by an earlier injected request reads a stored key back, or a grant holding
  two secrets injects one while the upstream echoes the other: so every secret the requesting
  grant holds, under the placeholder this grant uses for it;
- another grant (of this agent or another one, or an egress-only grant) stored its secret at
  the same host, and this request reads it back: so every secret the policy lets any grant
  send to the answer's host (``DestinationIndex.secrets_sent_to_host``), under the policy's
  placeholder;
- the value was rotated, and the old one, still valid at the provider, is read back from where
  it was stored: so retired values too (kept by the vault, see ``vault.py``, and every value
  this process saw a secret change away from), never injected.

What each kind of secret contributes (what an upstream could have received):

- a plain secret: its value;
- ``oauth2``: the access token currently minted (under the secret's name) and the stored client
  secret or refresh token (``NAME.credential``); never a new mint just to scrub;
- ``sign: aws-sigv4``: the access key id, the secret access key and any session token;
- ``client_cert``: nothing: its key is only used in the proxy's own TLS handshake, no upstream
  ever receives it.

Cost stays flat per request: values are resolved with the proxy's own resolver and cached for
``ttl`` seconds per secret; the set for one scope (grant, host) is composed once and reused
while ``generation`` (bumped whenever any value changes) and the values' TTL say it holds, so
a request costs one dict lookup; the compiled patterns are shared per value (plan.py). A
request that injects a value the cache does not hold (a rotated secret, a new token) drops the
entry, and ``refresh`` (the vault watcher, on `secret set`) re-resolves the vault's secrets
off the event loop, so the next answer, and every live stream at its next chunk, already
scrubs the new value. A value that cannot be had makes the set incomplete (fail closed: the
caller withholds the answer); a failure is remembered for ``failure_ttl`` seconds so a broken
backend is not asked again by every answer.

Retired values are labelled ``NAME#<digest>`` (a keyed digest under a key drawn at start-up, so
a label names the value's slot, never the value); ``base_secret`` maps a label back to the
secret name for metrics.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets as random_source
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import overload

from broker_proxy.grants.model import Grant
from broker_proxy.policy.destinations import DestinationIndex
from broker_proxy.policy.model import Policy, SecretPolicy
from broker_proxy.request.scrub_scope import ScrubScope
from broker_proxy.secrets.aws_credentials import AwsCredentialsError, parse_credentials
from broker_proxy.secrets.source import SecretSource
from broker_proxy.secrets.value import SecretValue

log = logging.getLogger("broker_proxy")

VALUES_TTL_SECONDS = 10.0
FAILURE_TTL_SECONDS = 2.0
# How long this process keeps scrubbing a value it saw a secret change away from (a backend
# without history: env, file, command, keyring; an OAuth2 token minted anew), and how many.
HISTORY_SECONDS = 30 * 86_400.0
HISTORY_PER_SECRET = 8
SCOPES_CACHED = 4096
RETIRED_MARK = "#"  # never in a secret name, so a retired label cannot be a secret's own

Values = tuple[tuple[str, SecretValue], ...]


def _cheap(secret: SecretPolicy) -> bool:
    """Resolving it is local and quick: no process to run, no keyring, no network."""
    return secret.source == "vault" or secret.source.startswith(("env:", "file:"))


def scope_of(grant: Grant, host: str | None) -> ScrubScope:
    """Who asks (the grant, with each secret's own placeholder) and which host answers."""
    return ScrubScope(grant.id, tuple((name, grant.placeholder_of(name))
                                      for name in grant.secrets), host)


def base_secret(label: str) -> str:
    """The secret a scrub label belongs to (``api_key#1f2e...`` -> ``api_key``)."""
    return label.partition(RETIRED_MARK)[0]


@dataclass(frozen=True, slots=True)
class GrantScrub:
    """What to scrub from an answer; ``complete`` is False if a value was missing."""

    # label -> (real value, placeholder); never shown.
    values: dict[str, tuple[str, str]] = field(repr=False)
    complete: bool = True
    generation: int = 0  # GrantScrubValues.generation when this set was composed


@dataclass(slots=True)
class _Entry:
    secret: SecretPolicy  # the policy object the values were resolved for (a reload changes it)
    until: float
    values: Values | None  # None: resolving failed; retired values included
    last: Values = ()  # the last values resolved, kept through a failure


@dataclass(slots=True)
class _Composed:
    policy: Policy
    generation: int
    until: float
    scrub: GrantScrub


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
        # Values seen replaced in this process: secret name -> [(label, value, until)].
        self._history: dict[str, list[tuple[str, SecretValue, float]]] = {}
        self._composed: OrderedDict[ScrubScope, _Composed] = OrderedDict()
        self._label_key = random_source.token_bytes(32)
        # Bumped whenever a value changes: a composed set, or a live stream's, is stale then.
        self.generation = 0

    def __repr__(self) -> str:
        return f"<GrantScrubValues {len(self._entries)} secrets>"

    def for_grant(self, grant: Grant, policy: Policy) -> GrantScrub:
        """The grant's own secrets only (no destination): see ``for_scope``."""
        return self._compose(scope_of(grant, None), policy, None, resolve=True)

    def for_scope(self, scope: ScrubScope, policy: Policy, index: DestinationIndex, *,
                  resolve: bool = True) -> GrantScrub:
        """Every value an answer in ``scope`` is scrubbed for.

        ``resolve=False`` (a live stream on the event loop): a value whose cache entry expired
        is used as cached rather than fetched again (fetching may block; rotations reach the
        cache through ``refresh`` and ``forget``).
        """
        now = self._clock()
        with self._lock:
            composed = self._composed.get(scope)
            if (composed is not None and composed.policy is policy
                    and composed.generation == self.generation
                    and (now < composed.until or not resolve)):
                self._composed.move_to_end(scope)
                return composed.scrub
        return self._compose(scope, policy, index, resolve=resolve)

    def _compose(self, scope: ScrubScope, policy: Policy, index: DestinationIndex | None, *,
                 resolve: bool) -> GrantScrub:
        generation = self.generation  # read first: a change while composing makes it stale
        values: dict[str, tuple[str, str]] = {}
        complete = True
        until = float("inf")
        placeholders: dict[str, str | None] = dict(scope.held)
        if index is not None and scope.host is not None:
            for name in index.secrets_sent_to_host(scope.host):
                placeholders.setdefault(name, None)
        held = len(scope.held)
        bumps: list[int] = []  # generations this composition itself caused (first resolutions)
        for position, (name, own) in enumerate(placeholders.items()):
            secret = policy.secrets.get(name)
            if secret is None:  # outside the policy now: such a grant is refused anyway
                continue
            if position < held:  # the grant's own: a value missing withholds the answer
                entry = self._entry_of(secret, resolve, bumps=bumps)
                found = entry.values
                if found is None:
                    complete = False
            else:
                # Another grant's, at this host: its backend is asked only when that is cheap
                # and local (vault, env, file); else the values this process resolved for the
                # grants that hold it. One that cannot be had now is scrubbed with its last
                # values, and withholds nothing: a broken backend of one secret must not stop
                # every answer from its hosts.
                cached = self._entry_of(secret, resolve and _cheap(secret), fetch=_cheap(secret),
                                        bumps=bumps)
                if cached is None:
                    continue
                entry, found = cached, cached.values if cached.values is not None else cached.last
            until = min(until, entry.until)
            placeholder = own or secret.placeholder
            for label, value in found or ():
                values[label] = (value.reveal(), placeholder)
            for label, value, _ in self._history_of(name):
                values.setdefault(label, (value.reveal(), placeholder))
        with self._lock:
            if self.generation == generation + len(bumps):
                generation = self.generation  # only this composition's own resolutions
        scrub = GrantScrub(values, complete, generation)
        if index is not None:
            with self._lock:
                self._composed[scope] = _Composed(policy, generation, until, scrub)
                self._composed.move_to_end(scope)
                while len(self._composed) > SCOPES_CACHED:
                    self._composed.popitem(last=False)
        return scrub

    def forget(self, label: str) -> None:
        """A request was just given another value under ``label`` (rotated in its backend, or a
        freshly minted token): resolve its secret again for the next answer, not after the TTL.
        """
        with self._lock:
            for name, entry in list(self._entries.items()):
                if entry.values and any(known == label for known, _ in entry.values):
                    del self._entries[name]
                    self.generation += 1

    def refresh(self, policy: Policy, *, sources: Iterable[str] = ("vault",)
                ) -> dict[str, str]:
        """Resolve the secrets of these sources again now (the vault changed: `secret set`).

        Called off the event loop (the vault watcher): once it returns, every new answer and
        every live stream's next chunk scrubs the new values, and the replaced ones as
        retired. Returns every label and value now scrubbed for these secrets, so the caller
        can compile their patterns before an answer needs them.
        """
        wanted = set(sources)
        found: dict[str, str] = {}
        with self._lock:  # only those in use: the others are resolved when first needed
            names = list(self._entries)
        for name in names:
            secret = policy.secrets.get(name)
            if secret is None or secret.source not in wanted:
                continue
            entry = self._resolved_entry(secret, self._clock())
            found.update((label, value.reveal()) for label, value in entry.values or ())
            found.update((label, value.reveal())
                         for label, value, _ in self._history_of(secret.name))
        with self._lock:
            self.generation += 1
        return found

    def _history_of(self, name: str) -> list[tuple[str, SecretValue, float]]:
        with self._lock:
            kept = self._history.get(name)
            if not kept:
                return []
            now = self._clock()
            if any(until <= now for _, _, until in kept):
                kept = self._history[name] = [item for item in kept if item[2] > now]
            return list(kept)

    @overload
    def _entry_of(self, secret: SecretPolicy, resolve: bool, *,
                  bumps: list[int] | None = None) -> _Entry: ...

    @overload
    def _entry_of(self, secret: SecretPolicy, resolve: bool, *, fetch: bool,
                  bumps: list[int] | None = None) -> _Entry | None: ...

    def _entry_of(self, secret: SecretPolicy, resolve: bool, *, fetch: bool = True,
                  bumps: list[int] | None = None) -> _Entry | None:
        """The cached entry, resolved anew when it expired (``resolve``) or is missing; without
        ``fetch``, never resolved: the cached entry as it is, or None."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(secret.name)
        if entry is not None and entry.secret is secret and (now < entry.until or not resolve):
            return entry
        if not fetch:
            return entry
        return self._resolved_entry(secret, now, bumps)

    def _resolved_entry(self, secret: SecretPolicy, now: float,
                        bumps: list[int] | None = None) -> _Entry:
        try:
            values: Values | None = self._resolve(secret)
            until = now + self._ttl
        except Exception as error:  # fail closed: the answer is withheld, not passed on
            log.warning('secret "%s" cannot be resolved to scrub answers: %s', secret.name,
                        type(error).__name__)
            values, until = None, now + self._failure_ttl
        with self._lock:
            before = self._entries.get(secret.name)
            last = values if values is not None else (before.values or before.last
                                                      if before is not None else ())
            entry = self._entries[secret.name] = _Entry(secret, until, values, last)
            if before is None or before.values != values:
                # New or changed values: every composed set that could hold them is stale.
                if before is not None and before.values and values is not None:
                    self._remember_replaced(secret, before.values, values, now)
                self.generation += 1
                if bumps is not None:
                    bumps.append(self.generation)
        return entry

    def _remember_replaced(self, secret: SecretPolicy, before: Values, after: Values,
                           now: float) -> None:
        """Under the lock: values the secret no longer has are kept as this process's history
        (a backend without history, an OAuth2 token minted anew).

        Not a vault's own values: the vault keeps them retired itself, and `secret
        forget-retired` must be able to end that.
        """
        name = secret.name
        current = {value.reveal() for _, value in after}
        kept = self._history.setdefault(name, [])
        for label, value in before:
            if secret.source == "vault" and (
                    RETIRED_MARK in label or secret.oauth2 is None or label != name):
                continue  # stored in the vault (retired there); only a minted token is not
            if value.reveal() in current or any(v.reveal() == value.reveal() for _, v, _ in kept):
                continue
            kept.append((self._retired_label(base_secret(label), value.reveal()), value,
                         now + HISTORY_SECONDS))
        del kept[:-HISTORY_PER_SECRET]

    def _retired_label(self, name: str, value: str) -> str:
        digest = hmac.new(self._label_key, value.encode("utf-8", "surrogateescape"),
                          hashlib.sha256).hexdigest()[:12]
        return f"{name}{RETIRED_MARK}{digest}"

    def _resolve(self, secret: SecretPolicy) -> Values:
        resolver = self._resolver
        name = secret.name
        if secret.client_cert is not None:
            return ()
        stored = resolver.stored_value
        current: list[tuple[str, SecretValue]]
        if secret.sign is not None:
            credentials = parse_credentials(name, stored(secret))
            found = [(name, credentials.secret_access_key),
                     (f"{name}.access_key_id", credentials.access_key_id)]
            if credentials.session_token:
                found.append((f"{name}.session_token", credentials.session_token))
            current = [(label, SecretValue(label, text)) for label, text in found]
        elif secret.oauth2 is not None:
            current = [(f"{name}.credential", stored(secret))]
            token = resolver.minted_token(secret)
            if token is not None:
                current.append((name, token))
        else:
            current = [(name, resolver.resolve(secret))]
        texts = {value.reveal() for _, value in current}
        for retired in resolver.retired_values(secret):
            parts = [retired]
            if secret.sign is not None:
                try:  # what an upstream received: the key id and secret key, not the blob
                    old = parse_credentials(name, retired)
                except AwsCredentialsError:  # an unreadable old blob: scrubbed whole
                    pass
                else:
                    parts = [SecretValue(name, text) for text in (
                        old.secret_access_key, old.access_key_id, old.session_token) if text]
            for value in parts:
                text = value.reveal()
                if text not in texts:  # a value set back is current, not retired
                    texts.add(text)
                    current.append((self._retired_label(name, text), value))
        return tuple(current)
