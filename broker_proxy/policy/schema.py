"""The policy format as JSON Schema (draft 2020-12), for `broker-proxy policy schema`.

Generated from ``spec.py``, the definition the loader takes its fields and required fields
from: nothing here describes the format a second time. Editors use the schema for completion and
quick feedback; the loader stays the authority for what a schema cannot say.
"""

from __future__ import annotations

import copy
from typing import Any

from broker_proxy.policy.spec import MAPPINGS, SHARED, VERSION

SCHEMA_ID = "https://broker-proxy.invalid/schemas/policy-v1.json"


def _object(name: str) -> dict[str, Any]:
    mapping = MAPPINGS[name]
    schema: dict[str, Any] = {
        "type": ["object", "null"] if mapping.nullable else "object",
        "properties": copy.deepcopy(mapping.fields),
        "additionalProperties": False,
    }
    if mapping.required:
        schema["required"] = list(mapping.required)
    if mapping.description:
        schema["description"] = mapping.description
    schema.update(copy.deepcopy(mapping.extra))
    return schema


def policy_json_schema() -> dict[str, Any]:
    """A fresh dict each call, so a caller may change it without touching anyone else's."""
    defs = {name: _object(name) for name in MAPPINGS if name != "policy"}
    defs.update(copy.deepcopy(SHARED))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": f"broker-proxy policy, version {VERSION}",
        **_object("policy"),
        "$defs": defs,
    }
