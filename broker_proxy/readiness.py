"""The probes behind /readyz that cost more than a look: a grant store write, the vault.

/readyz is polled (load balancers, every few seconds, from several places), so each probe runs
at most once per `ttl` and answers its last result in between: a full disk or a wrong master
key shows within a couple of seconds, and a flood of probes never becomes a flood of writes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final

from broker_proxy.grants.store import GrantStore, GrantStoreBusy, GrantStoreError

PROBE_TTL: Final = 2.0  # seconds a probe's answer is reused


class CachedProbe:
    """`probe()` -> a problem or None, run at most once per `ttl` seconds."""

    def __init__(self, probe: Callable[[], str | None], ttl: float = PROBE_TTL) -> None:
        self._probe = probe
        self._ttl = ttl
        self._lock = threading.Lock()
        self._until = 0.0
        self._last: str | None = None

    def __call__(self) -> str | None:
        with self._lock:
            now = time.monotonic()
            if now >= self._until:
                self._last = self._probe()
                self._until = time.monotonic() + self._ttl
            return self._last


def store_write_problem(store: GrantStore) -> str | None:
    """Why the grant store cannot take a write now, or None (busy is not a problem)."""
    try:
        store.probe_write()
    except GrantStoreBusy:
        return None  # another writer holds it: requests wait their bound, they are not refused
    except GrantStoreError as error:
        return str(error)
    return None
