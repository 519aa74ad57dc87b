"""The compiled, immutable form of a policy file (version 1).

Everything here is plain data: the loader builds it once, the request path only reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from ipaddress import IPv4Network, IPv6Network

from broker_proxy.policy.chat_rules import ChatRules
from broker_proxy.policy.protocol_rules import GraphqlRules, McpRules
from broker_proxy.policy.sign_in_fields import SignInPolicy

# RFC 9110 methods a destination allows when it names none. TRACE/TRACK echo the request
# (and so the injected secret) back, CONNECT would open a tunnel with it.
DEFAULT_METHODS: frozenset[str] = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
)
NEVER_METHODS: frozenset[str] = frozenset({"TRACE", "TRACK", "CONNECT"})
INJECT_PLACES: frozenset[str] = frozenset({"header", "query", "body"})
# Not listed in `inject`: a secret with `basic:` may be swapped inside Basic credentials.
BASIC_PLACE = "basic"


@dataclass(frozen=True, slots=True)
class Destination:
    """Where one secret may be sent: scheme, host pattern, port, methods and path globs."""

    scheme: str  # "https" (default) or "http"
    host: str  # lower-case IDNA; exact ("api.github.com") or wildcard ("*.example.com")
    port: int
    methods: frozenset[str]
    paths: tuple[str, ...]  # glob patterns ("/repos/acme/**"); empty means every path
    aws: AwsScope | None = None  # for a `sign: aws-sigv4` secret: what it may sign for
    # What a person deciding a held request sees of it: full, headers (no body text) or none.
    approval_preview: str = "full"
    # Media types (or globs) of answers from this host never passed on (media_types.py).
    withhold: tuple[str, ...] = ()
    # What an MCP or GraphQL request carrying the secret may ask for (protocol_rules.py).
    mcp: McpRules | None = None
    graphql: GraphqlRules | None = None

    @property
    def protocol_rules(self) -> bool:
        return self.mcp is not None or self.graphql is not None


@dataclass(frozen=True, slots=True)
class AwsScope:
    """The SigV4 credential scopes a destination accepts: services and regions, both bounded."""

    services: frozenset[str]  # "s3", "sts", ...
    regions: frozenset[str]  # "us-east-1", ...


@dataclass(frozen=True, slots=True)
class OAuth2Config:
    """How the proxy mints access tokens for one secret (RFC 6749 sections 4.4 and 6)."""

    token_url: str  # https only
    grant_type: str  # "client_credentials" or "refresh_token"
    client_id: str
    scope: str | None
    auth: str  # "basic" (client_secret_basic, the default) or "body" (client_secret_post)


@dataclass(frozen=True, slots=True)
class HeaderTemplate:
    """A header the proxy sets itself for the secret's destinations (``inject`` mapping item)."""

    header: str  # as written in the policy; matched case-insensitively
    value: str  # contains "{secret}" (or "{basic}" for a Basic secret) exactly once
    overwrite: bool  # replace a header the agent sent; else such a request is refused


@dataclass(frozen=True, slots=True)
class PlaceholderFormat:
    """How per-grant placeholders look: ``prefix`` then ``length`` characters of ``alphabet``."""

    prefix: str
    alphabet: str
    length: int


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``count`` requests per ``period_s`` seconds, ``burst`` of them at once.

    Enforced per grant (each grant has its own bucket) as a generic cell rate: one request is
    earned every ``period_s / count`` seconds, up to ``burst`` saved.
    """

    count: int
    period_s: int
    burst: int

    @property
    def interval_us(self) -> int:
        """Microseconds between two requests at the steady rate (at least 1)."""
        return max(1, self.period_s * 1_000_000 // self.count)

    def at_most(self, other: RateLimit) -> bool:
        """Whether this rate is no looser than ``other`` (a grant may only ask for less)."""
        return self.interval_us >= other.interval_us and self.burst <= other.burst

    def __str__(self) -> str:
        per = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}.get(self.period_s)
        text = f"{self.count}/{per}" if per else f"{self.count}/{self.period_s}s"
        return text if self.burst == self.count else f"{text} (burst {self.burst})"


@dataclass(frozen=True, slots=True)
class Budget:
    """What one grant may spend through an LLM secret (decision/llm_budget.py); None: no cap."""

    input_tokens: int | None
    output_tokens: int | None
    micro_usd: int | None  # cost cap in millionths of a dollar (exact integer arithmetic)
    default_max_tokens: int  # the output cap the proxy writes into a request that sets none


@dataclass(frozen=True, slots=True)
class HostedToolRule:
    """What the proxy writes into a hosted tool it lets through (decision/hosted_tool_rules.py).

    ``allowed_domains``: the only domains the vendor may search or fetch from (None: any);
    ``max_uses``: how many times the vendor may run the tool in one request (None: no cap).
    """

    allowed_domains: tuple[str, ...] | None = None
    max_uses: int | None = None

    @property
    def rewrites(self) -> bool:
        """Whether the tool must carry something, or is allowed as the request asks for it."""
        return self.allowed_domains is not None or self.max_uses is not None


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens; equal to micro-dollars per token."""

    input: float
    output: float


@dataclass(frozen=True, slots=True)
class SecretPolicy:
    name: str
    source: str  # "vault", "env:VAR", "file:PATH", "keyring:SERVICE/USER", or "command"
    command: tuple[str, ...] | None  # argv when source == "command"
    placeholder: str  # the string an agent sends; default "{{secret:NAME}}"
    destinations: tuple[Destination, ...]
    inject: frozenset[str]  # subset of INJECT_PLACES; default {"header"}
    env: str | None  # variable that carries the placeholder for `exec`/`env`
    # Credential kinds; defaults keep every older construction valid.
    templates: tuple[HeaderTemplate, ...] = ()  # headers set even without a placeholder
    basic_username: str | None = None  # set: the value is the password of Basic credentials
    placeholder_format: PlaceholderFormat | None = None  # set: each grant gets its own
    cache_ttl: timedelta | None = None  # command/keyring: how long a fetched value is reused
    timeout: timedelta | None = None  # command: how long it may run (default 10 s)
    # The secret's value is an OAuth2 client secret (or refresh token): the placeholder is
    # swapped for an access token minted with it, never for the value itself.
    oauth2: OAuth2Config | None = None
    # The secret's value is the private key (PEM) of this client certificate, presented in the
    # TLS handshake to the secret's destinations; it is never placed in a request.
    client_cert: str | None = None  # a source for the certificate PEM: "file:PATH", "env:VAR"
    # "aws-sigv4": the value is AWS credentials (JSON) and the placeholder is an access key id;
    # requests the agent's SDK signed with it are signed again, the value is never placed.
    sign: str | None = None
    # Every request that would carry this secret waits for a person's yes (approvals/).
    per_request_approval: bool = False
    # Requests carrying this secret, per grant (limit_fields.py); None: no rate.
    rate: RateLimit | None = None
    # Model globs an LLM request carrying this secret may ask for (request/model_rules.py);
    # empty: any model.
    models: tuple[str, ...] = ()
    # Token and cost caps per grant (llm_budget.py); None: unlimited.
    budget: Budget | None = None
    # Requests carrying this secret one grant may have in flight at once; None: no cap.
    concurrency: int | None = None
    # Hosted tool kinds (web_search, mcp, ...) an LLM request may ask the vendor to run
    # (decision/hosted_tools.py); None: the field is absent.
    hosted_tools: frozenset[str] | None = None
    # The mapping form (``hosted_tools: {web_search: {allowed_domains: [...], max_uses: 5}}``):
    # per kind, the allow-list and use cap written into the tool; kinds listed plainly: none.
    hosted_tool_rules: tuple[tuple[str, HostedToolRule], ...] = ()
    # vault: how long `secret set` keeps a replaced value retired (None: its --retire-for).
    retire_for: timedelta | None = None

    @property
    def llm_rules(self) -> bool:
        """Whether requests carrying this secret are read as LLM requests (tools, models)."""
        return bool(self.models) or self.budget is not None or self.hosted_tools is not None


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
    # network.resolve: (host, port or None) -> (address, port or None), read by ResolvePins
    resolve: Mapping[tuple[str, int | None], tuple[str, int | None]] = field(
        default_factory=dict)
    source: str = ""  # the file it came from, for messages
    digest: str = field(default="", compare=False)  # sha256 of the file's bytes
    # Per-request approval: how long a held request waits, and who is told about it.
    approval_timeout: timedelta = timedelta(minutes=2)
    approval_webhook: str | None = None
    # LLM prices (model glob, price) in the file's order, first match wins, and the date the
    # operator copied them; the proxy never fetches prices.
    prices: tuple[tuple[str, Price], ...] = ()
    prices_as_of: str | None = None
    # Who may sign in to the console and admin API, and as what (sign_in_fields.py); None: the
    # admin token and one-time links only, as before.
    sign_in: SignInPolicy | None = None
    # Who may decide held requests from Slack or a signed webhook (chat_rules.py).
    chat: ChatRules | None = None
