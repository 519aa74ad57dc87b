"""The grant store in one SQLite file, shared by the proxy and the CLI of the same home.

Several processes open the file at once, so every write is a `BEGIN IMMEDIATE` transaction
(the writer lock is taken up front, waiting up to busy_timeout, instead of failing half-way),
and the use counter is spent by a single conditional UPDATE: SQLite serialises writers, so
`max_uses` holds across processes without any lock of ours. The schema and its migrations are
in sqlite_schema.py, a grant's row in sqlite_rows.py.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path

from broker_proxy.grants import budgets, rate_limits
from broker_proxy.grants.auth_cache import GrantAuthCache
from broker_proxy.grants.model import Grant
from broker_proxy.grants.sqlite_holds import SqliteHoldTable
from broker_proxy.grants.sqlite_rows import (
    COLUMNS,
    INSERT,
    grant_from_row,
    row_from_grant,
    select_grant,
    to_micros,
)
from broker_proxy.grants.sqlite_schema import ENDED, SCHEMA_VERSION, migrate
from broker_proxy.grants.store import (
    STORE_WAIT_SECONDS,
    GrantCounts,
    GrantIndex,
    GrantNotFound,
    GrantPage,
    Grants,
    GrantStateError,
    GrantStoreBusy,
    GrantStoreError,
    PageKey,
    ReserveResult,
    authenticate_token,
    reserve_result_for,
)
from broker_proxy.policy.model import RateLimit

BUSY_TIMEOUT_MS = int(STORE_WAIT_SECONDS * 1000)

_SELECT_ALL = f"SELECT {COLUMNS} FROM grants ORDER BY created_at, id"  # noqa: S608
# Listing pages, through grants_by_created in either direction from a (created_at, id) key.
_PAGE_OLDEST = (f"SELECT {COLUMNS} FROM grants WHERE (created_at, id) > (?, ?)"  # noqa: S608
                " ORDER BY created_at, id LIMIT ? OFFSET ?")
_PAGE_NEWEST = (f"SELECT {COLUMNS} FROM grants WHERE (created_at, id) < (?, ?)"  # noqa: S608
                " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?")
_SELECT_LIVE = (
    f"SELECT {COLUMNS} FROM grants WHERE status IN ('active', 'pending')"  # noqa: S608
    " AND expires_at > ? ORDER BY created_at, id"
)
# The instant each GrantIndex orders by, and what makes SQLite pick that index. SQLite seeks
# to the cursor on a column index, but on the ENDED expression it only stops at `until` and
# skips rows up to the cursor; the purge always reads ENDED from its start (what it read is
# gone by the next call), so that costs nothing there.
_INDEXED = {
    GrantIndex.CREATED: ("created_at", ""),
    GrantIndex.EXPIRES: ("expires_at", ""),
    GrantIndex.REVOKED: ("revoked_at", " AND revoked_at IS NOT NULL"),
    GrantIndex.ENDED: (ENDED, ""),
}
_COUNTS = (
    # Only live rows are read (grants_live: status, then expiry after now); ended ones are not.
    "SELECT status, count(*), coalesce(sum(max_uses IS NULL OR uses < max_uses), 0),"
    " coalesce(sum(uses > 0 AND (max_uses IS NULL OR uses < max_uses) AND expires_at <= ?), 0)"
    " FROM grants WHERE status IN ('active', 'pending') AND expires_at > ? GROUP BY status"
)
_PURGE = f"DELETE FROM grants WHERE id = ? AND {ENDED} <= ?"  # noqa: S608
# The next instant at which the counts change by the clock alone: a live grant expiring, or an
# active one entering the "expiring within" window. O(log n) each, through grants_live.
_NEXT_EXPIRY = (
    "SELECT min(expires_at) FROM grants WHERE status = ? AND expires_at > ?"
)
_RESERVE = (
    "UPDATE grants SET uses = uses + 1 WHERE id = ? AND status = 'active'"
    " AND expires_at > ? AND (max_uses IS NULL OR uses < max_uses)"
)
_RELEASE = "UPDATE grants SET uses = uses - 1 WHERE id = ? AND uses > 0"
_APPROVE = "UPDATE grants SET status = 'active', approved_by = ?, approved_at = ? WHERE id = ?"
_DENY = "UPDATE grants SET status = 'denied', approved_by = ?, approved_at = ? WHERE id = ?"
_REVOKE = "UPDATE grants SET status = 'revoked', revoked_at = ? WHERE id = ?"

# Derived states from which each transition may start. A grant that ran out (expired or used
# up) can still be revoked, so `exec` can always close the grant it opened; it can no longer
# be approved or denied, since that decision would be moot.
_DECIDABLE = frozenset({"pending"})
_REVOCABLE = frozenset({"active", "pending", "expired", "used_up"})

_FOREVER = 2**62  # µs: later than any expiry
_MICROSECOND = timedelta(microseconds=1)


class SqliteGrantStore:
    """A `GrantStore` on one SQLite file; one connection, shared by threads under a lock."""

    remote = False  # a local file: short calls, made on the event loop unless they must wait
    _rates_ready = False  # the grant_rates table is known to exist

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()  # the write connection
        self._busy_ms = BUSY_TIMEOUT_MS  # its busy_timeout now (see _transaction)
        # Grants authenticated recently, and the count of commits that may have changed one
        # (both under `_lock`; see auth_cache.py).
        self._auth_cache = GrantAuthCache()
        self._own_writes = 0
        self._read_lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None
        # Listings and the watcher's scans read pages of many rows: on a connection of their
        # own, so a request's one-row read never waits behind a page being read.
        self._bulk_lock = threading.Lock()
        self._bulk_reader: sqlite3.Connection | None = None
        # (data_version, window), valid from, valid until (µs), the counts: see `counts`.
        self._counts_cache: tuple[tuple[int, int], int, int, GrantCounts] | None = None
        self._holds: SqliteHoldTable | None = None
        _create_private_file(self._path)
        try:
            conn = sqlite3.connect(
                self._path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise self._unusable(exc) from exc
        self._conn: sqlite3.Connection | None = conn
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._enable_wal(conn)
            # NORMAL in WAL mode loses at most the last commits on power loss, never consistency.
            conn.execute("PRAGMA synchronous = NORMAL")
            migrate(conn, self._path)
        except sqlite3.Error as exc:
            conn.close()
            raise self._unusable(exc) from exc
        except GrantStoreError:
            conn.close()
            raise

    # -- the GrantStore verbs -------------------------------------------------------------

    def create(self, grant: Grant) -> None:
        row = row_from_grant(grant)
        try:
            # A new row changes no grant read before (the cache never holds a missing grant).
            with self._transaction(grants_changed=False) as conn:
                if select_grant(conn, grant.id) is not None:
                    raise GrantStoreError(f"grant {grant.id} already exists in {self._path}")
                conn.execute(INSERT, row)
        except sqlite3.IntegrityError as exc:
            # A CHECK constraint refused the row: a caller built an impossible grant.
            raise ValueError(f"grant {grant.id} cannot be stored: {exc}") from exc

    def get(self, grant_id: str) -> Grant | None:
        with self._reading() as conn:
            return select_grant(conn, grant_id)

    def authenticate(self, token: str) -> Grant | None:
        return authenticate_token(token, self._grant_to_authenticate)

    def _grant_to_authenticate(self, grant_id: str) -> Grant | None:
        """`get` through the cache of recent grants (auth_cache.py), read on the write
        connection under its lock; when another thread holds that lock (a write, perhaps
        waiting for another process), the reader answers as before: never wait here."""
        if not self._lock.acquire(blocking=False):
            return self.get(grant_id)
        try:
            conn = self._connection()
            try:
                (version,) = conn.execute("PRAGMA data_version").fetchone()
                mark = (int(version), self._own_writes)  # taken before the row is read
                grant = self._auth_cache.get(grant_id, mark)
                if grant is None and (grant := select_grant(conn, grant_id)) is not None:
                    self._auth_cache.put(grant_id, mark, grant)
                return grant
            except sqlite3.Error as exc:
                if not _is_busy(exc):
                    raise self._unusable(exc) from exc
                # This connection may be set not to wait (see _transaction): the reader waits.
        finally:
            self._lock.release()
        return self.get(grant_id)

    def list(
        self, *, include_inactive: bool = True, now: datetime | None = None
    ) -> list[Grant]:
        if include_inactive:
            with self._reading(bulk=True) as conn:
                return [grant_from_row(row) for row in conn.execute(_SELECT_ALL)]
        moment = now if now is not None else datetime.now(UTC)
        with self._reading(bulk=True) as conn:  # live rows only, through grants_live
            grants = [grant_from_row(row)
                      for row in conn.execute(_SELECT_LIVE, (to_micros(moment),))]
        return [g for g in grants if g.state_at(moment) in ("active", "pending")]

    def page(self, after: PageKey | None, limit: int, *,
             newest_first: bool = False, skip: int = 0) -> GrantPage:
        # Through grants_by_created (created_at, id), forwards or backwards from the key.
        query = _PAGE_NEWEST if newest_first else _PAGE_OLDEST
        key = (_FOREVER, "\uffff") if newest_first else (-1, "")
        if after is not None:
            key = (to_micros(after[0]), after[1])
        with self._reading(bulk=True) as conn:  # one more than asked: is there a next page?
            grants = [grant_from_row(row)
                      for row in conn.execute(query, (*key, limit + 1, skip))]
        if len(grants) <= limit:
            return GrantPage(grants, None)
        del grants[limit:]
        return GrantPage(grants, (grants[-1].created_at, grants[-1].id))

    def total(self) -> int:
        with self._reading(bulk=True) as conn:
            return int(conn.execute("SELECT count(*) FROM grants").fetchone()[0])

    def indexed(
        self, index: GrantIndex, after: tuple[datetime, str], until: datetime, limit: int
    ) -> Grants:
        column, extra = _INDEXED[index]
        query = (f"SELECT {COLUMNS} FROM grants WHERE ({column}, id) > (?, ?)"  # noqa: S608
                 f" AND {column} <= ?{extra} ORDER BY {column}, id LIMIT ?")
        params = (to_micros(after[0]), after[1], to_micros(until), limit)
        with self._reading(bulk=True) as conn:
            return [grant_from_row(row) for row in conn.execute(query, params)]

    def counts(self, now: datetime, expiring_within: timedelta) -> GrantCounts:
        """Counted over the live rows, O(live grants); then kept while nothing can change them.

        They change only when some connection commits (PRAGMA data_version on our reader says
        so, for other processes and for this one's writer alike) or when the clock reaches a
        live grant's expiry or an active one's entry into the window. Until then the last
        answer is returned after one PRAGMA, so an idle proxy does not recount.
        """
        moment, window = to_micros(now), expiring_within // _MICROSECOND
        with self._reading() as conn:
            (version,) = conn.execute("PRAGMA data_version").fetchone()
            cached = self._counts_cache
            if (cached is not None and cached[0] == (version, window)
                    and cached[1] <= moment < cached[2]):
                return cached[3]
            rows = {status: (total, usable, expiring) for status, total, usable, expiring
                    in conn.execute(_COUNTS, (moment + window, moment))}
            next_active = conn.execute(_NEXT_EXPIRY, ("active", moment)).fetchone()[0]
            next_pending = conn.execute(_NEXT_EXPIRY, ("pending", moment)).fetchone()[0]
            next_entry = conn.execute(_NEXT_EXPIRY, ("active", moment + window)).fetchone()[0]
        active = rows.get("active", (0, 0, 0))
        counts = GrantCounts(active=int(active[1]), pending=int(rows.get("pending", (0,))[0]),
                             expiring_in_use=int(active[2]))
        # Valid for now <= t < the first of: a live grant expiring, an active one entering
        # the window (at its expiry minus the window).
        until = min((int(next_active) if next_active is not None else _FOREVER),
                    (int(next_pending) if next_pending is not None else _FOREVER),
                    (int(next_entry) - window if next_entry is not None else _FOREVER))
        self._counts_cache = ((version, window), moment, until, counts)
        return counts

    def purge(self, grant_ids: Sequence[str], ended_before: datetime) -> int:
        cutoff = to_micros(ended_before)
        with self._transaction() as conn:
            return conn.executemany(_PURGE, [(gid, cutoff) for gid in grant_ids]).rowcount

    def reserve_use(self, grant_id: str, now: datetime, *, wait: bool = True,
                    deadline: float | None = None) -> ReserveResult:
        with self._transaction(wait=wait, deadline=deadline, grants_changed=False) as conn:
            if conn.execute(_RESERVE, (grant_id, to_micros(now))).rowcount == 1:
                self._auth_cache.used(grant_id, 1)  # if the commit fails, all entries go
                return ReserveResult.RESERVED
            # Read inside the same transaction, so the reason is the one that refused the use.
            grant = select_grant(conn, grant_id)
        if grant is None:
            return ReserveResult.NOT_FOUND
        return reserve_result_for(grant.state_at(now))

    def take_rate(self, grant: Grant, secret: str, rate: RateLimit, now: datetime, *,
                  wait: bool = True, deadline: float | None = None) -> float:
        """One request against the grant's bucket for ``secret`` (rate_limits.py): 0.0 when
        admitted, else the seconds until it would be. Atomic like `reserve_use`."""
        with self._rates(wait=wait, deadline=deadline) as conn:
            waiting = rate_limits.sqlite_take(conn, grant.id, secret, to_micros(now), rate)
        return waiting / 1_000_000

    def limit_rate(self, grant: Grant, secret: str, rate: RateLimit) -> None:
        """Keep the grant's own (stricter) rate for ``secret``."""
        with self._rates() as conn:
            rate_limits.sqlite_limit(conn, grant.id, secret, rate)

    def own_rates(self, grant_id: str) -> dict[str, tuple[int, int]]:
        """secret -> (interval µs, burst) the grant asked for at issue."""
        with self._rates() as conn:
            return rate_limits.sqlite_own_rates(conn, grant_id)

    def reserve_budget(self, grant: Grant, secret: str, caps: tuple[int | None, ...],
                       asked: tuple[int, int, int, int], *, wait: bool = True,
                       deadline: float | None = None) -> str | None:
        """Hold ``asked`` (input, output tokens, micro-dollars) against the grant's budget for
        ``secret`` (budgets.py): None when held, else the dimension it would take past its
        cap. Atomic like `reserve_use`."""
        with self._rates(wait=wait, deadline=deadline) as conn:
            return budgets.sqlite_reserve(conn, grant.id, secret, caps, asked)

    def settle_budget(self, grant_id: str, secret: str, held: tuple[int, int, int, int],
                      used: tuple[int, int, int, int], *, wait: bool = True) -> None:
        """Release a reservation and charge what the answer used; `wait` as for
        `reserve_use`."""
        with self._rates(wait=wait) as conn:
            budgets.sqlite_settle(conn, grant_id, secret, held, used)

    def limit_budget(self, grant: Grant, secret: str, own: tuple[int | None, ...]) -> None:
        """Keep the grant's own (stricter) caps for ``secret``: input tokens, output tokens,
        micro-dollars, requests in flight (None: the policy's)."""
        with self._rates() as conn:
            budgets.sqlite_limit(conn, grant.id, secret, own)

    def budget_use(self, grant_id: str) -> dict[str, budgets.BudgetUse]:
        """secret -> what the grant has used and holds, for `grant show`."""
        with self._rates() as conn:
            return budgets.sqlite_use(conn, grant_id)

    @contextmanager
    def _rates(self, *, wait: bool = True,
               deadline: float | None = None) -> Iterator[sqlite3.Connection]:
        """A write transaction with the rate and budget tables there (created on first use);
        `wait` and `deadline` as for `reserve_use`."""
        # Their own tables: no grant row changes.
        with self._transaction(wait=wait, deadline=deadline, grants_changed=False) as conn:
            if not self._rates_ready:
                conn.execute(rate_limits.SQLITE_TABLE)
                conn.execute(budgets.SQLITE_TABLE)
                self._rates_ready = True
            yield conn
    def release_use(self, grant_id: str) -> bool:
        with self._transaction(grants_changed=False) as conn:
            if conn.execute(_RELEASE, (grant_id,)).rowcount != 1:
                return False
            self._auth_cache.used(grant_id, -1)  # if the commit fails, all entries go
            return True

    def approve(self, grant_id: str, by: str, now: datetime) -> Grant:
        return self._transition(
            grant_id, now, "approve", _DECIDABLE, _APPROVE, (by, to_micros(now))
        )

    def deny(self, grant_id: str, by: str, now: datetime) -> Grant:
        return self._transition(grant_id, now, "deny", _DECIDABLE, _DENY, (by, to_micros(now)))

    def revoke(self, grant_id: str, now: datetime) -> Grant:
        return self._transition(grant_id, now, "revoke", _REVOCABLE, _REVOKE, (to_micros(now),))

    def probe_write(self) -> None:
        # Setting the schema version to itself rewrites the header page: the commit appends a
        # frame to the WAL exactly as a grant write does, so a full disk fails it the same way.
        with self._transaction(wait=False) as conn:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def load_many(self, grants: Iterable[Grant], *, batch: int = 10_000) -> None:
        """Insert many grants, `batch` to a transaction, without the existence check of
        `create`: for benchmarks and restores into an empty store, not for issuing grants."""
        rows: list[tuple[object, ...]] = []
        with self._lock:  # random ids land all over the indexes: a big cache saves re-reads
            self._connection().execute("PRAGMA cache_size = -262144")
        for grant in grants:
            rows.append(row_from_grant(grant))
            if len(rows) == batch:
                with self._transaction() as conn:
                    conn.executemany(INSERT, rows)
                rows = []
        if rows:
            with self._transaction() as conn:
                conn.executemany(INSERT, rows)
        with self._lock:
            self._connection().execute("PRAGMA cache_size = -2000")  # SQLite's default

    def hold_table(self) -> SqliteHoldTable:
        """Requests held for approval, in tables of their own in this file (sqlite_holds.py)."""
        with self._lock:
            if self._holds is None:
                self._holds = SqliteHoldTable(self._path)
            return self._holds

    def close(self) -> None:
        with self._lock:
            if self._holds is not None:
                self._holds.close()
                self._holds = None
        with self._lock, self._read_lock, self._bulk_lock:
            if self._bulk_reader is not None:
                self._bulk_reader.close()
                self._bulk_reader = None
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def __enter__(self) -> SqliteGrantStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------

    def _transition(
        self,
        grant_id: str,
        now: datetime,
        action: str,
        allowed: frozenset[str],
        statement: str,
        params: tuple[object, ...],
    ) -> Grant:
        # Check and write under one IMMEDIATE transaction: no other process can change the
        # grant between the state we judged and the row we update.
        with self._transaction() as conn:
            grant = select_grant(conn, grant_id)
            if grant is None:
                raise GrantNotFound(grant_id)
            state = grant.state_at(now)
            if state not in allowed:
                raise GrantStateError(grant_id, state, action)
            conn.execute(statement, (*params, grant_id))
            updated = select_grant(conn, grant_id)
        assert updated is not None  # same transaction, the row cannot have gone
        return updated

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        # Switching a fresh file to WAL needs an exclusive lock, and when several processes
        # open the file at once SQLite answers "database is locked" at once instead of running
        # the busy handler. Retry within the same deadline busy_timeout would have given.
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
                break
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.005)
        if str(mode).lower() != "wal":
            raise GrantStoreError(f"grant store {self._path} cannot use WAL journal mode")


    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise GrantStoreError(f"grant store {self._path} is closed")
        return self._conn

    @contextmanager
    def _reading(self, *, bulk: bool = False) -> Iterator[sqlite3.Connection]:
        # Its own connection and lock: in WAL mode a read never waits for a writer, so reads
        # (every request authenticates) must not queue behind a write waiting for the lock.
        with self._bulk_lock if bulk else self._read_lock:
            try:
                yield self._read_connection(bulk)
            except sqlite3.Error as exc:
                raise self._unusable(exc) from exc

    def _read_connection(self, bulk: bool) -> sqlite3.Connection:
        if self._conn is None:
            raise GrantStoreError(f"grant store {self._path} is closed")
        reader = self._bulk_reader if bulk else self._reader
        if reader is None:
            reader = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT_MS / 1000,
                                     isolation_level=None, check_same_thread=False)
            reader.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if bulk:
                self._bulk_reader = reader
            else:
                self._reader = reader
        return reader

    @contextmanager
    def _transaction(self, *, wait: bool = True, deadline: float | None = None,
                     grants_changed: bool = True) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction; commits on success, rolls back on any exception.

        sqlite3.IntegrityError passes through unchanged so `create` can say what it means;
        every other sqlite3 error means the store is unusable. Without `wait`, a lock held by
        another thread or process raises GrantStoreBusy at once. With a `deadline`
        (time.monotonic()), both waits (for this process's write connection, then for SQLite's
        write lock) end by it: GrantStoreError, so the hundredth waiter is answered as soon as
        the first, instead of each one starting its own BUSY_TIMEOUT_MS after the previous.
        Unless the caller says no grant row changes (`grants_changed`) and the commit went
        through, every grant authenticated before it is read again (auth_cache.py).
        """
        timeout = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._lock.acquire(blocking=wait, timeout=timeout if wait else -1):
            if wait:
                raise self._busy_too_long()
            raise GrantStoreBusy(f"grant store {self._path} is busy")
        committed = False
        try:
            conn = self._connection()
            busy_ms = 0 if not wait else (BUSY_TIMEOUT_MS if deadline is None else
                                         int(max(0.0, deadline - time.monotonic()) * 1000))
            try:
                # Only BEGIN IMMEDIATE waits on this connection (once it holds the write lock,
                # nothing else in the transaction does), so the setting is left as the last
                # transaction needed it: a request decided on the event loop (no wait) sets
                # nothing, instead of two PRAGMAs around every use it reserves.
                if busy_ms != self._busy_ms:
                    conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
                    self._busy_ms = busy_ms
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                if not wait and _is_busy(exc):
                    raise GrantStoreBusy(f"grant store {self._path} is busy") from None
                if deadline is not None and _is_busy(exc):
                    raise self._busy_too_long() from None
                raise self._unusable(exc) from exc
            try:
                yield conn
            except BaseException as exc:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.IntegrityError):
                    raise self._unusable(exc) from exc
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise self._unusable(exc) from exc
            committed = True
        finally:
            if grants_changed or not committed:
                self._own_writes += 1
            self._lock.release()

    def _busy_too_long(self) -> GrantStoreError:
        return GrantStoreError(f"grant store {self._path} is unusable: another writer held its"
                               " lock for the whole time this request may wait")

    def _unusable(self, exc: BaseException) -> GrantStoreError:
        # sqlite3 messages name the failure ("database is locked", "file is not a database");
        # they never carry row values, so they are safe to show.
        return GrantStoreError(f"grant store {self._path} is unusable: {exc}")


def _create_private_file(path: Path) -> None:
    """Create the database file 0600 before SQLite does (it would use the umask).

    SQLite gives the -wal and -shm files the main file's mode, so they stay private too.
    O_NOFOLLOW: a symlink planted at the path must not redirect the grant store.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise GrantStoreError(f"grant store {path} cannot be opened: {exc.strerror}") from exc
    os.close(fd)


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
