"""Failed admin API and console sign-ins: slowed per source address, audited in aggregate.

The admin token is far too long to guess, but a flood of wrong tokens is still an event an
operator wants in the evidence, and answering it at full speed helps nobody. So:

- Every check of presented credentials from one source address runs under that source's lock,
  and after `FREE_FAILURES` failures within `WINDOW` seconds each further failure holds the lock
  for a growing delay (up to `MAX_DELAY`): one source gets at most one guess per delay however
  many connections it opens. Other sources are not slowed; a right token from the slowed source
  waits only for the checks queued before it.
- The first failure of a source (per surface) in a window is written at once as a
  `signin_failed` record; the ones after it are counted and written as one record per source
  per window (`failed_signins`), so a flood costs a few records, never one per attempt.
- At most `MAX_SOURCES` sources are tracked; beyond that, failures count under `other`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from broker_proxy.audit.errors import AuditError

WINDOW: Final = 60.0  # seconds over which failures of one source are counted and aggregated
FREE_FAILURES: Final = 5  # failures per window answered without delay (typos, a stale token)
FIRST_DELAY: Final = 0.1  # seconds, doubled per further failure
MAX_DELAY: Final = 1.0
MAX_SOURCES: Final = 4096
OTHER_SOURCE: Final = "other"

_log = logging.getLogger("broker_proxy.admin")


class AuditSink(Protocol):
    def append(self, event: str, *, durable: bool = False, **fields: object) -> object: ...


@dataclass(slots=True)
class _Source:
    lock: threading.Lock = field(default_factory=threading.Lock)
    window_start: float = 0.0
    failures: int = 0  # in the current window
    unreported: dict[str, int] = field(default_factory=dict)  # surface -> failures not written
    reported: set[str] = field(default_factory=set)  # surfaces with a record in this window


class SigninGuard:
    """Wraps each credential check of the admin API and the console sign-in."""

    def __init__(self, audit: AuditSink, on_failure: Callable[[str], None] | None = None,
                 *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._audit = audit
        self._on_failure = on_failure
        self._clock = clock
        self._sleep = sleep
        self._sources: dict[str, _Source] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="signin-audit",
                                         daemon=True)

    def start(self) -> SigninGuard:
        self._flusher.start()
        return self

    def check(self, source: str, surface: str, verify: Callable[[], bool]) -> bool:
        """Run `verify` (True: signed in) under the source's lock; slow and record a failure."""
        state = self._source(source)
        with state.lock:
            if verify():
                return True
            delay = self._failed(source, surface, state)
            if delay:
                self._sleep(delay)  # still holding the lock: the source's next guess waits
            return False

    def close(self) -> None:
        """Write the counts not yet written (a clean stop leaves nothing unreported)."""
        self._stop.set()
        if self._flusher.is_alive():
            self._flusher.join(timeout=5)
        self._flush(force=True)

    def _source(self, source: str) -> _Source:
        with self._lock:
            state = self._sources.get(source)
            if state is None:
                if len(self._sources) >= MAX_SOURCES:
                    self._forget_quiet()
                if len(self._sources) >= MAX_SOURCES:
                    source = OTHER_SOURCE
                    state = self._sources.get(source)
                if state is None:
                    state = self._sources[source] = _Source()
            return state

    def _failed(self, source: str, surface: str, state: _Source) -> float:
        """Under the source's lock: count, maybe write a record, return the delay to hold."""
        now = self._clock()
        write = False
        with self._lock:
            if now - state.window_start >= WINDOW:
                state.window_start, state.failures = now, 0
                state.reported.clear()
            state.failures += 1
            if surface in state.reported:
                state.unreported[surface] = state.unreported.get(surface, 0) + 1
            else:
                state.reported.add(surface)
                write = True
            failures = state.failures
        if self._on_failure is not None:
            self._on_failure(surface)
        if write:
            self._write_record(source, surface, 1)
        if failures <= FREE_FAILURES:
            return 0.0
        return min(FIRST_DELAY * 2.0 ** (failures - FREE_FAILURES - 1), MAX_DELAY)

    def _write_record(self, source: str, surface: str, count: int) -> None:
        try:
            self._audit.append("signin_failed", decision="deny", reason=surface,
                               source=source, failed_signins=count)
        except AuditError as error:  # the 401 stands; the log says it went unrecorded
            _log.error("failed sign-ins from %s not recorded: %s", source, error)

    def _flush(self, *, force: bool) -> None:
        now = self._clock()
        due: list[tuple[str, str, int]] = []
        with self._lock:
            for source, state in self._sources.items():
                if not force and now - state.window_start < WINDOW:
                    continue
                due += [(source, surface, count) for surface, count in state.unreported.items()
                        if count]
                state.unreported.clear()
                if not force:
                    state.reported.clear()  # the next failure opens a new window
        for source, surface, count in due:
            self._write_record(source, surface, count)

    def _forget_quiet(self) -> None:
        """Under self._lock: drop sources with nothing pending and no failure this window."""
        now = self._clock()
        for source in [s for s, state in self._sources.items()
                       if now - state.window_start >= WINDOW and not state.unreported
                       and not state.lock.locked()]:
            del self._sources[source]

    def _flush_loop(self) -> None:
        while not self._stop.wait(WINDOW / 4):
            self._flush(force=False)
