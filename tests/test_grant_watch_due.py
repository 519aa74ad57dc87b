"""The grant watcher reads what is due, not the store, and purges ended grants after the
retention, never before and never without its audit record."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker_proxy.audit import AuditLog, verify_chain
from broker_proxy.audit.log import AuditError
from broker_proxy.grants.model import Grant, GrantStatus
from broker_proxy.grants.redis_store import RedisGrantStore
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.grants.store import GrantIndex
from broker_proxy.metrics import BrokerMetrics
from broker_proxy.runtime.grant_watch import GrantWatcher
from tests.test_grant_store import NOW, make_grant

RETENTION = timedelta(days=30)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class CountingStore:
    """Counts the grants each store call hands back; reading every grant is a failure."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.rows = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def list(self, **_: Any) -> list[Grant]:
        raise AssertionError("the watcher read every grant")

    def indexed(self, index: GrantIndex, after: tuple[datetime, str], until: datetime,
                limit: int) -> list[Grant]:
        page = self.inner.indexed(index, after, until, limit)
        self.rows += len(page)
        return page


class FlakyAudit:
    """An audit log whose appends fail while `broken` is set, as a full disk would."""

    def __init__(self, inner: AuditLog) -> None:
        self.inner, self.broken = inner, False

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        if self.broken:
            raise AuditError("audit log is not writable")
        return self.inner.append(event, **fields)


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        with SqliteGrantStore(tmp_path / "grants.sqlite3") as opened:
            yield opened
        return
    server = request.getfixturevalue("redis_server")
    with RedisGrantStore(server.url) as opened:
        opened._client.flushdb()
        yield opened


@pytest.fixture
def audit(tmp_path: Path):
    with AuditLog.open(tmp_path / "audit.log", tmp_path / "audit.key") as opened:
        yield opened


def records(tmp_path: Path, event: str) -> list[dict[str, Any]]:
    return [r for r in AuditLog.read_records(tmp_path / "audit.log") if r["event"] == event]


def ended_long_ago(count: int) -> list[Grant]:
    """Grants that ran out before the watcher started: nothing about them is due."""
    made = []
    for index in range(count):
        grant, _ = make_grant(created_at=NOW - timedelta(days=2, seconds=index))
        if index % 10 == 0:
            grant = replace(grant, status=GrantStatus.REVOKED,
                            revoked_at=grant.created_at + timedelta(minutes=1))
        made.append(grant)
    return made


def test_a_sweep_reads_the_few_due_grants_not_the_ten_thousand_kept(
        store: Any, audit: AuditLog, tmp_path: Path) -> None:
    store.load_many(ended_long_ago(10_000))
    clock = Clock(NOW)
    counting = CountingStore(store)
    metrics = BrokerMetrics()
    watcher = GrantWatcher(counting, audit, metrics, clock=clock, min_gap=0)
    due = []
    for minutes in (1, 2, 3):
        grant, _ = make_grant(created_at=NOW + timedelta(seconds=1),
                              ttl=timedelta(minutes=minutes))
        store.create(grant)
        due.append(grant.id)
    kept, _ = make_grant(created_at=NOW + timedelta(seconds=1), ttl=timedelta(hours=1))
    store.create(kept)
    clock.now = NOW + timedelta(seconds=2)
    watcher.sweep()
    assert counting.rows == 4  # the four issued since the start, nothing else
    assert metrics.grants_active._value.get() == 4
    clock.now = NOW + timedelta(minutes=10)
    counting.rows = 0
    watcher.sweep()
    assert counting.rows <= 3 + 4  # the three that expired (and the window's creations)
    assert metrics.grants_expired._value.get() == 3
    assert metrics.grants_active._value.get() == 1
    assert metrics.grants_issued._value.get() == 4
    assert [r["grant"] for r in records(tmp_path, "grant_expired")] == due


def test_expiries_beyond_one_sweeps_pages_are_recorded_by_the_next_ones(
        store: Any, audit: AuditLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import broker_proxy.runtime.grant_watch as watch
    monkeypatch.setattr(watch, "BATCH", 2)
    monkeypatch.setattr(watch, "EXPIRY_PAGES", 2)
    clock = Clock(NOW)
    watcher = GrantWatcher(store, audit, BrokerMetrics(), clock=clock, min_gap=0)
    made = []
    for index in range(9):
        grant, _ = make_grant(created_at=NOW + timedelta(seconds=1),
                              ttl=timedelta(minutes=1, seconds=index // 3))  # ties in threes
        store.create(grant)
        made.append(grant)
    clock.now = NOW + timedelta(minutes=5)
    seen = []
    for _ in range(4):
        watcher.sweep()
        seen.append(len(records(tmp_path, "grant_expired")))
    assert seen == [4, 8, 9, 9]  # at most 2 pages of 2 a sweep; none missed, none twice
    expected = sorted(made, key=lambda g: (g.expires_at, g.id))
    assert [r["grant"] for r in records(tmp_path, "grant_expired")] == [g.id for g in expected]


def test_a_failed_expiry_record_is_written_by_a_later_sweep(
        store: Any, audit: AuditLog, tmp_path: Path) -> None:
    flaky = FlakyAudit(audit)
    clock = Clock(NOW)
    metrics = BrokerMetrics()
    watcher = GrantWatcher(store, flaky, metrics, clock=clock, min_gap=0)  # type: ignore[arg-type]
    grant, _ = make_grant(created_at=NOW + timedelta(seconds=1), ttl=timedelta(minutes=1))
    store.create(grant)
    clock.now = NOW + timedelta(minutes=2)
    flaky.broken = True
    watcher.sweep()
    assert metrics.audit_write_errors._value.get() == 1
    assert metrics.grants_expired._value.get() == 0
    flaky.broken = False
    watcher.sweep()
    watcher.sweep()
    assert [r["grant"] for r in records(tmp_path, "grant_expired")] == [grant.id]
    assert metrics.grants_expired._value.get() == 1


def purge_setup(store: Any) -> dict[str, Grant]:
    expired, _ = make_grant(ttl=timedelta(minutes=15))
    revoked, _ = make_grant(ttl=timedelta(hours=2))
    denied, _ = make_grant(status=GrantStatus.PENDING, ttl=timedelta(hours=2))
    used_up, _ = make_grant(ttl=timedelta(minutes=20), max_uses=1)
    active, _ = make_grant(ttl=timedelta(days=60))  # still usable long after the others
    for grant in (expired, revoked, denied, used_up, active):
        store.create(grant)
    store.revoke(revoked.id, NOW + timedelta(minutes=1))
    store.deny(denied.id, "ops", NOW + timedelta(minutes=2))
    store.reserve_use(used_up.id, NOW)
    ended = {"expired": expired, "revoked": revoked, "denied": denied, "used_up": used_up,
             "active": active}
    return {name: store.get(grant.id) for name, grant in ended.items()}


def test_ended_grants_are_purged_after_the_retention_and_not_before(
        store: Any, audit: AuditLog, tmp_path: Path) -> None:
    grants = purge_setup(store)
    clock = Clock(NOW)
    watcher = GrantWatcher(store, audit, BrokerMetrics(), clock=clock, min_gap=0,
                           retention=RETENTION)
    # Ends: revoked +1 min, denied +2 min, expired +15 min, used up at its expiry (+20 min).
    clock.now = NOW + RETENTION + timedelta(seconds=59)
    assert watcher.purge() == 0
    assert records(tmp_path, "grants_purged") == []
    clock.now = NOW + RETENTION + timedelta(minutes=2)
    assert watcher.purge() == 2
    assert store.get(grants["revoked"].id) is None and store.get(grants["denied"].id) is None
    assert store.get(grants["expired"].id) is not None
    clock.now = NOW + RETENTION + timedelta(minutes=20)
    assert watcher.purge() == 2
    assert watcher.purge() == 0
    assert [g.id for g in store.list()] == [grants["active"].id]  # active: never purged
    purged = records(tmp_path, "grants_purged")
    assert [(r["count"], r["grants"], r["reason"], r["decision"]) for r in purged] == [
        (2, [grants["revoked"].id, grants["denied"].id], "retention", "allow"),
        (2, [grants["expired"].id, grants["used_up"].id], "retention", "allow")]
    assert purged[0]["ended_before"] == "2030-05-17T12:02:00Z"  # now - retention
    audit.close()
    assert verify_chain(tmp_path / "audit.log", tmp_path / "audit.key").ok


def test_no_purge_without_its_audit_record(store: Any, audit: AuditLog, tmp_path: Path) -> None:
    grants = purge_setup(store)
    flaky = FlakyAudit(audit)
    flaky.broken = True
    metrics = BrokerMetrics()
    watcher = GrantWatcher(store, flaky, metrics,  # type: ignore[arg-type]
                           clock=Clock(NOW + RETENTION * 2), min_gap=0, retention=RETENTION)
    assert watcher.purge() == 0
    assert len(store.list()) == len(grants)
    assert metrics.audit_write_errors._value.get() == 1
    flaky.broken = False
    assert watcher.purge() == 4
    assert len(records(tmp_path, "grants_purged")) == 1


def test_without_a_retention_nothing_is_purged(store: Any, audit: AuditLog) -> None:
    grants = purge_setup(store)
    watcher = GrantWatcher(store, audit, BrokerMetrics(), clock=Clock(NOW + RETENTION * 10),
                           min_gap=0, retention=None)
    assert watcher.purge() == 0
    assert len(store.list()) == len(grants)


def test_a_purge_batch_is_bounded(store: Any, audit: AuditLog, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import broker_proxy.runtime.grant_watch as watch
    monkeypatch.setattr(watch, "PURGE_BATCH", 100)
    store.load_many(ended_long_ago(250))
    watcher = GrantWatcher(store, audit, BrokerMetrics(), clock=Clock(NOW + RETENTION),
                           min_gap=0, retention=RETENTION)
    assert [watcher.purge() for _ in range(4)] == [100, 100, 50, 0]
    assert [r["count"] for r in records(tmp_path, "grants_purged")] == [100, 100, 50]
