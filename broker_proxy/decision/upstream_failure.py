"""Why an allowed request got no answer from its upstream: one fixed kind per failure.

The agent's 502 ``upstream_error`` names the kind and a fixed description of it, never the
underlying error text (docs/ARCHITECTURE.md, invariant 7: nothing an upstream sent, and no
address or OS message, is echoed). The operator's log line and the audit record carry the same
kind, so the three tell one story. Whether the request left decides the use: a request whose
secret never left the proxy is recorded as not sent, and its reserved use is given back
(docs/ARCHITECTURE.md, invariant 11).
"""

from __future__ import annotations

import re
from typing import Final

UPSTREAM_ERROR: Final = "upstream_error"

# kind -> fixed description for the agent's answer; none of them quotes the failure itself.
KINDS: Final[dict[str, str]] = {
    "address_not_allowed": "the upstream's address (resolved or pinned) is loopback, private, "
                           "link-local or metadata, and the policy's network.allow_addresses "
                           "does not allow it",
    "resolve_failed": "the upstream's name could not be resolved",
    "connect_refused": "the upstream refused the connection",
    "connect_timeout": "the upstream did not accept the connection in time",
    "connect_failed": "the proxy could not connect to the upstream",
    "tls_timeout": "the upstream did not complete the TLS handshake in time",
    "tls_verify_failed": "the upstream's TLS certificate could not be verified",
    "tls_failed": "the TLS handshake with the upstream failed",
    "read_timeout": "the upstream did not answer in time",
    "upstream_closed": "the upstream closed the connection without a complete answer",
    "invalid_response": "the upstream's answer is not valid HTTP",
    "response_rejected": "the upstream's answer has headers that could smuggle a second answer",
    "response_too_large": "the upstream's answer is larger than the proxy buffers",
    "client_gone": "the agent went away before the request was sent",
    "upstream_failed": "the upstream failed",
}

# Kinds that mean the upstream connection was never made: no request left.
CONNECT_KINDS: Final = frozenset({
    "address_not_allowed", "resolve_failed", "connect_refused", "connect_timeout",
    "connect_failed", "tls_timeout", "tls_verify_failed", "tls_failed",
})

# The broker's own dial refusals are written "KIND: reason" (see UpstreamGuard); mitmproxy
# reports them as "Connection killed: KIND: reason".
_OWN_REFUSAL = re.compile(r"^(?:Connection killed: )?([a-z_]+): ")


def dial_refusal(kind: str, reason: str) -> str:
    """The text of a dial the broker refuses, so that `classify` finds its kind again."""
    return f"{kind}: {reason}"


def classify(message: str, *, sent: bool) -> str:
    """The kind of failure from the error message mitmproxy recorded on the flow.

    `sent`: whether the request had left (a connection was made and the request written).
    """
    if (own := _OWN_REFUSAL.match(message)) and own.group(1) in KINDS:
        return own.group(1)
    lowered = message.lower()
    if "client" in lowered and "tls" not in lowered:  # the agent's side ended the exchange
        return "client_gone"
    if not sent:
        if lowered == "connection cancelled":  # only the connect deadline cancels a dial
            return "connect_timeout"
        if "certificate verify failed" in lowered:
            return "tls_verify_failed"
        if "tls" in lowered or "ssl" in lowered or "handshake" in lowered:
            return "tls_failed"
        if "refused" in lowered or "errno 111" in lowered or "connect call failed" in lowered:
            return "connect_refused"
        if "timed out" in lowered or "timeout" in lowered:
            return "connect_timeout"
        if "name or service" in lowered or "getaddrinfo" in lowered or "resolve" in lowered:
            return "resolve_failed"
        if "killed" in lowered or "reset" in lowered:
            return "client_gone"
        return "connect_failed"
    if "too large" in lowered or "body_size_limit" in lowered:
        return "response_too_large"
    if "smuggl" in lowered or "validation" in lowered or "invalid header" in lowered:
        return "response_rejected"
    if "cannot parse" in lowered or "unexpected server response" in lowered or \
            "bad http" in lowered or "protocol error" in lowered:
        return "invalid_response"
    if "server closed" in lowered or "disconnect" in lowered or "closed" in lowered:
        return "upstream_closed"
    return "upstream_failed"


def description(kind: str) -> str:
    return KINDS.get(kind, KINDS["upstream_failed"])
