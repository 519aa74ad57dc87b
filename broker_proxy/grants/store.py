"""What every grant store (SQLite, Redis) offers, and the errors it speaks in.

The surface is deliberately small: each verb is one atomic step, so a second backend only has
to make the same few steps atomic in its own terms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from broker_proxy.errors import BrokerError
from broker_proxy.grants.budgets import BudgetUse
from broker_proxy.grants.model import Grant, GrantStatus
from broker_proxy.grants.tokens import parse_token, token_hash, token_matches
from broker_proxy.policy.model import RateLimit

# The longest a request waits on the grant store (a lock another writer holds), counted from
# the moment it arrived: the hundredth waiter is answered 503 as soon as the first.
STORE_WAIT_SECONDS = 5.0


class GrantError(BrokerError):
    """Base of every grant error, so a caller can catch the family at once."""


class GrantStoreError(GrantError):
    """The store cannot be used (cannot open, locked too long, corrupt): the proxy answers 503."""

    status, code = 503, "grant_store_unavailable"


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


# `list` is also a GrantStore verb, so the stores' later annotations say it this way.
Grants = list[Grant]


class GrantIndex(StrEnum):
    """The instants a store keeps an index on, so that periodic work reads only what is due.

    ENDED is when a grant stopped being usable for good: its expiry, or the revocation or
    denial if that came first. A used-up grant ends at its expiry (the store does not record
    when the last use was spent, and it can still be revoked until then).
    """

    CREATED = "created"
    EXPIRES = "expires"
    REVOKED = "revoked"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class GrantCounts:
    """The grant gauges at one instant, counted by the store without reading every grant."""

    active: int
    pending: int
    expiring_in_use: int  # active, used at least once, and expiring within the given window


# A position in the listing order: (created_at, id) of the last grant a page covered.
PageKey = tuple[datetime, str]


@dataclass(frozen=True, slots=True)
class GrantPage:
    """One page of a listing: the grants, and where the next page starts (None: no more)."""

    grants: list[Grant]
    next: PageKey | None


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

    def page(self, after: PageKey | None, limit: int, *,
             newest_first: bool = False, skip: int = 0) -> GrantPage:
        """Up to `limit` grants in (created_at, id) order (or its reverse) after `after`,
        leaving out the first `skip` of them (the old offset paging: O(skip) in SQLite's index,
        O(log n) in Redis's sorted set, never grants held in memory).

        Read through an index on (created_at, id): O(log n + limit) per page, whatever the page's
        position, so a listing of a million grants is walked page by page without holding them.
        `next` is set when more grants follow (as the store stood when the page was read).
        """
        ...

    def total(self) -> int:
        """How many grants the store holds, in whatever state (counted on an index)."""
        ...

    def reserve_use(self, grant_id: str, now: datetime, *, wait: bool = True,
                    deadline: float | None = None) -> ReserveResult:
        """Spend one use, atomically across threads, processes and (for shared stores) hosts.

        With `wait=False`, a store that would have to wait for a lock (another writer holds
        it) raises GrantStoreBusy at once instead; a remote store, always called off the event
        loop, may ignore it. With a `deadline` (a time.monotonic() instant), a wait for a lock
        ends by then with GrantStoreError; a store whose every call is bounded by short
        timeouts of its own may ignore it.
        """
        ...

    def release_use(self, grant_id: str) -> bool:
        """Give back one use reserved for a request that never left (its upstream could not be
        reached, or its client went away first); False when there was none to give back.

        Only a reservation whose request was certainly not sent may be released: `max_uses`
        bounds the requests that reached an upstream with a secret, and a use given back
        for a request that did leave would let one more through.
        """
        ...

    def take_rate(self, grant: Grant, secret: str, rate: RateLimit, now: datetime, *,
                  wait: bool = True, deadline: float | None = None) -> float:
        """One request against the grant's rate bucket for `secret` (rate_limits.py), atomic
        like `reserve_use`: 0.0 when admitted, else the seconds until it would be. `wait`
        as for `reserve_use`."""
        ...

    def limit_rate(self, grant: Grant, secret: str, rate: RateLimit) -> None:
        """Keep a rate the grant asked for at issue, stricter than the policy's."""
        ...

    def own_rates(self, grant_id: str) -> dict[str, tuple[int, int]]:
        """secret -> (interval µs, burst) of the rates the grant asked for at issue."""
        ...

    def reserve_budget(self, grant: Grant, secret: str, caps: tuple[int | None, ...],
                       asked: tuple[int, int, int, int], *, wait: bool = True,
                       deadline: float | None = None) -> str | None:
        """Hold an LLM request's reservation against the grant's budget (budgets.py),
        atomic like `reserve_use`: None when held, else the dimension over its cap."""
        ...

    def settle_budget(self, grant_id: str, secret: str, held: tuple[int, int, int, int],
                      used: tuple[int, int, int, int], *, wait: bool = True) -> None:
        """Release a reservation and charge what the answer used."""
        ...

    def limit_budget(self, grant: Grant, secret: str, own: tuple[int | None, ...]) -> None:
        """Keep caps the grant asked for at issue, stricter than the policy's."""
        ...

    def budget_use(self, grant_id: str) -> dict[str, BudgetUse]:
        """secret -> what the grant has used and holds."""
        ...

    def revoke(self, grant_id: str, now: datetime) -> Grant: ...

    def approve(self, grant_id: str, by: str, now: datetime) -> Grant: ...

    def deny(self, grant_id: str, by: str, now: datetime) -> Grant: ...

    def indexed(
        self, index: GrantIndex, after: tuple[datetime, str], until: datetime, limit: int
    ) -> Grants:
        """Grants whose `index` instant and id come after `after` and whose instant is at most
        `until`, ordered by (instant, id), at most `limit` of them.

        (instant, id) of the last grant returned is the cursor for the next page, so a caller
        paging through sees every grant once. The cost is O(limit + log n), not O(n).
        """
        ...

    def counts(self, now: datetime, expiring_within: timedelta) -> GrantCounts:
        """Active, pending and "used and expiring within `expiring_within`" grants at `now`;
        the cost grows with the grants still live, not with the ended ones kept."""
        ...

    def purge(self, grant_ids: Sequence[str], ended_before: datetime) -> int:
        """Delete those of `grant_ids` that ended at or before `ended_before`; how many went.

        The condition is checked again as the rows are deleted, so a grant that changed since
        it was read (it cannot un-end, but a caller may pass any id) is never removed early.
        """
        ...

    def close(self) -> None: ...

    def probe_write(self) -> None:
        """Write something that changes nothing, as a grant write would (for /readyz).

        Raises GrantStoreError when the store cannot take a write now (a full disk, a read-only
        file, a lost server); GrantStoreBusy when another writer holds it (not a failure).
        """
        ...


def ended_at(grant: Grant) -> datetime:
    """When the grant ended for good (GrantIndex.ENDED); in the future while it may still run."""
    decided = None
    if grant.status is GrantStatus.REVOKED:
        decided = grant.revoked_at
    elif grant.status is GrantStatus.DENIED:
        decided = grant.approved_at
    return grant.expires_at if decided is None else min(decided, grant.expires_at)


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
