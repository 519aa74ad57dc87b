"""The writer's file: where the chain goes on, under flock, following the live name, rotating.

Rotation by size (`max_bytes`): once the live file reaches the limit, it is hard-linked to
`<name>.NNNNNN` and a new file holding one `audit_rotated` record (seq continues, `prev` is the
last line's hash of the archived file) is renamed over the live name, so the name never points at
nothing and the chain runs on across files. A writer (thread or process) that finds the live name
pointing at another file than the one it holds reopens the name, without creating it: a log moved
away, deleted or replaced by something that is not a regular file makes every append fail, and
the proxy fails closed instead of writing into a file nobody will read.

A torn last line (a crash or a full disk in the middle of a write) is never truncated: it is
evidence. The next write ends it with a newline and puts an `audit_torn_tail` record first, which
names the torn bytes' SHA-256 and continues the chain from the last whole record.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

from broker_proxy.audit.errors import AuditTamperedError, AuditWriteError
from broker_proxy.audit.files import archives_of, next_archive
from broker_proxy.audit.head import Head
from broker_proxy.audit.record_fields import now_rfc3339
from broker_proxy.audit.records import GENESIS_PREV, RecordDraft, SealedRecord
from broker_proxy.audit.sealing import line_hash, seal
from broker_proxy.audit.tail import parse_record, read_tail
from broker_proxy.audit.tamper import ChainEnd, TamperGuard, identity, refusal

_REOPEN_ATTEMPTS: Final = 64  # many writers rotating at once may move the name on several times
_FLAGS: Final = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC


def open_live_file(path: Path, head: Head | None) -> int:
    """Open (creating 0600) the live file; refuse to start a new chain where one ended."""
    try:
        try:
            if archives_of(path) and not path.exists():
                # Starting a new chain at seq 0 here would make the archives look complete.
                raise AuditWriteError(
                    f"audit log {path} is missing but its rotated files exist; "
                    "run `broker-proxy audit verify`"
                )
            if head is not None and not path.exists():
                raise AuditTamperedError(refusal(path, "is missing", head))
            fd = os.open(path, _FLAGS | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return os.open(path, _FLAGS)
        fsync_dir(path.parent)
        return fd
    except OSError as exc:
        raise AuditWriteError(f"cannot open audit log {path}: {exc.strerror}") from None


class ChainFile:
    """One writer's descriptor of the live file and where the chain stands in it.

    Every method but `lock` runs under the writer's lock and `lock()` (flock).
    """

    def __init__(self, path: Path, key: bytes, fd: int, guard: TamperGuard) -> None:
        self.path = path
        self.fd = fd
        self.identity = identity(os.fstat(fd))
        self.stamp: dict[str, str] = {}  # fields every record of this writer carries
        self.next_seq = 0
        self.prev = GENESIS_PREV
        self.end = -1  # file size after our last write; -1 forces a re-read of the tail
        self.pending_torn: bytes | None = None  # a torn last line still to be recorded
        self._torn_tail = False  # the file does not end with a newline
        self._key = key
        self._guard = guard

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """flock the file the live name points at now, reopening the name if it moved on.

        A file we follow is checked to be a rotation of the one we held only once it is locked:
        nobody can rotate it meanwhile, so the archives between the two stand still.
        """
        held = self._follow_name()
        if held is not None:
            try:
                self._guard.check_rotation(held, self.fd)
            except BaseException:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
                raise
            finally:
                os.close(held)
        locked = self.fd
        try:
            yield
        finally:
            fcntl.flock(locked, fcntl.LOCK_UN)
            if locked != self.fd:  # rotated while locked: the archive is no longer ours
                os.close(locked)

    def _follow_name(self) -> int | None:
        """flock the live file; the descriptor held before following the name, if it moved."""
        held: int | None = None  # the file we held before following the name, kept open
        try:
            for _attempt in range(_REOPEN_ATTEMPTS):
                fcntl.flock(self.fd, fcntl.LOCK_EX)
                try:
                    current = identity(os.stat(self.path))
                except OSError:
                    fcntl.flock(self.fd, fcntl.LOCK_UN)
                    raise
                if current == self.identity:
                    return held
                fcntl.flock(self.fd, fcntl.LOCK_UN)
                old = self._reopen()
                if held is None:
                    held = old
                else:
                    os.close(old)
            raise OSError(errno.EAGAIN, "the audit log keeps being replaced")
        except BaseException:
            if held is not None:
                os.close(held)
            raise

    def _reopen(self) -> int:
        """Another writer rotated the file, or someone replaced it: follow the live name.

        Returns the descriptor of the file held until now, for the caller to check and close.
        Without O_CREAT: if the name is gone, a fresh chain from seq 0 would hide the old one.
        """
        fd = os.open(self.path, _FLAGS)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise OSError(errno.EISDIR, "not a regular file")
        self._guard.known = None
        old, self.fd = self.fd, fd
        self.identity, self.end = identity(info), -1
        with contextlib.suppress(OSError):
            os.fsync(old)  # what this writer put in the old file is durable before we let go
        return old

    def rotate(self) -> None:
        """Under flock of the full (and fsynced) file: archive it, put a new one in its place.

        link + rename keeps the live name valid at every instant; a crash between the two leaves
        two names for one file, which the next open (and verify) recognises and undoes.
        """
        archive = next_archive(self.path)
        os.link(self.path, archive)
        tmp = self.path.with_name(f".{self.path.name}.rotate.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, _FLAGS | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # nobody appends before our first record is in
            old_fd, self.fd = self.fd, fd
            self._torn_tail, self.pending_torn = False, None
            self.write([RecordDraft.rotated(archive.name)])
            os.fsync(fd)
            os.rename(tmp, self.path)
            fsync_dir(self.path.parent)
        except BaseException:
            if self.fd == fd:
                self.fd = old_fd
            self.end, self._guard.known = -1, None
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.identity = identity(os.fstat(fd))
        fcntl.flock(fd, fcntl.LOCK_UN)

    def sync_tail(self) -> None:
        """Learn seq/prev from the file when another writer appended since us."""
        size = os.fstat(self.fd).st_size
        self._guard.check_known(self.fd, size)
        if size == self.end:
            return
        self.pending_torn, self._torn_tail = None, False
        if size == 0:
            self.next_seq, self.prev, self.end = 0, GENESIS_PREV, 0
            return
        last_line, torn = read_tail(self.fd, size)
        if torn:
            self._torn_tail = True
            if parse_record(torn) is None:
                self.pending_torn = torn
            else:
                # Only the newline is missing: the record itself is complete; end it and go on.
                last_line = torn
        if last_line is None:
            self.next_seq, self.prev = 0, GENESIS_PREV
        else:
            last = parse_record(last_line)
            if last is None:
                # Continuing past a record we cannot read would hide where the damage is.
                raise AuditWriteError(
                    f"audit log {self.path} ends with a line that is not a record; "
                    "run `broker-proxy audit verify`"
                )
            self.next_seq, self.prev = last["seq"] + 1, line_hash(last_line)
        self.end = size
        if self.pending_torn is None and not self._torn_tail:
            self._guard.known = ChainEnd(size, self.next_seq, self.prev,
                                         len(last_line) if last_line is not None else 0,
                                         *self.identity)

    def write(self, drafts: Sequence[RecordDraft]) -> list[SealedRecord]:
        """Chain, MAC and write the records in one write(2), after the note of a torn line."""
        out = bytearray(b"\n" if self._torn_tail else b"")
        if self.pending_torn is not None:
            drafts = [RecordDraft.torn_tail(self.pending_torn), *drafts]
        sealed: list[SealedRecord] = []
        seq, prev = self.next_seq, self.prev
        for draft in drafts:
            record = draft.body()
            for name, value in self.stamp.items():
                record.setdefault(name, value)
            record["seq"] = seq
            record["ts"] = now_rfc3339()
            record["prev"] = prev
            line = seal(self._key, record)
            out += line + b"\n"
            sealed.append(SealedRecord(record, line))
            seq, prev = seq + 1, line_hash(line)
        written = os.write(self.fd, bytes(out))
        if written != len(out):
            self.end = -1
            raise OSError(28, "short write (is the disk full?)")
        self.pending_torn, self._torn_tail = None, False
        self.next_seq, self.prev = seq, prev
        info = os.fstat(self.fd)  # the file written (a rotation's new one before its rename)
        self.end = info.st_size
        self._guard.known = ChainEnd(self.end, seq, prev, len(sealed[-1].line) if sealed else 0,
                                     *identity(info))
        return sealed


def drop_unfinished_rotation(path: Path, live: os.stat_result) -> None:
    """A crash between link and rename leaves the newest archive naming the live file: undo it."""
    archives = archives_of(path)
    if archives:
        with contextlib.suppress(OSError):
            if identity(os.stat(archives[-1])) == identity(live):
                os.unlink(archives[-1])


def fsync_dir(directory: Path) -> None:
    """Make a newly created file's directory entry durable, not only its contents."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
