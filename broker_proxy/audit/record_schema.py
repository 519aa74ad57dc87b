"""The published JSON Schema of an audit record, and a fast check of records against it.

The schema (schemas/audit-record.v1.json) is the contract for anyone reading the log or the
jsonl export. `audit verify` checks every record against it, so a writer that starts producing
another shape is caught. A general JSON Schema validator costs tens of microseconds a record; a
log has millions, so the check here interprets only what the schema uses (required members,
`type`, `enum`, array `items`), compiled once into plain type tests. The tests hold it to
agreement with a full validator.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from functools import cache
from importlib import resources
from typing import Any

RECORD_SCHEMA_FILE = "audit-record.v1.json"
REPORT_SCHEMA_FILE = "audit-report.v1.json"
OCSF_EXPORT_SCHEMA_FILE = "audit-export-ocsf.v1.json"

# Decoded JSON has exact types, so a type test is one set lookup (bool is not an integer here).
_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "null": (type(None),), "array": (list,), "object": (dict,),
}


def load_schema(name: str) -> dict[str, Any]:
    """A schema shipped in the package (broker_proxy/audit/schemas/NAME)."""
    text = resources.files("broker_proxy.audit").joinpath("schemas", name).read_text()
    schema: dict[str, Any] = json.loads(text)  # every shipped schema is a JSON object
    return schema


def _compile(spec: dict[str, Any]) -> Callable[[object], bool]:
    kinds = spec.get("type")
    allowed = frozenset(t for kind in ([kinds] if isinstance(kinds, str) else kinds or [])
                        for t in _PY_TYPES[kind])
    enum = spec.get("enum")
    items = _compile(spec["items"]) if "items" in spec else None
    if enum is not None:
        return lambda value: any(value == e and type(value) is type(e) for e in enum)
    if items is None:
        return lambda value: type(value) in allowed
    return lambda value: type(value) in allowed and (
        type(value) is not list or all(map(items, value)))


@cache
def _record_checker() -> tuple[tuple[str, ...], dict[str, Callable[[object], bool]],
                               Callable[[object], bool]]:
    schema = load_schema(RECORD_SCHEMA_FILE)
    properties = {name: _compile(spec) for name, spec in schema["properties"].items()}
    return tuple(schema["required"]), properties, _compile(schema["additionalProperties"])


def record_problem(record: dict[str, Any]) -> str | None:
    """Why this record does not match the audit record schema, or None when it does."""
    required, properties, other = _record_checker()
    for name in required:
        if name not in record:
            return f"lacks {name!r}"
    for name, value in record.items():
        check = properties.get(name, other)
        if not check(value):
            return f"field {name!r} does not match the audit record schema"
    return None


def first_schema_problem(records: Iterable[dict[str, Any]]) -> str | None:
    """`seq N: why` for the first record that does not match, or None."""
    for record in records:
        problem = record_problem(record)
        if problem is not None:
            return f"seq {record.get('seq')}: {problem}"
    return None
