"""GrantStore.probe_write, behind /readyz: a real write that fails as a grant write would."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import redis

from broker_proxy.devtools.redis_server import RedisServer
from broker_proxy.grants.redis_store import RedisGrantStore
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.readiness import CachedProbe, store_write_problem


def test_sqlite_probe_fails_on_a_file_that_cannot_be_written(tmp_path: Path) -> None:
    store = SqliteGrantStore(tmp_path / "grants.sqlite3")
    try:
        assert store_write_problem(store) is None
        wal = tmp_path / "grants.sqlite3-wal"
        if subprocess.run(["chattr", "+i", str(wal)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not supported here")
        try:
            problem = store_write_problem(store)
        finally:
            subprocess.run(["chattr", "-i", str(wal)], check=False)
        assert problem is not None and "unusable" in problem
        assert store_write_problem(store) is None
    finally:
        store.close()


def test_redis_probe_fails_on_a_read_only_server(redis_server: RedisServer) -> None:
    with RedisGrantStore(redis_server.url) as store:
        assert store_write_problem(store) is None
        raw = redis.Redis.from_url(redis_server.url)
        raw.config_set("min-replicas-to-write", 1)  # no replica: every write is refused
        try:
            problem = store_write_problem(store)
        finally:
            raw.config_set("min-replicas-to-write", 0)
        assert problem is not None and "unavailable" in problem
        assert store_write_problem(store) is None


def test_a_cached_probe_runs_once_per_ttl() -> None:
    calls: list[int] = []
    probe = CachedProbe(lambda: calls.append(1) or None, ttl=60)
    for _ in range(100):
        assert probe() is None
    assert len(calls) == 1
