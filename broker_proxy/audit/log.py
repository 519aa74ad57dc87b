"""The audit log: append-only, hash-chained, HMAC'd JSON lines.

Every record names the SHA-256 of the previous line (`prev`) and carries an HMAC-SHA256 of
itself under a key that only the proxy's home holds (`mac`), so removing, reordering or editing a
record breaks the chain at that record, and forging one needs the key.

Two things the chain alone cannot show, by design: the loss of the newest records when the file is
cut exactly at a line boundary (there is no external anchor), and a rewrite by someone holding the
key.

A torn last line (a crash or a full disk in the middle of a write) is never truncated: it is
evidence. The next writer ends it with a newline and appends an `audit_torn_tail` record that
names the torn bytes' SHA-256 and continues the chain from the last whole record; `verify_chain`
accepts exactly that and nothing else.

Rotation by size (`max_bytes`): once the live file reaches the limit, it is hard-linked to
`<name>.NNNNNN` and a new file holding one `audit_rotated` record (seq continues, `prev` is the
last line's hash of the archived file) is renamed over the live name, so the name never points at
nothing and the chain runs on across files. A writer (thread or process) that finds the live name
pointing at another file than the one it holds reopens the name, without creating it: a log moved
away, deleted or replaced by something that is not a regular file makes every append fail, and
the proxy fails closed instead of writing into a file nobody will read.

A writer also refuses to go on with a log that is not the one it wrote: a file that shrank, whose
last line is not the one it last saw, whose next record does not chain onto it, or a new file
under the live name that is not a rotation of the one it held (the old file must be an archive
and the new one must start with an `audit_rotated` record chained onto it). Adopting such a file
would restart or rewind the chain, and `audit verify` would then call the cut log complete. The
refusal sticks (AuditTamperedError on every append) until the process is restarted by an
operator who has looked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hmac
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, Self

from broker_proxy.audit.errors import (
    AuditError,
    AuditKeyError,
    AuditRecordError,
    AuditTamperedError,
    AuditWriteError,
)
from broker_proxy.audit.files import ARCHIVE_DIGITS, archives_of
from broker_proxy.audit.head import Head, HeadFile, head_path, read_head
from broker_proxy.audit.key_file import KEY_BYTES, load_key
from broker_proxy.audit.record_fields import (
    MAX_STRING,
    RESERVED_FIELDS,
    STANDARD_FIELDS,
    TRUNCATED_MARK,
    clean_string,
    clean_value,
    now_rfc3339,
    strip_query,
)
from broker_proxy.audit.sealing import canonical_json, line_hash, mac_holds, record_mac, seal
from broker_proxy.audit.tail import TAIL_CHUNK, parse_record, read_tail

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
    "canonical_json",
    "line_hash",
    "load_key",
    "record_mac",
    "seal",
]

_log = logging.getLogger("broker_proxy.audit")

GENESIS_PREV: Final = "0" * 64
TORN_TAIL_EVENT: Final = "audit_torn_tail"
GAP_EVENT: Final = "audit_gap"  # written by `audit recover`: see head.py and verify.py
ROTATED_EVENT: Final = "audit_rotated"
_FINGERPRINT_DOMAIN: Final = b"broker-proxy secret fingerprint v1\x00"
_REOPEN_ATTEMPTS: Final = 64  # many writers rotating at once may move the name on several times
FSYNC_MODES: Final = frozenset({"always", "batch"})
BATCH_INTERVAL: Final = 0.050  # seconds between fsyncs in "batch" mode, at most
# Unsynced records that make an append fsync itself in "batch" mode: a backstop for when the
# flush thread falls behind (it normally syncs every BATCH_INTERVAL, off the appending thread).
BATCH_RECORDS: Final = 1024
BATCH_BACKSTOP_INTERVAL: Final = 4 * BATCH_INTERVAL

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
        self._fd = fd
        self._identity = _identity(os.fstat(fd))
        self._fsync = fsync
        self._max_bytes: int | None = None
        self._observers: list[Callable[[int], None]] = []
        self._stamp: dict[str, str] = {}  # fields every record of this writer carries
        self._lock = threading.Lock()
        self._durable_lock = threading.Lock()  # serialises group-commit fsyncs
        self._durable_seq = -1  # every record up to this seq is known to be on disk
        self._next_seq = 0
        self._prev = GENESIS_PREV
        self._end = -1  # file size after our last write; -1 forces a re-read of the tail
        self._pending_torn: bytes | None = None  # a torn last line still to be recorded
        self._torn_tail = False  # the file does not end with a newline
        self._unsynced = 0
        self._last_sync = time.monotonic()
        self._closed = False
        # (file size, next seq, hash and length of the last line) as this writer last saw them,
        # checked on every look at the file; None until the first look and after a rotation.
        self._known: tuple[int, int, str, int] | None = None
        self._tampered: str | None = None
        self._tamper_what: str | None = None
        self._last_write_error: str | None = None
        self._dirty = threading.Event()
        self._flusher: threading.Thread | None = None
        self._head = HeadFile(head_path(path), key)
        self._head_lock = threading.Lock()  # taken after _lock, never before it
        self._opening = False  # a refusal at open is reported once, by open itself

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
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
        try:
            try:
                if archives_of(path) and not path.exists():
                    # Starting a new chain at seq 0 here would make the archives look complete.
                    raise AuditWriteError(
                        f"audit log {path} is missing but its rotated files exist; "
                        "run `broker-proxy audit verify`"
                    )
                if head is not None and not path.exists():
                    raise AuditTamperedError(_refusal(path, "is missing", head))
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
                created = True
            except FileExistsError:
                fd = os.open(path, flags)
                created = False
            if created:
                _fsync_dir(path.parent)
        except OSError as exc:
            raise AuditWriteError(f"cannot open audit log {path}: {exc.strerror}") from None
        log = cls(path, key, fd, fsync)
        try:
            with log._lock, log._file_lock():
                _drop_unfinished_rotation(path, os.fstat(log._fd))
                if head is not None:
                    log._opening = True
                    try:
                        log._adopt_head(head)
                        log._sync_tail()
                    except AuditTamperedError as refused:
                        raise AuditTamperedError(
                            _refusal(path, log._tamper_what or str(refused), head)) from None
                    finally:
                        log._opening = False
                log._sync_tail()
                if log._pending_torn is not None and check_head:  # recover names it in its gap
                    log._write_locked([])
                    log._sync(force=True)
                if check_head and (known := log._durable_head()) is not None:
                    os.fsync(log._fd)  # the head never names what may not be on disk
                    log._write_head(known)
        except OSError as exc:
            os.close(fd)
            log._head.close()
            raise AuditWriteError(f"cannot open audit log {path}: {exc.strerror or exc}") from None
        except BaseException:
            os.close(fd)
            log._head.close()
            raise
        # The flush thread also moves the head state on, in both fsync modes.
        log._flusher = threading.Thread(target=log._flush_loop, name="audit-fsync", daemon=True)
        log._flusher.start()
        return log

    def append(self, event: str, *, durable: bool = False, **fields: object) -> dict[str, Any]:
        """Write one record and return it (with seq, ts, prev and mac).

        `durable=True` returns only once the record is on disk: the proxy asks for it before a
        request carrying a secret goes upstream.
        """
        record = self._build(event, fields)
        with self._lock:
            self._refuse_if_unusable()
            try:
                with self._file_lock():
                    self._sync_tail()
                    before = self._next_seq
                    written = self._write_locked([record])
                    self._unsynced += 1
                    self._sync(force=durable or self._fsync == "always")
                    count = self._next_seq - before
                    if self._max_bytes is not None and self._end >= self._max_bytes:
                        self._rotate_locked()
                        count += 1
            except OSError as exc:
                self._end = -1
                self._last_write_error = f"cannot write audit log {self.path}: " \
                                         f"{exc.strerror or exc}"
                raise AuditWriteError(self._last_write_error) from None
            self._last_write_error = None
        self._dirty.set()  # the flush thread syncs (batch mode) and moves the head state on
        for observer in self._observers:
            observer(count)
        return written

    def append_gap(self, expected_count: int, **fields: object) -> dict[str, Any]:
        """`audit recover` only: write the `audit_gap` record that names what was lost.

        It chains onto the last record still in the file; its seq skips to `expected_count`
        (the records the writer had written) when fewer are there, so the lost seqs are never
        reused, and a torn last line is named in it (`torn_sha256`) instead of a separate note.
        The head state then moves to it, durably.
        """
        record = self._build(GAP_EVENT, fields)
        with self._lock:
            self._refuse_if_unusable()
            try:
                with self._file_lock():
                    self._sync_tail()
                    record["gap_from_seq"] = self._next_seq
                    if self._pending_torn is not None:
                        record["torn_sha256"] = line_hash(self._pending_torn)
                        record["torn_bytes"] = len(self._pending_torn)
                        self._pending_torn = None  # the newline that ends it is still written
                    self._next_seq = max(self._next_seq, expected_count)
                    written = self._write_locked([record])
                    self._sync(force=True)
                    self._write_head(self._durable_head())
            except OSError as exc:
                raise AuditWriteError(f"cannot write audit log {self.path}: "
                                      f"{exc.strerror or exc}") from None
        return written

    def ensure_durable(self, seq: int) -> None:
        """Return once the record `seq` this writer appended is on disk (group commit).

        The proxy appends a secret-carrying request's record without waiting, then calls this
        before the request leaves (see DurabilityWaiter): one fsync covers every record written
        before it, so the requests waiting at the same time share it.
        The fsync runs on a duplicate of the descriptor so a rotation meanwhile cannot close it
        under us (a rotation fsyncs the file it retires itself).
        """
        with self._durable_lock:
            if self._durable_seq >= seq:
                return
            with self._lock:
                self._refuse_if_unusable()
                target = self._next_seq - 1
                try:
                    fd = os.dup(self._fd)
                except OSError as exc:
                    raise AuditWriteError(
                        f"cannot write audit log {self.path}: {exc.strerror or exc}") from None
            try:
                os.fsync(fd)
            except OSError as exc:
                raise AuditWriteError(
                    f"cannot write audit log {self.path}: {exc.strerror or exc}") from None
            finally:
                os.close(fd)
            self._durable_seq = max(self._durable_seq, target)
            with self._lock:
                if self._next_seq - 1 == target:  # nothing written since: batch mode is even
                    self._unsynced = 0
                    self._last_sync = time.monotonic()

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
        self._stamp = {name: clean_string(value) for name, value in fields.items()}

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
                with self._file_lock():
                    self._sync_tail()
                    return self._next_seq, self._prev
            except OSError as exc:
                self._end = -1
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
            try:
                self._sync(force=True)
                if self._tampered is None:  # a clean stop leaves the head exactly at the end
                    self._write_head(self._durable_head())
            except OSError as exc:
                raise AuditWriteError(
                    f"cannot write audit log {self.path}: {exc.strerror or exc}"
                ) from None
            finally:
                os.close(self._fd)
                with self._head_lock:
                    self._head.close()
                self._dirty.set()

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
        if self._tampered is not None:
            raise AuditTamperedError(self._tampered)

    def _tamper(self, what: str) -> AuditTamperedError:
        """Remember (for good) that the file is not the log we wrote, and say it once.

        The head state is moved to what this writer wrote, so the next start refuses the file
        too instead of adopting it (a stop cannot launder the cut).
        """
        if self._tampered is None:
            self._tamper_what = what
            self._tampered = (f"audit log {self.path} {what}; refusing to write until an "
                              "operator checks it (`broker-proxy audit verify`, then "
                              "`broker-proxy audit recover`) and restarts")
            if not self._opening:
                _log.error("%s", self._tampered)
                with contextlib.suppress(OSError):
                    self._write_head(self._durable_head())
        return AuditTamperedError(self._tampered)

    def _adopt_head(self, head: Head) -> None:
        """At open, under flock: take the head state as what this writer last saw.

        The live file is then checked as every later look checks it (_check_known); a head
        in a rotated file must still be there, with the files after it chained on.
        """
        if _identity(os.fstat(self._fd)) == head.identity:
            self._known = (head.size, head.count, head.last_hash, head.last_len)
            return
        for archive in archives_of(self.path):
            try:
                if _identity(os.stat(archive)) != head.identity:
                    continue
            except OSError:
                continue
            fd = os.open(archive, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if os.fstat(fd).st_size < head.size:
                    raise self._tamper(f"archive {archive.name} is shorter than the head state")
                last = os.pread(fd, head.last_len, head.size - 1 - head.last_len)
                if line_hash(last) != head.last_hash:
                    raise self._tamper(f"archive {archive.name} no longer holds the record "
                                       "last written")
                self._check_rotation(fd, self._fd)
            finally:
                os.close(fd)
            return
        raise self._tamper("is another file than the one last written (replaced)")

    def _durable_head(self) -> Head | None:
        """Under the lock: the head this writer knows of (its own, or another writer's)."""
        if self._known is None or self._known[1] == 0:
            return None
        end, count, prev, last_len = self._known
        return Head(count, prev, last_len, end, *self._identity)

    def _write_head(self, head: Head | None) -> None:
        with self._head_lock:
            if self._closed and self._head.closed:
                return
            if head is not None and head.count > self._head.written:
                self._head.update(head)

    def _check_known(self, size: int) -> None:
        """Under flock: the file still holds what we last saw, and only appends follow it."""
        if self._known is None:
            return
        end, seq, prev, last_len = self._known
        if size == end - 1 and prev != GENESIS_PREV and line_hash(
                os.pread(self._fd, last_len, end - 1 - last_len)) == prev:
            return  # only the last newline is missing: the record is whole, _sync_tail ends it
        if size < end:
            raise self._tamper(f"shrank from {end} to {size} bytes (truncated or rewritten)")
        if prev != GENESIS_PREV:
            # One small read: the line we last saw, still in its place (a same-size rewrite).
            last = os.pread(self._fd, last_len, end - 1 - last_len)
            if line_hash(last) != prev:
                raise self._tamper("no longer ends, where it did, with the record last written")
        if size == end:
            return
        step = min(size - end, TAIL_CHUNK)
        after = os.pread(self._fd, step, end).split(b"\n")
        if len(after) < 2:
            return  # only a torn line follows (a crash mid-write): recovered as usual
        following = parse_record(after[0])
        if following is None and len(after) >= 3:
            following = parse_record(after[1])  # a torn line, then its audit_torn_tail record
            if following is not None and following.get("event") != TORN_TAIL_EVENT:
                following = None
        if following is None or following["seq"] != seq or following.get("prev") != prev:
            raise self._tamper("holds records that do not continue the chain this writer wrote")

    def _check_rotation(self, old_fd: int, new_fd: int) -> None:
        """The new live file must be a rotation of the one we held, chained onto its end.

        Other writers may have rotated more than once since: every archive after ours must chain
        onto the one before it too.
        """
        held = _identity(os.fstat(old_fd))
        later: list[Path] | None = None
        for archive in archives_of(self.path):
            if later is not None:
                later.append(archive)
                continue
            with contextlib.suppress(OSError):
                if _identity(os.stat(archive)) == held:
                    later = []
        if later is None:
            raise self._tamper("was replaced by a file that is not its rotation")
        previous = old_fd
        try:
            for archive in later:
                fd = os.open(archive, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    self._check_chained_on(previous, fd)
                finally:
                    if previous != old_fd:
                        os.close(previous)
                previous = fd
            self._check_chained_on(previous, new_fd)
        finally:
            if previous != old_fd:
                os.close(previous)

    def _check_chained_on(self, before: int, after: int) -> None:
        last, _torn = read_tail(before, os.fstat(before).st_size)
        first = parse_record(os.pread(after, TAIL_CHUNK, 0).split(b"\n", 1)[0])
        if (last is None or first is None or first.get("event") != ROTATED_EVENT
                or first.get("prev") != line_hash(last) or not mac_holds(self._key, first)):
            raise self._tamper("was replaced by a file that is not its rotation")

    def _build(self, event: str, fields: dict[str, object]) -> dict[str, Any]:
        if not isinstance(event, str) or not event:
            raise AuditRecordError("audit event must be a non-empty string")
        reserved = RESERVED_FIELDS.intersection(fields)
        if reserved:
            raise AuditRecordError(f"audit fields {sorted(reserved)} are set by the log itself")
        record: dict[str, Any] = dict.fromkeys(STANDARD_FIELDS)
        record["secrets"] = []
        for name, value in fields.items():
            record[name] = clean_value(name, value)
        record["path"] = strip_query(record["path"])
        record["event"] = clean_string(event)
        return record

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """flock the file the live name points at now, reopening the name if it moved on.

        A file we follow is checked to be a rotation of the one we held only once it is locked:
        nobody can rotate it meanwhile, so the archives between the two stand still.
        """
        held: int | None = None  # the file we held before following the name, kept open
        try:
            for _attempt in range(_REOPEN_ATTEMPTS):
                fcntl.flock(self._fd, fcntl.LOCK_EX)
                try:
                    current = _identity(os.stat(self.path))
                except OSError:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                    raise
                if current == self._identity:
                    break
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                old = self._reopen()
                if held is None:
                    held = old
                else:
                    os.close(old)
            else:
                raise OSError(errno.EAGAIN, "the audit log keeps being replaced")
            if held is not None:
                try:
                    self._check_rotation(held, self._fd)
                except BaseException:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                    raise
        finally:
            if held is not None:
                os.close(held)
        locked = self._fd
        try:
            yield
        finally:
            fcntl.flock(locked, fcntl.LOCK_UN)
            if locked != self._fd:  # rotated while locked: the archive is no longer ours
                os.close(locked)

    def _reopen(self) -> int:
        """Another writer rotated the file, or someone replaced it: follow the live name.

        Returns the descriptor of the file held until now, for the caller to check and close.
        Without O_CREAT: if the name is gone, a fresh chain from seq 0 would hide the old one.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise OSError(errno.EISDIR, "not a regular file")
        self._known = None
        old, self._fd = self._fd, fd
        self._identity, self._end = _identity(info), -1
        with contextlib.suppress(OSError):
            os.fsync(old)  # what this writer put in the old file is durable before we let go
        return old

    def _rotate_locked(self) -> None:
        """Under flock of the full file: archive it and put a new file, chained on, in its place.

        link + rename keeps the live name valid at every instant; a crash between the two leaves
        two names for one file, which the next open (and verify) recognises and undoes.
        """
        from broker_proxy.audit.files import next_archive

        os.fsync(self._fd)
        self._unsynced = 0
        archive = next_archive(self.path)
        os.link(self.path, archive)
        tmp = self.path.with_name(f".{self.path.name}.rotate.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # nobody appends before our first record is in
            old_fd, self._fd = self._fd, fd
            self._torn_tail, self._pending_torn = False, None
            self._write_locked([{
                **dict.fromkeys(STANDARD_FIELDS),
                "secrets": [],
                "event": ROTATED_EVENT,
                "reason": "rotated",
                "previous_file": archive.name,
            }])
            os.fsync(fd)
            os.rename(tmp, self.path)
            _fsync_dir(self.path.parent)
        except BaseException:
            if self._fd == fd:
                self._fd = old_fd
            self._end, self._known = -1, None
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._identity = _identity(os.fstat(fd))
        fcntl.flock(fd, fcntl.LOCK_UN)

    def _sync_tail(self) -> None:
        """Under flock: learn seq/prev from the file when another writer appended since us."""
        size = os.fstat(self._fd).st_size
        self._check_known(size)
        if size == self._end:
            return
        self._pending_torn, self._torn_tail = None, False
        if size == 0:
            self._next_seq, self._prev, self._end = 0, GENESIS_PREV, 0
            return
        last_line, torn = read_tail(self._fd, size)
        if torn:
            self._torn_tail = True
            whole = parse_record(torn)
            if whole is None:
                self._pending_torn = torn
            else:
                # Only the newline is missing: the record itself is complete; end it and go on.
                last_line = torn
        if last_line is None:
            self._next_seq, self._prev = 0, GENESIS_PREV
        else:
            last = parse_record(last_line)
            if last is None:
                # Continuing past a record we cannot read would hide where the damage is.
                raise AuditWriteError(
                    f"audit log {self.path} ends with a line that is not a record; "
                    "run `broker-proxy audit verify`"
                )
            self._next_seq, self._prev = last["seq"] + 1, line_hash(last_line)
        self._end = size
        if self._pending_torn is None and not self._torn_tail:
            self._known = (size, self._next_seq, self._prev,
                           len(last_line) if last_line is not None else 0)

    def _write_locked(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Under flock: chain, MAC and write the records in one write(2); return the last."""
        out = bytearray()
        if self._torn_tail:
            out += b"\n"
        if self._pending_torn is not None:
            torn = self._pending_torn
            records = [
                {
                    **dict.fromkeys(STANDARD_FIELDS),
                    "secrets": [],
                    "event": TORN_TAIL_EVENT,
                    "torn_sha256": line_hash(torn),
                    "torn_bytes": len(torn),
                    "message": "the previous line is torn; it is kept as evidence",
                },
                *records,
            ]
        last: dict[str, Any] = {}
        seq, prev = self._next_seq, self._prev
        line = b""
        for record in records:
            for name, value in self._stamp.items():
                record.setdefault(name, value)
            record["seq"] = seq
            record["ts"] = now_rfc3339()
            record["prev"] = prev
            line = seal(self._key, record)
            out += line + b"\n"
            seq, prev, last = seq + 1, line_hash(line), record
        written = os.write(self._fd, bytes(out))
        if written != len(out):
            self._end = -1
            raise OSError(28, "short write (is the disk full?)")
        self._pending_torn, self._torn_tail = None, False
        self._next_seq, self._prev = seq, prev
        self._end = os.fstat(self._fd).st_size
        self._known = (self._end, seq, prev, len(line))
        return last

    def _sync(self, *, force: bool) -> None:
        """fsync now if forced, or in batch mode once enough records or time have piled up."""
        if self._unsynced == 0 and not force:
            return
        # Backstops only: the flush thread normally syncs every BATCH_INTERVAL by itself.
        due = (
            self._unsynced >= BATCH_RECORDS
            or time.monotonic() - self._last_sync >= BATCH_BACKSTOP_INTERVAL
        )
        if force or due:
            os.fsync(self._fd)
            self._unsynced = 0
            self._last_sync = time.monotonic()
            self._durable_seq = max(self._durable_seq, self._next_seq - 1)

    def _flush_loop(self) -> None:
        """Batch mode: fsync what was written within ~50 ms, off the appending thread.

        The fsync runs on a duplicate descriptor without holding the writer's lock, so appends
        (on the proxy's event loop) never wait behind a background fsync.
        """
        while True:
            self._dirty.wait()
            if self._closed:
                return
            time.sleep(BATCH_INTERVAL)
            with self._lock:
                if self._closed:
                    return
                self._dirty.clear()
                # Taken before the fsync below: what it names is on disk once that returns
                # (or already was, when nothing is unsynced).
                head = self._durable_head() if self._tampered is None else None
                if self._unsynced == 0:
                    fd = -1  # an fsync for a waiting request covered it already
                else:
                    target, covered = self._next_seq - 1, self._unsynced
                    try:
                        fd = os.dup(self._fd)
                    except OSError:
                        continue  # resurfaces on the next append or close, which report it
            if fd == -1:
                self._head_after_sync(head)
                continue
            try:
                os.fsync(fd)
            except OSError:
                continue  # likewise
            finally:
                os.close(fd)
            with self._lock:
                self._durable_seq = max(self._durable_seq, target)
                self._unsynced = max(0, self._unsynced - covered)
                self._last_sync = time.monotonic()
            self._head_after_sync(head)

    def _head_after_sync(self, head: Head | None) -> None:
        """Move the head state on, off the writer's lock: appends never wait for its fsync."""
        try:
            self._write_head(head)
        except OSError as exc:
            _log.warning("cannot update audit head state %s: %s", self._head.path,
                         exc.strerror or exc)


def _refusal(path: Path, what: str, head: Head) -> str:
    """The one line a start on a cut or replaced log fails with."""
    return (f"audit log {path} {what}, against the chain this proxy last wrote "
            f"({head_path(path).name}: {head.describe()}); check it with `broker-proxy audit "
            "verify`, then run `broker-proxy audit recover` to record the gap and start")


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def _drop_unfinished_rotation(path: Path, live: os.stat_result) -> None:
    """A crash between link and rename leaves the newest archive naming the live file: undo it."""
    archives = archives_of(path)
    if archives:
        with contextlib.suppress(OSError):
            if _identity(os.stat(archives[-1])) == _identity(live):
                os.unlink(archives[-1])


def _fsync_dir(directory: Path) -> None:
    """Make a newly created file's directory entry durable, not only its contents."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
