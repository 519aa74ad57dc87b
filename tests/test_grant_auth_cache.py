"""The SQLite store keeps recently authenticated grants (grants/auth_cache.py): every change,
made here, by another connection or by another process, shows on the very next authenticate.

Invariant 3 (docs/ARCHITECTURE.md): revocation and expiry take effect on the next request.
Each test first authenticates (so the grant is cached), changes the grant, and checks the
next authenticate. Another `SqliteGrantStore` on the same file is another connection, as
another worker or the CLI would be; one test uses a real second process too.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from broker_proxy.grants.model import GrantStatus
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.grants.store import ReserveResult
from tests.test_grant_store import NOW, make_grant


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "grants.sqlite3"


def _cached(store: SqliteGrantStore, **kwargs: object) -> tuple[str, str]:
    """A stored grant, authenticated twice (the second time from the cache); (id, token)."""
    grant, token = make_grant(**kwargs)  # type: ignore[arg-type]
    store.create(grant)
    for _ in range(2):
        found = store.authenticate(token)
        assert found is not None and found.id == grant.id
    return grant.id, token


def _state(store: SqliteGrantStore, token: str, at=NOW) -> str:
    grant = store.authenticate(token)
    assert grant is not None
    return grant.state_at(at)


def test_a_grant_revoked_by_another_process_is_refused_on_the_next_request(db_path: Path):
    with SqliteGrantStore(db_path) as proxy:
        grant_id, token = _cached(proxy)
        script = ("import sys; from datetime import datetime, UTC\n"
                  "from broker_proxy.grants.sqlite_store import SqliteGrantStore\n"
                  "with SqliteGrantStore(sys.argv[1]) as cli:\n"
                  "    cli.revoke(sys.argv[2], datetime.now(UTC))\n")
        subprocess.run([sys.executable, "-c", script, str(db_path), grant_id], check=True,
                       cwd=Path(__file__).resolve().parent.parent)
        assert _state(proxy, token) == "revoked"


def test_a_grant_revoked_through_the_same_store_is_refused_on_the_next_request(db_path: Path):
    with SqliteGrantStore(db_path) as proxy:
        grant_id, token = _cached(proxy)
        proxy.revoke(grant_id, NOW)
        assert _state(proxy, token) == "revoked"


def test_approval_and_denial_by_another_connection_show_at_once(db_path: Path):
    with SqliteGrantStore(db_path) as proxy, SqliteGrantStore(db_path) as admin:
        approved_id, approved = _cached(proxy, status=GrantStatus.PENDING)
        denied_id, denied = _cached(proxy, status=GrantStatus.PENDING)
        admin.approve(approved_id, "alice", NOW)
        assert _state(proxy, approved) == "active"
        admin.deny(denied_id, "alice", NOW)
        assert _state(proxy, denied) == "denied"


def test_uses_spent_here_and_elsewhere_count_at_once_on_a_limited_grant(db_path: Path):
    with SqliteGrantStore(db_path) as proxy, SqliteGrantStore(db_path) as replica:
        grant_id, token = _cached(proxy, max_uses=2)
        assert proxy.reserve_use(grant_id, NOW, wait=False) is ReserveResult.RESERVED
        assert proxy.authenticate(token).uses == 1  # type: ignore[union-attr]
        assert _state(proxy, token) == "active"
        assert replica.reserve_use(grant_id, NOW) is ReserveResult.RESERVED
        assert _state(proxy, token) == "used_up"
        assert proxy.release_use(grant_id)
        assert _state(proxy, token) == "active"
        assert proxy.reserve_use(grant_id, NOW) is ReserveResult.RESERVED
        assert _state(proxy, token) == "used_up"


def test_an_unlimited_grant_stays_cached_across_uses_and_its_state_is_exact(db_path: Path):
    with SqliteGrantStore(db_path) as proxy:
        grant_id, token = _cached(proxy, ttl=timedelta(minutes=1))
        for _ in range(3):
            assert proxy.reserve_use(grant_id, NOW, wait=False) is ReserveResult.RESERVED
            assert _state(proxy, token) == "active"
        assert _state(proxy, token, NOW + timedelta(minutes=1)) == "expired"
        assert proxy.get(grant_id).uses == 3  # type: ignore[union-attr]


def test_a_purged_grant_no_longer_authenticates(db_path: Path):
    with SqliteGrantStore(db_path) as proxy, SqliteGrantStore(db_path) as other:
        here_id, here = _cached(proxy)
        there_id, there = _cached(proxy)
        for store, grant_id in ((proxy, here_id), (other, there_id)):
            store.revoke(grant_id, NOW)
            assert store.purge([grant_id], NOW + timedelta(seconds=1)) == 1
        assert proxy.authenticate(here) is None
        assert proxy.authenticate(there) is None


def test_a_cached_grant_still_refuses_a_wrong_token(db_path: Path):
    with SqliteGrantStore(db_path) as proxy:
        _, token = _cached(proxy)
        wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
        assert proxy.authenticate(wrong) is None
        assert proxy.authenticate(token) is not None


def test_authenticate_does_not_wait_for_a_writer_that_waits(db_path: Path):
    """A reservation waiting for another process's write lock holds the store's writer: a
    request authenticating meanwhile is answered at once (from the reader), and the
    revocation the lock's holder then commits shows on the next one."""
    with SqliteGrantStore(db_path) as proxy:
        grant_id, token = _cached(proxy)
        holder = sqlite3.connect(db_path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        results: list[ReserveResult] = []
        waiting = threading.Thread(target=lambda: results.append(proxy.reserve_use(
            grant_id, NOW, deadline=time.monotonic() + 10)))
        waiting.start()
        try:
            time.sleep(0.3)  # the reservation now waits, holding the store's writer
            started = time.monotonic()
            assert _state(proxy, token) == "active"
            assert time.monotonic() - started < 1.0
            holder.execute("UPDATE grants SET status = 'revoked', revoked_at = 1 WHERE id = ?",
                           (grant_id,))
            holder.execute("COMMIT")
        finally:
            waiting.join(timeout=20)
            holder.close()
        assert results == [ReserveResult.REVOKED]
        assert _state(proxy, token) == "revoked"
