"""Group commit: when what the writer wrote reaches the disk, and who waits for it.

In "always" mode every append fsyncs. In "batch" mode a flush thread fsyncs what was written
within ~50 ms, off the appending thread, and a request that carries a secret waits only for its
own record (`ensure_durable`): one fsync covers every record written before it, so the requests
waiting at the same time share it. Both fsyncs run on a duplicate descriptor without holding
the writer's lock, so appends never wait behind them, and a rotation meanwhile cannot close the
descriptor under them (a rotation fsyncs the file it retires itself). After each sync the head
state (tamper.py) moves on to what is now on disk.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Final

from broker_proxy.audit.chain_file import ChainFile
from broker_proxy.audit.errors import AuditWriteError
from broker_proxy.audit.tamper import TamperGuard

FSYNC_MODES: Final = frozenset({"always", "batch"})
BATCH_INTERVAL: Final = 0.050  # seconds between fsyncs in "batch" mode, at most
# Unsynced records that make an append fsync itself in "batch" mode: a backstop for when the
# flush thread falls behind (it normally syncs every BATCH_INTERVAL, off the appending thread).
BATCH_RECORDS: Final = 1024
BATCH_BACKSTOP_INTERVAL: Final = 4 * BATCH_INTERVAL


class GroupCommit:
    """The fsync side of one writer: counts what is not on disk yet and syncs it.

    `lock` is the writer's lock; `wrote` and `sync` run under it, `ensure_durable` and the flush
    thread take it themselves. `refuse` raises when the writer may not be used (closed, or its
    file is not the log it wrote).
    """

    def __init__(self, lock: threading.Lock, chain: ChainFile, guard: TamperGuard,
                 refuse: Callable[[], None]) -> None:
        self._lock = lock
        self._chain = chain
        self._guard = guard
        self._refuse = refuse
        self._durable_lock = threading.Lock()  # serialises group-commit fsyncs
        self._durable_seq = -1  # every record up to this seq is known to be on disk
        self.unsynced = 0
        self._last_sync = time.monotonic()
        self._dirty = threading.Event()
        self._stopped = False
        self._flusher: threading.Thread | None = None

    def wrote(self, records: int) -> None:
        """Under the lock: `records` more appended records wait for an fsync."""
        self.unsynced += records

    def sync(self, *, force: bool) -> None:
        """Under the lock: fsync now if forced, or once enough records or time have piled up."""
        if self.unsynced == 0 and not force:
            return
        # Backstops only: the flush thread normally syncs every BATCH_INTERVAL by itself.
        due = (
            self.unsynced >= BATCH_RECORDS
            or time.monotonic() - self._last_sync >= BATCH_BACKSTOP_INTERVAL
        )
        if force or due:
            os.fsync(self._chain.fd)
            self.unsynced = 0
            self._last_sync = time.monotonic()
            self._durable_seq = max(self._durable_seq, self._chain.next_seq - 1)

    def ensure_durable(self, seq: int) -> None:
        """Return once the record `seq` this writer appended is on disk (see AuditLog)."""
        with self._durable_lock:
            if self._durable_seq >= seq:
                return
            with self._lock:
                self._refuse()
                target = self._chain.next_seq - 1
                try:
                    fd = os.dup(self._chain.fd)
                except OSError as exc:
                    raise AuditWriteError(f"cannot write audit log {self._chain.path}: "
                                          f"{exc.strerror or exc}") from None
            try:
                os.fsync(fd)
            except OSError as exc:
                raise AuditWriteError(f"cannot write audit log {self._chain.path}: "
                                      f"{exc.strerror or exc}") from None
            finally:
                os.close(fd)
            self._durable_seq = max(self._durable_seq, target)
            with self._lock:
                if self._chain.next_seq - 1 == target:  # nothing written since: batch is even
                    self.unsynced = 0
                    self._last_sync = time.monotonic()

    def start(self) -> None:
        """Start the flush thread; it also moves the head state on, in both fsync modes."""
        self._flusher = threading.Thread(target=self._flush_loop, name="audit-fsync",
                                         daemon=True)
        self._flusher.start()

    def nudge(self) -> None:
        """Something was written: the flush thread syncs it (batch mode) and moves the head.

        Already set: the flush thread has not cleared it yet, and it clears it under the lock
        before it takes what to sync, so what was written before this call is in that round.
        Event.set takes the event's lock and wakes waiters each time; skipping it saves that on
        every append under load.
        """
        if not self._dirty.is_set():
            self._dirty.set()

    def stop(self) -> None:
        """Under the lock: the flush thread ends at its next look (call `nudge` after)."""
        self._stopped = True

    def _flush_loop(self) -> None:
        while True:
            self._dirty.wait()
            if self._stopped:
                return
            time.sleep(BATCH_INTERVAL)
            if not self._flush_once():
                return

    def _flush_once(self) -> bool:
        """One round of the flush thread; False once the writer is closed."""
        with self._lock:
            if self._stopped:
                return False
            self._dirty.clear()
            # Taken before the fsync below: what it names is on disk once that returns
            # (or already was, when nothing is unsynced).
            head = self._guard.durable_head() if self._guard.tampered is None else None
            if self.unsynced == 0:
                fd = -1  # an fsync for a waiting request covered it already
            else:
                target, covered = self._chain.next_seq - 1, self.unsynced
                try:
                    fd = os.dup(self._chain.fd)
                except OSError:
                    return True  # resurfaces on the next append or close, which report it
        if fd == -1:
            self._guard.head_after_sync(head)
            return True
        try:
            os.fsync(fd)
        except OSError:
            return True  # likewise
        finally:
            os.close(fd)
        with self._lock:
            self._durable_seq = max(self._durable_seq, target)
            self.unsynced = max(0, self.unsynced - covered)
            self._last_sync = time.monotonic()
        self._guard.head_after_sync(head)
        return True
