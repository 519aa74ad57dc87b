"""What the audit writer takes (a RecordDraft) and what it produces (a SealedRecord).

A draft is checked and cleaned once, when it is made (no reserved member, bounded strings, no
query string in `path`), and is frozen from then on: what the caller holds afterwards cannot
change what gets sealed. The writer turns each draft into a fresh dict, adds the chain's members
(`seq`, `ts`, `prev`, `mac`) and renders it with the one canonical encoder (sealing.py), so the
line on disk is the same bytes whatever a draft's members were added in: keys are sorted there.

Why frozen dataclasses and not TypedDicts: a record is an open JSON object (events add members
of their own, and the schema allows more), which a TypedDict cannot describe, and a TypedDict
cannot hold the checks a draft passes when it is made. The members themselves stay a plain
dict, the exact object that is serialised, so no conversion sits between the type and the bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from broker_proxy.audit.errors import AuditRecordError
from broker_proxy.audit.record_fields import (
    RESERVED_FIELDS,
    STANDARD_FIELDS,
    clean_string,
    clean_value,
    strip_query,
)
from broker_proxy.audit.sealing import line_hash

GENESIS_PREV: Final = "0" * 64
TORN_TAIL_EVENT: Final = "audit_torn_tail"
GAP_EVENT: Final = "audit_gap"  # written by `audit recover`: see head.py and verify.py
ROTATED_EVENT: Final = "audit_rotated"


@dataclass(frozen=True, slots=True)
class RecordDraft:
    """One record before the writer chains and MACs it: its event and every other member.

    `fields` holds the standard fields (null when they do not apply), the event's own members
    and `event` itself, in the order a written record lists them.
    """

    fields: MappingProxyType[str, object]

    @classmethod
    def of(cls, event: str, **fields: object) -> RecordDraft:
        """A draft of `event` with these members, checked and cleaned (AuditRecordError)."""
        return cls.build(event, fields)

    @classmethod
    def build(cls, event: str, fields: Mapping[str, object]) -> RecordDraft:
        """`of`, with the members in a mapping."""
        if not isinstance(event, str) or not event:
            raise AuditRecordError("audit event must be a non-empty string")
        reserved = RESERVED_FIELDS.intersection(fields)
        if reserved:
            raise AuditRecordError(f"audit fields {sorted(reserved)} are set by the log itself")
        record: dict[str, object] = dict.fromkeys(STANDARD_FIELDS)
        record["secrets"] = []
        for name, value in fields.items():
            record[name] = clean_value(name, value)
        record["path"] = strip_query(record["path"])
        record["event"] = clean_string(event)
        return cls(MappingProxyType(record))

    @classmethod
    def torn_tail(cls, torn: bytes) -> RecordDraft:
        """The log's own note that the line before it was torn by a crash, kept as evidence."""
        return cls._own(TORN_TAIL_EVENT, torn_sha256=line_hash(torn), torn_bytes=len(torn),
                        message="the previous line is torn; it is kept as evidence")

    @classmethod
    def rotated(cls, previous_file: str) -> RecordDraft:
        """The first record of a new live file, chained onto the archive `previous_file`."""
        return cls._own(ROTATED_EVENT, reason="rotated", previous_file=previous_file)

    @classmethod
    def _own(cls, event: str, **fields: object) -> RecordDraft:
        """A record the log writes itself: its members are known, so they skip the cleaning."""
        record: dict[str, object] = {**dict.fromkeys(STANDARD_FIELDS), "secrets": [],
                                     "event": event}
        record.update(fields)  # a standard field (reason) keeps its place
        return cls(MappingProxyType(record))

    @property
    def event(self) -> str:
        return str(self.fields["event"])

    def adding(self, **fields: object) -> RecordDraft:
        """This draft with more members, which the writer learns only under its lock (a gap)."""
        return RecordDraft(MappingProxyType({**self.fields, **fields}))

    def body(self) -> dict[str, Any]:
        """A fresh dict of the members, for the writer to add the chain's members to."""
        return self.fields.copy()  # the dict's own copy: dict(proxy) goes key by key


@dataclass(frozen=True, slots=True)
class SealedRecord:
    """One record as written: its members (chain members and `mac` included) and its line."""

    record: dict[str, Any]  # what `AuditLog.append` returns and `audit tail` shows
    line: bytes  # the bytes on disk, newline excluded: what the MAC and the next `prev` cover

    @property
    def seq(self) -> int:
        return int(self.record["seq"])

    @property
    def hash(self) -> str:
        """The next record's `prev`."""
        return line_hash(self.line)
