"""The audit log: append-only, hash-chained, HMAC'd JSON lines.

Every record names the SHA-256 of the previous line (`prev`) and carries an HMAC-SHA256 of
itself under a key that only the proxy's home holds (`mac`), so removing, reordering or editing a
record breaks the chain at that record, and forging one needs the key.

Two things the chain alone cannot show, by design: the loss of the newest records when the file is
cut exactly at a line boundary (there is no external anchor), and a rewrite by someone holding the
key. The head state (head.py) and signed checkpoints (checkpoint.py) cover the first.

`AuditLog` is the few verbs the rest of the proxy uses; each job behind them has its module:

- records.py: what the writer takes (RecordDraft, checked when made) and produces (SealedRecord);
- chain_file.py: the live file under flock, following its name, its tail, rotation by size and
  the torn line a crash leaves (kept as evidence, never truncated);
- group_commit.py: fsync modes, the flush thread, and `ensure_durable` for a request that waits;
- tamper.py: the refusal to go on with a file that is not the chain this writer wrote, and the
  head state that makes the next start refuse it too.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, Self

from broker_proxy.audit.chain_file import ChainFile, drop_unfinished_rotation, open_live_file
from broker_proxy.audit.errors import (
    AuditError,
    AuditKeyError,
    AuditRecordError,
    AuditTamperedError,
    AuditWriteError,
)
from broker_proxy.audit.files import ARCHIVE_DIGITS
from broker_proxy.audit.group_commit import (
    BATCH_BACKSTOP_INTERVAL,
    BATCH_INTERVAL,
    BATCH_RECORDS,
    FSYNC_MODES,
    GroupCommit,
)
from broker_proxy.audit.head import Head, head_path, read_head
from broker_proxy.audit.key_file import KEY_BYTES, load_key
from broker_proxy.audit.record_fields import (
    MAX_STRING,
    RESERVED_FIELDS,
    STANDARD_FIELDS,
    TRUNCATED_MARK,
    clean_string,
)
from broker_proxy.audit.records import (
    GAP_EVENT,
    GENESIS_PREV,
    ROTATED_EVENT,
    TORN_TAIL_EVENT,
    RecordDraft,
    SealedRecord,
)
from broker_proxy.audit.sealing import canonical_json, line_hash, record_mac, seal
from broker_proxy.audit.tail import parse_record
from broker_proxy.audit.tamper import TamperGuard, refusal

# The names this module has always offered, wherever they live now.
__all__ = [
    "ARCHIVE_DIGITS",
    "BATCH_BACKSTOP_INTERVAL",
    "BATCH_INTERVAL",
    "BATCH_RECORDS",
    "FSYNC_MODES",
    "GAP_EVENT",
    "GENESIS_PREV",
    "KEY_BYTES",
    "MAX_STRING",
    "RESERVED_FIELDS",
    "ROTATED_EVENT",
    "STANDARD_FIELDS",
    "TORN_TAIL_EVENT",
    "TRUNCATED_MARK",
    "AuditError",
    "AuditKeyError",
    "AuditLog",
    "AuditRecordError",
    "AuditTamperedError",
    "AuditWriteError",
    "RecordDraft",
    "SealedRecord",
    "canonical_json",
    "line_hash",
    "load_key",
    "record_mac",
    "seal",
]

_FINGERPRINT_DOMAIN: Final = b"broker-proxy secret fingerprint v1\x00"
_ROOM_FOR_RECORDS: Final = 65536  # free bytes that make a full disk count as usable again


class AuditLog:
    """One writer's handle on the audit log; many handles (threads, processes) may share a file.

    Appends from threads are serialised by a lock, appends from processes by flock(2) on the file,
    and each writer re-reads the tail under flock whenever someone else wrote since its own last
    write, so the chain stays one chain.
    """

    def __init__(self, path: Path, key: bytes, fd: int, fsync: str) -> None:
        self.path = path
        self._key = key
        self._fsync = fsync
        self._max_bytes: int | None = None
        self._observers: list[Callable[[int], None]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._last_write_error: str | None = None
        self._guard = TamperGuard(path, key)
        self._chain = ChainFile(path, key, fd, self._guard)
        self._commit = GroupCommit(self._lock, self._chain, self._guard,
                                   self._refuse_if_unusable)

    @classmethod
    def open(cls, path: Path, key_path: Path, *, fsync: str = "batch",
             check_head: bool = True) -> Self:
        """Open (creating 0600) the log and its key; recover from a torn tail if there is one.

        The file must hold the chain its head state (head.py) names, whole: a log cut short,
        with another record where the last one was, or replaced by another file, is refused
        with AuditTamperedError naming `broker-proxy audit recover`. Only recover itself opens
        with `check_head=False`, to write the record of the gap.
        """
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {sorted(FSYNC_MODES)}, not {fsync!r}")
        path, key_path = Path(path), Path(key_path)
        key = load_key(key_path, create=True)
        head = read_head(head_path(path), key) if check_head else None
        log = cls(path, key, open_live_file(path, head), fsync)
        try:
            with log._lock, log._chain.lock():
                log._start(head, check_head=check_head)
        except OSError as exc:
            log._abandon()
            raise AuditWriteError(f"cannot open audit log {path}: {exc.strerror or exc}") from None
        except BaseException:
            log._abandon()
            raise
        log._commit.start()
        return log

    def _start(self, head: Head | None, *, check_head: bool) -> None:
        """Under the locks, at open: check the file against the head, end a torn tail."""
        drop_unfinished_rotation(self.path, os.fstat(self._chain.fd))
        if head is not None:
            self._adopt(head)
        self._chain.sync_tail()
        if self._chain.pending_torn is not None and check_head:  # recover names it in its gap
            self._chain.write([])
            self._commit.sync(force=True)
        if check_head and (known := self._guard.durable_head()) is not None:
            os.fsync(self._chain.fd)  # the head never names what may not be on disk
            self._guard.write_head(known)

    def _adopt(self, head: Head) -> None:
        """Take the head state as what this writer last saw; a file that differs is refused."""
        self._guard.opening = True
        try:
            self._guard.adopt_head(head, self._chain.fd)
            self._chain.sync_tail()
        except AuditTamperedError as refused:
            raise AuditTamperedError(
                refusal(self.path, self._guard.what or str(refused), head)) from None
        finally:
            self._guard.opening = False

    def _abandon(self) -> None:
        """A failed open: release the file and the head state file."""
        os.close(self._chain.fd)
        self._guard.close()

    def append(self, event: str, *, durable: bool = False, **fields: object) -> dict[str, Any]:
        """Write one record and return it (with seq, ts, prev and mac).

        `durable=True` returns only once the record is on disk: the proxy asks for it before a
        request carrying a secret goes upstream.
        """
        return self.append_records([RecordDraft.build(event, fields)], durable=durable)[-1]

    def append_records(self, drafts: Sequence[RecordDraft], *,
                       durable: bool = False) -> list[dict[str, Any]]:
        """Write several records in one write(2) and one group commit, in order; return them.

        They follow each other in the chain (no other writer's record comes between), and
        `durable=True` returns once all of them are on disk.
        """
        if not drafts:
            raise ValueError("append_records needs at least one record")
        with self._lock:
            self._refuse_if_unusable()
            try:
                with self._chain.lock():
                    written, count = self._write(drafts, durable=durable)
            except OSError as exc:
                self._chain.end = -1
                self._last_write_error = f"cannot write audit log {self.path}: " \
                                         f"{exc.strerror or exc}"
                raise AuditWriteError(self._last_write_error) from None
            self._last_write_error = None
        self._commit.nudge()  # the flush thread syncs (batch mode) and moves the head state on
        for observer in self._observers:
            observer(count)
        return [sealed.record for sealed in written[len(written) - len(drafts):]]

    def _write(self, drafts: Sequence[RecordDraft], *,
               durable: bool) -> tuple[list[SealedRecord], int]:
        """Under the locks: write, sync as the mode says, rotate when full; (records, count)."""
        self._chain.sync_tail()
        before = self._chain.next_seq
        written = self._chain.write(drafts)
        self._commit.wrote(len(drafts))
        self._commit.sync(force=durable or self._fsync == "always")
        count = self._chain.next_seq - before
        if self._max_bytes is not None and self._chain.end >= self._max_bytes:
            os.fsync(self._chain.fd)  # the file it retires is durable before it is archived
            self._commit.unsynced = 0
            self._chain.rotate()
            count += 1
        return written, count

    def append_gap(self, expected_count: int, **fields: object) -> dict[str, Any]:
        """`audit recover` only: write the `audit_gap` record that names what was lost.

        It chains onto the last record still in the file; its seq skips to `expected_count`
        (the records the writer had written) when fewer are there, so the lost seqs are never
        reused, and a torn last line is named in it (`torn_sha256`) instead of a separate note.
        The head state then moves to it, durably.
        """
        draft = RecordDraft.build(GAP_EVENT, fields)
        with self._lock:
            self._refuse_if_unusable()
            try:
                with self._chain.lock():
                    self._chain.sync_tail()
                    draft = draft.adding(gap_from_seq=self._chain.next_seq)
                    if (torn := self._chain.pending_torn) is not None:
                        draft = draft.adding(torn_sha256=line_hash(torn), torn_bytes=len(torn))
                        self._chain.pending_torn = None  # the newline ending it is still written
                    self._chain.next_seq = max(self._chain.next_seq, expected_count)
                    written = self._chain.write([draft])
                    self._commit.sync(force=True)
                    self._guard.write_head(self._guard.durable_head())
            except OSError as exc:
                raise AuditWriteError(f"cannot write audit log {self.path}: "
                                      f"{exc.strerror or exc}") from None
        return written[-1].record

    def ensure_durable(self, seq: int) -> None:
        """Return once the record `seq` this writer appended is on disk (group commit).

        The proxy appends a secret-carrying request's record without waiting, then calls this
        before the request leaves (see DurabilityWaiter): one fsync covers every record written
        before it, so the requests waiting at the same time share it.
        """
        self._commit.ensure_durable(seq)

    def rotate_at(self, max_bytes: int | None) -> None:
        """Rotate the live file once it holds `max_bytes` or more (None: never rotate)."""
        if max_bytes is not None and max_bytes < 4096:
            raise ValueError("audit max bytes must be at least 4096")
        self._max_bytes = max_bytes

    def stamp_records(self, **fields: str) -> None:
        """Put these fields in every record this writer writes from now on (`replica=ID`).

        A replica's chain then names the replica in each record, so records merged from many
        chains still say which broker decided.
        """
        reserved = RESERVED_FIELDS.intersection(fields)
        if reserved:
            raise AuditRecordError(f"audit fields {sorted(reserved)} are set by the log itself")
        self._chain.stamp = {name: clean_string(value) for name, value in fields.items()}

    def add_observer(self, on_written: Callable[[int], None]) -> None:
        """Call `on_written(n)` after each append that wrote n records (metrics); must not raise."""
        self._observers.append(on_written)

    def fingerprint(self, value: str) -> str:
        """A short HMAC of a secret value under the audit key, for telling secret versions apart.

        Never a plain hash: a plain SHA-256 of a low-entropy secret can be brute-forced by
        anyone who reads the log; this one only by whoever also holds the audit key.
        """
        return hmac.digest(self._key, _FINGERPRINT_DOMAIN + value.encode("utf-8"),
                           "sha256").hex()[:16]

    def head(self) -> tuple[int, str]:
        """(records in the chain so far, hash of the last line) as the file holds them now."""
        with self._lock:
            self._refuse_if_unusable()
            try:
                with self._chain.lock():
                    self._chain.sync_tail()
                    return self._chain.next_seq, self._chain.prev
            except OSError as exc:
                self._chain.end = -1
                raise AuditWriteError(
                    f"cannot read audit log {self.path}: {exc.strerror or exc}"
                ) from None

    def problem(self) -> str | None:
        """Why appends would fail now (for /readyz), or None when the log is usable.

        Looks at the file (identity, size, last line) as an append would, and remembers the last
        append's failure (a full disk) until an append succeeds again.
        """
        try:
            self.head()
        except AuditError as exc:
            return str(exc)
        if self._last_write_error is not None:
            # Space came back (someone cleaned up): say ready, or a load balancer that waits for
            # readiness would never send the request whose append proves it.
            with contextlib.suppress(OSError):
                room = os.statvfs(self.path)
                if room.f_bavail * room.f_frsize >= _ROOM_FOR_RECORDS:
                    return None
        return self._last_write_error

    def close(self) -> None:
        """Flush to disk and release the file; appends after this raise AuditWriteError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._commit.stop()
            try:
                self._commit.sync(force=True)
                if self._guard.tampered is None:  # a clean stop leaves the head at the end
                    self._guard.write_head(self._guard.durable_head())
            except OSError as exc:
                raise AuditWriteError(
                    f"cannot write audit log {self.path}: {exc.strerror or exc}"
                ) from None
            finally:
                os.close(self._chain.fd)
                self._guard.close()
                self._commit.nudge()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def read_records(path: Path) -> Iterator[dict[str, Any]]:
        """Records in file order, for `audit tail`; lines that are not records are skipped.

        This does not verify anything: that is `verify_chain`'s job.
        """
        try:
            with open(path, "rb") as handle:
                for line in handle:
                    if not line.endswith(b"\n"):
                        return  # a torn or still-being-written last line
                    record = parse_record(line[:-1])
                    if record is not None:
                        yield record
        except OSError as exc:
            raise AuditWriteError(f"cannot read audit log {path}: {exc.strerror}") from None

    def _refuse_if_unusable(self) -> None:
        """Under the lock: a closed writer, or one that saw its log replaced, writes nothing."""
        if self._closed:
            raise AuditWriteError(f"audit log {self.path} is closed")
        self._guard.refuse_if_tampered()
