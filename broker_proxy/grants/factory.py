"""Which grant store a command uses: the home's SQLite file, another SQLite file, or Redis.

One function for `run`, the `grant` commands and the `mitmdump -s` entry, so a replica and the
CLI that issues its grants can never disagree about where grants live (the URL they hand in is
chosen by one rule too: runtime/run_config.py store_setting).
"""

from __future__ import annotations

from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.grants.store import GrantStore, GrantStoreError
from broker_proxy.home import Home

STORE_ENV = "BROKER_PROXY_STORE"  # read by runtime/run_config.py (store_setting)
_SQLITE_PREFIX = "sqlite://"
_REDIS_SCHEMES = ("redis://", "rediss://")


def open_grant_store(home: Home, url: str | None) -> GrantStore:
    """None: <home>/grants.sqlite3; `sqlite:///PATH`; `redis://HOST:PORT/DB`; `rediss://...`."""
    if url is None:
        return SqliteGrantStore(home.ensure().grants_db)
    if url.startswith(_SQLITE_PREFIX) and len(url) > len(_SQLITE_PREFIX):
        return SqliteGrantStore(url[len(_SQLITE_PREFIX):])
    if url.startswith(_REDIS_SCHEMES):
        # Imported here so that the SQLite default does not load the Redis client.
        from broker_proxy.grants.redis_store import RedisGrantStore

        return RedisGrantStore(url)
    # The URL itself is not echoed: it may carry a password.
    raise GrantStoreError(
        "grant store URL must be sqlite:///PATH, redis://HOST:PORT/DB or rediss://HOST:PORT/DB"
    )
