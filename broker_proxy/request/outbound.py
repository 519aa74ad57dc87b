"""Plain values that cross the line between the mitmproxy layer and the core.

The addon turns a flow into an ``OutboundRequest``; the core answers with ``Allowed`` or
``Denied``. Neither side needs to know the other's types.

What an ``Allowed`` carries for the answer from the policy (the host's withhold list, an MCP
list call's rules) is typed by what the answer path asks of it, not by the policy's classes:
this package sits below the policy, which matches on ``paths.canonical_path``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Protocol

from broker_proxy.request.codes import ALLOWED
from broker_proxy.request.reservation import Reservation
from broker_proxy.request.scrub_scope import ScrubScope


class MediaWithholding(Protocol):
    """A host's ``withhold`` list as the answer path asks it (policy/media_types.WithholdRule)."""

    def declared(self, content_type: str | None) -> str | None:
        """The pattern the answer's Content-Type matches, or None."""
        ...

    def sniffed(self, head: bytes) -> str | None:
        """The pattern the media type named by the body's first bytes matches, or None."""
        ...


class NamePermits(Protocol):
    """Globs a name must pass (policy/protocol_rules.NameRule)."""

    def permits(self, name: str) -> bool:
        ...


class McpListRules(Protocol):
    """What an MCP ``*/list`` answer is filtered with (policy/protocol_rules.McpRules)."""

    @property
    def tools(self) -> NamePermits | None: ...

    @property
    def prompts(self) -> NamePermits | None: ...

    @property
    def resources(self) -> NamePermits | None: ...


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
    # Who asks and which host answers (scrub_scope.py), and the value generation
    # ``scrub`` was composed at: a long poll or a stream answered after a rotation asks the
    # broker for the set again (``Broker.live_scrub``).
    scrub_scope: ScrubScope | None = field(default=None, repr=False)
    scrub_generation: int = 0
    # The media types whose answers from this host are withheld (a destination's `withhold`).
    withhold: MediaWithholding | None = field(default=None, repr=False)
    # An MCP tools/prompts/resources list call: its answer keeps only what these rules allow
    # (decision/mcp_lists.py); None for every other request.
    mcp_lists: McpListRules | None = field(default=None, repr=False)


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
