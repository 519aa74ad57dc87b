"""The grants that tokens named recently, kept while nothing can have changed them.

Every request authenticates its grant (invariant 3: revocation and expiry take effect on the
next request), and with the SQLite store that was a read of the grant's row and a new `Grant`
per request: about 18 us of the broker's ~400 us of decision per request on the benchmark
machine. A grant read earlier is still the row when nothing was committed since, which the
store can tell with one PRAGMA:

- another process (the CLI, another worker, a replica on the same file) or another connection
  of this one committed: `PRAGMA data_version` on the store's write connection changes (it
  changes with every commit but that connection's own);
- this process committed through that connection: the store counts those commits
  (`own_writes`) and any of them makes every entry stale, except a use spent or given back,
  which the store applies to the one entry it changes (`used`), under the same lock.

Entries are read and written only under the store's write-connection lock, and an entry is
trusted only when both marks equal the ones taken before its row was read: a commit of another
process that raced with the read makes it stale, never the other way round. What the cache
holds is the public grant (its token's hash, never a token); the token is still compared with
that hash, in constant time, on every request. Expiry needs nothing: a grant's state is
computed from the clock on every request (`Grant.state_at`).

A grant without `max_uses` may come back with a use count that lags (it decides nothing for
such a grant, and rebuilding the grant on every use would cost what the cache saves); every
state is exact.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from broker_proxy.grants.model import Grant

# Change marks: (the write connection's data_version, this store's own commit count).
Mark = tuple[int, int]

MAX_ENTRIES: Final = 4096  # grants authenticated recently; the cache starts over when full


class GrantAuthCache:
    """grant id -> (the marks it was read under, the grant); see the module docstring."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[str, tuple[Mark, Grant]] = {}

    def get(self, grant_id: str, mark: Mark) -> Grant | None:
        """The grant as read under `mark`, if it was; None when unknown or stale."""
        entry = self._entries.get(grant_id)
        if entry is None or entry[0] != mark:
            return None
        return entry[1]

    def put(self, grant_id: str, mark: Mark, grant: Grant) -> None:
        """Keep `grant`, read after `mark` was taken."""
        if len(self._entries) >= MAX_ENTRIES and grant_id not in self._entries:
            self._entries.clear()  # bounded; the active grants come back on their next request
        self._entries[grant_id] = (mark, grant)

    def used(self, grant_id: str, delta: int) -> None:
        """This process's writer committed `delta` uses of `grant_id` (1 spent, -1 given back)."""
        entry = self._entries.get(grant_id)
        if entry is not None and entry[1].max_uses is not None:
            mark, grant = entry
            self._entries[grant_id] = (mark, replace(grant, uses=grant.uses + delta))
