"""Plain values that cross the line between the mitmproxy layer and the core.

The addon turns a flow into an ``OutboundRequest``; the core answers with ``Allowed`` or
``Denied``. Neither side needs to know the other's types.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from broker_proxy.decision.reservation import Reservation
from broker_proxy.scrubbing.scope import ScrubScope

if TYPE_CHECKING:  # importing the policy package here would close a cycle (see scope.py)
    from broker_proxy.policy.media_types import WithholdRule
    from broker_proxy.policy.protocol_rules import McpRules

# Stable error codes: scripts and dashboards match on these strings.
PROXY_AUTH_REQUIRED = "proxy_auth_required"
GRANT_EXPIRED = "grant_expired"
GRANT_REVOKED = "grant_revoked"
GRANT_USED_UP = "grant_used_up"
GRANT_PENDING = "grant_pending_approval"
GRANT_DENIED = "grant_denied"
GRANT_OUTSIDE_POLICY = "grant_outside_policy"
MALFORMED_REQUEST = "malformed_request"
AUTHORITY_MISMATCH = "authority_mismatch"
SECRET_NOT_GRANTED = "secret_not_granted"
PLACEHOLDER_NOT_ALLOWED_HERE = "placeholder_not_allowed_here"
PLAINTEXT_HTTP = "plaintext_http"
DESTINATION_NOT_ALLOWED = "destination_not_allowed"
DESTINATION_NOT_GRANTED = "destination_not_granted"
TOO_MANY_PLACEHOLDERS = "too_many_placeholders"
AMBIGUOUS_PATH = "ambiguous_path"
SECRET_UNAVAILABLE = "secret_unavailable"
SECRET_VALUE_UNSAFE = "secret_value_unsafe"
AUDIT_UNAVAILABLE = "audit_unavailable"
GRANT_STORE_UNAVAILABLE = "grant_store_unavailable"
STREAMING_NOT_SUPPORTED = "streaming_not_supported"
BODY_TOO_LARGE = "body_too_large"  # 413: an encoded body inflates past the decoding bounds
BODY_NOT_DECODABLE = "body_not_decodable"  # 415: unknown or corrupt Content-Encoding
RESPONSE_WITHHELD = "response_withheld"  # 502: the answer could not be scrubbed
HEADERS_TOO_LARGE = "headers_too_large"
UPGRADE_NOT_ALLOWED = "upgrade_not_allowed"
METHOD_OVERRIDE_REFUSED = "method_override_refused"
INTERNAL_ERROR = "internal_error"
HEADER_ALREADY_SET = "header_already_set"  # the agent sent a header a policy template sets
SIGV4_MALFORMED = "sigv4_malformed"  # 400: a placeholder-key SigV4 signature we cannot read
SIGV4_UNSUPPORTED = "sigv4_unsupported"  # 400: e.g. chunk-signed uploads (cannot be re-signed)
SIGV4_DATE_OUT_OF_RANGE = "sigv4_date_out_of_range"
AWS_SCOPE_NOT_ALLOWED = "aws_scope_not_allowed"  # service or region outside the destination
RATE_LIMITED = "rate_limited"  # 429: the grant's rate for a secret it carries is spent for now
ALLOWED = "allowed"
INJECTED = "injected"
RESIGNED = "resigned"  # an AWS request signed again with the real key


@dataclass(frozen=True, slots=True)
class OutboundRequest:
    """What the agent asked for and where the bytes would really go."""

    method: str
    scheme: str  # "https" when the upstream leg is TLS, else "http"
    host: str  # the connection target: CONNECT host, or the absolute-form host
    port: int
    path: str  # without the query string
    query: str  # raw, without "?"; "" when there is none
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""  # decoded, unless body_encoding says otherwise
    # The Content-Encoding of `body` when it is still encoded: the broker decodes it, within
    # bounds, only once the grant is authenticated (a compressed body can inflate a thousandfold).
    body_encoding: str | None = None
    host_header: str | None = None  # the Host header (or HTTP/2 :authority) as sent
    authority: str | None = None  # absolute-form request target authority, if any
    sni: str | None = None  # the client's TLS SNI towards the proxy, if any


@dataclass(frozen=True, slots=True)
class Allowed:
    """Forward the request; ``None`` fields mean "unchanged"."""

    grant_id: str
    injected: tuple[str, ...] = ()  # secret names swapped in, for scrubbing and audit
    # The rewritten parts hold the real values: kept out of repr like ``scrub``.
    headers: tuple[tuple[str, str], ...] | None = field(default=None, repr=False)
    query: str | None = field(default=None, repr=False)
    body: bytes | None = field(default=None, repr=False)
    path: str | None = None  # the canonical path the decision was made on, when it differs
    reason: str = ALLOWED
    # The audit record of this use, when its fsync was left to the caller (group commit):
    # the request must not leave before Broker.make_durable succeeded for it.
    audit_seq: int | None = None
    # secret name -> (real value, placeholder) for scrubbing the answer: every secret the
    # grant holds, not only the injected ones; never logged.
    scrub: dict[str, tuple[str, str]] = field(default_factory=dict, repr=False)
    # False when a value of the grant could not be resolved for scrubbing: the answer is
    # withheld rather than passed on partly scrubbed.
    scrub_complete: bool = True
    # LLM budget reservations held for this request, settled from its answer's usage.
    budget: tuple[Reservation, ...] = ()
    # Who asks and which host answers (grant_scrub.ScrubScope), and the value generation
    # ``scrub`` was composed at: a long poll or a stream answered after a rotation asks the
    # broker for the set again (``Broker.live_scrub``).
    scrub_scope: ScrubScope | None = field(default=None, repr=False)
    scrub_generation: int = 0
    # The media types whose answers from this host are withheld (a destination's `withhold`).
    withhold: WithholdRule | None = field(default=None, repr=False)
    # An MCP tools/prompts/resources list call: its answer keeps only what these rules allow
    # (decision/mcp_lists.py); None for every other request.
    mcp_lists: McpRules | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Denied:
    """Answer the agent ourselves; nothing goes upstream."""

    status: int
    error: str
    message: str
    grant_id: str | None = None
    # upstream_error only: which failure (broker_proxy/decision/upstream_failure.py).
    kind: str | None = None
    # Whole seconds to wait before retrying (Retry-After, RFC 9110 section 10.2.3): a 429
    # rate/concurrency/budget refusal, or a 503 the agent may simply retry.
    retry_after: int | None = None
    # A 407 to a client that sent no credentials at all: the first step of HTTP proxy
    # authentication (git, curl --proxy-anyauth ask that way), not a refusal of anything.
    challenge: bool = False

    def body(self) -> bytes:
        # The message is built only from names and codes, never from a secret value.
        answer = {"error": self.error, "grant": self.grant_id, "message": self.message}
        if self.kind is not None:
            answer["kind"] = self.kind
        return json.dumps(answer).encode()

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Cache-Control": "no-store"}
        if self.status == 407:
            headers["Proxy-Authenticate"] = 'Basic realm="broker-proxy"'
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return headers


Verdict = Allowed | Denied
