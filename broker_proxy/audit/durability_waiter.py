"""Wait on the event loop for audit records to reach the disk, one fsync per batch of requests.

Invariant 5 (docs/ARCHITECTURE.md) makes a secret-carrying request wait until its audit record
is on disk. Measured
(`make bench`, HTTPS keep-alive): handing each fsync to a thread cost about 0.3 ms of CPU per
request in thread switches and GIL hand-offs, far more than the fsync itself (~0.07 ms on this
machine's disk). So the fsync runs on the event loop while fsyncs are fast, and moves to one
thread as soon as they are not (a slow or stalling disk must not stall every connection):

* on the loop while the moving average of recent fsyncs is under `inline_below` (1 ms): the
  requests that asked during one pass of the loop are settled together right after it, so
  under load one fsync covers several of them;
* otherwise one thread takes every request waiting at the time as one batch, makes them
  durable (the first fsync covers the rest: `AuditLog.ensure_durable` is a group commit) and
  wakes the loop once for the whole batch. Its timings keep the average current, so the loop
  takes the work back once the disk is fast again.

A disk that stalls suddenly costs the loop that one stall, then the thread takes over.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("broker_proxy")


class DurabilityWaiter[Item, Outcome]:
    """Settles waiting items in batches: per event-loop pass while that is fast, else on a thread.
    """

    def __init__(self, settle: Callable[[Item], Outcome], name: str = "audit-sync", *,
                 inline_below: float = 0.001) -> None:
        self._settle = settle
        self._inline_below = inline_below
        self.average = 0.0  # seconds per batch (on the loop or the thread), smoothed
        self._name = name
        self._waiting: list[tuple[Item, asyncio.Future[Outcome]]] = []
        self._wake = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.batches = 0  # how many batches were settled so far
        self._loop_batch: list[tuple[Item, asyncio.Future[Outcome]]] = []

    @property
    def inline(self) -> bool:
        """Whether batches are settled on the event loop now (fsyncs have been fast)."""
        return self.average < self._inline_below and not self._stopped

    async def wait(self, item: Item) -> Outcome:
        """`settle(item)`'s result, settled on the loop while that is fast, else by the thread.

        On the loop, every item that starts waiting during one pass of the event loop is
        settled together right after it: under load, several requests share each fsync.
        """
        if self.inline:
            return await self._join_loop_batch(item)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        with self._wake:
            if self._stopped:
                raise RuntimeError("the audit sync thread has stopped")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._waiting.append((item, future))
            self._wake.notify()
        return await future

    def _join_loop_batch(self, item: Item) -> asyncio.Future[Outcome]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._loop_batch.append((item, future))
        if len(self._loop_batch) == 1:
            loop.call_soon(self._settle_loop_batch)
        return future

    def _settle_loop_batch(self) -> None:
        batch, self._loop_batch = self._loop_batch, []
        self.batches += 1
        started = time.perf_counter()
        try:
            for item, future in batch:
                try:
                    outcome = self._settle(item)
                except Exception as error:  # handed to the waiter, which fails closed
                    if not future.done():
                        future.set_exception(error)
                    continue
                if not future.done():
                    future.set_result(outcome)
        finally:
            self._note(time.perf_counter() - started)

    def _note(self, seconds: float) -> None:
        self.average += (seconds - self.average) * 0.2

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._waiting and not self._stopped:
                    self._wake.wait()
                batch, self._waiting = self._waiting, []
                if not batch and self._stopped:
                    return
            self.batches += 1
            started = time.perf_counter()
            settled: list[tuple[asyncio.Future[Outcome], Outcome | None, BaseException | None]]
            settled = []
            for item, future in batch:
                try:
                    settled.append((future, self._settle(item), None))
                except BaseException as error:  # handed to the waiter, which fails closed
                    settled.append((future, None, error))
            self._note(time.perf_counter() - started)
            by_loop: dict[asyncio.AbstractEventLoop, list[
                tuple[asyncio.Future[Outcome], Outcome | None, BaseException | None]]] = {}
            for entry in settled:
                by_loop.setdefault(entry[0].get_loop(), []).append(entry)
            for loop, entries in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_resolve, entries)
                except RuntimeError:  # the loop closed meanwhile: nobody waits any more
                    log.debug("audit sync finished after the event loop closed")


def _resolve[Outcome](settled: list[tuple[asyncio.Future[Outcome], Outcome | None,
                                 BaseException | None]]) -> None:
    for future, outcome, error in settled:
        if future.done():  # the request was cancelled meanwhile
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(outcome)  # type: ignore[arg-type]
