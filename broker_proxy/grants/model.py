"""A grant: one task's authority to have some secrets injected, for a while, a few times.

Only four states are stored (pending, active, denied, revoked). "expired" and "used_up" are
derived from the clock and the use counter at the moment of asking, so no sweeper has to run
and no two stores can disagree about when a grant ran out.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class GrantStatus(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    DENIED = "denied"
    REVOKED = "revoked"


# Every value `Grant.state_at` can return: the stored statuses plus the two derived ones.
GRANT_STATES: frozenset[str] = frozenset({*GrantStatus, "expired", "used_up"})


def new_grant_id() -> str:
    """64 random bits: ids are not secret (the token is), they only have to never collide."""
    return "g_" + secrets.token_hex(8)


def isoformat_z(moment: datetime) -> str:
    """ISO-8601 in UTC with a "Z", the form scripts reading `--json` expect."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Grant:
    """One issued grant as the store holds it.

    `approved_by`/`approved_at` hold the human decision on a grant that needed one, whichever
    way it went (the stores keep one pair of fields); `to_public_dict` shows it as `decided_*`
    and as `approved_*` or `denied_*`, so a denier is never shown as an approver.
    """

    id: str
    agent: str
    task: str
    secrets: tuple[str, ...]
    created_at: datetime
    expires_at: datetime
    max_uses: int | None
    uses: int
    status: GrantStatus
    approved_by: str | None
    approved_at: datetime | None
    revoked_at: datetime | None
    # Kept out of repr so that logging a grant can never leak what authenticates it.
    token_hash: bytes = field(repr=False)
    # (secret, placeholder) for secrets with a policy placeholder_format: drawn at issue time,
    # so a placeholder copied out of one grant names nothing in any other.
    placeholders: tuple[tuple[str, str], ...] = ()
    # Who issued it, as its `grant_issued` audit record names them (`oidc:alice@example.com`,
    # `alice`, `admin-api:ci`): kept on the grant so separation of duties does not depend on
    # finding that record (rotated away, or written by another replica). None: issued by an
    # older broker-proxy, or by code that names nobody (the demo, the policy test harness).
    issued_by: str | None = None

    def __post_init__(self) -> None:
        # Naive datetimes would compare wrongly against the proxy's aware clock (or raise
        # mid-request); refuse them where the grant is built, not where it is checked.
        for name in ("created_at", "expires_at", "approved_at", "revoked_at"):
            value = getattr(self, name)
            if value is not None and value.utcoffset() is None:
                raise ValueError(f"grant {self.id}: {name} must be timezone-aware")
        if list(self.secrets) != sorted(set(self.secrets)):
            raise ValueError(f"grant {self.id}: secrets must be sorted and unique")
        if any(name not in self.secrets for name, _ in self.placeholders):
            raise ValueError(f"grant {self.id}: a placeholder names a secret it does not hold")

    def placeholder_of(self, secret: str) -> str | None:
        """This grant's own placeholder for ``secret``, if the policy gives it one."""
        return dict(self.placeholders).get(secret)

    def state_at(self, now: datetime) -> str:
        """The state a request at `now` sees.

        A human decision (revoked, denied) wins over the clock, and the clock wins over the
        counter, so the reason given to an agent is the most final one.
        """
        if self.status in (GrantStatus.REVOKED, GrantStatus.DENIED):
            return str(self.status)
        if now >= self.expires_at:
            return "expired"
        if self.status is GrantStatus.PENDING:
            return "pending"
        if self.max_uses is not None and self.uses >= self.max_uses:
            return "used_up"
        return "active"

    def to_public_dict(self, now: datetime | None = None) -> dict[str, Any]:
        """Everything about the grant that may be shown: no token, no token hash."""
        moment = now if now is not None else datetime.now(UTC)
        denied = self.status is GrantStatus.DENIED
        return {
            "id": self.id,
            "agent": self.agent,
            "task": self.task,
            "secrets": list(self.secrets),
            "status": str(self.status),
            "state": self.state_at(moment),
            "created_at": isoformat_z(self.created_at),
            "expires_at": isoformat_z(self.expires_at),
            "max_uses": self.max_uses,
            "uses": self.uses,
            "approved_by": None if denied else self.approved_by,
            "approved_at": None if denied else _iso_or_none(self.approved_at),
            "denied_by": self.approved_by if denied else None,
            "denied_at": _iso_or_none(self.approved_at) if denied else None,
            "decided_by": self.approved_by,
            "decided_at": _iso_or_none(self.approved_at),
            "revoked_at": _iso_or_none(self.revoked_at),
        }


def _iso_or_none(moment: datetime | None) -> str | None:
    return None if moment is None else isoformat_z(moment)
