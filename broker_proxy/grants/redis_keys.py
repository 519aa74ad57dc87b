"""Where the Redis grant store keeps what: one hash per grant, sorted-set indexes, and the
per-grant rate and budget keys, all under one hash tag.

The scripts (redis_scripts.py) take these keys by position, so their order here is part of the
stored format: a store written by one version is read by the next.
"""

from __future__ import annotations

from typing import Any

from broker_proxy.grants.model import Grant, GrantStatus
from broker_proxy.grants.redis_codec import to_micros
from broker_proxy.grants.store import GrantIndex, ended_at

# One hash tag for every key, so the multi-key scripts also run on a Redis Cluster.
PREFIX = "{broker-proxy}"
# Sorted sets, member grant id. The first holds every grant, score created_at (µs); the others
# are there so periodic work reads what is due (O(log n + due)), not every grant: scores are
# expires_at for expiry / active / pending / in-use (active and used at least once), revoked_at
# for revoked, and the instant the grant ended (GrantIndex.ENDED) for ended. The first four
# are in the order of GrantIndex; the scripts name them by position.
INDEX_KEYS = (
    f"{PREFIX}:grants",
    f"{PREFIX}:by-expiry",
    f"{PREFIX}:by-revoked",
    f"{PREFIX}:by-end",
    f"{PREFIX}:active",
    f"{PREFIX}:pending",
    f"{PREFIX}:in-use",
)
(CREATED_INDEX, EXPIRY_INDEX, REVOKED_INDEX, ENDED_INDEX,
 ACTIVE_INDEX, PENDING_INDEX, IN_USE_INDEX) = INDEX_KEYS
KEY_OF_INDEX = {GrantIndex.CREATED: CREATED_INDEX, GrantIndex.EXPIRES: EXPIRY_INDEX,
                 GrantIndex.REVOKED: REVOKED_INDEX, GrantIndex.ENDED: ENDED_INDEX}
# Set once the indexes above hold every grant (a store written before they existed is indexed
# once, when a store of this version first opens it).
INDEX_VERSION_KEY = f"{PREFIX}:index-version"
INDEX_VERSION = "1"


def grant_key(grant_id: str) -> str:
    return f"{PREFIX}:grant:{grant_id}"


def rate_key(grant_id: str, secret: str) -> str:
    return f"{PREFIX}:rate:{grant_id}:{secret}"


def budget_key(grant_id: str, secret: str) -> str:
    return f"{PREFIX}:budget:{grant_id}:{secret}"


def own_rates_key(grant_id: str) -> str:
    return f"{PREFIX}:rates-own:{grant_id}"


def index_scores(grant: Grant) -> dict[str, int | None]:
    """The score of the grant in each index (None: not in it), as the scripts keep them."""
    expires = to_micros(grant.expires_at)
    status = grant.status
    used_up = grant.max_uses is not None and grant.uses >= grant.max_uses
    usable = status is GrantStatus.ACTIVE and not used_up
    return {
        CREATED_INDEX: to_micros(grant.created_at),
        EXPIRY_INDEX: expires,
        REVOKED_INDEX: to_micros(grant.revoked_at)
        if status is GrantStatus.REVOKED and grant.revoked_at is not None else None,
        ENDED_INDEX: to_micros(ended_at(grant)),
        ACTIVE_INDEX: expires if usable else None,
        PENDING_INDEX: expires if status is GrantStatus.PENDING else None,
        IN_USE_INDEX: expires if usable and grant.uses > 0 else None,
    }


def pipe_indexes(pipe: Any, grant: Grant) -> None:
    for key, score in index_scores(grant).items():
        if score is not None:
            pipe.zadd(key, {grant.id: score})


def flush_indexes(pipe: Any, scores: dict[str, dict[str, int]]) -> None:
    """One ZADD per index for a whole batch, then start the next batch empty."""
    for key, members in scores.items():
        if members:
            pipe.zadd(key, members)
            members.clear()
