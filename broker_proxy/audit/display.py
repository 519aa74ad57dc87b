"""One audit record as one line a person reads: `broker-proxy audit tail` and the demo."""

from __future__ import annotations

import json

from broker_proxy.audit.events import EXTRA_FIELDS


def _shown(value: object) -> str:
    """Printable text only: a task or path from an agent must not drive the terminal."""
    text = value if isinstance(value, str) else json.dumps(value)
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def format_record(record: dict[str, object]) -> str:
    parts = [_shown(record.get("ts", "")), f"#{record.get('seq')}", _shown(record.get("event"))]
    for key in ("decision", "reason", "grant", "agent"):
        if record.get(key) is not None:
            parts.append(f"{key}={_shown(record[key])}")
    if record.get("secrets"):
        parts.append("secrets=" + ",".join(map(_shown, record["secrets"])))  # type: ignore[call-overload]
    if record.get("host"):
        parts.append(_shown(f"{record.get('method')} {record.get('scheme')}://"
                            f"{record.get('host')}:{record.get('port')}{record.get('path') or ''}"))
    if record.get("status") is not None:
        parts.append(f"status={_shown(record['status'])}")
    for key in EXTRA_FIELDS:
        if record.get(key) not in (None, [], ""):
            value = record[key]
            if isinstance(value, list):
                value = ",".join(map(str, value))
            parts.append(f"{key}={_shown(value)}")
    return "  ".join(parts)
