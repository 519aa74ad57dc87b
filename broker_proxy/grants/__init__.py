"""Grants: task-scoped authority over a few secrets, issued against the policy and stored
where every proxy replica and CLI of one home can check and spend it."""

from broker_proxy.grants.issuer import (
    GrantPolicyError,
    IssuedGrant,
    format_duration,
    issue_grant,
    proxy_url,
)
from broker_proxy.grants.model import GRANT_STATES, Grant, GrantStatus, new_grant_id
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.grants.store import (
    GrantError,
    GrantNotFound,
    GrantStateError,
    GrantStore,
    GrantStoreError,
    ReserveResult,
)
from broker_proxy.grants.tokens import new_token, parse_token, token_hash, token_matches

__all__ = [
    "GRANT_STATES",
    "Grant",
    "GrantError",
    "GrantNotFound",
    "GrantPolicyError",
    "GrantStateError",
    "GrantStatus",
    "GrantStore",
    "GrantStoreError",
    "IssuedGrant",
    "ReserveResult",
    "SqliteGrantStore",
    "format_duration",
    "issue_grant",
    "new_grant_id",
    "new_token",
    "parse_token",
    "proxy_url",
    "token_hash",
    "token_matches",
]
