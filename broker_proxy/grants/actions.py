"""Issuing and deciding grants with their audit records: one place for the CLI and the admin API.

Whoever changes a grant (a person at the CLI, a script over the admin API, `exec` when its
command ends, a policy reload) writes the same audit record for it, so the trail reads the same
whichever door was used.
"""

from __future__ import annotations

import getpass
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from broker_proxy.audit.log import AuditLog
from broker_proxy.grants.issuer import IssuedGrant, issue_grant
from broker_proxy.grants.model import Grant, isoformat_z
from broker_proxy.grants.store import GrantStore
from broker_proxy.policy.model import Policy

GrantAction = Literal["approve", "deny", "revoke"]
GRANT_ACTIONS: tuple[GrantAction, ...] = ("approve", "deny", "revoke")

_EVENTS: dict[str, str] = {"approve": "grant_approved", "deny": "grant_denied",
                           "revoke": "grant_revoked"}


def grant_fields(grant: Grant) -> dict[str, Any]:
    """The standard audit fields that describe a grant (never its token or hash)."""
    return {"grant": grant.id, "agent": grant.agent, "task": grant.task,
            "secrets": list(grant.secrets)}


def local_operator() -> str:
    """Who runs this command, for `approved_by` and the audit record's `by`."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def issue_audited(policy: Policy, store: GrantStore, audit: AuditLog, *, agent: str, task: str,
                  secrets: list[str], ttl: timedelta | None, max_uses: int | None,
                  now: datetime, proxy_url_base: str | None, by: str,
                  rates: Sequence[str] = (), concurrency: Sequence[str] = (),
                  cost_usd: Sequence[str] = (), input_tokens: Sequence[str] = (),
                  output_tokens: Sequence[str] = ()) -> IssuedGrant:
    """Issue a grant bounded by `policy` and record who issued it."""
    issued = issue_grant(policy, store, agent=agent, task=task, secrets=secrets, ttl=ttl,
                         max_uses=max_uses, now=now, proxy_url_base=proxy_url_base,
                         rates=rates, concurrency=concurrency, cost_usd=cost_usd,
                         input_tokens=input_tokens, output_tokens=output_tokens,
                         issued_by=by)
    grant = issued.grant
    # What a reviewer asks of an issuance: how long, how many uses, and whether it waits for a
    # person (grant_status "pending").
    audit.append("grant_issued", decision="allow", reason="issued", **grant_fields(grant),
                 by=by, expires_at=isoformat_z(grant.expires_at), max_uses=grant.max_uses,
                 grant_status=str(grant.status))
    return issued


def change_grant(store: GrantStore, audit: AuditLog, grant_id: str, action: GrantAction, *,
                 by: str, now: datetime, reason: str | None = None) -> Grant:
    """Approve, deny or revoke one grant and audit it.

    Raises GrantNotFound or GrantStateError (from the store) when the change is not possible;
    nothing is recorded then, because nothing changed.
    """
    if action == "approve":
        grant = store.approve(grant_id, by, now)
    elif action == "deny":
        grant = store.deny(grant_id, by, now)
    elif action == "revoke":
        grant = store.revoke(grant_id, now)
    else:  # a typo in a caller must not fall through to some other change
        raise ValueError(f"unknown grant action {action!r}")
    audit.append(_EVENTS[action], decision="allow" if action == "approve" else "deny",
                 reason=reason or action, **grant_fields(grant), by=by)
    return grant
