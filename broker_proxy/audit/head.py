"""The head state: where the chain ended when its writer last made it durable.

The chain alone cannot show that its newest whole records were cut off, and a writer that
restarts has no memory of what it wrote. The head state is that memory: a small file beside the
log (`audit.log.head`) naming the number of records written, the hash and length of the last
one, the size of the file holding it at that point and that file's identity (device, inode).
A writer updates it only after the log's bytes it names are on disk (so a crash can never leave
the head ahead of the log), and at every clean stop. A start that finds the log shorter than the
head, or another record where the head's last one was, or another file under the log's name,
refuses (see AuditLog.open) until `broker-proxy audit recover` records the gap.

The state is MAC'd with the audit key (forging it needs the key, like forging a record) and kept
in two fixed slots written in turn, each with its own generation number, so a crash in the middle
of an update leaves the previous slot whole. Several writers (worker processes) share the file
under flock(2); the head only ever moves forward.
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from broker_proxy.audit.errors import AuditWriteError
from broker_proxy.audit.sealing import canonical_json

HEAD_VERSION: Final = 1
_SLOT: Final = 1024
_DOMAIN: Final = b"broker-proxy audit head v1\x00"


@dataclass(frozen=True, slots=True)
class Head:
    """The chain's end as its writer last made it durable."""

    count: int  # records in the chain: the next record's seq
    last_hash: str  # SHA-256 of the last record's line
    last_len: int  # bytes of that line, newline excluded
    size: int  # size of the file holding it, at its end
    dev: int  # identity of that file
    ino: int
    gen: int = 0  # which update of the head file this is (the highest valid slot wins)

    @property
    def identity(self) -> tuple[int, int]:
        return self.dev, self.ino

    def describe(self) -> str:
        return f"{self.count} records, the last ending at byte {self.size} (hash " \
               f"{self.last_hash[:16]}...)"


def head_path(log: Path) -> Path:
    """`audit.log` -> `audit.log.head` (not a `*.log`, so no chain is taken for it)."""
    return log.with_name(log.name + ".head")


def _mac(key: bytes, body: dict[str, Any]) -> str:
    return hmac.digest(key, _DOMAIN + canonical_json(body), "sha256").hex()


def _parse_slot(key: bytes, raw: bytes) -> Head | None:
    text = raw.rstrip(b"\0").strip()
    if not text:
        return None
    try:
        data = json.loads(text)
        body = {name: value for name, value in data.items() if name != "mac"}
        if data.get("v") != HEAD_VERSION or not hmac.compare_digest(
                str(data.get("mac", "")), _mac(key, body)):
            return None
        return Head(int(data["count"]), str(data["last_hash"]), int(data["last_len"]),
                    int(data["size"]), int(data["dev"]), int(data["ino"]), int(data["gen"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _read_fd(fd: int, key: bytes) -> tuple[Head | None, bool]:
    """(the newest valid slot, whether the file holds anything at all)."""
    data = os.pread(fd, 2 * _SLOT, 0)
    heads = [head for head in (_parse_slot(key, data[i:i + _SLOT]) for i in (0, _SLOT))
             if head is not None]
    return (max(heads, key=lambda head: head.gen) if heads else None), bool(data.strip(b"\0"))


def read_head(path: Path, key: bytes) -> Head | None:
    """The head state, or None when there is none (a log from before head states existed).

    A head file that exists but holds no valid slot is an error: deleting its content must not
    turn the check off.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuditWriteError(f"cannot read audit head state {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        head, anything = _read_fd(fd, key)
    finally:
        os.close(fd)
    if head is None and anything:
        raise AuditWriteError(f"audit head state {path} does not verify (edited, or made with "
                              "another audit key); run `broker-proxy audit recover`")
    return head


class HeadFile:
    """One writer's handle on the head state file (kept open: updates are frequent)."""

    def __init__(self, path: Path, key: bytes) -> None:
        self.path = path
        self._key = key
        self._fd: int | None = None
        self.written = -1  # the count this handle last saw in the file
        self.closed = False

    def update(self, head: Head, *, force: bool = False) -> None:
        """Write `head` if it is ahead of the file's (or `force`: recover); fsync it."""
        if self.closed:
            return
        if self._fd is None:
            created = not self.path.exists()
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            if created:
                dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        fd = self._fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            current, _anything = _read_fd(fd, self._key)
            if current is not None and current.count >= head.count and not force:
                self.written = current.count
                return
            gen = current.gen + 1 if current is not None else 1
            body = {"v": HEAD_VERSION, "count": head.count, "last_hash": head.last_hash,
                    "last_len": head.last_len, "size": head.size, "dev": head.dev,
                    "ino": head.ino, "gen": gen}
            line = canonical_json({**body, "mac": _mac(self._key, body)})
            os.pwrite(fd, line.ljust(_SLOT, b"\0"), (gen % 2) * _SLOT)
            os.fdatasync(fd)
            self.written = head.count
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self.closed = True
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
