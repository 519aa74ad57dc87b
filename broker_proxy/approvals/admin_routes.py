"""The admin API's routes for held requests: list, show, approve, deny.

``GET /v1/requests`` answers with the pending queue and a version; with ``?after=VERSION`` it
waits (up to 25 s) until the queue differs from that version, so a console or a script sees a
new or decided request at once without polling fast.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs

from broker_proxy.approvals.desk import (
    ApprovalDesk,
    HoldNotFound,
    HoldStateError,
    ShownMismatch,
)
from broker_proxy.http_routes import ApiError, Route, RouteCall
from broker_proxy.identity.roles import Action

HOLD_ID = re.compile(r"h_[0-9a-f]{16}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
LONG_POLL_S = 25.0
MAX_REASON = 500
_APPROVE_FIELDS = frozenset({"uses", "minutes", "reason", "by", "shown_digest"})
_DENY_FIELDS = frozenset({"reason", "by", "shown_digest"})


def routes(desk: ApprovalDesk) -> list[Route]:
    """The held-request routes on the admin listener, each with the action it needs."""
    return [
        Route("GET", "/v1/requests", lambda call: (200, _listing(desk, call.query)),
              Action.READ),
        Route("GET", "/v1/requests/{id}", lambda call: _show(desk, call.params["id"]),
              Action.READ),
        Route("POST", "/v1/requests/{id}/approve", lambda call: _decide(desk, call, True),
              Action.DECIDE),
        Route("POST", "/v1/requests/{id}/deny", lambda call: _decide(desk, call, False),
              Action.DECIDE),
    ]


def _show(desk: ApprovalDesk, hold_id: str) -> tuple[int, object]:
    item = desk.get(hold_id) if HOLD_ID.fullmatch(hold_id) else None
    if item is None:
        raise ApiError(404, "request_not_found", "no such held request")
    return 200, item.to_public_dict()


def _decide(desk: ApprovalDesk, call: RouteCall, approve: bool) -> tuple[int, object]:
    """Approve or deny; `call.by(fields)` turns the body's "by" into who decided, as the
    grant routes do."""
    hold_id = call.params["id"]
    if not HOLD_ID.fullmatch(hold_id):
        raise ApiError(404, "request_not_found", "no such held request")
    fields = call.body()
    allowed = _APPROVE_FIELDS if approve else _DENY_FIELDS
    if unknown := set(fields) - allowed:
        raise ApiError(400, "invalid_request", f"unknown fields: {', '.join(sorted(unknown))}")
    reason = fields.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON
                               or any(ord(c) < 0x20 for c in reason)):
        raise ApiError(400, "invalid_request",
                       f"reason must be one line of at most {MAX_REASON} characters")
    counts = {name: fields.get(name) for name in ("uses", "minutes")}
    for name, value in counts.items():
        if value is not None and type(value) is not int:
            raise ApiError(400, "invalid_request", f"{name} must be an integer")
    shown = fields.get("shown_digest")
    if shown is not None and (not isinstance(shown, str) or not _SHA256.fullmatch(shown)):
        raise ApiError(400, "invalid_request", "shown_digest must be 64 hex digits")
    try:
        item = desk.decide(hold_id, approve, by=call.by(fields), reason=reason or None,
                           uses=counts["uses"], minutes=counts["minutes"], shown=shown)
    except ValueError as error:
        raise ApiError(400, "invalid_request", str(error)) from None
    except HoldNotFound:
        raise ApiError(404, "request_not_found", "no such held request") from None
    except HoldStateError as error:
        raise ApiError(409, "request_already_decided", str(error)) from None
    except ShownMismatch as error:
        raise ApiError(409, "request_not_as_shown", str(error)) from None
    return 200, item.to_public_dict()


def _listing(desk: ApprovalDesk, query: str) -> dict[str, object]:
    params = parse_qs(query, keep_blank_values=True)
    if set(params) - {"after"}:
        raise ApiError(400, "invalid_request", "the only query parameter is after")
    if "after" in params:
        after = params["after"]
        if len(after) != 1 or not after[0].isdigit() or len(after[0]) > 18:
            raise ApiError(400, "invalid_request", "after must be a version number")
        desk.wait_for_change(int(after[0]), LONG_POLL_S)
    version = desk.version  # read before the list: a change in between shows up next time
    return {"version": version, "requests": [item.to_public_dict() for item in desk.pending()]}

