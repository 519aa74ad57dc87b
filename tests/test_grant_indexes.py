"""The store queries periodic work relies on (indexed pages, live counts, purge), on both
stores, checked against what reading every grant says; and the schema upgrades that add them."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from broker_proxy.grants.model import Grant, GrantStatus
from broker_proxy.grants.redis_keys import INDEX_KEYS, INDEX_VERSION_KEY
from broker_proxy.grants.redis_store import RedisGrantStore
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.grants.store import GrantIndex, ended_at
from tests.test_grant_store import NOW, make_grant

EPOCH = datetime(1970, 1, 1, tzinfo=NOW.tzinfo)
SOON = timedelta(minutes=5)

Store = SqliteGrantStore | RedisGrantStore


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


def a_mix(store: Store) -> list[Grant]:
    """Grants in every state, some sharing an instant, written the way the CLI writes them."""
    made = []
    for offset in range(6):  # three pairs created (and expiring) at the same instant
        grant, _ = make_grant(created_at=NOW + timedelta(seconds=offset // 2),
                              ttl=timedelta(minutes=10 + offset // 2), max_uses=2)
        store.create(grant)
        made.append(grant.id)
    store.reserve_use(made[0], NOW)                      # in use, expiring within 5 min at +6
    store.reserve_use(made[1], NOW)
    store.reserve_use(made[1], NOW)                      # used up
    store.revoke(made[2], NOW + timedelta(minutes=1))    # revoked before its expiry
    pending, _ = make_grant(status=GrantStatus.PENDING, created_at=NOW + timedelta(seconds=5))
    denied, _ = make_grant(status=GrantStatus.PENDING, created_at=NOW + timedelta(seconds=5))
    approved, _ = make_grant(status=GrantStatus.PENDING, created_at=NOW + timedelta(seconds=6))
    for grant in (pending, denied, approved):
        store.create(grant)
    store.deny(denied.id, "ops", NOW + timedelta(minutes=2))
    store.approve(approved.id, "ops", NOW + timedelta(minutes=2))
    old, _ = make_grant(created_at=NOW - timedelta(days=3))  # expired long ago
    store.create(old)
    return store.list()


def page_all(store: Store, index: GrantIndex, until: datetime, limit: int) -> list[str]:
    seen: list[str] = []
    cursor = (EPOCH, "")
    while True:
        page = store.indexed(index, cursor, until, limit)
        seen += [grant.id for grant in page]
        if len(page) < limit:
            return seen
        cursor = (instant_of(index, page[-1]), page[-1].id)


def instant_of(index: GrantIndex, grant: Grant) -> datetime:
    if index is GrantIndex.CREATED:
        return grant.created_at
    if index is GrantIndex.EXPIRES:
        return grant.expires_at
    if index is GrantIndex.REVOKED:
        assert grant.revoked_at is not None
        return grant.revoked_at
    return ended_at(grant)


@pytest.mark.parametrize("index", list(GrantIndex))
@pytest.mark.parametrize("limit", [1, 2, 100])
def test_paging_an_index_sees_every_grant_once_in_order(store: Store, index: GrantIndex,
                                                         limit: int) -> None:
    grants = a_mix(store)
    until = NOW + timedelta(minutes=11)
    expected = sorted(
        (instant_of(index, g), g.id) for g in grants
         if (index is not GrantIndex.REVOKED or g.status is GrantStatus.REVOKED)
         and instant_of(index, g) <= until)
    assert page_all(store, index, until, limit) == [gid for _, gid in expected]


def test_a_page_starts_after_its_cursor_and_stops_at_until(store: Store) -> None:
    grants = sorted(a_mix(store), key=lambda g: (g.expires_at, g.id))
    middle = grants[3]
    after = store.indexed(GrantIndex.EXPIRES, (middle.expires_at, middle.id),
                          NOW + timedelta(minutes=11), 100)
    assert [g.id for g in after] == [g.id for g in grants[4:]
                                     if g.expires_at <= NOW + timedelta(minutes=11)]
    tie = [g for g in grants if g.expires_at == middle.expires_at]
    assert len(tie) >= 2  # the cursor's id splits grants that share an instant
    assert store.indexed(GrantIndex.EXPIRES, (EPOCH, ""), NOW, 100) == [grants[0]]


def test_ended_is_expiry_unless_revoked_or_denied_first(store: Store) -> None:
    by_id = {g.id: g for g in a_mix(store)}
    ends = {g.id: ended_at(g) for g in store.indexed(
        GrantIndex.ENDED, (EPOCH, ""), NOW + timedelta(days=2), 100)}
    for grant_id, grant in by_id.items():
        if grant.status is GrantStatus.REVOKED:
            assert ends[grant_id] == grant.revoked_at
        elif grant.status is GrantStatus.DENIED:
            assert ends[grant_id] == grant.approved_at
        else:
            assert ends[grant_id] == grant.expires_at  # used up too: it ends at its expiry


@pytest.mark.parametrize("minutes", [0, 4, 6, 8, 10.5, 30])
def test_counts_agree_with_reading_every_grant(store: Store, minutes: float) -> None:
    a_mix(store)
    now = NOW + timedelta(minutes=minutes)
    every = store.list()
    states = [g.state_at(now) for g in every]
    counts = store.counts(now, SOON)
    assert counts.active == states.count("active")
    assert counts.pending == states.count("pending")
    assert counts.expiring_in_use == sum(
        1 for g in every if g.state_at(now) == "active" and g.uses > 0
        and g.expires_at - now <= SOON)


def test_live_listing_reads_only_live_grants_and_matches_the_full_one(store: Store) -> None:
    a_mix(store)
    for minutes in (0, 8, 30):
        now = NOW + timedelta(minutes=minutes)
        expected = [g for g in store.list() if g.state_at(now) in ("active", "pending")]
        assert store.list(include_inactive=False, now=now) == expected


def test_purge_deletes_only_what_ended_by_the_cutoff(store: Store) -> None:
    grants = {g.id: g for g in a_mix(store)}
    cutoff = NOW + timedelta(minutes=2)
    ended = {gid for gid, g in grants.items() if ended_at(g) <= cutoff}
    assert ended  # the old one, the revoked one, the denied one
    assert store.purge(list(grants), cutoff) == len(ended)
    assert {g.id for g in store.list()} == set(grants) - ended
    assert all(store.get(gid) is None for gid in ended)
    assert store.purge(list(grants), cutoff) == 0  # nothing twice
    after = store.indexed(GrantIndex.ENDED, (EPOCH, ""), NOW + timedelta(days=2), 100)
    assert {g.id for g in after} == set(grants) - ended


def test_counts_follow_uses_and_decisions_as_they_happen(store: Store) -> None:
    grant, _ = make_grant(max_uses=2)
    store.create(grant)
    assert store.counts(NOW, SOON).active == 1
    store.reserve_use(grant.id, NOW)
    assert store.counts(NOW + timedelta(minutes=11), SOON).expiring_in_use == 1
    assert store.counts(NOW, SOON).expiring_in_use == 0  # 15 minutes left
    store.reserve_use(grant.id, NOW)
    assert store.counts(NOW, SOON).active == 0  # used up
    pending, _ = make_grant(status=GrantStatus.PENDING)
    store.create(pending)
    assert store.counts(NOW, SOON).pending == 1
    store.approve(pending.id, "ops", NOW)
    assert (store.counts(NOW, SOON).pending, store.counts(NOW, SOON).active) == (0, 1)
    store.revoke(pending.id, NOW)
    assert store.counts(NOW, SOON).active == 0


def test_a_version_2_sqlite_store_gains_the_indexes_and_keeps_its_grants(tmp_path: Path) -> None:
    path = tmp_path / "grants.sqlite3"
    with SqliteGrantStore(path) as store:
        grant, _ = make_grant()
        store.create(grant)
    with sqlite3.connect(path) as raw:  # what a store written by the previous version holds
        for name in ("grants_by_expiry", "grants_by_revoked", "grants_by_end", "grants_live"):
            raw.execute(f"DROP INDEX {name}")
        raw.execute("PRAGMA user_version = 2")
    with SqliteGrantStore(path) as store:
        assert store.get(grant.id) == grant
        assert store.counts(NOW, SOON).active == 1
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 4  # 4: issued_by as well
        names = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE "
                                               "type = 'index'")}
    assert {"grants_by_expiry", "grants_by_revoked", "grants_by_end", "grants_live"} <= names


def test_a_redis_store_written_before_the_indexes_is_indexed_on_open(redis_server) -> None:
    with RedisGrantStore(redis_server.url) as store:
        store._client.flushdb()
        grants = []
        for status in (GrantStatus.ACTIVE, GrantStatus.PENDING, GrantStatus.ACTIVE):
            grant, _ = make_grant(status=status)
            store.create(grant)
            grants.append(grant)
        store.revoke(grants[2].id, NOW)
        # What the previous version left: the hashes and the creation index only.
        store._client.delete(INDEX_VERSION_KEY, *INDEX_KEYS[1:])
    with RedisGrantStore(redis_server.url) as store:
        counts = store.counts(NOW, SOON)
        assert (counts.active, counts.pending) == (1, 1)
        revoked = store.indexed(GrantIndex.REVOKED, (EPOCH, ""), NOW, 10)
        assert [g.id for g in revoked] == [grants[2].id]
        assert store._client.get(INDEX_VERSION_KEY) == b"1"


def test_load_many_writes_what_create_would(store: Store) -> None:
    grant, _ = make_grant(max_uses=3, uses=1)
    revoked = replace(make_grant()[0], status=GrantStatus.REVOKED, revoked_at=NOW)
    store.load_many([grant, revoked])
    assert store.get(grant.id) == grant and store.get(revoked.id) == revoked
    counts = store.counts(NOW, timedelta(minutes=20))
    assert (counts.active, counts.expiring_in_use) == (1, 1)
    assert [g.id for g in store.indexed(GrantIndex.REVOKED, (EPOCH, ""), NOW, 10)] == [
        revoked.id]


def test_counts_stay_right_as_the_clock_moves_and_other_writers_commit(
        store: Store, tmp_path: Path, redis_server) -> None:
    a_mix(store)
    other: Store = (SqliteGrantStore(tmp_path / "grants.sqlite3")
                    if isinstance(store, SqliteGrantStore) else RedisGrantStore(redis_server.url))
    with other:  # another process's store on the same data
        for step in range(0, 24 * 60, 7):  # every 7 s for 24 minutes
            now = NOW + timedelta(seconds=step)
            if step == 70:
                late, _ = make_grant(created_at=now, ttl=timedelta(minutes=6))
                other.create(late)
            if step == 140:
                other.reserve_use(late.id, now)
            if step == 420:
                other.revoke(late.id, now)
            states = [(g.state_at(now), g) for g in store.list()]
            expected = (sum(1 for s, _ in states if s == "active"),
                        sum(1 for s, _ in states if s == "pending"),
                        sum(1 for s, g in states if s == "active" and g.uses > 0
                            and g.expires_at - now <= SOON))
            counts = store.counts(now, SOON)
            assert (counts.active, counts.pending, counts.expiring_in_use) == expected, step
