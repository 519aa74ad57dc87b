"""Where requests held for a person's approval live: a table every process of a home (SQLite)
or every replica (Redis) shares, so that any of them holds, lists and decides.

The table stores plain JSON objects (the approval desk, approvals/desk.py, gives them their
meaning); each has at least `id`, `grant`, `digest` and `state`. A change is made inside
`locked()`, which is exclusive across threads, processes and (Redis) hosts: the desk reads,
checks and writes there, so two people deciding at once get one winner, and the limits on held
requests count every process's. `version()` changes on every write, for live views and for the
processes that wait on a decision made elsewhere.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

Item = dict[str, Any]


class HoldTable(Protocol):
    # True when other processes see the same items (SQLite, Redis); False for one process.
    shared: bool

    def locked(self) -> AbstractContextManager[None]: ...

    def get(self, hold_id: str) -> Item | None: ...

    def get_many(self, hold_ids: list[str]) -> list[Item]: ...

    def put(self, item: Item) -> None:
        """Insert or replace (inside `locked`); bumps the version."""
        ...

    def pending(self) -> list[Item]:
        """Every pending item, in no particular order."""
        ...

    def count_pending(self, grant: str) -> tuple[int, int]:
        """(pending in all, pending of `grant`)."""
        ...

    def find(self, grant: str, digest: str) -> list[Item]:
        """The items of one grant and request digest (a retry looks for its decision)."""
        ...

    def purge_decided(self, before_s: float) -> None:
        """Forget decided items decided before `before_s` (epoch seconds), inside `locked`."""
        ...

    def get_allowance(self, grant: str, digest: str) -> Item | None: ...

    def put_allowance(self, grant: str, digest: str, allowance: Item | None) -> None: ...

    def version(self) -> int: ...



class MemoryHoldTable:
    """One process's table: for stores that share nothing (tests' fakes)."""

    shared = False

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._items: dict[str, Item] = {}
        self._allowances: dict[tuple[str, str], Item] = {}
        self._version = secrets.randbelow(2**40) + 1

    @contextmanager
    def locked(self) -> Iterator[None]:
        with self._lock:
            yield

    def get(self, hold_id: str) -> Item | None:
        with self._lock:
            item = self._items.get(hold_id)
            return dict(item) if item is not None else None

    def get_many(self, hold_ids: list[str]) -> list[Item]:
        with self._lock:
            return [dict(self._items[i]) for i in hold_ids if i in self._items]

    def put(self, item: Item) -> None:
        with self._lock:
            self._items[item["id"]] = dict(item)
            self._version += 1

    def pending(self) -> list[Item]:
        with self._lock:
            return [dict(i) for i in self._items.values() if i["state"] == "pending"]

    def count_pending(self, grant: str) -> tuple[int, int]:
        with self._lock:
            pending = [i for i in self._items.values() if i["state"] == "pending"]
            return len(pending), sum(1 for i in pending if i["grant"] == grant)

    def find(self, grant: str, digest: str) -> list[Item]:
        with self._lock:
            return [dict(i) for i in self._items.values()
                    if i["grant"] == grant and i["digest"] == digest]

    def purge_decided(self, before_s: float) -> None:
        with self._lock:
            for hold_id in [i["id"] for i in self._items.values()
                            if i["state"] != "pending" and i["decided_s"] < before_s]:
                del self._items[hold_id]

    def get_allowance(self, grant: str, digest: str) -> Item | None:
        with self._lock:
            allowance = self._allowances.get((grant, digest))
            return dict(allowance) if allowance is not None else None

    def put_allowance(self, grant: str, digest: str, allowance: Item | None) -> None:
        with self._lock:
            if allowance is None:
                self._allowances.pop((grant, digest), None)
            else:
                self._allowances[(grant, digest)] = dict(allowance)
            self._version += 1

    def version(self) -> int:
        with self._lock:
            return self._version
