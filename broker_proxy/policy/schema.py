"""The policy format as JSON Schema (draft 2020-12), for `broker-proxy policy schema`.

Editors use it for completion and quick feedback; the loader stays the authority (it also
checks what a schema cannot say: canonical hosts, placeholder overlap, agents naming defined
secrets). Field names come from the loader's FIELDS, and a test walks the example policies
against this schema, so the two cannot drift apart silently.
"""

from __future__ import annotations

from typing import Any

from broker_proxy.policy.loader import (
    ENV_PATTERN,
    FIELDS,
    METHOD_PATTERN,
    NAME_PATTERN,
    PLACEHOLDER_MAX,
    PLACEHOLDER_MIN,
    VERSION,
)
from broker_proxy.policy.model import NEVER_METHODS

SCHEMA_ID = "https://broker-proxy.invalid/schemas/policy-v1.json"
# Exact host, "*.suffix", or an IP literal; the loader canonicalises and checks it further.
_HOST_PATTERN = r"^(\*\.)?[^\s/@\\%*]+$|^\[?[0-9A-Fa-f:.]+\]?$"
_STRINGS = {"type": "array", "items": {"type": "string"}}


def _closed(kind: str, properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict:
    """An object with exactly the loader's fields for ``kind``, nothing else."""
    assert set(properties) == set(FIELDS[kind]), f"schema and loader disagree on {kind}"
    schema: dict[str, Any] = {
        "type": "object", "properties": properties, "additionalProperties": False,
    }
    if required:
        schema["required"] = list(required)
    return schema


def _named(ref: str) -> dict[str, Any]:
    return {
        "type": ["object", "null"],
        "propertyNames": {"pattern": NAME_PATTERN},
        "additionalProperties": {"$ref": ref},
    }


def policy_json_schema() -> dict[str, Any]:
    """A fresh dict each call, so a caller may change it without touching anyone else's."""
    destination = _closed("destination", {
        "host": {"$ref": "#/$defs/host", "description": 'exact host, or "*.example.com"'},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535,
                 "description": "default 443 for https, 80 for http"},
        "scheme": {"enum": ["https", "http"], "default": "https"},
        "methods": {
            "type": "array", "minItems": 1,
            "items": {"type": "string", "pattern": METHOD_PATTERN.replace("A-Z", "A-Za-z"),
                      "not": {"enum": sorted(NEVER_METHODS)}},
            "description": "default: every method but TRACE, TRACK and CONNECT",
        },
        "paths": {
            "type": "array", "minItems": 1,
            "items": {"type": "string", "pattern": "^/[^\\s?#]*$"},
            "description": '"*" within one segment, "**" as a whole segment for any depth',
        },
    }, required=("host",))
    secret = _closed("secret", {
        "from": {
            "type": "string",
            "pattern": "^(vault|command|env:[A-Za-z_][A-Za-z0-9_]*|file:.+|keyring:.+/[^/]+)$",
            "description": "vault | env:VAR | file:PATH | keyring:SERVICE/USER | command",
        },
        "command": {**_STRINGS, "minItems": 1, "description": "argv, with from: command"},
        "placeholder": {"type": "string", "pattern": "^[!-~]+$",
                        "minLength": PLACEHOLDER_MIN, "maxLength": PLACEHOLDER_MAX,
                        "description": 'default "{{secret:NAME}}"'},
        "destinations": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/destination"}},
        "inject": {"type": "array", "minItems": 1, "uniqueItems": True,
                   "items": {"enum": ["header", "query", "body"]}, "default": ["header"]},
        "env": {"type": "string", "pattern": ENV_PATTERN},
    }, required=("from", "destinations"))
    agent = _closed("agent", {
        "secrets": {**_STRINGS, "description": "secrets this agent may ever be granted"},
        "max_ttl": {"$ref": "#/$defs/duration", "default": "1h"},
        "approval": {**_STRINGS, "description": "secrets whose grants wait for a human"},
    })
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": f"broker-proxy policy, version {VERSION}",
        **_closed("policy", {
            "version": {"const": VERSION},
            "secrets": _named("#/$defs/secret"),
            "agents": _named("#/$defs/agent"),
            "egress": {**_closed("egress", {
                "allow": {"type": "array", "items": {"$ref": "#/$defs/host"}},
            }), "type": ["object", "null"]},
            "network": {**_closed("network", {
                "allow_addresses": {**_STRINGS, "description": "CIDRs such as 127.0.0.0/8"},
            }), "type": ["object", "null"]},
        }, required=("version",)),
        "$defs": {
            "host": {"type": "string", "pattern": _HOST_PATTERN},
            "duration": {"type": "string", "pattern": "^([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?$",
                         "minLength": 2},
            "destination": destination,
            "secret": secret,
            "agent": agent,
        },
    }
