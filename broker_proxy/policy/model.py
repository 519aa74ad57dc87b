"""The compiled, immutable form of a policy file (version 1).

Everything here is plain data: the loader builds it once, the request path only reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from ipaddress import IPv4Network, IPv6Network

# RFC 9110 methods a destination allows when it names none. TRACE/TRACK echo the request
# (and so the injected secret) back, CONNECT would open a tunnel with it.
DEFAULT_METHODS: frozenset[str] = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
)
NEVER_METHODS: frozenset[str] = frozenset({"TRACE", "TRACK", "CONNECT"})
INJECT_PLACES: frozenset[str] = frozenset({"header", "query", "body"})


@dataclass(frozen=True, slots=True)
class Destination:
    """Where one secret may be sent: scheme, host pattern, port, methods and path globs."""

    scheme: str  # "https" (default) or "http"
    host: str  # lower-case IDNA; exact ("api.github.com") or wildcard ("*.example.com")
    port: int
    methods: frozenset[str]
    paths: tuple[str, ...]  # glob patterns ("/repos/acme/**"); empty means every path


@dataclass(frozen=True, slots=True)
class SecretPolicy:
    name: str
    source: str  # "vault", "env:VAR", "file:PATH", "keyring:SERVICE/USER", or "command"
    command: tuple[str, ...] | None  # argv when source == "command"
    placeholder: str  # the string an agent sends; default "{{secret:NAME}}"
    destinations: tuple[Destination, ...]
    inject: frozenset[str]  # subset of INJECT_PLACES; default {"header"}
    env: str | None  # variable that carries the placeholder for `exec`/`env`


@dataclass(frozen=True, slots=True)
class AgentPolicy:
    name: str
    secrets: frozenset[str]
    max_ttl: timedelta
    approval: frozenset[str]


@dataclass(frozen=True, slots=True)
class Policy:
    secrets: dict[str, SecretPolicy]
    agents: dict[str, AgentPolicy]
    egress_allow: tuple[str, ...]  # host patterns, same grammar as Destination.host
    allow_addresses: tuple[IPv4Network | IPv6Network, ...]
    source: str = ""  # the file it came from, for messages
    digest: str = field(default="", compare=False)  # sha256 of the file's bytes
