"""The policy format as JSON Schema (draft 2020-12), for `broker-proxy policy schema`.

Editors use it for completion and quick feedback; the loader stays the authority (it also
checks what a schema cannot say: canonical hosts, placeholder overlap, agents naming defined
secrets). Field names come from the loader's FIELDS, and a test walks the example policies
against this schema, so the two cannot drift apart silently.
"""

from __future__ import annotations

from typing import Any

from broker_proxy.policy.aws_fields import SCOPE_PART_PATTERN
from broker_proxy.policy.credential_kinds import HEADER_NAME_PATTERN
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
        "aws": _closed("aws", {
            "services": {"type": "array", "minItems": 1,
                         "items": {"type": "string", "pattern": SCOPE_PART_PATTERN},
                         "description": "SigV4 services this key may sign for, e.g. s3, sts"},
            "regions": {"type": "array", "minItems": 1,
                        "items": {"type": "string", "pattern": SCOPE_PART_PATTERN},
                        "description": "SigV4 regions, e.g. us-east-1 (global sts/iam sign "
                                       "with us-east-1)"},
        }, required=("services", "regions")),
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
                   "items": {"oneOf": [{"enum": ["header", "query", "body"]},
                                       {"$ref": "#/$defs/header_template"}]},
                   "default": ["header"],
                   "description": "places a placeholder may be swapped in, and headers the "
                                  "proxy sets itself ({header, value, overwrite})"},
        "basic": _closed("basic", {
            "username": {"type": "string", "pattern": "^[^:\\x00-\\x1f\\x7f]+$",
                         "description": "Basic user-id; the secret's value is the password"},
        }, required=("username",)),
        "placeholder_format": _closed("placeholder_format", {
            "prefix": {"type": "string", "pattern": "^[!-z|~]+$", "minLength": 2,
                       "maxLength": 32},
            "alphabet": {"type": "string", "pattern": "^[!-~]+$", "minLength": 2,
                         "description": "default A-Z, a-z, 0-9"},
            "length": {"type": "integer", "minimum": 1, "maximum": 256,
                       "description": "random characters after the prefix (>= 96 bits)"},
        }, required=("prefix", "length")),
        "cache_ttl": {"$ref": "#/$defs/duration",
                      "description": "command/keyring: reuse a fetched value this long"},
        "timeout": {"$ref": "#/$defs/duration",
                    "description": "command: how long it may run (default 10s)"},
        "env": {"type": "string", "pattern": ENV_PATTERN},
        "sign": {"enum": ["aws-sigv4"],
                 "description": "re-sign AWS SigV4 requests made with the placeholder key id; "
                                'the value is JSON {"access_key_id", "secret_access_key", '
                                '"session_token"?}'},
        "oauth2": _closed("oauth2", {
            "token_url": {"type": "string", "pattern": "^https://",
                          "description": "the token endpoint; no destination may cover it"},
            "grant_type": {"enum": ["client_credentials", "refresh_token"]},
            "client_id": {"type": "string", "minLength": 1},
            "scope": {"type": "string"},
            "auth": {"enum": ["basic", "body"], "default": "basic",
                     "description": "client_secret_basic or client_secret_post"},
        }, required=("token_url", "grant_type", "client_id")),
        "client_cert": {"type": "string", "pattern": "^(file:.+|env:[A-Za-z_][A-Za-z0-9_]*)$",
                        "description": "certificate PEM source; the secret's value is its key"},
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
            "header_template": _closed("header_template", {
                "header": {"type": "string", "pattern": HEADER_NAME_PATTERN},
                "value": {"type": "string", "pattern": "\\{(secret|basic)\\}",
                          "description": 'e.g. "Bearer {secret}" or "Basic {basic}"'},
                "overwrite": {"type": "boolean", "default": False,
                              "description": "replace a header the agent sent (else refuse)"},
            }, required=("header", "value")),
            "secret": secret,
            "agent": agent,
        },
    }
