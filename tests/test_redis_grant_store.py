"""What only the Redis grant store has to prove: hashed tokens, clean-up expiry, atomic spending
across many clients, failing closed in bounded time, recovering by itself, and a URL that cannot
weaken TLS. The shared contract runs in test_grant_store.py against both stores."""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from broker_proxy.audit.log import AuditLog
from broker_proxy.devtools.redis_server import RedisServer, free_port
from broker_proxy.grants.circuit import OPEN_FOR
from broker_proxy.grants.factory import STORE_ENV, open_grant_store
from broker_proxy.grants.model import GrantStatus
from broker_proxy.grants.redis_store import RETENTION, RedisGrantStore
from broker_proxy.grants.redis_url import parse_url
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.grants.store import GrantStoreError, ReserveResult
from broker_proxy.grants.tokens import parse_token
from broker_proxy.home import Home
from broker_proxy.runtime.replica import ReplicaIdError, replica_id
from broker_proxy.runtime.run_config import store_setting as store_url
from tests.test_grant_store import NOW, make_grant

# How long a request may wait on a Redis that is gone or hung before it is refused.
BOUND_SECONDS = 2.0


@pytest.fixture
def store(redis_server: RedisServer):
    with RedisGrantStore(redis_server.url) as opened:
        opened._client.flushdb()
        yield opened


@pytest.fixture
def own_redis(tmp_path: Path):
    """A server this test may stop, hang and restart without disturbing the others."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


def _raw(server: RedisServer) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2)


# -- what is stored --------------------------------------------------------------------------


def test_tokens_are_stored_only_as_hashes(store: RedisGrantStore, redis_server: RedisServer):
    grant, token = make_grant()
    store.create(grant)
    raw = _raw(redis_server)
    dump = b"".join(
        key + b"".join(k + v for k, v in raw.hgetall(key).items())
        for key in raw.scan_iter(match="*grant:*")
    )
    parsed = parse_token(token)
    assert parsed is not None
    secret_part = parsed[1].encode()  # the random part may itself contain "_"
    assert secret_part not in dump and token.encode() not in dump
    assert grant.token_hash in dump
    assert store.authenticate(token) == grant


def test_key_expiry_is_clean_up_a_day_after_the_grants_own_expiry(
    store: RedisGrantStore, redis_server: RedisServer
):
    grant, _ = make_grant(ttl=timedelta(minutes=15))
    store.create(grant)
    expire_ms = _raw(redis_server).pexpiretime(f"{{broker-proxy}}:grant:{grant.id}")
    expected = grant.expires_at + RETENTION
    assert abs(expire_ms / 1000 - expected.timestamp()) < 1


def test_a_grant_created_already_expired_is_kept_a_day_from_now(
    store: RedisGrantStore, redis_server: RedisServer
):
    long_ago = datetime.now(UTC) - timedelta(days=30)
    grant, _ = make_grant(created_at=long_ago)
    store.create(grant)
    ttl = _raw(redis_server).ttl(f"{{broker-proxy}}:grant:{grant.id}")
    assert RETENTION.total_seconds() - 60 < ttl <= RETENTION.total_seconds()
    assert store.reserve_use(grant.id, datetime.now(UTC)) is ReserveResult.EXPIRED


def test_redis_key_expiry_never_decides_only_expires_at_does(
    store: RedisGrantStore, redis_server: RedisServer
):
    grant, _ = make_grant(max_uses=3)
    store.create(grant)
    _raw(redis_server).persist(f"{{broker-proxy}}:grant:{grant.id}")
    assert store.reserve_use(grant.id, grant.expires_at) is ReserveResult.EXPIRED
    assert store.reserve_use(grant.id, NOW) is ReserveResult.RESERVED


def test_list_forgets_grants_whose_hash_redis_cleaned_up(
    store: RedisGrantStore, redis_server: RedisServer
):
    kept, _ = make_grant()
    cleaned, _ = make_grant(created_at=NOW + timedelta(seconds=1))
    store.create(kept)
    store.create(cleaned)
    raw = _raw(redis_server)
    raw.delete(f"{{broker-proxy}}:grant:{cleaned.id}")  # what key expiry does
    assert [g.id for g in store.list()] == [kept.id]
    assert raw.zrange("{broker-proxy}:grants", 0, -1) == [kept.id.encode()]


def test_a_corrupt_entry_is_a_store_error(store: RedisGrantStore, redis_server: RedisServer):
    grant, _ = make_grant()
    store.create(grant)
    _raw(redis_server).hset(f"{{broker-proxy}}:grant:{grant.id}", "status", "bogus")
    with pytest.raises(GrantStoreError, match="corrupt"):
        store.get(grant.id)
    with pytest.raises(GrantStoreError, match="unavailable"):
        store.reserve_use(grant.id, NOW)


# -- one truth for many clients --------------------------------------------------------------


def test_max_uses_holds_exactly_across_many_clients(redis_server: RedisServer):
    with RedisGrantStore(redis_server.url) as setup:
        setup._client.flushdb()
        grant, _ = make_grant(max_uses=75)
        setup.create(grant)
    clients = [RedisGrantStore(redis_server.url) for _ in range(6)]
    start = threading.Barrier(len(clients))

    def spend(client: RedisGrantStore) -> int:
        start.wait()
        return sum(client.reserve_use(grant.id, NOW) is ReserveResult.RESERVED for _ in range(40))

    try:
        with ThreadPoolExecutor(len(clients)) as pool:
            spent = sum(pool.map(spend, clients))
    finally:
        for client in clients:
            client.close()
    assert spent == 75
    with RedisGrantStore(redis_server.url) as check:
        assert check.get(grant.id).uses == 75


def test_a_revoke_through_one_client_is_seen_by_another_at_once(redis_server: RedisServer):
    with RedisGrantStore(redis_server.url) as one, RedisGrantStore(redis_server.url) as other:
        grant, token = make_grant()
        one.create(grant)
        assert other.reserve_use(grant.id, NOW) is ReserveResult.RESERVED
        one.revoke(grant.id, NOW)
        assert other.authenticate(token).status is GrantStatus.REVOKED
        assert other.reserve_use(grant.id, NOW) is ReserveResult.REVOKED


# -- failing closed, and coming back -----------------------------------------------------------


def test_a_store_with_nothing_listening_refuses_to_open_quickly():
    url = f"redis://:{secrets.token_urlsafe(12)}@127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    with pytest.raises(GrantStoreError) as excinfo:
        RedisGrantStore(url)
    assert time.monotonic() - started < BOUND_SECONDS
    message = str(excinfo.value)
    assert "unavailable" in message and "\n" not in message
    assert url.split("@")[0].split(":")[-1] not in message  # never the password


def test_a_stopped_redis_fails_closed_in_bounded_time_and_recovery_is_automatic(
    own_redis: RedisServer,
):
    with RedisGrantStore(own_redis.url) as store:
        grant, token = make_grant(max_uses=10)
        store.create(grant)
        assert store.reserve_use(grant.id, NOW) is ReserveResult.RESERVED
        own_redis.stop()
        for verb in (lambda: store.authenticate(token), lambda: store.reserve_use(grant.id, NOW),
                     lambda: store.revoke(grant.id, NOW), store.list):
            started = time.monotonic()
            with pytest.raises(GrantStoreError, match="unavailable"):
                verb()
            assert time.monotonic() - started < BOUND_SECONDS
        own_redis.start()  # same port, empty (it keeps nothing on disk)
        # The circuit opened at the first failure: calls are refused at once until it lets
        # one through again, OPEN_FOR after the last failure.
        time.sleep(OPEN_FOR)
        again, again_token = make_grant()
        store.create(again)  # the same store object: no reopening by the caller
        assert store.authenticate(again_token) == again
        assert store.reserve_use(again.id, NOW) is ReserveResult.RESERVED


def test_a_hung_redis_fails_closed_within_the_command_timeout(own_redis: RedisServer):
    with RedisGrantStore(own_redis.url) as store:
        grant, _ = make_grant()
        store.create(grant)
        assert own_redis.process is not None
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(GrantStoreError, match="unavailable"):
                store.reserve_use(grant.id, NOW)
            assert time.monotonic() - started < BOUND_SECONDS
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)
        # One more reply may still be in flight on the old connection; the next call is clean.
        deadline = time.monotonic() + 5
        while True:
            try:
                assert store.reserve_use(grant.id, NOW) is ReserveResult.RESERVED
                break
            except GrantStoreError:
                assert time.monotonic() < deadline, "the store did not recover"
        assert store.get(grant.id).uses >= 1


def test_a_closed_redis_store_says_so(redis_server: RedisServer):
    store = RedisGrantStore(redis_server.url)
    store.close()
    store.close()
    with pytest.raises(GrantStoreError, match="closed"):
        store.get("g_0000000000000000")


# -- the URL -----------------------------------------------------------------------------------


def test_rediss_urls_always_verify_the_server_certificate():
    options, where = parse_url("rediss://:pw@redis.internal:6380/2?ssl_ca_certs=/etc/ca.pem")
    assert options["ssl"] is True
    assert options["ssl_check_hostname"] is True
    assert options["ssl_ca_certs"] == "/etc/ca.pem"
    assert (options["host"], options["port"], options["db"]) == ("redis.internal", 6380, 2)
    assert where == "rediss://redis.internal:6380/2"


@pytest.mark.parametrize("url", [
    "rediss://h:6380/0?ssl_cert_reqs=none",
    "rediss://h:6380/0?ssl_check_hostname=false",
    "redis://h:6379/0?ssl_ca_certs=/x",
    "redis://h:6379/zero",
    "redis://:6379/0",
    "http://h:6379/0",
    "redis://h:notaport/0",
])
def test_urls_that_could_weaken_or_confuse_the_store_are_refused(url: str):
    with pytest.raises(GrantStoreError):
        parse_url(url)


def test_factory_picks_the_store_from_the_url(tmp_path: Path, redis_server: RedisServer,
                                               monkeypatch: pytest.MonkeyPatch):
    home = Home(tmp_path / "home")
    default = open_grant_store(home, None)
    assert isinstance(default, SqliteGrantStore) and home.grants_db.exists()
    default.close()
    elsewhere = tmp_path / "other.sqlite3"
    explicit = open_grant_store(home, f"sqlite://{elsewhere}")
    assert isinstance(explicit, SqliteGrantStore) and elsewhere.exists()
    explicit.close()
    shared = open_grant_store(home, redis_server.url)
    assert isinstance(shared, RedisGrantStore)
    shared.close()
    password = secrets.token_urlsafe(12)
    with pytest.raises(GrantStoreError) as excinfo:
        open_grant_store(home, f"mysql://root:{password}@db/grants")
    assert password not in str(excinfo.value)
    monkeypatch.setenv(STORE_ENV, redis_server.url)
    assert store_url(None, os.environ) == redis_server.url
    assert store_url("sqlite:///x", os.environ) == "sqlite:///x"
    monkeypatch.delenv(STORE_ENV)
    assert store_url(None, os.environ) is None


# -- replicas and their audit chains ----------------------------------------------------------


def test_the_default_replica_id_is_made_once_per_home(tmp_path: Path):
    home = Home(tmp_path / "home")
    first = replica_id(home, None)
    assert first == replica_id(home, None)
    assert first != replica_id(Home(tmp_path / "other"), None)
    assert replica_id(home, "eu-west-1a") == "eu-west-1a"
    for bad in ("", "a b", "-x", "x" * 65, "a\nb"):
        with pytest.raises(ReplicaIdError):
            replica_id(home, bad)


def test_every_record_of_a_stamped_chain_names_its_replica(tmp_path: Path):
    with AuditLog.open(tmp_path / "a.log", tmp_path / "audit.key") as audit:
        audit.stamp_records(replica="replica-a")
        audit.append("proxy_started", decision="allow", reason="started")
        audit.append("request", decision="deny", reason="grant_store_unavailable")
    records = list(AuditLog.read_records(tmp_path / "a.log"))
    assert [r["replica"] for r in records] == ["replica-a", "replica-a"]
