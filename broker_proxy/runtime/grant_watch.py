"""Grant lifecycle as the proxy sees it: expiry records, the grant metrics, and the purge.

Grants are issued, approved and revoked by other processes (the CLI, `exec`, the admin API) that
all write the one grant store, and "expired" is not stored at all (model.py derives it from the
clock). So the proxy learns about them by looking: a sweep asks the store every few seconds and
at the start of every metrics scrape, and

- writes one `grant_expired` audit record for each grant whose expiry passed while this process
  ran (a grant already expired when the proxy started is not recorded again; a grant revoked or
  denied before its expiry never expires);
- counts grants issued, revoked and expired since this process started (counters), and sets the
  gauges of active, pending and "used and expiring within 5 minutes" grants;
- every periodic sweep (not on scrapes), when a retention is set, deletes up to PURGE_BATCH
  grants that ended more than the retention ago, after one `grants_purged` audit record names
  them (no record, no purge: the audit log is where their history stays).

Cost: each sweep reads what is due, never every grant, through the store's indexes (see
GrantStore.indexed/counts): expiries in (last cursor, now], at most EXPIRY_PAGES x BATCH per sweep
(the rest the next sweep: only the record is delayed; expiry itself is enforced per request),
the grants created and revoked within CHANGE_WINDOW of the previous sweep, and counts that read
only live grants. So a store holding a million ended grants costs what a store holding none does.
A grant whose creation or revocation is committed more than CHANGE_WINDOW after the instant it
carries (a writer stalled that long) is not counted; nothing else depends on those counters.
After a sweep that took t seconds the next waits max(interval, 100 t), to keep to ~1% of a core.
With several replicas each one writes its own `grant_expired` record, which names the replica's
chain; that is deliberate (each chain is complete on its own). Purges from several replicas are
safe (a grant is deleted once), but each replica may record the same batch: let one purge.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Self

from prometheus_client import Counter

from broker_proxy.audit.log import AuditError, AuditLog
from broker_proxy.grants.model import Grant, GrantStatus, isoformat_z
from broker_proxy.grants.store import GrantIndex, GrantStore, GrantStoreError
from broker_proxy.metrics import BrokerMetrics
from broker_proxy.time_source import utc_now

log = logging.getLogger("broker_proxy")

GRANT_EXPIRED_EVENT = "grant_expired"
GRANTS_PURGED_EVENT = "grants_purged"
EXPIRING_SOON = timedelta(minutes=5)
BATCH = 500  # grants read per store call
EXPIRY_PAGES = 4  # expiry pages per sweep: at most 2,000 records, about 0.1 s of audit writes
PURGE_BATCH = 500  # grants deleted per sweep, and named in one audit record
# How far before the previous sweep creations and revocations are looked for again: a writer
# takes its clock, then commits, so a row can appear with an instant already behind us.
CHANGE_WINDOW = timedelta(minutes=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class GrantWatcher:
    def __init__(self, store: GrantStore, audit: AuditLog, metrics: BrokerMetrics, *,
                 clock: Callable[[], datetime] = utc_now, interval: float = 5.0,
                 min_gap: float = 0.2, max_share: float = 0.01,
                 retention: timedelta | None = None) -> None:
        self._store, self._audit, self._metrics, self._clock = store, audit, metrics, clock
        self._interval, self._min_gap, self._max_share = interval, min_gap, max_share
        self._retention = retention
        self._last_cost = 0.0  # seconds the last sweep took
        self._started_at = clock()
        self._previous_sweep = self._started_at  # the clock at the start of the previous sweep
        # Ids counted within CHANGE_WINDOW, with the instant they carry (to forget them after).
        self._issued: dict[str, datetime] = {}
        self._revoked: dict[str, datetime] = {}
        # Every expiry up to this (expires_at, id) has been handled.
        self._expiry_cursor: tuple[datetime, str] = (self._started_at, "\uffff")
        self._lock = threading.Lock()
        self._last_sweep = float("-inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        """Sweep on every scrape and every `interval` seconds in a daemon thread."""
        self._metrics.scrape_hooks.append(self.sweep)
        self._thread = threading.Thread(target=self._loop, name="grant-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.sweep in self._metrics.scrape_hooks:
            self._metrics.scrape_hooks.remove(self.sweep)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def sweep(self, *, force: bool = False) -> None:
        with self._lock:
            if not force and time.monotonic() - self._last_sweep < self._min_gap:
                return
            started = self._last_sweep = time.monotonic()
            try:
                self._sweep_locked()
            finally:
                self._last_cost = time.monotonic() - started

    def purge(self) -> int:
        """Delete one batch of grants that ended longer than the retention ago; how many went.

        The `grants_purged` record comes first: if it cannot be written, nothing is deleted.
        """
        if self._retention is None:
            return 0
        with self._lock:
            cutoff = self._clock() - self._retention
            try:
                due = self._store.indexed(GrantIndex.ENDED, (_EPOCH, ""), cutoff, PURGE_BATCH)
                if not due:
                    return 0
                try:
                    self._audit.append(
                        GRANTS_PURGED_EVENT, decision="allow", reason="retention",
                        count=len(due), ended_before=isoformat_z(cutoff),
                        grants=[grant.id for grant in due])
                except AuditError:
                    self._metrics.audit_write_errors.inc()
                    return 0  # fail closed: without the record the grants stay
                return self._store.purge([grant.id for grant in due], cutoff)
            except GrantStoreError as error:
                log.warning("grant purge skipped: %s", error)
                return 0

    def _sweep_locked(self) -> None:
        now = self._clock()
        since = max(self._started_at, self._previous_sweep - CHANGE_WINDOW)
        try:
            self._count_new(GrantIndex.CREATED, self._issued, self._metrics.grants_issued,
                            since, now)
            self._count_new(GrantIndex.REVOKED, self._revoked, self._metrics.grants_revoked,
                            since, now)
            self._record_expiries(now)
            counts = self._store.counts(now, EXPIRING_SOON)
        except GrantStoreError as error:
            log.warning("grant sweep skipped: %s", error)
            return
        self._previous_sweep = now
        self._metrics.grants_active.set(counts.active)
        self._metrics.grants_pending.set(counts.pending)
        self._metrics.grants_expiring_in_use.set(counts.expiring_in_use)

    def _count_new(self, index: GrantIndex, seen: dict[str, datetime], counter: Counter,
                   since: datetime, now: datetime) -> None:
        """Count each grant whose `index` instant is in [since, now] once."""
        cursor = (since, "")
        while True:
            page = self._store.indexed(index, cursor, now, BATCH)
            for grant in page:
                instant = _instant(index, grant)
                cursor = (instant, grant.id)
                if grant.id not in seen:
                    seen[grant.id] = instant
                    counter.inc()
            if len(page) < BATCH:
                break
        for grant_id in [gid for gid, instant in seen.items() if instant < since]:
            del seen[grant_id]

    def _record_expiries(self, now: datetime) -> None:
        for _ in range(EXPIRY_PAGES):
            page = self._store.indexed(GrantIndex.EXPIRES, self._expiry_cursor, now, BATCH)
            for grant in page:
                if not _decided_before(grant):
                    try:
                        self._audit.append(
                            GRANT_EXPIRED_EVENT, decision="deny", reason="grant_expired",
                            grant=grant.id, agent=grant.agent, task=grant.task,
                            secrets=list(grant.secrets),
                            expires_at=isoformat_z(grant.expires_at),
                            uses=grant.uses, max_uses=grant.max_uses)
                    except AuditError:
                        self._metrics.audit_write_errors.inc()
                        return  # the cursor stays before it: the next sweep tries again
                    self._metrics.grants_expired.inc()
                self._expiry_cursor = (grant.expires_at, grant.id)
            if len(page) < BATCH:
                return

    def next_wait(self) -> float:
        """Seconds until the next periodic sweep: `interval`, longer when sweeps are costly."""
        return max(self._interval, self._last_cost / self._max_share)

    def _loop(self) -> None:
        while not self._stop.wait(self.next_wait()):
            try:
                self.sweep()
                self.purge()
            except Exception as error:  # the watcher must never take the proxy down
                log.error("grant sweep failed: %s", type(error).__name__)


def _instant(index: GrantIndex, grant: Grant) -> datetime:
    if index is GrantIndex.REVOKED and grant.revoked_at is not None:
        return grant.revoked_at
    return grant.created_at


def _decided_before(grant: Grant) -> bool:
    """A grant revoked or denied before its expiry ended then; it does not also expire."""
    if grant.status is GrantStatus.REVOKED:
        return grant.revoked_at is not None and grant.revoked_at < grant.expires_at
    return grant.status is GrantStatus.DENIED
