"""`broker-proxy audit recover`: record, in the log itself, what a cut or replaced log lost.

A start refuses a log that is shorter than, or different from, the chain its writer last wrote
(head.py). Recovering must neither hide the loss nor rewrite what is left: the chain still there
is checked as `audit verify` checks it (only an unfinished last line may be broken), and one
`audit_gap` record is appended to it, chained and MAC'd like any other, naming what the head
state (and the newest signed checkpoint, when it goes further) expected against what was found.
Its seq skips the lost seqs, so no later record can pose as one of them, and `audit verify`
accepts that skip at an `audit_gap` record only, reporting it every time it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker_proxy.audit.errors import AuditError, AuditWriteError
from broker_proxy.audit.head import head_path, read_head
from broker_proxy.audit.key_file import load_key
from broker_proxy.audit.log import GENESIS_PREV, AuditLog
from broker_proxy.audit.verify import verify_chain

_TORN = "last line is torn (no trailing newline)"


class RecoverError(AuditError):
    """The log cannot be recovered this way (its chain is broken before its end)."""


@dataclass(frozen=True, slots=True)
class Expected:
    """What the writer had written: from the head state or a newer signed checkpoint."""

    count: int
    last_hash: str
    source: str


@dataclass(frozen=True, slots=True)
class Recovery:
    record: dict[str, Any] | None  # the audit_gap record written; None: nothing to recover
    summary: str


def recover_log(path: Path, key_path: Path, *,
                checkpoint: tuple[int, str] | None = None) -> Recovery:
    """Append an `audit_gap` record if the log does not match what was written; else nothing.

    `checkpoint` is the newest signed checkpoint's (count, last hash), which may name records
    the head state had not reached yet (it lags the log by up to one flush after a crash).
    """
    key = load_key(key_path, create=False)
    expected, head_problem = _expected(path, key, checkpoint)
    if head_problem is None and _opens_whole(path, key_path, expected):
        return Recovery(None, f"audit log {path} matches the chain last written: "
                              "nothing to recover")
    wanted = expected.count - 1 if expected is not None else -1
    found = _found(path, key_path, wanted)
    fields: dict[str, Any] = {"decision": None, "found_records": found.count,
                              "found_last_hash": found.last_hash,
                              "by": "broker-proxy audit recover"}
    if expected is None:
        reason = "head_unreadable"
        message = f"the head state could not be used ({head_problem or 'none'}); the log holds " \
                  f"{found.count} records"
        skip_to = found.count
    else:
        fields |= {"expected_records": expected.count, "expected_last_hash": expected.last_hash}
        skip_to = expected.count
        reason, message = _loss(expected, found)
    fields["reason"] = reason
    fields["message"] = message
    with AuditLog.open(path, key_path, check_head=False) as log:
        record = log.append_gap(skip_to, **fields)
    return Recovery(record, f"audit log {path}: {message}; recorded as audit_gap seq "
                            f"{record['seq']}")


@dataclass(frozen=True, slots=True)
class _Found:
    """What the log still holds: whether it exists, its records, the hash of the last one and
    of record `wanted` (the last one written, per what was expected)."""

    exists: bool
    count: int
    last_hash: str
    wanted: int
    wanted_hash: str | None


def _expected(path: Path, key: bytes,
              checkpoint: tuple[int, str] | None) -> tuple[Expected | None, str | None]:
    """(what the writer had written, why the head state could not be used)."""
    head_problem = None
    try:
        head = read_head(head_path(path), key)
    except AuditWriteError as error:
        head, head_problem = None, str(error)
    expected = None
    if head is not None:
        expected = Expected(head.count, head.last_hash, head_path(path).name)
    if checkpoint is not None and (expected is None or checkpoint[0] > expected.count):
        expected = Expected(checkpoint[0], checkpoint[1], "the newest signed checkpoint")
    return expected, head_problem


def _opens_whole(path: Path, key_path: Path, expected: Expected | None) -> bool:
    """The log opens as its writer would and holds what was expected: nothing to recover."""
    try:
        AuditLog.open(path, key_path).close()
    except AuditWriteError:  # refused as tampered, or unreadable: the chain check says why
        return False
    return expected is None or holds(path, key_path, expected.count, expected.last_hash)


def _found(path: Path, key_path: Path, wanted: int) -> _Found:
    """Check the chain still there as `audit verify` does; only its last line may be torn."""
    if not path.exists():
        return _Found(False, 0, GENESIS_PREV, wanted, None)
    found_hash: dict[int, str] = {}

    def observe(seq: int, digest: str) -> None:
        if seq == wanted:
            found_hash[seq] = digest

    result = verify_chain(path, key_path, observe)
    broken = result.first_bad is not None and not (
        result.first_bad[2] == _TORN and result.path == str(path))
    if broken:
        raise RecoverError(f"cannot recover {path}: its chain is broken before its end "
                           f"({result.message}); recover only records a log cut short or "
                           "replaced: keep this file as evidence and start a new log")
    return _Found(True, result.last_seq + 1, result.last_hash, wanted, found_hash.get(wanted))


def _loss(expected: Expected, found: _Found) -> tuple[str, str]:
    """(reason, message) of the gap: what was lost against what was expected."""
    if not found.exists:
        return "missing", f"the log was missing; records seq 0..{expected.count - 1} were lost"
    if found.count < expected.count:
        return "cut", (f"records seq {found.count}..{expected.count - 1} were lost (the log "
                       f"ends {expected.count - found.count} record(s) before the chain "
                       f"last written, per {expected.source})")
    if found.wanted_hash != expected.last_hash:
        return "differs", (f"record seq {found.wanted} differs from the one last written (per "
                           f"{expected.source}): the log's end was rewritten")
    return "replaced", "the log file was replaced by another holding the same records"


def holds(path: Path, key_path: Path, count: int, last_hash: str) -> bool:
    """The log verifies and holds record `count - 1` with this hash (a checkpoint's)."""
    found: list[str] = []

    def observe(seq: int, digest: str) -> None:
        if seq == count - 1:
            found.append(digest)

    result = verify_chain(path, key_path, observe)
    return result.ok and found == [last_hash]
