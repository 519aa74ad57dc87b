"""The admin API's routes for held requests: list, show, approve, deny.

``GET /v1/requests`` answers with the pending queue and a version; with ``?after=VERSION`` it
waits (up to 25 s) until the queue differs from that version, so a console or a script sees a
new or decided request at once without polling fast.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from broker_proxy.approvals.desk import (
    ApprovalDesk,
    HoldNotFound,
    HoldStateError,
    ShownMismatch,
)

HOLD_ID = re.compile(r"h_[0-9a-f]{16}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
LONG_POLL_S = 25.0
MAX_REASON = 500
_APPROVE_FIELDS = frozenset({"uses", "minutes", "reason", "by", "shown_digest"})
_DENY_FIELDS = frozenset({"reason", "by", "shown_digest"})


class RouteError(Exception):
    def __init__(self, status: int, code: str, message: str, allow: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.allow = status, code, message, allow


def route(desk: ApprovalDesk, method: str, parts: list[str], query: str,
          body: Callable[[], dict[str, Any]], by: Callable[[dict[str, Any]], str]
          ) -> tuple[int, object]:
    """`parts` starts with ["v1", "requests"]; `body()` reads the JSON body once; `by(body)`
    turns its "by" field into who decided, as the grant routes do."""
    if len(parts) == 2:
        _allow(method, "GET")
        return 200, _listing(desk, query)
    if len(parts) > 4 or (len(parts) == 4 and parts[3] not in ("approve", "deny")):
        raise RouteError(404, "not_found", "no such route")
    _allow(method, "GET" if len(parts) == 3 else "POST")
    hold_id = parts[2]
    if not HOLD_ID.fullmatch(hold_id):
        raise RouteError(404, "request_not_found", "no such held request")
    if len(parts) == 3:
        item = desk.get(hold_id)
        if item is None:
            raise RouteError(404, "request_not_found", "no such held request")
        return 200, item.to_public_dict()
    fields = body()
    allowed = _APPROVE_FIELDS if parts[3] == "approve" else _DENY_FIELDS
    if unknown := set(fields) - allowed:
        raise RouteError(400, "invalid_request", f"unknown fields: {', '.join(sorted(unknown))}")
    reason = fields.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON
                               or any(ord(c) < 0x20 for c in reason)):
        raise RouteError(400, "invalid_request",
                         f"reason must be one line of at most {MAX_REASON} characters")
    counts = {name: fields.get(name) for name in ("uses", "minutes")}
    for name, value in counts.items():
        if value is not None and type(value) is not int:
            raise RouteError(400, "invalid_request", f"{name} must be an integer")
    shown = fields.get("shown_digest")
    if shown is not None and (not isinstance(shown, str) or not _SHA256.fullmatch(shown)):
        raise RouteError(400, "invalid_request", "shown_digest must be 64 hex digits")
    try:
        item = desk.decide(hold_id, parts[3] == "approve", by=by(fields), reason=reason or None,
                           uses=counts["uses"], minutes=counts["minutes"], shown=shown)
    except ValueError as error:
        raise RouteError(400, "invalid_request", str(error)) from None
    except HoldNotFound:
        raise RouteError(404, "request_not_found", "no such held request") from None
    except HoldStateError as error:
        raise RouteError(409, "request_already_decided", str(error)) from None
    except ShownMismatch as error:
        raise RouteError(409, "request_not_as_shown", str(error)) from None
    return 200, item.to_public_dict()


def _listing(desk: ApprovalDesk, query: str) -> dict[str, object]:
    params = parse_qs(query, keep_blank_values=True)
    if set(params) - {"after"}:
        raise RouteError(400, "invalid_request", "the only query parameter is after")
    if "after" in params:
        after = params["after"]
        if len(after) != 1 or not after[0].isdigit() or len(after[0]) > 18:
            raise RouteError(400, "invalid_request", "after must be a version number")
        desk.wait_for_change(int(after[0]), LONG_POLL_S)
    version = desk.version  # read before the list: a change in between shows up next time
    return {"version": version, "requests": [item.to_public_dict() for item in desk.pending()]}


def _allow(method: str, allowed: str) -> None:
    if method not in allowed.split(", "):
        raise RouteError(405, "method_not_allowed", f"use {allowed}", allow=allowed)
