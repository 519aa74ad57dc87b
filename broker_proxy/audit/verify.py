"""Check an audit log's chain: every record parses, counts up by one, names the previous line's
hash and carries a MAC made with the audit key. The first record that fails is named by line.

The single allowed irregularity is a torn line (see log.py) immediately followed by an
`audit_torn_tail` record that names that line's SHA-256; it is reported in `recovered`.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path

from broker_proxy.audit.log import (
    GENESIS_PREV,
    TORN_TAIL_EVENT,
    AuditWriteError,
    canonical_json,
    line_hash,
    load_key,
    record_mac,
)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    records: int  # records that verified before the first failure (all of them when ok)
    first_bad: tuple[int, int | None, str] | None  # (line number, seq if known, reason)
    path: str = ""
    recovered: tuple[int, ...] = field(default=())  # line numbers of torn lines recovered from

    @property
    def message(self) -> str:
        """`audit.log:17: seq 16: mac does not verify`, or a one-line summary when ok."""
        if self.first_bad is None:
            torn = f", {len(self.recovered)} torn line(s) recovered from" if self.recovered else ""
            return f"{self.path}: {self.records} records verify{torn}"
        line_no, seq, reason = self.first_bad
        where = f"seq {seq}: " if seq is not None else ""
        return f"{self.path}:{line_no}: {where}{reason}"


class _Bad(Exception):
    def __init__(self, line_no: int, seq: int | None, reason: str) -> None:
        super().__init__(reason)
        self.where = (line_no, seq, reason)


def verify_chain(path: Path, key_path: Path) -> VerifyResult:
    """Verify the whole file; raises AuditKeyError when the key cannot be used at all."""
    key = load_key(Path(key_path), create=False)
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return VerifyResult(False, 0, (0, None, "audit log does not exist"), name)
    except OSError as exc:
        raise AuditWriteError(f"cannot read audit log {path}: {exc.strerror}") from None

    lines = data.split(b"\n")
    terminated = lines[:-1]  # a file that ends with "\n" leaves an empty last piece
    unterminated = lines[-1]
    count, recovered = 0, []
    expected_seq, prev = 0, GENESIS_PREV
    torn: tuple[int, bytes] | None = None
    try:
        for line_no, line in enumerate(terminated, start=1):
            record = _as_record(line)
            if record is None:
                if torn is not None:
                    raise _Bad(torn[0], None, "line is not a valid record")
                torn = (line_no, line)
                continue
            seq = record["seq"]
            _check_record(key, line, record, line_no, expected_seq, prev)
            if torn is not None:
                if record["event"] != TORN_TAIL_EVENT or not hmac.compare_digest(
                    str(record.get("torn_sha256", "")), line_hash(torn[1])
                ):
                    raise _Bad(torn[0], None, "line is not a valid record")
                recovered.append(torn[0])
                torn = None
            count += 1
            expected_seq, prev = seq + 1, line_hash(line)
        if torn is not None:
            raise _Bad(torn[0], None, "line is not a valid record")
        if unterminated:
            raise _Bad(len(lines), None, "last line is torn (no trailing newline)")
    except _Bad as bad:
        return VerifyResult(False, count, bad.where, name, tuple(recovered))
    return VerifyResult(True, count, None, name, tuple(recovered))


def _as_record(line: bytes) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _check_record(
    key: bytes, line: bytes, record: dict, line_no: int, expected_seq: int, prev: str
) -> None:
    seq = record.get("seq")
    shown_seq = seq if type(seq) is int else None
    mac = record.get("mac")
    # The MAC comes first: an edited record is "mac does not verify" wherever else it breaks.
    try:
        expected_mac = record_mac(key, record)
    except ValueError:  # NaN/Infinity parse but are not JSON we would ever write
        expected_mac = ""
    if not isinstance(mac, str) or not expected_mac or not hmac.compare_digest(mac, expected_mac):
        raise _Bad(line_no, shown_seq, "mac does not verify")
    if shown_seq is None or not isinstance(record.get("event"), str):
        raise _Bad(line_no, shown_seq, "record lacks seq or event")
    if canonical_json(record) != line:
        # Same fields, other bytes (spacing, duplicate keys): not what the writer wrote.
        raise _Bad(line_no, seq, "line is not in canonical form")
    if seq != expected_seq:
        raise _Bad(line_no, seq, f"seq is not {expected_seq} (records missing or reordered)")
    if record.get("prev") != prev:
        raise _Bad(line_no, seq, "prev does not match the previous record")
