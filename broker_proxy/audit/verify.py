"""Check an audit chain: every record parses, counts up by one, names the previous line's hash
and carries a MAC made with the audit key. The first record that fails is named by file, line
and seq. Every record is also checked against the published record schema
(schemas/audit-record.v1.json): this is the one verifier behind `audit verify`, the report's
integrity statement and the console's "Verify now", so all three give one verdict.

A chain may span rotated files (see files.py): the state (next seq, previous hash) runs on from
one file into the next, so a removed, reordered or edited archive breaks the chain at the first
record after it. The single allowed irregularity is a torn line (see log.py) immediately followed
by an `audit_torn_tail` record that names that line's SHA-256; it is reported in `recovered`.

The one allowed break in the numbering is an `audit_gap` record, written by `broker-proxy audit
recover` when a log was found cut or replaced against its head state: it chains onto the last
record still there, and its seq skips the seqs of the records that were lost (`gap_from_seq` ..
seq - 1), so the loss stays in the evidence. Such gaps are reported in `gaps`, never hidden.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker_proxy.audit.files import chain_files, chains_in
from broker_proxy.audit.log import (
    GAP_EVENT,
    GENESIS_PREV,
    TORN_TAIL_EVENT,
    AuditWriteError,
    canonical_json,
    line_hash,
    load_key,
    record_mac,
)
from broker_proxy.audit.record_schema import RECORD_SCHEMA_FILE, record_problem

# Called with (seq, line hash) for every record that verified; checkpoints use it.
Observer = Callable[[int, str], None]


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    records: int  # records that verified before the first failure (all of them when ok)
    first_bad: tuple[int, int | None, str] | None  # (line number, seq if known, reason)
    path: str = ""  # the file the failure is in; the live file when ok
    recovered: tuple[int, ...] = field(default=())  # line numbers of torn lines recovered from
    files: tuple[str, ...] = field(default=())  # every file checked, in chain order
    last_hash: str = GENESIS_PREV  # hash of the last line that verified
    gaps: tuple[Gap, ...] = field(default=())  # recorded losses (audit_gap records)
    last_seq: int = -1  # seq of the last record that verified

    @property
    def message(self) -> str:
        """`audit.log:17: seq 16: mac does not verify`, or a one-line summary when ok."""
        if self.first_bad is None:
            torn = f", {len(self.recovered)} torn line(s) recovered from" if self.recovered else ""
            spread = f" in {len(self.files)} files" if len(self.files) > 1 else ""
            gaps = "".join(f", recorded gap at line {gap.line_no}: {gap.describe()}"
                           for gap in self.gaps)
            return f"{self.path}: {self.records} records verify{spread}{torn}{gaps}"
        line_no, seq, reason = self.first_bad
        where = f"seq {seq}: " if seq is not None else ""
        return f"{self.path}:{line_no}: {where}{reason}"


@dataclass(frozen=True, slots=True)
class Gap:
    """An `audit_gap` record: records from_seq .. seq - 1 were lost, and the head expected
    `expected` records."""

    line_no: int
    from_seq: int
    seq: int
    expected: int

    def describe(self) -> str:
        lost = (f"seq {self.from_seq}..{self.seq - 1} lost" if self.seq > self.from_seq
                else "no seq lost, the end differed")
        return f"{lost} (the writer had written {self.expected} records)"


class _Bad(Exception):
    def __init__(self, line_no: int, seq: int | None, reason: str) -> None:
        super().__init__(reason)
        self.where = (line_no, seq, reason)


@dataclass(slots=True)
class _State:
    expected_seq: int = 0
    prev: str = GENESIS_PREV
    count: int = 0
    gaps: list[Gap] = field(default_factory=list)


def verify_chain(path: Path, key_path: Path, observe: Observer | None = None) -> VerifyResult:
    """Verify the chain whose live file is `path`, with its rotated files.

    Raises AuditKeyError when the key cannot be used at all.
    """
    key = load_key(Path(key_path), create=False)
    path = Path(path)
    files = chain_files(path)
    if not files:
        return VerifyResult(False, 0, (0, None, "audit log does not exist"), str(path))
    state = _State()
    names = tuple(str(file) for file in files)
    recovered: list[int] = []
    for file in files:
        try:
            data = file.read_bytes()
        except FileNotFoundError:  # removed while we read: that is a gap in the chain
            return VerifyResult(False, state.count, (0, None, "file vanished during verify"),
                                str(file), tuple(recovered), names, state.prev,
                                tuple(state.gaps), state.expected_seq - 1)
        except OSError as exc:
            raise AuditWriteError(f"cannot read audit log {file}: {exc.strerror}") from None
        try:
            recovered += _verify_bytes(key, data, state, observe)
        except _Bad as bad:
            return VerifyResult(False, state.count, bad.where, str(file), tuple(recovered),
                                names, state.prev, tuple(state.gaps), state.expected_seq - 1)
    return VerifyResult(True, state.count, None, str(path), tuple(recovered), names, state.prev,
                        tuple(state.gaps), state.expected_seq - 1)


def verify_path(path: Path, key_path: Path) -> list[VerifyResult]:
    """A chain's live file, or a directory: then every chain in it (one per replica)."""
    path = Path(path)
    if path.is_dir():
        lives = chains_in(path)
        if not lives:
            return [VerifyResult(False, 0, (0, None, "no audit log (*.log) in directory"),
                                 str(path))]
        return [verify_chain(live, key_path) for live in lives]
    return [verify_chain(path, key_path)]


def _verify_bytes(key: bytes, data: bytes, state: _State, observe: Observer | None) -> list[int]:
    lines = data.split(b"\n")
    terminated = lines[:-1]  # a file that ends with "\n" leaves an empty last piece
    unterminated = lines[-1]
    recovered: list[int] = []
    torn: tuple[int, bytes] | None = None
    for line_no, line in enumerate(terminated, start=1):
        record = _as_record(line)
        if record is None:
            if torn is not None:
                raise _Bad(torn[0], None, "line is not a valid record")
            torn = (line_no, line)
            continue
        seq = record["seq"] if type(record.get("seq")) is int else None
        expected = state.expected_seq
        if record.get("event") == GAP_EVENT and seq is not None and seq > expected \
                and record.get("gap_from_seq") == expected:
            expected = seq  # a recorded loss: checked like any record from here on
        _check_record(key, line, record, line_no, expected, state.prev)
        if record["event"] == GAP_EVENT:
            state.gaps.append(Gap(line_no, state.expected_seq, record["seq"],
                                  _int(record.get("expected_records"))))
        if torn is not None:
            if record["event"] not in (TORN_TAIL_EVENT, GAP_EVENT) or not hmac.compare_digest(
                str(record.get("torn_sha256", "")), line_hash(torn[1])
            ):
                raise _Bad(torn[0], None, "line is not a valid record")
            recovered.append(torn[0])
            torn = None
        assert seq is not None  # _check_record refused records without one
        if (problem := record_problem(record)) is not None:
            raise _Bad(line_no, seq, f"{problem} ({RECORD_SCHEMA_FILE})")
        state.count += 1
        state.expected_seq, state.prev = seq + 1, line_hash(line)
        if observe is not None:
            observe(seq, state.prev)
    if torn is not None:
        raise _Bad(torn[0], None, "line is not a valid record")
    if unterminated:
        raise _Bad(len(lines), None, "last line is torn (no trailing newline)")
    return recovered


def _int(value: object) -> int:
    return value if type(value) is int else -1


def _line_mac_holds(key: bytes, line: bytes, mac: object) -> bool:
    """The MAC over the line's own bytes without its `mac` member, as `seal` made it.

    A match proves the line is byte for byte what the writer sealed (the writer MACs only the
    canonical form), so neither the canonical form nor the MAC of the parsed record needs
    computing again: that re-encoding was most of a verify's time. Anything else (an edited
    line, another spelling, a member found twice) falls back to the exact checks.
    """
    if not isinstance(mac, str) or len(mac) != 64:
        return False
    member = b',"mac":"' + mac.encode("ascii", "replace") + b'"'
    at = line.find(member)
    if at == -1 or line.find(member, at + 1) != -1:
        return False
    body = line[:at] + line[at + len(member):]
    return hmac.compare_digest(hmac.digest(key, body, "sha256").hex(), mac)


def _as_record(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _check_record(
    key: bytes, line: bytes, record: dict[str, Any], line_no: int, expected_seq: int, prev: str
) -> None:
    seq = record.get("seq")
    shown_seq = seq if type(seq) is int else None
    mac = record.get("mac")
    # The member order check keeps a `mac` moved elsewhere in the line (same object, other
    # bytes) from passing: json.loads keeps the line's key order.
    keys = list(record)
    if not (keys == sorted(keys) and _line_mac_holds(key, line, mac)):
        # The slow path, for its exact reason. The MAC comes first: an edited record is "mac
        # does not verify" wherever else it breaks.
        try:
            expected_mac = record_mac(key, record)
        except ValueError:  # NaN/Infinity parse but are not JSON we would ever write
            expected_mac = ""
        if (not isinstance(mac, str) or not expected_mac
                or not hmac.compare_digest(mac, expected_mac)):
            raise _Bad(line_no, shown_seq, "mac does not verify")
        if canonical_json(record) != line:
            # Same fields, other bytes (spacing, duplicate keys): not what the writer wrote.
            raise _Bad(line_no, seq, "line is not in canonical form")
    if shown_seq is None or not isinstance(record.get("event"), str):
        raise _Bad(line_no, shown_seq, "record lacks seq or event")
    if seq != expected_seq:
        raise _Bad(line_no, seq, f"seq is not {expected_seq} (records missing or reordered)")
    if record.get("prev") != prev:
        raise _Bad(line_no, seq, "prev does not match the previous record")
