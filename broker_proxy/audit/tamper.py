"""Tamper checks: the file under the log's name is still the chain this writer wrote.

A writer refuses to go on with a log that is not the one it wrote: a file that shrank, whose
last line is not the one it last saw, whose next record does not chain onto it, or a new file
under the live name that is not a rotation of the one it held (the old file must be an archive
and the new one must start with an `audit_rotated` record chained onto it). Adopting such a file
would restart or rewind the chain, and `audit verify` would then call the cut log complete. The
refusal sticks (AuditTamperedError on every append) until the process is restarted by an
operator who has looked.

The guard also keeps the head state (head.py): what the writer last saw is what it moves the head
file to, so the next start checks the file against it too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import NamedTuple

from broker_proxy.audit.errors import AuditTamperedError
from broker_proxy.audit.files import archives_of
from broker_proxy.audit.head import Head, HeadFile, head_path
from broker_proxy.audit.records import GENESIS_PREV, ROTATED_EVENT, TORN_TAIL_EVENT
from broker_proxy.audit.sealing import line_hash, mac_holds
from broker_proxy.audit.tail import TAIL_CHUNK, parse_record, read_tail

_log = logging.getLogger("broker_proxy.audit")


class ChainEnd(NamedTuple):
    """The chain's end as a writer last saw it (a tuple: it is made on every append)."""

    size: int  # the file's size after the last line
    records: int  # records in the chain: the next record's seq
    last_hash: str  # SHA-256 of the last line
    last_len: int  # bytes of that line, newline excluded
    dev: int  # identity of the file holding it
    ino: int

    def head(self) -> Head:
        return Head(self.records, self.last_hash, self.last_len, self.size, self.dev, self.ino)


def identity(info: os.stat_result) -> tuple[int, int]:
    """(device, inode): which file a descriptor or a name is, whatever it is called now."""
    return info.st_dev, info.st_ino


def refusal(path: Path, what: str, head: Head) -> str:
    """The one line a start on a cut or replaced log fails with."""
    return (f"audit log {path} {what}, against the chain this proxy last wrote "
            f"({head_path(path).name}: {head.describe()}); check it with `broker-proxy audit "
            "verify`, then run `broker-proxy audit recover` to record the gap and start")


class TamperGuard:
    """What one writer last saw of its file, checked on every look; and its head state file.

    Every method but `write_head` and `close` runs under the writer's lock (and flock where it
    reads the file); the head file has a lock of its own, taken after the writer's, never
    before it.
    """

    def __init__(self, path: Path, key: bytes) -> None:
        self.path = path
        self._key = key
        # The chain's end as this writer last saw it; None until the first look and after a
        # rotation.
        self.known: ChainEnd | None = None
        self.tampered: str | None = None  # the refusal, once the file was found not ours
        self.what: str | None = None  # what was found, for the refusal at open
        self.opening = False  # a refusal at open is reported once, by open itself
        self._head = HeadFile(head_path(path), key)
        self._head_lock = threading.Lock()

    def refuse_if_tampered(self) -> None:
        if self.tampered is not None:
            raise AuditTamperedError(self.tampered)

    def tamper(self, what: str) -> AuditTamperedError:
        """Remember (for good) that the file is not the log we wrote, and say it once.

        The head state is moved to what this writer wrote, so the next start refuses the file
        too instead of adopting it (a stop cannot launder the cut).
        """
        if self.tampered is None:
            self.what = what
            self.tampered = (f"audit log {self.path} {what}; refusing to write until an "
                             "operator checks it (`broker-proxy audit verify`, then "
                             "`broker-proxy audit recover`) and restarts")
            if not self.opening:
                _log.error("%s", self.tampered)
                with contextlib.suppress(OSError):
                    self.write_head(self.durable_head())
        return AuditTamperedError(self.tampered)

    def durable_head(self) -> Head | None:
        """The head this writer knows of (its own, or another writer's); None for no records."""
        if self.known is None or self.known.records == 0:
            return None
        return self.known.head()

    def write_head(self, head: Head | None) -> None:
        """Move the head state file on to `head` (never back); fsyncs it."""
        with self._head_lock:
            if self._head.closed:
                return
            if head is not None and head.count > self._head.written:
                self._head.update(head)

    def head_after_sync(self, head: Head | None) -> None:
        """Move the head state on, off the writer's lock: appends never wait for its fsync."""
        try:
            self.write_head(head)
        except OSError as exc:
            _log.warning("cannot update audit head state %s: %s", self._head.path,
                         exc.strerror or exc)

    def close(self) -> None:
        with self._head_lock:
            self._head.close()

    def adopt_head(self, head: Head, fd: int) -> None:
        """At open, under flock: take the head state as what this writer last saw.

        The live file `fd` is then checked as every later look checks it (check_known); a head
        in a rotated file must still be there, with the files after it chained on.
        """
        if identity(os.fstat(fd)) == head.identity:
            self.known = ChainEnd(head.size, head.count, head.last_hash, head.last_len,
                                  head.dev, head.ino)
            return
        for archive in archives_of(self.path):
            try:
                if identity(os.stat(archive)) != head.identity:
                    continue
            except OSError:
                continue
            archive_fd = os.open(archive, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if os.fstat(archive_fd).st_size < head.size:
                    raise self.tamper(f"archive {archive.name} is shorter than the head state")
                last = os.pread(archive_fd, head.last_len, head.size - 1 - head.last_len)
                if line_hash(last) != head.last_hash:
                    raise self.tamper(f"archive {archive.name} no longer holds the record "
                                      "last written")
                self.check_rotation(archive_fd, fd)
            finally:
                os.close(archive_fd)
            return
        raise self.tamper("is another file than the one last written (replaced)")

    def check_known(self, fd: int, size: int) -> None:
        """Under flock: the file still holds what we last saw, and only appends follow it."""
        if self.known is None:
            return
        end, seq, prev, last_len, _dev, _ino = self.known
        if size == end - 1 and prev != GENESIS_PREV and line_hash(
                os.pread(fd, last_len, end - 1 - last_len)) == prev:
            return  # only the last newline is missing: the record is whole, sync_tail ends it
        if size < end:
            raise self.tamper(f"shrank from {end} to {size} bytes (truncated or rewritten)")
        if prev != GENESIS_PREV:
            # One small read: the line we last saw, still in its place (a same-size rewrite).
            last = os.pread(fd, last_len, end - 1 - last_len)
            if line_hash(last) != prev:
                raise self.tamper("no longer ends, where it did, with the record last written")
        if size == end:
            return
        self._check_follows(fd, end, seq, prev, size)

    def _check_follows(self, fd: int, end: int, seq: int, prev: str, size: int) -> None:
        """What another writer appended after `end` starts with the record chained onto it."""
        step = min(size - end, TAIL_CHUNK)
        after = os.pread(fd, step, end).split(b"\n")
        if len(after) < 2:
            return  # only a torn line follows (a crash mid-write): recovered as usual
        following = parse_record(after[0])
        if following is None and len(after) >= 3:
            following = parse_record(after[1])  # a torn line, then its audit_torn_tail record
            if following is not None and following.get("event") != TORN_TAIL_EVENT:
                following = None
        if following is None or following["seq"] != seq or following.get("prev") != prev:
            raise self.tamper("holds records that do not continue the chain this writer wrote")

    def check_rotation(self, old_fd: int, new_fd: int) -> None:
        """The new live file must be a rotation of the one we held, chained onto its end.

        Other writers may have rotated more than once since: every archive after ours must chain
        onto the one before it too.
        """
        held = identity(os.fstat(old_fd))
        later: list[Path] | None = None
        for archive in archives_of(self.path):
            if later is not None:
                later.append(archive)
                continue
            with contextlib.suppress(OSError):
                if identity(os.stat(archive)) == held:
                    later = []
        if later is None:
            raise self.tamper("was replaced by a file that is not its rotation")
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
            raise self.tamper("was replaced by a file that is not its rotation")
