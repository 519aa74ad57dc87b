"""What a placeholder is swapped for, whatever kind of credential the secret is.

The broker asks ``resolve(secret)`` for the value that goes into the request. For a plain secret
that is the backend's value; for an ``oauth2`` secret it is an access token minted with the
backend's value (the client secret never goes into a request); a ``client_cert`` secret's value
is a private key and never goes into a request at all (the policy gives it no inject places, and
this refuses as well, in case a later change gives it some). `check` is the wrapped
``SecretResolver``'s, so `secret list` still checks the stored value, not the token endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping

from broker_proxy.policy.model import SecretPolicy
from broker_proxy.secrets.backends import SecretResolver, SecretUnavailable
from broker_proxy.secrets.oauth2 import TokenMinter
from broker_proxy.secrets.value import SecretValue


class CredentialResolver:
    """A ``SecretSource`` that mints OAuth2 access tokens and keeps client keys in."""

    def __init__(self, backends: SecretResolver, minter: TokenMinter) -> None:
        self.backends = backends
        self.minter = minter

    def resolve(self, secret: SecretPolicy) -> SecretValue:
        if secret.client_cert is not None:
            raise SecretUnavailable(secret.name, "a client certificate key is only presented "
                                                 "in the TLS handshake")
        value = self.backends.resolve(secret)
        if secret.oauth2 is None:
            return value
        return self.minter.access_token(secret, value)

    def stored_value(self, secret: SecretPolicy) -> SecretValue:
        """The backend's value itself (a client key for the TLS layer), never for a request."""
        return self.backends.resolve(secret)

    def minted_token(self, secret: SecretPolicy) -> SecretValue | None:
        """The access token currently held for an ``oauth2`` secret, without minting one."""
        return self.minter.cached_token(secret) if secret.oauth2 is not None else None

    def retired_values(self, secret: SecretPolicy) -> tuple[SecretValue, ...]:
        """The backend's retired values (an oauth2 secret's old client credential too)."""
        return self.backends.retired_values(secret)

    def upstream_answered(self, status: int, scrub: Mapping[str, tuple[str, str]]) -> None:
        """A 401 means the access tokens the request carried are no good: mint new ones next."""
        if status != 401:
            return
        for name, (value, _placeholder) in scrub.items():
            self.minter.token_rejected(name, value)

    def check(self, secret: SecretPolicy) -> tuple[bool, str]:
        """Does the stored value resolve (for `secret list`); minting is not tried."""
        return self.backends.check(secret)
