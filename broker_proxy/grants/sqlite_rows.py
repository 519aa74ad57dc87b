"""One grant as a row of the grants table, and back: instants as integer microseconds since 1970
(UTC), so they compare in SQL exactly as datetimes compare in Python; lists and mappings as JSON.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from broker_proxy.grants.model import Grant, GrantStatus
from broker_proxy.grants.store import GrantStoreError

COLUMNS = (
    "id, agent, task, secrets, created_at, expires_at, max_uses, uses, status,"
    " approved_by, approved_at, revoked_at, token_hash, placeholders, issued_by"
)
_SELECT_ONE = f"SELECT {COLUMNS} FROM grants WHERE id = ?"  # noqa: S608 (constant columns)
INSERT = f"INSERT INTO grants ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def select_grant(conn: sqlite3.Connection, grant_id: str) -> Grant | None:
    """The grant ``grant_id``, read on ``conn`` (inside the caller's transaction, if any)."""
    row = conn.execute(_SELECT_ONE, (grant_id,)).fetchone()
    return None if row is None else grant_from_row(row)


def to_micros(moment: datetime) -> int:
    if moment.utcoffset() is None:
        raise ValueError("grant store times must be timezone-aware")
    return (moment - _EPOCH) // _MICROSECOND


def _from_micros(micros: int | None) -> datetime | None:
    return None if micros is None else _moment(int(micros))


# A grant is read on every request; its JSON columns and instants never change, so each is
# parsed once (bounded caches of immutable values: tuples and datetimes).
@lru_cache(maxsize=4096)
def _moment(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


@lru_cache(maxsize=4096)
def _secrets_from_json(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


@lru_cache(maxsize=4096)
def _placeholders_from_json(text: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(json.loads(text).items()))


def row_from_grant(grant: Grant) -> tuple[object, ...]:
    return (
        grant.id,
        grant.agent,
        grant.task,
        json.dumps(list(grant.secrets)),
        to_micros(grant.created_at),
        to_micros(grant.expires_at),
        grant.max_uses,
        grant.uses,
        str(grant.status),
        grant.approved_by,
        None if grant.approved_at is None else to_micros(grant.approved_at),
        None if grant.revoked_at is None else to_micros(grant.revoked_at),
        grant.token_hash,
        json.dumps(dict(grant.placeholders), sort_keys=True),
        grant.issued_by,
    )


def grant_from_row(row: tuple[Any, ...]) -> Grant:
    (gid, agent, task, secrets_json, created, expires, max_uses, uses, status,
     approved_by, approved_at, revoked_at, hashed, placeholders_json, issued_by) = row
    try:
        return Grant(
            id=str(gid),
            agent=str(agent),
            task=str(task),
            secrets=_secrets_from_json(str(secrets_json)),
            created_at=_moment(int(created)),
            expires_at=_moment(int(expires)),
            max_uses=None if max_uses is None else int(max_uses),
            uses=int(uses),
            status=GrantStatus(status),
            approved_by=None if approved_by is None else str(approved_by),
            approved_at=_from_micros(approved_at),
            revoked_at=_from_micros(revoked_at),
            token_hash=bytes(hashed),
            placeholders=_placeholders_from_json(str(placeholders_json)),
            issued_by=None if issued_by is None else str(issued_by),
        )
    except (TypeError, ValueError) as exc:
        raise GrantStoreError(f"grant store row {gid} is corrupt: {exc}") from exc
