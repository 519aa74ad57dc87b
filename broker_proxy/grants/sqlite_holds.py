"""Held requests in the home's SQLite file (hold_table.py), next to the grants.

Tables of their own, created if missing (additive: a store written by an older version opens
as before). A change is one `BEGIN IMMEDIATE` transaction on a connection of its own, so it
excludes the other processes of the home (workers, `mitmdump -s`, the CLI) as a grant write
does. Items are JSON; the columns beside it are what the queries select on.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from broker_proxy.grants.hold_table import Item
from broker_proxy.grants.store import STORE_WAIT_SECONDS, GrantStoreError

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS held_requests (id TEXT PRIMARY KEY, grant_id TEXT NOT NULL,"
    " digest TEXT NOT NULL, state TEXT NOT NULL, decided_s REAL, data TEXT NOT NULL) STRICT",
    "CREATE INDEX IF NOT EXISTS held_by_state ON held_requests (state, grant_id)",
    "CREATE INDEX IF NOT EXISTS held_by_digest ON held_requests (grant_id, digest)",
    "CREATE TABLE IF NOT EXISTS held_allowances (grant_id TEXT NOT NULL, digest TEXT NOT NULL,"
    " data TEXT NOT NULL, PRIMARY KEY (grant_id, digest)) STRICT",
    "CREATE TABLE IF NOT EXISTS held_version (one INTEGER PRIMARY KEY CHECK (one = 1),"
    " version INTEGER NOT NULL) STRICT",
)


class SqliteHoldTable:
    shared = True

    def __init__(self, path: Path) -> None:
        self._lock = threading.RLock()
        self._depth = 0
        try:
            self._conn = sqlite3.connect(path, timeout=STORE_WAIT_SECONDS,
                                         isolation_level=None, check_same_thread=False)
            self._conn.execute(f"PRAGMA busy_timeout = {int(STORE_WAIT_SECONDS * 1000)}")
            with self.locked():
                for statement in _SCHEMA:
                    self._conn.execute(statement)
                # A random start: a version a client saw before (another store) answers at once.
                self._conn.execute("INSERT OR IGNORE INTO held_version VALUES (1, ?)",
                                   (secrets.randbelow(2**40) + 1,))
        except sqlite3.Error as error:
            raise GrantStoreError(f"held requests cannot be stored in {path}: {error}") from None

    @contextmanager
    def locked(self) -> Iterator[None]:
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as error:
                raise GrantStoreError(f"held requests: {error}") from None
            self._depth = 1
            try:
                yield
            except BaseException:
                self._depth = 0
                self._conn.execute("ROLLBACK")
                raise
            self._depth = 0
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as error:
                self._conn.execute("ROLLBACK")
                raise GrantStoreError(f"held requests: {error}") from None

    def _rows(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.Error as error:
                raise GrantStoreError(f"held requests: {error}") from None

    def _write(self, sql: str, args: tuple[object, ...]) -> None:
        with self.locked():
            self._conn.execute(sql, args)
            self._conn.execute("UPDATE held_version SET version = version + 1")

    def get(self, hold_id: str) -> Item | None:
        rows = self._rows("SELECT data FROM held_requests WHERE id = ?", (hold_id,))
        return json.loads(str(rows[0][0])) if rows else None

    def get_many(self, hold_ids: list[str]) -> list[Item]:
        found: list[Item] = []
        for start in range(0, len(hold_ids), 500):
            chunk = hold_ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            found += [json.loads(str(row[0])) for row in self._rows(
                f"SELECT data FROM held_requests WHERE id IN ({marks})",  # noqa: S608
                tuple(chunk))]
        return found

    def put(self, item: Item) -> None:
        self._write("INSERT OR REPLACE INTO held_requests VALUES (?, ?, ?, ?, ?, ?)",
                    (item["id"], item["grant"], item["digest"], item["state"],
                     item.get("decided_s"), json.dumps(item)))

    def pending(self) -> list[Item]:
        return [json.loads(str(row[0])) for row in self._rows(
            "SELECT data FROM held_requests WHERE state = 'pending'")]

    def count_pending(self, grant: str) -> tuple[int, int]:
        rows = self._rows("SELECT count(*), coalesce(sum(grant_id = ?), 0) FROM held_requests"
                          " WHERE state = 'pending'", (grant,))
        return int(str(rows[0][0])), int(str(rows[0][1]))

    def find(self, grant: str, digest: str) -> list[Item]:
        return [json.loads(str(row[0])) for row in self._rows(
            "SELECT data FROM held_requests WHERE grant_id = ? AND digest = ?", (grant, digest))]

    def purge_decided(self, before_s: float) -> None:
        self._write("DELETE FROM held_requests WHERE state != 'pending' AND decided_s < ?",
                    (before_s,))

    def get_allowance(self, grant: str, digest: str) -> Item | None:
        rows = self._rows("SELECT data FROM held_allowances WHERE grant_id = ? AND digest = ?",
                          (grant, digest))
        return json.loads(str(rows[0][0])) if rows else None

    def put_allowance(self, grant: str, digest: str, allowance: Item | None) -> None:
        if allowance is None:
            self._write("DELETE FROM held_allowances WHERE grant_id = ? AND digest = ?",
                        (grant, digest))
        else:
            self._write("INSERT OR REPLACE INTO held_allowances VALUES (?, ?, ?)",
                        (grant, digest, json.dumps(allowance)))

    def version(self) -> int:
        rows = self._rows("SELECT version FROM held_version")
        return int(str(rows[0][0])) if rows else 0

    def close(self) -> None:
        with self._lock:
            self._conn.close()
