"""What a record may hold: the standard fields, bounded strings, no query strings, a timestamp.

A caller passes plain values; they are cleaned here before sealing, so an agent-controlled string
can never grow a record without bound, and a path never carries its query (which may hold a
secret or personal data).
"""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime
from typing import Final

from broker_proxy.audit.errors import AuditRecordError

# Present in every record, null when they do not apply, so readers see one shape.
STANDARD_FIELDS: Final = (
    "decision",
    "reason",
    "grant",
    "agent",
    "task",
    "secrets",
    "method",
    "scheme",
    "host",
    "port",
    "path",
    "status",
    "duration_ms",
)
RESERVED_FIELDS: Final = frozenset({"seq", "ts", "event", "prev", "mac"})
MAX_STRING: Final = 1024
TRUNCATED_MARK: Final = "…[truncated]"


def now_rfc3339() -> str:
    now = time.time()
    second = int(now)
    return f"{_second_rfc3339(second)}.{int((now - second) * 1000):03d}Z"


@functools.lru_cache(maxsize=4)
def _second_rfc3339(second: int) -> str:
    """"2026-11-28T19:12:05" for a Unix second; formatted once per second, not per record."""
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def clean_string(value: str) -> str:
    if len(value) <= MAX_STRING:
        return value
    return value[: MAX_STRING - len(TRUNCATED_MARK)] + TRUNCATED_MARK


_SEQUENCES = (list, tuple, frozenset, set)
_SETS = (frozenset, set)


def clean_value(name: str, value: object) -> object:
    kind = type(value)
    if kind is str:  # the usual case first: every record has a dozen of these
        return clean_string(value)  # type: ignore[arg-type]
    if value is None or isinstance(value, int):  # bool is an int
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise AuditRecordError(f"audit field {name!r} must be a finite number")
        return value
    if isinstance(value, str):
        return clean_string(value)
    if isinstance(value, _SEQUENCES):
        if not all(isinstance(item, str) for item in value):
            raise AuditRecordError(f"audit field {name!r} must be a list of strings")
        items = sorted(value) if isinstance(value, _SETS) else list(value)
        return [clean_string(item) for item in items]
    raise AuditRecordError(
        f"audit field {name!r} must be a JSON scalar or a list of strings, "
        f"not {type(value).__name__}"
    )


def strip_query(path: object) -> object:
    # A query string may carry a secret (inject: [query]) or personal data; the record keeps
    # only the path. A fragment is never sent, but drop it too in case a caller passes a URL tail.
    if isinstance(path, str):
        for mark in ("?", "#"):
            path = path.split(mark, 1)[0]
    return path
