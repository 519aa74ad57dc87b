"""The policy's per-request approval fields: a secret's ``approval: per_request``, and the
top-level ``approval_timeout`` and ``approval_webhook``.

Kept apart from the loader so the loader only calls these three parsers; the rules (which
secrets can be held, what a webhook URL may be) live here with their messages.
"""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit

import yaml

from broker_proxy.policy.checking import NodeChecker
from broker_proxy.policy.inject_fields import parse_duration_field

PER_REQUEST = "per_request"
# What a person deciding a held request sees (a destination's `approval_preview`).
APPROVAL_PREVIEWS = ("full", "headers", "none")
DEFAULT_APPROVAL_TIMEOUT = timedelta(minutes=2)
# Longer than any client's patience is pointless, and a held request pins a connection.
MAX_APPROVAL_TIMEOUT = timedelta(hours=1)


def parse_secret_approval(node: yaml.Node, path: str, checker: NodeChecker,
                          held_elsewhere: str | None) -> bool:
    """True for ``approval: per_request``.

    ``held_elsewhere`` names a kind of secret whose value is used outside a request the broker
    decides (a client certificate in the TLS handshake, an AWS re-signature): such a secret
    cannot be held per request, and saying so is better than silently not holding it.
    """
    value = checker.string(node, path, f'"{PER_REQUEST}"')
    if value is None:
        return False
    if value != PER_REQUEST:
        checker.report(node, path, f'unknown approval "{value}": the only one is "{PER_REQUEST}"')
        return False
    if held_elsewhere is not None:
        checker.report(node, path, f"a {held_elsewhere} secret cannot be approved per request")
        return False
    return True


def parse_approval_timeout(node: yaml.Node, path: str, checker: NodeChecker) -> timedelta:
    timeout = parse_duration_field(node, path, checker)
    if timeout is None:
        return DEFAULT_APPROVAL_TIMEOUT
    if timeout > MAX_APPROVAL_TIMEOUT:
        checker.report(node, path, "must be at most 1h")
    return timeout


def parse_approval_webhook(node: yaml.Node, path: str, checker: NodeChecker) -> str | None:
    url = checker.string(node, path, "an http(s) URL")
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("https", "http") and bool(parts.hostname) and not any(
            ord(c) < 0x21 or ord(c) == 0x7F for c in url)
    except ValueError:
        valid = False
    if not valid:
        # The URL may carry a chat service's secret path: never echo it in the message.
        checker.report(node, path, "must be an http:// or https:// URL with a host")
        return None
    return url
