"""The grant model's state machine and the SQLite grant store, on real files."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker_proxy.grants.model import Grant, GrantStatus, new_grant_id
from broker_proxy.grants.redis_store import RedisGrantStore
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.grants.store import (
    GrantNotFound,
    GrantStateError,
    GrantStoreError,
    ReserveResult,
)
from broker_proxy.grants.tokens import new_token, token_hash

NOW = datetime(2030, 5, 17, 12, 0, 0, 123456, tzinfo=UTC)


def make_grant(
    *,
    status: GrantStatus = GrantStatus.ACTIVE,
    ttl: timedelta = timedelta(minutes=15),
    max_uses: int | None = None,
    uses: int = 0,
    created_at: datetime = NOW,
    token: str | None = None,
) -> tuple[Grant, str]:
    grant_id = new_grant_id()
    token = token or new_token(grant_id)
    grant = Grant(
        id=grant_id,
        agent="research-bot",
        task="triage issue 42",
        secrets=("github", "slack"),
        created_at=created_at,
        expires_at=created_at + ttl,
        max_uses=max_uses,
        uses=uses,
        status=status,
        approved_by=None,
        approved_at=None,
        revoked_at=None,
        token_hash=token_hash(token),
    )
    return grant, token


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "grants.sqlite3"


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, db_path: Path):
    """The same contract, run against every store: SQLite here, Redis shared by replicas."""
    if request.param == "sqlite":
        with SqliteGrantStore(db_path) as opened:
            yield opened
        return
    server = request.getfixturevalue("redis_server")
    with RedisGrantStore(server.url) as opened:
        opened._client.flushdb()  # our own private server: every test starts empty
        yield opened


def stored(store: SqliteGrantStore, **kwargs) -> tuple[Grant, str]:
    grant, token = make_grant(**kwargs)
    store.create(grant)
    return grant, token


# -- the model ---------------------------------------------------------------------------


def test_repr_of_grant_never_shows_the_token_hash():
    grant, token = make_grant()
    text = repr(grant)
    assert "token_hash" not in text
    assert grant.token_hash.hex() not in text
    assert repr(grant.token_hash) not in text
    assert token not in text and str(grant) == text


@pytest.mark.parametrize(
    ("status", "at", "uses", "expected"),
    [
        (GrantStatus.ACTIVE, NOW, 0, "active"),
        (GrantStatus.ACTIVE, NOW, 3, "used_up"),
        (GrantStatus.ACTIVE, NOW + timedelta(minutes=15), 0, "expired"),  # the boundary
        (GrantStatus.ACTIVE, NOW + timedelta(hours=1), 3, "expired"),  # expired over used_up
        (GrantStatus.PENDING, NOW, 0, "pending"),
        (GrantStatus.PENDING, NOW + timedelta(hours=1), 0, "expired"),
        (GrantStatus.REVOKED, NOW + timedelta(hours=1), 3, "revoked"),  # revoked over expired
        (GrantStatus.DENIED, NOW + timedelta(hours=1), 0, "denied"),  # denied over expired
    ],
)
def test_state_at_orders_reasons_from_most_final(status, at, uses, expected):
    grant, _ = make_grant(status=status, max_uses=3, uses=uses)
    assert grant.state_at(at) == expected


def test_public_dict_has_z_timestamps_and_derived_state_but_no_hash():
    grant, _ = make_grant(max_uses=2)
    public = grant.to_public_dict(NOW + timedelta(hours=1))
    assert public["state"] == "expired"
    assert public["status"] == "active"
    assert public["created_at"] == "2030-05-17T12:00:00Z"
    assert public["expires_at"] == "2030-05-17T12:15:00Z"
    assert public["secrets"] == ["github", "slack"]
    assert public["approved_at"] is None
    assert "token_hash" not in public
    assert grant.token_hash.hex() not in repr(public)


def test_grant_refuses_naive_datetimes():
    grant, _ = make_grant()
    with pytest.raises(ValueError, match="timezone-aware"):
        replace(grant, expires_at=datetime(2030, 1, 1))


def test_grant_refuses_unsorted_secrets():
    grant, _ = make_grant()
    with pytest.raises(ValueError, match="sorted"):
        replace(grant, secrets=("slack", "github"))


# -- opening the file ----------------------------------------------------------------------


def test_store_file_and_its_wal_files_are_private(db_path: Path):
    old_umask = os.umask(0o022)
    try:
        with SqliteGrantStore(db_path) as store:
            stored(store)
            for suffix in ("", "-wal", "-shm"):
                path = Path(f"{db_path}{suffix}")
                assert path.exists(), suffix
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, suffix
    finally:
        os.umask(old_umask)


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)  # SQLite files only
def test_store_uses_wal_and_a_versioned_schema(store: SqliteGrantStore, db_path: Path):
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 4  # 4: issued_by


def test_reopening_keeps_grants(db_path: Path):
    with SqliteGrantStore(db_path) as store:
        grant, _ = stored(store, max_uses=5)
        store.reserve_use(grant.id, NOW)
    with SqliteGrantStore(db_path) as store:
        assert store.get(grant.id) == replace(grant, uses=1)


def test_store_from_a_newer_version_is_refused(db_path: Path):
    SqliteGrantStore(db_path).close()
    with sqlite3.connect(db_path) as raw:
        raw.execute("PRAGMA user_version = 99")
    with pytest.raises(GrantStoreError, match="schema version 99"):
        SqliteGrantStore(db_path)


def test_a_file_that_is_not_a_database_is_unusable(db_path: Path):
    db_path.write_bytes(os.urandom(4096))
    with pytest.raises(GrantStoreError, match="unusable"):
        SqliteGrantStore(db_path)


def test_a_missing_directory_is_unusable(tmp_path: Path):
    with pytest.raises(GrantStoreError, match="cannot be opened"):
        SqliteGrantStore(tmp_path / "nope" / "grants.sqlite3")


def test_a_symlink_at_the_store_path_is_refused(tmp_path: Path, db_path: Path):
    target = tmp_path / "elsewhere.sqlite3"
    db_path.symlink_to(target)
    with pytest.raises(GrantStoreError, match="cannot be opened"):
        SqliteGrantStore(db_path)
    assert not target.exists()


def test_a_closed_store_says_so(db_path: Path):
    store = SqliteGrantStore(db_path)
    store.close()
    store.close()  # idempotent
    with pytest.raises(GrantStoreError, match="closed"):
        store.get("g_0000000000000000")


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)  # SQLite files only
def test_a_store_locked_too_long_is_unusable(store: SqliteGrantStore, db_path: Path):
    grant, _ = stored(store, max_uses=5)
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(GrantStoreError, match="locked"):
            store.reserve_use(grant.id, NOW)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.reserve_use(grant.id, NOW) is ReserveResult.RESERVED


# -- create, get, list ------------------------------------------------------------------


def test_created_grant_reads_back_identical(store: SqliteGrantStore):
    grant, _ = stored(store, max_uses=7)
    assert store.get(grant.id) == grant


def test_get_unknown_grant_is_none(store: SqliteGrantStore):
    assert store.get("g_0123456789abcdef") is None


def test_creating_the_same_grant_twice_is_refused(store: SqliteGrantStore):
    grant, _ = stored(store)
    with pytest.raises(GrantStoreError, match="already exists"):
        store.create(grant)


def test_list_is_oldest_first_and_can_hide_inactive(store: SqliteGrantStore):
    late, _ = stored(store, created_at=NOW + timedelta(seconds=2))
    early, _ = stored(store, created_at=NOW)
    pending, _ = stored(store, status=GrantStatus.PENDING, created_at=NOW + timedelta(seconds=1))
    used, _ = stored(store, max_uses=1, created_at=NOW + timedelta(seconds=3))
    store.reserve_use(used.id, NOW + timedelta(seconds=4))
    gone, _ = stored(store, created_at=NOW + timedelta(seconds=4))
    store.revoke(gone.id, NOW + timedelta(seconds=5))

    assert [g.id for g in store.list()] == [early.id, pending.id, late.id, used.id, gone.id]
    live = store.list(include_inactive=False, now=NOW + timedelta(seconds=5))
    assert [g.id for g in live] == [early.id, pending.id, late.id]


# -- authenticate --------------------------------------------------------------------------


def test_authenticate_finds_the_grant_of_a_valid_token(store: SqliteGrantStore):
    grant, token = stored(store)
    assert store.authenticate(token) == grant


def test_authenticate_returns_grants_in_any_state(store: SqliteGrantStore):
    # The proxy must know *which* grant to name in its 403; the state check is its job.
    grant, token = stored(store)
    store.revoke(grant.id, NOW)
    authenticated = store.authenticate(token)
    assert authenticated is not None and authenticated.status is GrantStatus.REVOKED


def test_authenticate_refuses_a_wrong_secret_for_a_real_grant(store: SqliteGrantStore):
    grant, _ = stored(store)
    assert store.authenticate(new_token(grant.id)) is None


def test_authenticate_refuses_another_grants_secret_under_this_id(store: SqliteGrantStore):
    mine, _ = stored(store)
    _, theirs = stored(store)
    forged = f"bpt_{mine.id}_{theirs.rsplit('_', 1)[-1]}"
    assert store.authenticate(forged) is None


def test_authenticate_gives_each_token_its_own_grant(store: SqliteGrantStore):
    first, first_token = stored(store)
    second, second_token = stored(store)
    assert store.authenticate(first_token) == first
    assert store.authenticate(second_token) == second


def test_authenticate_refuses_a_token_for_an_unknown_grant(store: SqliteGrantStore):
    assert store.authenticate(new_token(new_grant_id())) is None


@pytest.mark.parametrize(
    "token", ["", "bpt_", "not a token", "bpt_g_zz_abc", "x" * 10_000, "bpt_' OR 1=1 --"]
)
def test_authenticate_refuses_malformed_tokens(store: SqliteGrantStore, token: str):
    stored(store)
    assert store.authenticate(token) is None


# -- reserve_use -------------------------------------------------------------------------


def test_reserve_use_counts_uses_on_an_unlimited_grant(store: SqliteGrantStore):
    grant, _ = stored(store)
    for _ in range(5):
        assert store.reserve_use(grant.id, NOW) is ReserveResult.RESERVED
    assert store.get(grant.id).uses == 5


def test_reserve_use_stops_at_max_uses(store: SqliteGrantStore):
    grant, _ = stored(store, max_uses=2)
    assert store.reserve_use(grant.id, NOW) is ReserveResult.RESERVED
    assert store.reserve_use(grant.id, NOW) is ReserveResult.RESERVED
    assert store.reserve_use(grant.id, NOW) is ReserveResult.USED_UP
    assert store.get(grant.id).uses == 2


def test_reserve_use_refuses_at_and_after_expiry(store: SqliteGrantStore):
    grant, _ = stored(store, max_uses=5)
    just_before = grant.expires_at - timedelta(microseconds=1)
    assert store.reserve_use(grant.id, just_before) is ReserveResult.RESERVED
    assert store.reserve_use(grant.id, grant.expires_at) is ReserveResult.EXPIRED
    assert store.reserve_use(grant.id, grant.expires_at + timedelta(days=1)) is (
        ReserveResult.EXPIRED
    )
    assert store.get(grant.id).uses == 1


def test_reserve_use_on_expired_and_used_up_grant_says_expired(store: SqliteGrantStore):
    grant, _ = stored(store, max_uses=1)
    store.reserve_use(grant.id, NOW)
    assert store.reserve_use(grant.id, NOW) is ReserveResult.USED_UP
    assert store.reserve_use(grant.id, grant.expires_at) is ReserveResult.EXPIRED


def test_reserve_use_refuses_revoked_grants(store: SqliteGrantStore):
    grant, _ = stored(store)
    store.revoke(grant.id, NOW)
    assert store.reserve_use(grant.id, NOW) is ReserveResult.REVOKED
    assert store.reserve_use(grant.id, grant.expires_at) is ReserveResult.REVOKED
    assert store.get(grant.id).uses == 0


def test_reserve_use_refuses_pending_and_denied_grants(store: SqliteGrantStore):
    pending, _ = stored(store, status=GrantStatus.PENDING)
    denied, _ = stored(store, status=GrantStatus.PENDING)
    store.deny(denied.id, "alice", NOW)
    assert store.reserve_use(pending.id, NOW) is ReserveResult.PENDING
    assert store.reserve_use(pending.id, pending.expires_at) is ReserveResult.EXPIRED
    assert store.reserve_use(denied.id, NOW) is ReserveResult.DENIED
    assert store.get(pending.id).uses == 0


def test_reserve_use_on_unknown_grant_is_not_found(store: SqliteGrantStore):
    assert store.reserve_use("g_0123456789abcdef", NOW) is ReserveResult.NOT_FOUND


def test_reserve_use_is_atomic_across_threads_of_one_store(store: SqliteGrantStore):
    grant, _ = stored(store, max_uses=100)
    results: list[ReserveResult] = []
    results_lock = threading.Lock()

    def spend() -> None:
        for _ in range(20):
            outcome = store.reserve_use(grant.id, NOW)
            with results_lock:
                results.append(outcome)

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(ReserveResult.RESERVED) == 100
    assert results.count(ReserveResult.USED_UP) == 60
    assert store.get(grant.id).uses == 100


def _spend_in_another_process(path: str, grant_id: str, start, results) -> None:
    with SqliteGrantStore(path) as store:
        start.wait()
        reserved = sum(
            store.reserve_use(grant_id, NOW) is ReserveResult.RESERVED for _ in range(50)
        )
    results.put(reserved)


def test_reserve_use_never_exceeds_max_uses_across_processes(db_path: Path):
    with SqliteGrantStore(db_path) as store:
        grant, _ = stored(store, max_uses=60)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(4)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=_spend_in_another_process, args=(str(db_path), grant.id, start, results))
        for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    counts = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert sum(counts) == 60
    with SqliteGrantStore(db_path) as store:
        assert store.get(grant.id).uses == 60


def _create_in_another_process(path: str, start, results) -> None:
    start.wait()
    with SqliteGrantStore(path) as store:
        grant, _ = make_grant()
        store.create(grant)
    results.put(grant.id)


def test_processes_opening_a_new_store_at_once_all_succeed(db_path: Path):
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(4)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=_create_in_another_process, args=(str(db_path), start, results))
        for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    ids = {results.get(timeout=60) for _ in workers}
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    with SqliteGrantStore(db_path) as store:
        assert {g.id for g in store.list()} == ids


# -- approve, deny, revoke -----------------------------------------------------------------


def test_approving_a_pending_grant_activates_it(store: SqliteGrantStore):
    grant, _ = stored(store, status=GrantStatus.PENDING)
    later = NOW + timedelta(minutes=1)
    approved = store.approve(grant.id, "alice", later)
    assert approved.status is GrantStatus.ACTIVE
    assert (approved.approved_by, approved.approved_at) == ("alice", later)
    assert store.get(grant.id) == approved
    assert store.reserve_use(grant.id, later) is ReserveResult.RESERVED


def test_denying_a_pending_grant_records_who_denied(store: SqliteGrantStore):
    grant, _ = stored(store, status=GrantStatus.PENDING)
    denied = store.deny(grant.id, "bob", NOW)
    assert denied.status is GrantStatus.DENIED
    assert (denied.approved_by, denied.approved_at) == ("bob", NOW)


def test_revoking_an_active_grant_records_when(store: SqliteGrantStore):
    grant, _ = stored(store)
    revoked = store.revoke(grant.id, NOW + timedelta(seconds=30))
    assert revoked.status is GrantStatus.REVOKED
    assert revoked.revoked_at == NOW + timedelta(seconds=30)


def test_pending_expired_and_used_up_grants_can_be_revoked(store: SqliteGrantStore):
    pending, _ = stored(store, status=GrantStatus.PENDING)
    expired, _ = stored(store)
    used, _ = stored(store, max_uses=1)
    store.reserve_use(used.id, NOW)
    assert store.revoke(pending.id, NOW).status is GrantStatus.REVOKED
    assert store.revoke(expired.id, expired.expires_at).status is GrantStatus.REVOKED
    assert store.revoke(used.id, NOW).status is GrantStatus.REVOKED


@pytest.mark.parametrize(
    ("setup", "action", "message"),
    [
        ("active", "approve", "is active; cannot approve"),
        ("active", "deny", "is active; cannot deny"),
        ("revoked", "approve", "is revoked; cannot approve"),
        ("revoked", "deny", "is revoked; cannot deny"),
        ("revoked", "revoke", "is revoked; cannot revoke"),
        ("denied", "approve", "is denied; cannot approve"),
        ("denied", "deny", "is denied; cannot deny"),
        ("denied", "revoke", "is denied; cannot revoke"),
        ("approved", "approve", "is active; cannot approve"),
        ("expired_pending", "approve", "is expired; cannot approve"),
        ("expired_pending", "deny", "is expired; cannot deny"),
    ],
)
def test_invalid_transitions_are_refused_with_a_clear_message(
    store: SqliteGrantStore, setup: str, action: str, message: str
):
    status = GrantStatus.ACTIVE if setup == "active" else GrantStatus.PENDING
    grant, _ = stored(store, status=status)
    at = NOW
    if setup == "revoked":
        store.revoke(grant.id, NOW)
    elif setup == "denied":
        store.deny(grant.id, "bob", NOW)
    elif setup == "approved":
        store.approve(grant.id, "alice", NOW)
    elif setup == "expired_pending":
        at = grant.expires_at
    before = store.get(grant.id)
    verb = {
        "approve": lambda: store.approve(grant.id, "carol", at),
        "deny": lambda: store.deny(grant.id, "carol", at),
        "revoke": lambda: store.revoke(grant.id, at),
    }[action]
    with pytest.raises(GrantStateError) as excinfo:
        verb()
    assert str(excinfo.value) == f"grant {grant.id} {message}"
    assert store.get(grant.id) == before


@pytest.mark.parametrize("action", ["approve", "deny", "revoke"])
def test_transitions_on_unknown_grants_raise_not_found(store: SqliteGrantStore, action: str):
    verb = {
        "approve": lambda: store.approve("g_0123456789abcdef", "alice", NOW),
        "deny": lambda: store.deny("g_0123456789abcdef", "alice", NOW),
        "revoke": lambda: store.revoke("g_0123456789abcdef", NOW),
    }[action]
    with pytest.raises(GrantNotFound, match="grant g_0123456789abcdef not found"):
        verb()


# -- giving back a use reserved for a request that never left ----------------------------------


def test_a_released_use_can_be_spent_again_and_never_more_than_max_uses(store) -> None:
    grant, _ = stored(store, max_uses=1)
    assert store.reserve_use(grant.id, NOW) is ReserveResult.RESERVED
    assert store.reserve_use(grant.id, NOW) is ReserveResult.USED_UP
    assert store.release_use(grant.id) is True
    assert store.get(grant.id).uses == 0
    assert store.get(grant.id).state_at(NOW) == "active"
    assert store.counts(NOW, timedelta(hours=1)).active == 1
    assert store.reserve_use(grant.id, NOW) is ReserveResult.RESERVED
    assert store.reserve_use(grant.id, NOW) is ReserveResult.USED_UP


def test_nothing_to_release_is_refused(store) -> None:
    grant, _ = stored(store)
    assert store.release_use(grant.id) is False
    assert store.release_use("g_0000000000000000") is False
    assert store.get(grant.id).uses == 0
