"""One grant as the fields of its Redis hash, and back: instants as integer microseconds since
1970 (what the Lua scripts compare), lists and mappings as JSON, a None as an absent field.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from broker_proxy.grants.model import Grant, GrantStatus
from broker_proxy.grants.store import GrantStoreError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def check_storable(grant: Grant) -> None:
    # The same limits the SQLite schema's CHECK constraints enforce.
    if grant.max_uses is not None and grant.max_uses < 1:
        raise ValueError(f"grant {grant.id} cannot be stored: max_uses must be at least 1")
    if grant.uses < 0:
        raise ValueError(f"grant {grant.id} cannot be stored: uses must not be negative")


def to_micros(moment: datetime) -> int:
    if moment.utcoffset() is None:
        raise ValueError("grant store times must be timezone-aware")
    return (moment - EPOCH) // _MICROSECOND


def fields_from_grant(grant: Grant) -> dict[str, str | int | bytes]:
    """The hash of one grant; a None is an absent field (Lua's HMGET then reads false)."""
    fields: dict[str, str | int | bytes | None] = {
        "id": grant.id,
        "agent": grant.agent,
        "task": grant.task,
        "secrets": json.dumps(list(grant.secrets)),
        "created_at": to_micros(grant.created_at),
        "expires_at": to_micros(grant.expires_at),
        "max_uses": grant.max_uses,
        "uses": grant.uses,
        "status": str(grant.status),
        "approved_by": grant.approved_by,
        "approved_at": None if grant.approved_at is None else to_micros(grant.approved_at),
        "revoked_at": None if grant.revoked_at is None else to_micros(grant.revoked_at),
        "token_hash": grant.token_hash,
        # Absent for grants without per-grant placeholders (and for grants stored before).
        "placeholders": json.dumps(dict(grant.placeholders), sort_keys=True)
        if grant.placeholders else None,
        # Absent for a grant stored by an older broker-proxy: read back as None (nobody known),
        # which separation of duties answers from the audit log instead.
        "issued_by": grant.issued_by,
    }
    return {name: value for name, value in fields.items() if value is not None}


def grant_from_fields(grant_id: str, raw: dict[bytes, bytes]) -> Grant:
    fields = {name.decode(): value for name, value in raw.items()}

    def text(name: str) -> str | None:
        value = fields.get(name)
        return None if value is None else value.decode()

    def moment(name: str) -> datetime | None:
        value = fields.get(name)
        return None if value is None else EPOCH + timedelta(microseconds=int(value))

    try:
        created_at, expires_at = moment("created_at"), moment("expires_at")
        if created_at is None or expires_at is None or "token_hash" not in fields:
            raise ValueError("required fields are missing")
        max_uses = text("max_uses")
        return Grant(
            id=text("id") or "",
            agent=text("agent") or "",
            task=text("task") or "",
            secrets=tuple(json.loads(text("secrets") or "null")),
            created_at=created_at,
            expires_at=expires_at,
            max_uses=None if max_uses is None else int(max_uses),
            uses=int(text("uses") or "0"),
            status=GrantStatus(text("status")),  # type: ignore[arg-type]  # None: corrupt
            approved_by=text("approved_by"),
            approved_at=moment("approved_at"),
            revoked_at=moment("revoked_at"),
            token_hash=fields["token_hash"],
            placeholders=tuple(sorted(json.loads(text("placeholders") or "{}").items())),
            issued_by=text("issued_by"),
        )
    except (TypeError, ValueError, UnicodeDecodeError) as exc:
        raise GrantStoreError(f"grant store entry {grant_id} is corrupt: {exc}") from exc
