"""A signed webhook for chat tools other than Slack: `POST /v1/chat/webhooks/<name>`.

The caller signs each request with the webhook's shared key (a vault entry named in the
policy): `X-Broker-Timestamp` is the Unix time in seconds, and `X-Broker-Signature` is
`sha256=` and the hex HMAC-SHA256 of `<timestamp>.<body>` (the body's exact bytes). Signing the
timestamp with the body and refusing one more than five minutes from now keeps a captured
request from being replayed later; within the window, a replay finds the request already
decided. The comparison is constant-time (hmac.compare_digest).

The body is JSON: `{"request": "h_...", "decision": "allow" | "deny", "uses": N,
"minutes": M, "user": "alice"}` (uses, minutes and user optional). Without `user` the webhook
itself decides, as `webhook:<name>` with the webhook's role; with one, the user must be in the
webhook's `users` and decides as `webhook:<name>:<user>` with the role given there.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable

from broker_proxy.approvals.chat_decision import (
    ReadSecret,
    RefuseOwnGrant,
    chat_principal,
    decide_once,
    decided_answer,
)
from broker_proxy.approvals.desk import ApprovalDesk
from broker_proxy.http_routes import ApiError, Headers
from broker_proxy.policy.chat_rules import ChatWebhookRules

TIMESTAMP_HEADER = "X-Broker-Timestamp"
SIGNATURE_HEADER = "X-Broker-Signature"
WINDOW_S = 5 * 60
_FIELDS = frozenset({"request", "decision", "uses", "minutes", "user"})


def signature(key: str, timestamp: str, body: bytes) -> str:
    """The `X-Broker-Signature` value for this timestamp and body."""
    mac = hmac.new(key.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(key: str, headers: Headers, body: bytes,
           now: Callable[[], float] = time.time) -> None:
    """401 `signature_invalid` unless the headers sign this body within the window."""
    timestamp = headers.get(TIMESTAMP_HEADER) or ""
    presented = headers.get(SIGNATURE_HEADER) or ""
    # ASCII digits only: str.isdigit() also passes "²", which int() refuses (a 500, not a 401).
    fresh = timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12 and \
        abs(now() - int(timestamp)) <= WINDOW_S
    expected = signature(key, timestamp, body)
    # Always compare, so a stale request takes as long as a wrong one.
    matches = hmac.compare_digest(presented.encode("utf-8", "replace"), expected.encode())
    if not (matches and fresh):
        raise ApiError(401, "signature_invalid",
                       f"{SIGNATURE_HEADER} does not sign this body, or {TIMESTAMP_HEADER} "
                       "is more than five minutes away")


def webhook_decision(rules: ChatWebhookRules, read_secret: ReadSecret, desk: ApprovalDesk,
                     headers: Headers, raw: bytes,
                     refuse_own: RefuseOwnGrant | None = None) -> tuple[int, object]:
    verify(read_secret(rules.secret), headers, raw)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_request", "the body is not JSON") from None
    if not isinstance(body, dict) or set(body) - _FIELDS:
        raise ApiError(400, "invalid_request",
                       f"the body is an object of {', '.join(sorted(_FIELDS))}")
    decision, hold_id, user = body.get("decision"), body.get("request"), body.get("user")
    if decision not in ("allow", "deny") or not isinstance(hold_id, str):
        raise ApiError(400, "invalid_request", "request and decision (allow or deny) are needed")
    counts = {name: body.get(name) for name in ("uses", "minutes")}
    if any(value is not None and type(value) is not int for value in counts.values()):
        raise ApiError(400, "invalid_request", "uses and minutes must be integers")
    if user is None:
        principal = chat_principal(f"webhook:{rules.name}", rules.role, hold_id)
    elif isinstance(user, str):
        principal = chat_principal(f"webhook:{rules.name}:{user}"[:200], rules.users.get(user),
                                   hold_id)
    else:
        raise ApiError(400, "invalid_request", "user must be a string")
    item = decide_once(desk, hold_id, decision == "allow", principal,
                       uses=counts["uses"], minutes=counts["minutes"], refuse_own=refuse_own)
    return 200, decided_answer(item)
