"""Paged reads of a large audit log: newest first, filtered, without reading it all per page.

The index holds where each line of the live file starts and, per grant, which lines name it;
it is brought up to date by reading only what was appended since the last look. A page walks
backwards from a cursor (a line number) and stops at the page size or after a bounded number of
lines, handing back the cursor to continue from, so a filter that matches rarely still answers
quickly. The file is only ever read: the writer's lock and chain are not touched.
"""

from __future__ import annotations

import json
import os
import re
import threading
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_PAGE = 200
SCAN_LIMIT = 50_000  # lines looked at per page at most; the answer says where to go on
_GRANT = re.compile(rb'"grant":"(g_[0-9a-f]{16})"')
FILTERS = ("agent", "grant", "secret", "decision", "reason", "event")


@dataclass(frozen=True, slots=True)
class AuditPage:
    records: list[dict[str, Any]]
    next_before: int | None  # pass as `before` for older records; None at the start
    total_lines: int


class AuditIndex:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._reset(None)

    def _reset(self, identity: tuple[int, int] | None) -> None:
        self._identity = identity
        self._starts = array("Q")  # byte offset of each complete line
        self._end = 0  # bytes indexed so far (always at a line boundary)
        self._by_grant: dict[str, array[int]] = {}

    def page(self, filters: dict[str, str], before: int | None, limit: int) -> AuditPage:
        limit = max(1, min(limit, MAX_PAGE))
        with self._lock:
            self._refresh()
            total = len(self._starts)
            start = total if before is None else max(0, min(before, total))
            if "grant" in filters:
                lines = self._by_grant.get(filters["grant"], array("I"))
                candidates = _descending_below(lines, start)
            else:
                candidates = iter(range(start - 1, -1, -1))
            records: list[dict[str, Any]] = []
            scanned = 0
            next_before: int | None = None
            with open(self.path, "rb") as file:
                for line_no in candidates:
                    if scanned >= SCAN_LIMIT or len(records) >= limit:
                        next_before = line_no + 1
                        break
                    scanned += 1
                    record = self._read(file, line_no)
                    if record is not None and _matches(record, filters):
                        record["line"] = line_no
                        records.append(record)
            return AuditPage(records, next_before, total)

    def _read(self, file: Any, line_no: int) -> dict[str, Any] | None:
        begin = self._starts[line_no]
        end = self._starts[line_no + 1] if line_no + 1 < len(self._starts) else self._end
        file.seek(begin)
        try:
            record = json.loads(file.read(end - begin))
        except ValueError:
            return None  # a torn line kept as evidence: `audit verify` reports it
        return record if isinstance(record, dict) else None

    def _refresh(self) -> None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            self._reset(None)
            return
        identity = (stat.st_dev, stat.st_ino)
        if identity != self._identity or stat.st_size < self._end:
            self._reset(identity)  # rotated or replaced: index the new live file
        if stat.st_size == self._end:
            return
        with open(self.path, "rb") as file:
            file.seek(self._end)
            data = file.read(stat.st_size - self._end)
        offset = self._end
        position = 0
        while (newline := data.find(b"\n", position)) != -1:
            line = data[position:newline]
            line_no = len(self._starts)
            self._starts.append(offset + position)
            if (found := _GRANT.search(line)) is not None:
                self._by_grant.setdefault(found.group(1).decode(), array("I")).append(line_no)
            position = newline + 1
        self._end = offset + position  # a partial last line waits for its newline


def _descending_below(lines: array[int], start: int) -> Any:
    # Lines are appended in order: binary search for the first one at or past `start`.
    low, high = 0, len(lines)
    while low < high:
        middle = (low + high) // 2
        if lines[middle] < start:
            low = middle + 1
        else:
            high = middle
    return (lines[i] for i in range(low - 1, -1, -1))


def _matches(record: dict[str, Any], filters: dict[str, str]) -> bool:
    for name, wanted in filters.items():
        if name == "secret":
            if wanted not in (record.get("secrets") or []):
                return False
        elif str(record.get(name)) != wanted:
            return False
    return True
