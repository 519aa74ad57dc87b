"""What the request path asks of wherever secret values come from.

Two implementations: ``SecretResolver`` (the backends of one home: vault, env, file, keyring,
command) and ``CredentialResolver`` (the same, plus OAuth2 access tokens minted from a stored
credential and client keys kept for the TLS layer). The broker, the scrubber and the addons
take a ``SecretSource``, so they call each verb directly and never probe which one they hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from broker_proxy.policy.model import SecretPolicy
from broker_proxy.secrets.value import SecretValue


class SecretSource(Protocol):
    def resolve(self, secret: SecretPolicy) -> SecretValue:
        """The value a request carries (an OAuth2 secret's access token); SecretUnavailable."""
        ...

    def stored_value(self, secret: SecretPolicy) -> SecretValue:
        """The backend's value itself (a client key, an OAuth2 credential), never for a request."""
        ...

    def minted_token(self, secret: SecretPolicy) -> SecretValue | None:
        """The access token held for an ``oauth2`` secret, without minting one; else None."""
        ...

    def retired_values(self, secret: SecretPolicy) -> tuple[SecretValue, ...]:
        """Values the secret had before (`secret set` keeps them retired): scrubbed, never
        injected; () when the backend keeps no history. Never raises."""
        ...

    def upstream_answered(self, status: int, scrub: Mapping[str, tuple[str, str]]) -> None:
        """An upstream's status to a request that carried these values (a 401 drops tokens)."""
        ...
