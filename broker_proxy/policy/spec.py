"""The policy format (version 1), defined once: every mapping, its fields, which are required,
and what each value may be.

The loader takes its field names and required fields from here (``FIELDS``, ``REQUIRED``), and
``broker-proxy policy schema`` is generated from here (``schema.py``), so an editor's completion
and the loader cannot disagree about the shape of a file. The value rules below are written as
JSON Schema and use the same constants the loader checks with; what a schema cannot say
(canonical hosts, placeholders that overlap, agents naming defined secrets, paths that can never
match) stays in the loader, and a test replays the loader's error cases against the schema to
keep the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from broker_proxy.policy.aws_fields import AWS_SCOPE_FIELDS, SCOPE_PART_PATTERN, SIGN_KINDS
from broker_proxy.policy.inject_fields import (
    FORMAT_LENGTH_MAX,
    FORMAT_PREFIX_MAX,
    FORMAT_PREFIX_MIN,
    HEADER_NAME_PATTERN,
    USERNAME_MAX,
)
from broker_proxy.policy.limit_fields import MAX_BURST, RATE_PATTERN
from broker_proxy.policy.media_types import MEDIA_PATTERN_SCHEMA
from broker_proxy.policy.model import INJECT_PLACES, NEVER_METHODS
from broker_proxy.policy.oauth2_mtls_fields import CLIENT_AUTH, GRANT_TYPES, OAUTH2_FIELDS

VERSION = 1
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"
ENV_PATTERN = r"^[A-Z_][A-Z0-9_]*$"
PLACEHOLDER_MIN, PLACEHOLDER_MAX = 8, 256
PORT_MIN, PORT_MAX = 1, 65535
SCHEMES = ("https", "http")
# Exact host, "*.suffix", or an IP literal; the loader canonicalises and checks it further.
HOST_PATTERN = r"^(\*\.)?[^\s/@\\%*]+$|^\[?[0-9A-Fa-f:.]+\]?$"
DURATION_PATTERN = "^([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?$"
# A method as the loader reads it before its own checks (upper-cased first).
_METHOD_TEXT = "^[A-Za-z][A-Za-z0-9_-]*$"
_INJECT_ORDER = ("header", "query", "body")
assert set(_INJECT_ORDER) == INJECT_PLACES


def _any_case(words: frozenset[str]) -> str:
    """A pattern for these words in any letter case (the loader upper-cases methods first)."""
    return "^(" + "|".join("".join(f"[{c.upper()}{c.lower()}]" for c in word)
                           for word in sorted(words)) + ")$"


def kind(name: str) -> dict[str, Any]:
    """A value that is one of the mappings below."""
    return {"$ref": f"#/$defs/{name}"}


def _named(entry: str) -> dict[str, Any]:
    """A section of named entries ("secrets:", "agents:"); empty means none."""
    return {"type": ["object", "null"], "propertyNames": {"pattern": NAME_PATTERN},
            "additionalProperties": kind(entry)}


_STRINGS = {"type": "array", "items": {"type": "string"}}
# MCP and GraphQL name globs (protocol_rules.py): printable, bounded.
_GLOBS = {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 200,
                                     "pattern": "^[^\\x00-\\x1f]+$"}}


_VAULT_ENTRY = {"type": "string", "pattern": NAME_PATTERN}
_CHAT_USERS = {"type": "object", "propertyNames": {"pattern": "^[A-Za-z0-9._@+-]{1,64}$"},
               "additionalProperties": {"oneOf": [{"enum": ["viewer", "approver", "admin"]},
                                                  kind("chat_user")]}}


@dataclass(frozen=True, slots=True)
class Mapping:
    """One kind of mapping: its fields (JSON Schema of each value), the required ones."""

    fields: dict[str, dict[str, Any]]
    required: tuple[str, ...] = ()
    nullable: bool = False  # "egress:" with everything under it commented out means none
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


MAPPINGS: dict[str, Mapping] = {
    "policy": Mapping({
        "version": {"const": VERSION},
        "secrets": _named("secret"),
        "agents": _named("agent"),
        "egress": kind("egress"),
        "network": kind("network"),
        "approval_timeout": {**kind("duration"),
                             "description": "how long a request held for approval waits "
                                            "(default 2m, at most 1h)"},
        "approval_webhook": {"type": "string", "pattern": "^https?://",
                             "description": "POSTed a JSON notice for each held request"},
        "prices": {**kind("prices"),
                   "description": "LLM prices for cost budgets, USD per million tokens"},
        "sign_in": {**kind("sign_in"),
                    "description": "OpenID Connect sign-in to the console and admin API, "
                                   "roles, separation of duties (docs/sign-in.md)"},
        "chat": {**kind("chat"),
                 "description": "deciding held requests from Slack or a signed webhook"},
    }, required=("version",)),
    "secret": Mapping({
        "from": {
            "type": "string",
            "pattern": "^(vault|command|env:[A-Za-z_][A-Za-z0-9_]*|file:.+|keyring:.+/[^/]+)$",
            "description": "vault | env:VAR | file:PATH | keyring:SERVICE/USER | command",
        },
        "command": {**_STRINGS, "minItems": 1, "description": "argv, with from: command"},
        "placeholder": {"type": "string", "pattern": "^[!-~]+$",
                        "minLength": PLACEHOLDER_MIN, "maxLength": PLACEHOLDER_MAX,
                        "description": 'default "{{secret:NAME}}"'},
        "destinations": {"type": "array", "minItems": 1, "items": kind("destination")},
        "inject": {"type": "array", "minItems": 1, "uniqueItems": True,
                   "items": {"oneOf": [{"enum": list(_INJECT_ORDER)}, kind("header_template")]},
                   "default": ["header"],
                   "description": "places a placeholder may be swapped in, and headers the "
                                  "proxy sets itself ({header, value, overwrite})"},
        "env": {"type": "string", "pattern": ENV_PATTERN},
        "oauth2": kind("oauth2"),
        "client_cert": {"type": "string", "pattern": "^(file:.+|env:[A-Za-z_][A-Za-z0-9_]*)$",
                        "description": "certificate PEM source; the secret's value is its key"},
        "basic": kind("basic"),
        "placeholder_format": kind("placeholder_format"),
        "cache_ttl": {**kind("duration"),
                      "description": "command/keyring: reuse a fetched value this long"},
        "timeout": {**kind("duration"),
                    "description": "command: how long it may run (default 10s)"},
        "retire_for": {**kind("duration"),
                       "description": "vault: how long `secret set` keeps the value it "
                                      "replaces retired (scrubbed from answers, never "
                                      "injected); default 30d"},
        "sign": {"enum": list(SIGN_KINDS),
                 "description": "re-sign AWS SigV4 requests made with the placeholder key id; "
                                'the value is JSON {"access_key_id", "secret_access_key", '
                                '"session_token"?}'},
        "approval": {"enum": ["per_request"],
                     "description": "per_request: every request that would carry this "
                                    "secret waits for a person's yes"},
        "rate": {"type": "string", "pattern": RATE_PATTERN,
                 "description": 'requests carrying this secret, per grant: "60/minute"; '
                                "over it the proxy answers 429 rate_limited"},
        "models": {"type": "array", "minItems": 1,
                   "items": {"type": "string", "pattern": "^[!-~]{1,200}$"},
                   "description": 'model globs LLM requests carrying this secret may ask for, '
                                  'e.g. ["gpt-4o-mini", "claude-*"]; others get 403 '
                                  "model_not_allowed"},
        "hosted_tools": {"oneOf": [
            {"type": "array", "uniqueItems": True,
             "items": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_]{0,63}$"}},
            {"type": "object",
             "propertyNames": {"pattern": "^[A-Za-z][A-Za-z0-9_]{0,63}$"},
             "additionalProperties": {"oneOf": [{"type": "null"}, kind("hosted_tool")]}}],
                         "description": "vendor-run tools an LLM request may ask for: "
                                        "web_search, web_fetch, code_execution, mcp, "
                                        "file_search, image_generation; others get 403 "
                                        "hosted_tool_not_allowed. As a mapping, web_search "
                                        "and web_fetch may carry allowed_domains and "
                                        "max_uses, which the proxy writes into the tool"},
        "concurrency": {"type": "integer", "minimum": 1, "maximum": 100000,
                        "description": "requests carrying this secret one grant may have in "
                                       "flight at once; over it 429 concurrency_limited"},
        "budget": {**kind("budget"),
                   "description": "what one grant may spend through this LLM key; over it "
                                  "429 budget_exhausted (docs/limits.md)"},
        "burst": {"type": "integer", "minimum": 1, "maximum": MAX_BURST,
                  "description": "with rate: how many may come at once (default: the count)"},
    }, required=("from", "destinations")),
    "budget": Mapping({
        "input_tokens": {"type": "integer", "minimum": 1, "maximum": 10**12},
        "output_tokens": {"type": "integer", "minimum": 1, "maximum": 10**12},
        "cost_usd": {"type": "number", "minimum": 0, "maximum": 10**6,
                     "description": "USD, priced with the top-level prices table"},
        "default_max_tokens": {"type": "integer", "minimum": 1, "maximum": 10**12,
                               "default": 4096,
                               "description": "the output cap the proxy writes into a request "
                                              "that sets none"},
    }),
    "hosted_tool": Mapping({
        "allowed_domains": {"type": "array", "minItems": 1, "maxItems": 100,
                            "uniqueItems": True,
                            "items": {"type": "string",
                                      "pattern": "^[a-z0-9]([a-z0-9-]{0,62})"
                                                 "(\\.[a-z0-9][a-z0-9-]{0,62})*$"},
                            "description": "the only domains (and their subdomains) the "
                                           "vendor may search or fetch from; a request "
                                           "naming others gets 403 hosted_tool_not_allowed"},
        "max_uses": {"type": "integer", "minimum": 1, "maximum": 1000,
                     "description": "how many times the vendor may run the tool per "
                                    "request (Anthropic); a larger request is lowered"},
    }),
    "prices": Mapping({
        "as_of": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
                  "description": "when these prices were copied from the vendors' pages"},
        "models": {"type": "object", "additionalProperties": kind("price"),
                   "propertyNames": {"pattern": "^[!-~]{1,200}$"},
                   "description": "model glob -> USD per million tokens; first match wins"},
    }),
    "price": Mapping({
        "input": {"type": "number", "minimum": 0, "maximum": 10000},
        "output": {"type": "number", "minimum": 0, "maximum": 10000},
    }, required=("input", "output")),
    "oauth2": Mapping({
        "token_url": {"type": "string", "pattern": "^https://",
                      "description": "the token endpoint; no destination may cover it"},
        "grant_type": {"enum": list(GRANT_TYPES)},
        "client_id": {"type": "string", "minLength": 1},
        "scope": {"type": "string"},
        "auth": {"enum": list(CLIENT_AUTH), "default": "basic",
                 "description": "client_secret_basic or client_secret_post"},
    }, required=("token_url", "grant_type", "client_id")),
    "header_template": Mapping({
        "header": {"type": "string", "pattern": HEADER_NAME_PATTERN},
        "value": {"type": "string", "pattern": "\\{(secret|basic)\\}",
                  "description": 'e.g. "Bearer {secret}" or "Basic {basic}"'},
        "overwrite": {"type": "boolean", "default": False,
                      "description": "replace a header the agent sent (else refuse)"},
    }, required=("header", "value")),
    "basic": Mapping({
        "username": {"type": "string", "pattern": "^[^:\\x00-\\x1f\\x7f]+$",
                     "maxLength": USERNAME_MAX,
                     "description": "Basic user-id; the secret's value is the password"},
    }, required=("username",)),
    "placeholder_format": Mapping({
        "prefix": {"type": "string", "pattern": "^[!-z|~]+$", "minLength": FORMAT_PREFIX_MIN,
                   "maxLength": FORMAT_PREFIX_MAX},
        "alphabet": {"type": "string", "pattern": "^[!-~]+$", "minLength": 2,
                     "description": "default A-Z, a-z, 0-9"},
        "length": {"type": "integer", "minimum": 1, "maximum": FORMAT_LENGTH_MAX,
                   "description": "random characters after the prefix (>= 96 bits)"},
    }, required=("prefix", "length")),
    "destination": Mapping({
        "host": {**kind("host"), "description": 'exact host, or "*.example.com"'},
        "port": {"type": "integer", "minimum": PORT_MIN, "maximum": PORT_MAX,
                 "description": "default 443 for https, 80 for http"},
        "scheme": {"enum": list(SCHEMES), "default": "https"},
        "methods": {
            "type": "array", "minItems": 1,
            "items": {"type": "string", "pattern": _METHOD_TEXT,
                      "not": {"pattern": _any_case(NEVER_METHODS)}},
            "description": "default: every method but TRACE, TRACK and CONNECT",
        },
        "paths": {
            "type": "array", "minItems": 1,
            "items": {"type": "string", "pattern": "^/[!-~]*$", "not": {"pattern": "[?#]"}},
            "description": '"*" within one segment, "**" as a whole segment for any depth',
        },
        "aws": kind("aws"),
        "approval_preview": {
            "enum": ["full", "headers", "none"], "default": "full",
            "description": "what a person deciding a held request to this destination sees: "
                           "full (headers and a body preview), headers (no body text), none "
                           "(method, host and path only)"},
        "withhold": {
            "type": "array", "minItems": 1,
            "items": {"type": "string", "pattern": MEDIA_PATTERN_SCHEMA},
            "description": "media types (\"*\" for any run of characters) of answers from "
                           "this host that are withheld (502 response_withheld) rather than "
                           "passed on: forms the scrubber cannot look inside, e.g. "
                           "application/x-7z-compressed, application/pdf; the body's first "
                           "bytes are checked too"},
        "mcp": {**kind("mcp"), "description": "MCP rules (Streamable HTTP): JSON-RPC methods, "
                                              "tools, resources and prompts a request carrying "
                                              "this secret may name (docs/mcp-graphql.md)"},
        "graphql": {**kind("graphql"), "description": "GraphQL rules: operation types, "
                                                      "operation and top-level field names"},
    }, required=("host",)),
    "name_rule": Mapping({
        "allow": {**_GLOBS, "description": "globs (*, ?, [...]); left out: any name"},
        "deny": {**_GLOBS, "description": "globs refused even when allowed"},
    }, extra={"minProperties": 1}),
    "mcp": Mapping({
        "methods": {**kind("name_rule"), "description": "JSON-RPC methods, e.g. tools/*"},
        "tools": {**kind("name_rule"), "description": "tool names of tools/call"},
        "resources": {**kind("name_rule"), "description": "resource URIs of resources/read"},
        "prompts": {**kind("name_rule"), "description": "prompt names of prompts/get"},
        "approval": {**kind("mcp_approval"), "description": "tools whose calls a person "
                                                         "approves one by one"},
    }),
    "mcp_approval": Mapping({
        "per_request": {**_GLOBS, "minItems": 1,
                        "description": "tool-name globs: each tools/call of these is held for "
                                       "a person's approval, who sees the tool and its "
                                       "arguments first"},
    }, required=("per_request",)),
    "graphql": Mapping({
        "operations": {"type": "array", "uniqueItems": True,
                       "items": {"enum": ["query", "mutation", "subscription"]},
                       "description": "operation types allowed (default: all three)"},
        "names": {**kind("name_rule"), "description": "operation names"},
        "fields": {**kind("name_rule"), "description": "top-level field names"},
        "persisted": {**_STRINGS, "description": "persisted-query hashes allowed without a "
                                                 "document"},
    }),
    "aws": Mapping({
        "services": {"type": "array", "minItems": 1,
                     "items": {"type": "string", "pattern": SCOPE_PART_PATTERN},
                     "description": "SigV4 services this key may sign for, e.g. s3, sts"},
        "regions": {"type": "array", "minItems": 1,
                    "items": {"type": "string", "pattern": SCOPE_PART_PATTERN},
                    "description": "SigV4 regions, e.g. us-east-1 (global sts/iam sign with "
                                   "us-east-1)"},
    }, required=("services", "regions")),
    "agent": Mapping({
        "secrets": {**_STRINGS, "description": "secrets this agent may ever be granted"},
        "max_ttl": {**kind("duration"), "default": "1h",
                    "description": "the longest TTL a grant of this agent may have: a grant "
                                   "asking for longer is refused, not shortened"},
        "approval": {**_STRINGS, "description": "secrets whose grants wait for a human"},
    }),
    "sign_in": Mapping({
        "oidc": kind("oidc_sign_in"),
        "roles": {"type": "object", "additionalProperties": {
            "enum": ["viewer", "approver", "admin"]},
            "description": "claim value (a group) -> role; the highest role found wins"},
        "separation_of_duties": {"type": "boolean", "default": True,
                                 "description": "an approver may not decide a grant they "
                                                "issued or a request made on it"},
    }),
    "oidc_sign_in": Mapping({
        "issuer": {"type": "string", "pattern": "^https?://",
                   "description": "the provider's issuer URL (its discovery document is "
                                  "ISSUER/.well-known/openid-configuration)"},
        "client_id": {"type": "string", "minLength": 1},
        "client_secret": {"type": "string", "pattern": NAME_PATTERN,
                          "description": "the NAME of a vault entry holding the client "
                                         "secret (`broker-proxy secret set NAME`)"},
        "allowed_domains": {**_STRINGS, "description": "email domains that may sign in"},
        "allowed_subjects": {**_STRINGS, "description": "`sub` values that may sign in"},
        "role_claim": {"type": "string", "default": "groups",
                       "description": "the ID token claim whose values map to roles"},
        "redirect_uri": {"type": "string", "pattern": "^https?://",
                         "description": "where the provider sends the browser back, for a "
                                        "console behind a reverse proxy: https://HOST"
                                        "/ui/oidc/callback (default: http://<admin "
                                        "address>/ui/oidc/callback)"},
    }, required=("issuer", "client_id", "client_secret")),
    "egress": Mapping({
        "allow": {"type": "array", "items": kind("host"),
                  "description": "hosts any grant may reach without secrets"},
    }, nullable=True),
    "chat": Mapping({
        "slack": {**kind("chat_slack"), "description": "Slack interactive messages"},
        "webhooks": {**_named("chat_webhook"),
                     "description": "signed webhooks of other chat tools, by name"},
    }, nullable=True),
    "chat_slack": Mapping({
        "bot_token": {**_VAULT_ENTRY, "description": "vault entry of the bot token"},
        "signing_secret": {**_VAULT_ENTRY, "description": "vault entry of the signing secret"},
        "channel": {"type": "string", "pattern": "^[A-Z0-9]{2,32}$",
                    "description": "channel id held requests are posted to"},
        "allow_uses": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 10,
                       "description": "uses the allow-N button allows"},
        "api_url": {"type": "string", "pattern": "^https?://",
                    "default": "https://slack.com/api/", "description": "Slack's Web API"},
        "team_id": {"type": "string", "pattern": "^[A-Z0-9]{2,32}$",
                    "description": "the Slack workspace (team) id whose clicks count; "
                                   "without it any workspace the app is in (a warning)"},
        "users": {**_CHAT_USERS, "description": "Slack user id -> role, or {role, person}"},
    }, required=("bot_token", "signing_secret", "channel")),
    "chat_user": Mapping({
        "role": {"enum": ["viewer", "approver", "admin"]},
        "person": {"type": "string", "pattern": "^[!-~]{1,200}$",
                   "description": "who this user is elsewhere (an OpenID Connect email or "
                                  "subject, a CLI name), for separation of duties"},
    }, required=("role",)),
    "chat_webhook": Mapping({
        "secret": {**_VAULT_ENTRY, "description": "vault entry of the shared HMAC key"},
        "role": {"enum": ["viewer", "approver", "admin"], "default": "approver",
                 "description": "the webhook's role when the body names no user"},
        "users": {**_CHAT_USERS, "description": "user named in the body -> role, or "
                                                "{role, person}"},
    }, required=("secret",)),
    "network": Mapping({
        "allow_addresses": {**_STRINGS, "description": "CIDRs such as 127.0.0.0/8"},
        "resolve": {**_STRINGS, "description": "HOST[:PORT]=IP[:PORT] pins, like run --resolve; "
                    "a reload changes them; run's own --resolve wins for the same name"},
    }, nullable=True),
}

# Value shapes several fields share.
SHARED: dict[str, dict[str, Any]] = {
    "host": {"type": "string", "pattern": HOST_PATTERN},
    "duration": {"type": "string", "pattern": DURATION_PATTERN, "minLength": 2},
}

FIELDS: dict[str, tuple[str, ...]] = {name: tuple(m.fields) for name, m in MAPPINGS.items()}
REQUIRED: dict[str, tuple[str, ...]] = {name: m.required for name, m in MAPPINGS.items()}

# The two sub-parsers iterate their own field lists; they must be these.
assert FIELDS["oauth2"] == OAUTH2_FIELDS and FIELDS["aws"] == AWS_SCOPE_FIELDS
