"""What every grant store (SQLite, Redis) offers, and the errors it speaks in.

The surface is deliberately small: each verb is one atomic step, so a second backend only has
to make the same few steps atomic in its own terms.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from broker_proxy.grants.model import Grant
from broker_proxy.grants.tokens import parse_token, token_hash, token_matches


class GrantError(Exception):
    """Base of every grant error, so a caller can catch the family at once."""


class GrantStoreError(GrantError):
    """The store cannot be used (cannot open, locked too long, corrupt): the proxy answers 503."""


class GrantStoreBusy(GrantStoreError):
    """`reserve_use(wait=False)` found the store locked: call again where waiting is allowed."""


class GrantNotFound(GrantError, LookupError):
    def __init__(self, grant_id: str) -> None:
        super().__init__(f"grant {grant_id} not found")
        self.grant_id = grant_id


class GrantStateError(GrantError):
    """A transition asked of a grant whose state does not allow it."""

    def __init__(self, grant_id: str, state: str, action: str) -> None:
        super().__init__(f"grant {grant_id} is {state}; cannot {action}")
        self.grant_id = grant_id
        self.state = state
        self.action = action


class ReserveResult(StrEnum):
    """The outcome of trying to spend one use; every value but RESERVED names why not."""

    RESERVED = "reserved"
    EXPIRED = "expired"
    USED_UP = "used_up"
    REVOKED = "revoked"
    PENDING = "pending"
    DENIED = "denied"
    NOT_FOUND = "not_found"


class GrantStore(Protocol):
    # Every call is a network round trip: the broker then decides off the event loop.
    remote: bool

    def create(self, grant: Grant) -> None: ...

    def get(self, grant_id: str) -> Grant | None: ...

    def authenticate(self, token: str) -> Grant | None:
        """The grant the token belongs to, in whatever state; None if it is not a valid token."""
        ...

    def list(
        self, *, include_inactive: bool = True, now: datetime | None = None
    ) -> list[Grant]:
        """Oldest first; without `include_inactive`, only grants active or pending at `now`."""
        ...

    def reserve_use(self, grant_id: str, now: datetime, *, wait: bool = True) -> ReserveResult:
        """Spend one use, atomically across threads, processes and (for shared stores) hosts.

        With `wait=False`, a store that would have to wait for a lock (another writer holds
        it) raises GrantStoreBusy at once instead; a remote store, always called off the event
        loop, may ignore it.
        """
        ...

    def revoke(self, grant_id: str, now: datetime) -> Grant: ...

    def approve(self, grant_id: str, by: str, now: datetime) -> Grant: ...

    def deny(self, grant_id: str, by: str, now: datetime) -> Grant: ...

    def close(self) -> None: ...


# Hashed when the token names no stored grant, so a miss costs the same as a wrong secret
# and the timing does not tell a client which grant ids exist.
_DUMMY_HASH = token_hash("bpt_g_0000000000000000_" + "A" * 43)


def authenticate_token(token: str, get: Callable[[str], Grant | None]) -> Grant | None:
    """The shared body of `GrantStore.authenticate`: parse, look up by id, compare the hash."""
    parsed = parse_token(token)
    if parsed is None:
        return None
    grant = get(parsed[0])
    if grant is None:
        token_matches(token, _DUMMY_HASH)
        return None
    return grant if token_matches(token, grant.token_hash) else None


def reserve_result_for(state: str) -> ReserveResult:
    """Why a reservation failed, from the grant's derived state."""
    if state == "active":
        # The atomic update refused a grant that reads as active: the store broke its own
        # invariant, and guessing a reason would hide that.
        raise GrantStoreError("grant store refused a use of an active grant")
    return ReserveResult(state)
