"""Signed checkpoints of the audit chain: (records, last hash, time) under an Ed25519 key.

The chain alone cannot show that its newest records were cut off at a line boundary. A
checkpoint copied somewhere else (a SIEM, a ticket, another machine) can: if the log later holds
fewer records than a checkpoint names, or another line at that position, `audit verify` says so.
The checkpoint key is Ed25519 rather than the audit HMAC key so that whoever keeps checkpoints
needs only the public key, which cannot forge them.

Checkpoints are JSON lines in their own file (`audit.checkpoints`), never in the log itself.

A checkpoint is bound to the log by its content, not its file name: it names the chain (the hash
of the chain's first record) and the hash of its record number `count`. A copy of the log under
any name is checked against it the same way, and a checkpoint the log being verified cannot
match is a failure, never skipped: a log cut short, or another log, fails.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker_proxy.audit.files import chain_files
from broker_proxy.audit.log import AuditError, AuditLog, canonical_json, line_hash
from broker_proxy.audit.verify import Gap, verify_chain

CHECKPOINT_VERSION = 1

_log = logging.getLogger("broker_proxy.audit")


class CheckpointError(AuditError):
    """The checkpoint key or file cannot be used, or a checkpoint does not match the log."""


@dataclass(frozen=True, slots=True)
class CheckpointPaths:
    key: Path  # private, 0600
    public: Path
    file: Path

    @classmethod
    def in_home(cls, root: Path) -> CheckpointPaths:
        return cls(root / "audit-checkpoint.key", root / "audit-checkpoint.pub",
                   root / "audit.checkpoints")


def load_signing_key(paths: CheckpointPaths, *, create: bool) -> Ed25519PrivateKey:
    """The checkpoint key (raw 32 bytes, 0600), created with its public half when asked."""
    if create and not paths.key.exists():
        key = Ed25519PrivateKey.generate()
        raw = key.private_bytes_raw()
        try:
            fd = os.open(paths.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            pass  # another process won the race; read theirs below
        except OSError as exc:
            raise CheckpointError(f"cannot create checkpoint key {paths.key}: "
                                  f"{exc.strerror}") from None
        else:
            try:
                os.write(fd, raw)
                os.fsync(fd)
            finally:
                os.close(fd)
            paths.public.write_text(base64.b64encode(key.public_key().public_bytes_raw())
                                    .decode() + "\n")
    try:
        info = paths.key.stat()
        raw = paths.key.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint key {paths.key}: {exc.strerror}") from None
    if info.st_mode & 0o077 or not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"checkpoint key {paths.key} is accessible by group or others "
                              "(run chmod 600)")
    if len(raw) != 32:
        raise CheckpointError(f"checkpoint key {paths.key} must be exactly 32 bytes")
    return Ed25519PrivateKey.from_private_bytes(raw)


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(path.read_text().strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint public key {path}: "
                              f"{exc.strerror}") from None
    except ValueError:
        raise CheckpointError(f"checkpoint public key {path} is not a base64 Ed25519 key") from None


def chain_of(live: Path) -> str | None:
    """The chain's identity: the hash of its first record (seq 0), None if that is not there."""
    files = chain_files(live)
    if not files:
        return None
    try:
        with open(files[0], "rb") as handle:
            first = handle.readline()
    except OSError:
        return None
    if not first.endswith(b"\n"):
        return None
    try:
        record = json.loads(first)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("seq") != 0:
        return None
    return line_hash(first[:-1])


def write_checkpoint(log: AuditLog, key: Ed25519PrivateKey, file: Path,
                     copies: tuple[Path, ...] = (),
                     on_copy_error: Callable[[Path, str], None] | None = None,
                     ) -> dict[str, Any] | None:
    """Append a signed checkpoint of the log's current head to `file` and each copy.

    None when the log is empty. A copy that cannot be written is an error after the main file
    got the checkpoint, or, with `on_copy_error`, reported there while the other copies are
    still written.
    """
    count, last_hash = log.head()
    if count == 0:
        return None
    body = {"v": CHECKPOINT_VERSION, "log": log.path.name, "chain": chain_of(log.path),
            "count": count, "last_hash": last_hash,
            "ts": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")}
    checkpoint = {**body, "sig": base64.b64encode(key.sign(canonical_json(body))).decode()}
    for target in (file, *copies):
        try:
            append_checkpoint(target, checkpoint)
        except CheckpointError as error:
            if target == file or on_copy_error is None:
                raise
            on_copy_error(target, str(error))
    return checkpoint


def append_checkpoint(target: Path, checkpoint: dict[str, Any]) -> None:
    """One checkpoint line, appended and fsynced (a copy on another disk must survive a crash)."""
    try:
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            line = canonical_json(checkpoint) + b"\n"
            if os.write(fd, line) != len(line):
                raise OSError(28, "short write (is the disk full?)")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint file {target}: "
                              f"{exc.strerror or exc}") from None


def copy_problem(target: Path) -> str | None:
    """Why a checkpoint copy could not be appended to now (opened for append, nothing written)."""
    try:
        os.close(os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600))
    except OSError as exc:
        return f"cannot write checkpoint file {target}: {exc.strerror or exc}"
    return None


def verify_checkpoints(log_path: Path, key_path: Path, checkpoints: Path,
                       public_key: Path) -> tuple[int, str | None]:
    """(checkpoints that hold, first problem or None): each must be signed and match the chain.

    Every checkpoint in the file must match the log being verified, whatever the log's name.
    """
    public = load_public_key(public_key)
    try:
        lines = checkpoints.read_bytes().splitlines()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint file {checkpoints}: "
                              f"{exc.strerror}") from None
    if not lines:
        return 0, f"{checkpoints}: holds no checkpoint"
    chain = chain_of(log_path)
    wanted: dict[int, list[tuple[int, str]]] = {}  # seq -> [(checkpoint line, last_hash)]
    named_chains: list[tuple[int, int, object]] = []  # (line, count, chain it names)
    for line_no, line in enumerate(lines, start=1):
        try:
            checkpoint = json.loads(line)
            body = {k: v for k, v in checkpoint.items() if k != "sig"}
            public.verify(base64.b64decode(checkpoint["sig"]), canonical_json(body))
            count, last_hash = int(checkpoint["count"]), str(checkpoint["last_hash"])
        except (ValueError, KeyError, TypeError, AttributeError, InvalidSignature):
            return line_no - 1, f"{checkpoints}:{line_no}: checkpoint signature does not verify"
        named_chains.append((line_no, count, checkpoint.get("chain")))
        wanted.setdefault(count - 1, []).append((line_no, last_hash))
    seen: dict[int, str] = {}

    def observe(seq: int, digest: str) -> None:
        if seq in wanted:
            seen[seq] = digest

    result = verify_chain(log_path, key_path, observe)
    if not result.ok:
        return 0, result.message
    for line_no, count, named in named_chains:
        if named is not None and named != chain and not _lost_in_gap(result.gaps, count):
            return 0, (f"{checkpoints}:{line_no}: this checkpoint is of another log (its first "
                       f"record differs from the first record of {log_path})")
    for seq, marks in sorted(wanted.items()):
        for line_no, last_hash in marks:
            if seen.get(seq) != last_hash and _lost_in_gap(result.gaps, seq + 1):
                continue  # the loss is in the log itself, named by an audit_gap record
            if seq not in seen:
                return 0, (f"{checkpoints}:{line_no}: the log has {result.records} records but "
                           f"this checkpoint counts {seq + 1} (records were removed from the "
                           "end)")
            if seen[seq] != last_hash:
                return 0, (f"{checkpoints}:{line_no}: record seq {seq} differs from the one "
                           "this checkpoint signed")
    return len(lines), None


def _lost_in_gap(gaps: tuple[Gap, ...], count: int) -> bool:
    """A checkpoint of `count` records taken before a recorded gap that covers them: the
    records it signed were lost, and an `audit_gap` record (written by `audit recover`) says
    so, chained and MAC'd, so the checkpoint is accounted for rather than failed."""
    return any(count - 1 < gap.seq and count <= gap.expected for gap in gaps)


def latest_checkpoint(checkpoints: Path, public_key: Path,
                      log_path: Path) -> tuple[int, str] | None:
    """(count, last hash) of the newest checkpoint whose signature holds, if any.

    Whatever chain it names: the home's checkpoints are of the home's log, so one the log
    cannot match (another chain under the log's name) must fail the caller's check.
    """
    try:
        lines = checkpoints.read_bytes().splitlines()
        public = load_public_key(public_key)
    except (OSError, CheckpointError):
        return None
    for line in reversed(lines):
        try:
            checkpoint = json.loads(line)
            body = {k: v for k, v in checkpoint.items() if k != "sig"}
            public.verify(base64.b64decode(checkpoint["sig"]), canonical_json(body))
            return int(checkpoint["count"]), str(checkpoint["last_hash"])
        except (ValueError, KeyError, TypeError, AttributeError, InvalidSignature):
            continue
    return None


class CheckpointWriter:
    """Writes a checkpoint every `interval` seconds, and after every `records` new records,
    while the log grows (a daemon thread).

    A copy (`--audit-checkpoint-copy`) that cannot be written never stops the proxy, but is
    never silent either: it is said at start and at each failure (a log line), counted
    (`on_copy_failure`), and named by `problem()` until a checkpoint reaches it again, which
    /readyz reports as degraded. A failing copy gets the newest checkpoint again at the next
    turn, even when the log has not grown.
    """

    def __init__(self, log: AuditLog, key: Ed25519PrivateKey, file: Path, interval: float,
                 *, records: int | None = None, copies: tuple[Path, ...] = (),
                 on_copy_failure: Callable[[], None] | None = None) -> None:
        self._log, self._key, self._file, self._interval = log, key, file, interval
        self._copies = copies
        self._on_copy_failure = on_copy_failure
        self._failing: dict[Path, str] = {}  # copy -> why its last write failed
        self._main_problem: str | None = None
        self._last_checkpoint: dict[str, Any] | None = None
        self._records = records
        self._since = 0
        self._stop = threading.Event()
        self._due = threading.Event()
        self._last_count = -1
        self._thread = threading.Thread(target=self._loop, name="audit-checkpoint", daemon=True)

    def start(self) -> Self:
        for copy in self._copies:
            if (problem := copy_problem(copy)) is not None:
                self._failing[copy] = problem
                _log.warning("audit checkpoint copy will fail: %s (checkpoints stay in %s "
                             "only until it can be written)", problem, self._file)
        if self._records:
            self._log.add_observer(self._count)
        self._thread.start()
        return self

    def problem(self) -> str | None:
        """Why checkpoints do not reach every place they should (for /readyz), or None."""
        problems = ([self._main_problem] if self._main_problem else []) + \
            list(self._failing.values())
        return "; ".join(problems) or None

    def _copy_failed(self, target: Path, problem: str) -> None:
        self._failing[target] = problem
        _log.error("audit checkpoint copy failed: %s", problem)
        if self._on_copy_failure is not None:
            self._on_copy_failure()

    def _count(self, written: int) -> None:
        """On the appending thread: only count and wake the writer, never sign here."""
        self._since += written
        if self._records and self._since >= self._records:
            self._since = 0
            self._due.set()

    def stop(self) -> None:
        """Stop, writing a last checkpoint so a clean shutdown is anchored too."""
        self._stop.set()
        self._due.set()
        self._thread.join(timeout=5)
        self.write_once()

    def write_once(self) -> None:
        # A failing checkpoint must not stop the proxy: the log itself still fails closed.
        with contextlib.suppress(AuditError):
            count, _last = self._log.head()
            if count != self._last_count:
                previous = dict(self._failing)
                failing_before = set(previous)
                self._failing.clear()
                try:
                    written = write_checkpoint(self._log, self._key, self._file, self._copies,
                                               on_copy_error=self._copy_failed)
                except CheckpointError as error:
                    self._failing = previous  # the copies were not tried
                    if self._main_problem != str(error):
                        _log.error("audit checkpoint failed: %s", error)
                    self._main_problem = str(error)
                    return
                self._main_problem = None
                self._last_checkpoint = written
                self._last_count = count
                self._said_recovered(failing_before)
            elif self._failing and self._last_checkpoint is not None:
                self._retry_copies()

    def _retry_copies(self) -> None:
        failing_before = set(self._failing)
        checkpoint = self._last_checkpoint
        assert checkpoint is not None
        for copy in failing_before:
            try:
                append_checkpoint(copy, checkpoint)
            except CheckpointError as error:
                self._copy_failed(copy, str(error))
            else:
                del self._failing[copy]
        self._said_recovered(failing_before)

    def _said_recovered(self, failing_before: set[Path]) -> None:
        for copy in failing_before - set(self._failing):
            _log.warning("audit checkpoint copy %s is written again", copy)

    def _loop(self) -> None:
        while True:
            self._due.wait(self._interval)
            self._due.clear()
            if self._stop.is_set():
                return
            self.write_once()
