"""The grant store's SQLite schema, version by version, and the migration that brings a file of
any older version up to the current one (a store written by an older broker-proxy keeps its
grants).
"""

from __future__ import annotations

import sqlite3
from contextlib import suppress
from pathlib import Path

from broker_proxy.grants.store import GrantStoreError

SCHEMA_VERSION = 4

_SCHEMA_V1 = (
    # Timestamps are integer microseconds since the epoch, UTC: they compare in SQL exactly as
    # datetimes compare in Python, so the UPDATE and Grant.state_at never disagree.
    """
    CREATE TABLE grants (
        id          TEXT PRIMARY KEY,
        agent       TEXT NOT NULL,
        task        TEXT NOT NULL,
        secrets     TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL,
        max_uses    INTEGER CHECK (max_uses IS NULL OR max_uses >= 1),
        uses        INTEGER NOT NULL DEFAULT 0 CHECK (uses >= 0),
        status      TEXT NOT NULL
                    CHECK (status IN ('pending', 'active', 'denied', 'revoked')),
        approved_by TEXT,
        approved_at INTEGER,
        revoked_at  INTEGER,
        token_hash  BLOB NOT NULL
    ) STRICT
    """,
    "CREATE INDEX grants_by_created ON grants (created_at, id)",
)
# Version 2: per-grant placeholders, a JSON object secret -> placeholder.
_SCHEMA_V2 = ("ALTER TABLE grants ADD COLUMN placeholders TEXT NOT NULL DEFAULT '{}'",)
# When a grant ended for good (GrantIndex.ENDED): its expiry, or the revocation or denial if that
# came first. An expression, not a column, so the writers (older versions too) need not keep it;
# a query must spell it exactly like this for SQLite to use the index on it.
ENDED = (
    "min(expires_at, CASE status WHEN 'revoked' THEN coalesce(revoked_at, expires_at)"
    " WHEN 'denied' THEN coalesce(approved_at, expires_at) ELSE expires_at END)"
)
# Version 3: indexes for the periodic work (grant_watch.py), so it reads what is due, not every
# grant: expiries in a window, revocations since a point, ended grants to purge, live counts.
_SCHEMA_V3 = (
    "CREATE INDEX grants_by_expiry ON grants (expires_at, id)",
    "CREATE INDEX grants_by_revoked ON grants (revoked_at, id) WHERE revoked_at IS NOT NULL",
    f"CREATE INDEX grants_by_end ON grants ({ENDED}, id)",
    "CREATE INDEX grants_live ON grants (status, expires_at)",
)

# Version 4: who issued the grant (Grant.issued_by), for separation of duties. NULL in rows
# written before: those grants' issuer is looked up in the audit log, as it was then.
_SCHEMA_V4 = ("ALTER TABLE grants ADD COLUMN issued_by TEXT",)


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the file to SCHEMA_VERSION under the write lock; a newer file is refused."""
    if _user_version(conn) == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Read again under the write lock: another process may have migrated meanwhile.
        version = _user_version(conn)
        if version == 0:
            for statement in _SCHEMA_V1:
                conn.execute(statement)
            version = 1
        if version == 1:
            # A store written by an older broker-proxy keeps its grants; they have no
            # per-grant placeholders, which is what they were issued with.
            for statement in _SCHEMA_V2:
                conn.execute(statement)
            version = 2
        if version == 2:
            # Indexes only: the rows are unchanged. Built once over the grants already
            # there (about 1 s per 100,000), inside this transaction.
            for statement in _SCHEMA_V3:
                conn.execute(statement)
            version = 3
        if version == 3:
            # A nullable column: instant, whatever the number of rows (no rewrite). Added
            # only where missing, so a file whose version was set back by hand still opens.
            columns = {row[1] for row in conn.execute("PRAGMA table_info(grants)")}
            if "issued_by" not in columns:
                for statement in _SCHEMA_V4:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            raise GrantStoreError(
                f"grant store {path} has schema version {version};"
                f" this broker-proxy knows version {SCHEMA_VERSION}"
            )
        conn.execute("COMMIT")
    except BaseException:
        with suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def _user_version(conn: sqlite3.Connection) -> int:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    return int(version)
