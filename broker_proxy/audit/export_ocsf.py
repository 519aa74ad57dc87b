"""Audit records as OCSF 1.8.0 events, for SIEMs that speak OCSF.

The mapping (also in docs/audit.md):

| audit event | OCSF class | activity |
|---|---|---|
| `request`, `response` | API Activity (6003) | by method: Create (POST), Read (GET, HEAD, |
|  |  | OPTIONS), Update (PUT, PATCH), Delete (DELETE), Other (99) |
| `grant_issued`, `grant_approved`, `grant_denied`, | Authorize Session (3003) | Assign |
| `request_approved`, `request_denied`, `request_timed_out` | | Privileges (1) |
| `grant_revoked`, `grant_expired` | Account Change (3001) | Detach Policy (8) |
| everything else (proxy, policy, audit) | Application Lifecycle (6002) | Start (3), |
|  |  | Stop (4), Other (99) |

The agent is the actor/user (`name`, type Other "AI agent") of API Activity and the `user` of the
identity classes, the grant is the session (`uid`), the secrets are `resources` (API Activity) or
`privileges` (Authorize Session). Whoever decided (the record's `by`: a person or a system) is
`actor.user` of the identity classes. Every event carries the security_control profile's
`action_id` and `disposition_id`: a person's approval is Approved (8), a person's denial
Rejected (25), a revocation Access Revoked (24), a refusal Blocked (2), and a request held for a
person Delayed (14) with status Unknown (0): it has not succeeded. The fields OCSF has no place for
(grant, reason, secrets, fingerprints, replica, redactions, ...) are kept in `unmapped`.
`metadata.uid` is `<log>#<seq>` and `metadata.sequence` the record's seq, so a consumer can
de-duplicate and resume.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from broker_proxy import __version__
from broker_proxy.audit.events import EVENTS
from broker_proxy.audit.reading import LOG_TAG

OCSF_VERSION: Final = "1.8.0"
PROFILES: Final = ("security_control",)
API_ACTIVITY: Final = 6003
AUTHORIZE_SESSION: Final = 3003
ACCOUNT_CHANGE: Final = 3001
APPLICATION_LIFECYCLE: Final = 6002
_CATEGORY: Final = {API_ACTIVITY: (6, "Application Activity"),
                    APPLICATION_LIFECYCLE: (6, "Application Activity"),
                    AUTHORIZE_SESSION: (3, "Identity & Access Management"),
                    ACCOUNT_CHANGE: (3, "Identity & Access Management")}
_CLASS_NAME: Final = {API_ACTIVITY: "API Activity", AUTHORIZE_SESSION: "Authorize Session",
                      ACCOUNT_CHANGE: "Account Change",
                      APPLICATION_LIFECYCLE: "Application Lifecycle"}
_API_ACTIVITY_BY_METHOD: Final = {"POST": (1, "Create"), "GET": (2, "Read"), "HEAD": (2, "Read"),
                                  "OPTIONS": (2, "Read"), "PUT": (3, "Update"),
                                  "PATCH": (3, "Update"), "DELETE": (4, "Delete")}
# http_request.http_method is an enum in OCSF (1.8.0 too).
_OCSF_HTTP_METHODS: Final = frozenset({"OPTIONS", "GET", "HEAD", "POST", "PUT", "DELETE", "TRACE",
                                       "CONNECT"})
_MAPPED: Final = frozenset({"seq", "ts", "event", "decision", "agent", "task", "method", "scheme",
                            "host", "port", "path", "status", "duration_ms", "prev", "mac",
                            LOG_TAG})
_REQUEST_FIELDS: Final = frozenset({"method", "scheme", "host", "port", "path", "status",
                                    "duration_ms"})
_PRODUCT: Final = {"name": "broker-proxy", "vendor_name": "broker-proxy", "version": __version__}
_AUTHORIZATIONS: Final = frozenset({"grant_issued", "grant_approved", "grant_denied",
                                    "request_approved", "request_denied", "request_timed_out"})
# (action_id, action, disposition_id, disposition) by event where the decision alone is not
# enough: a person's yes is Approved, not merely Allowed; a person's no is Rejected.
_BY_EVENT: Final = {
    "grant_approved": (1, "Allowed", 8, "Approved"),
    "request_approved": (1, "Allowed", 8, "Approved"),
    "grant_denied": (2, "Denied", 25, "Rejected"),
    "request_denied": (2, "Denied", 25, "Rejected"),
    "grant_revoked": (2, "Denied", 24, "Access Revoked"),
    "grant_expired": (2, "Denied", 24, "Access Revoked"),
}
_BY_DECISION: Final = {
    "allow": (1, "Allowed", 1, "Allowed"),
    "deny": (2, "Denied", 2, "Blocked"),
    # Held for a person: nothing allowed or refused yet.
    "held": (0, "Unknown", 14, "Delayed"),
}


def _epoch_ms(ts: object) -> int:
    try:
        return int(datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return 0


def _class_of(event: str, method: str | None) -> tuple[int, int, str]:
    """(class_uid, activity_id, activity_name) for an audit event."""
    if event in ("request", "response", "request_not_sent"):
        activity, name = _API_ACTIVITY_BY_METHOD.get((method or "").upper(), (99, "Other"))
        return API_ACTIVITY, activity, name
    if event in _AUTHORIZATIONS:
        return AUTHORIZE_SESSION, 1, "Assign Privileges"
    if event in ("grant_revoked", "grant_expired"):
        return ACCOUNT_CHANGE, 8, "Detach Policy"
    if event == "proxy_started":
        return APPLICATION_LIFECYCLE, 3, "Start"
    if event == "proxy_stopped":
        return APPLICATION_LIFECYCLE, 4, "Stop"
    return APPLICATION_LIFECYCLE, 99, "Other"


def to_ocsf(record: dict[str, Any]) -> dict[str, Any]:
    """One OCSF event for one audit record."""
    event = str(record.get("event"))
    class_uid, activity_id, activity_name = _class_of(event, record.get("method"))
    log_name = str(record.get(LOG_TAG, "audit.log"))
    out = _envelope(record, event, class_uid, activity_id, activity_name, log_name)
    agent = record.get("agent")
    # The agent is not a person: OCSF 1.8 has no AI agent type for a user (its ai_agent object
    # comes with a later version), so it is type Other, named as such.
    user: dict[str, Any] = ({"name": str(agent), "type_id": 99, "type": "AI agent"}
                            if agent is not None else {"name": "unknown"})
    if class_uid == API_ACTIVITY:
        _api_activity(out, record, user, log_name)
    elif class_uid in (AUTHORIZE_SESSION, ACCOUNT_CHANGE):
        _identity_change(out, record, user, class_uid)
    else:
        out["app"] = _PRODUCT
    unmapped_method = out.pop("unmapped_method", None)
    # A request's details stay in `unmapped` where the class has no place for them (an
    # approval is an Authorize Session; what it approved is still said).
    mapped = _MAPPED if class_uid == API_ACTIVITY else _MAPPED - _REQUEST_FIELDS
    out["unmapped"] = {name: value for name, value in record.items()
                       if name not in mapped and value not in (None, [], "")}
    out["unmapped"]["event"] = event
    if unmapped_method is not None:
        out["unmapped"]["method"] = unmapped_method
    return out


def _envelope(record: dict[str, Any], event: str, class_uid: int, activity_id: int,
              activity_name: str, log_name: str) -> dict[str, Any]:
    """What every class carries: class, activity, time, severity, status, metadata, control."""
    category_uid, category_name = _CATEGORY[class_uid]
    # A revocation is recorded as decision "deny" but it is a change that succeeded.
    decision = record.get("decision")
    denied = decision == "deny" and class_uid != ACCOUNT_CHANGE
    held = decision == "held"
    status_id, status = (0, "Unknown") if held else (2, "Failure") if denied else (1, "Success")
    out: dict[str, Any] = {
        "category_uid": category_uid, "category_name": category_name,
        "class_uid": class_uid, "class_name": _CLASS_NAME[class_uid],
        "activity_id": activity_id, "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        "type_name": f"{_CLASS_NAME[class_uid]}: {activity_name}",
        "time": _epoch_ms(record.get("ts")),
        "severity_id": 3 if denied else 1, "severity": "Medium" if denied else "Informational",
        "status_id": status_id, "status": status,
        "message": EVENTS.get(event, event),
        "metadata": {"version": OCSF_VERSION, "product": _PRODUCT, "log_name": log_name,
                     "uid": f"{log_name}#{record.get('seq')}", "sequence": record.get("seq"),
                     "original_time": str(record.get("ts")), "profiles": list(PROFILES)},
    }
    control = _BY_EVENT.get(event) or _BY_DECISION.get(str(decision))
    if control is not None:
        out["action_id"], out["action"], out["disposition_id"], out["disposition"] = control
    if record.get("reason") is not None:
        out["status_detail"] = str(record["reason"])
    return out


def _api_activity(out: dict[str, Any], record: dict[str, Any], user: dict[str, Any],
                  log_name: str) -> None:
    """A request or its response: the agent, the API call, the endpoint, the secrets."""
    grant = record.get("grant")
    out["actor"] = {"user": user, **({"session": {"uid": str(grant)}} if grant else {})}
    out["api"] = {"operation": f"{record.get('method')} {record.get('path')}",
                  "service": {"name": str(record.get("host"))},
                  "request": {"uid": f"{log_name}#{record.get('seq')}"}}
    out["src_endpoint"] = {"name": user["name"]}
    if record.get("host") is not None:
        _http_request(out, record)
    secrets = [str(name) for name in record.get("secrets") or []]
    if secrets:
        out["resources"] = [{"name": name, "type": "secret"} for name in secrets]
    if record.get("status") is not None:
        out["status_code"] = str(record["status"])
    if isinstance(record.get("duration_ms"), int | float):
        out["duration"] = int(record["duration_ms"])


def _http_request(out: dict[str, Any], record: dict[str, Any]) -> None:
    port = record.get("port")
    out["dst_endpoint"] = {"hostname": str(record["host"]),
                           **({"port": port} if isinstance(port, int) else {})}
    url: dict[str, Any] = {"hostname": str(record["host"]),
                           "path": str(record.get("path") or "/"),
                           "scheme": str(record.get("scheme") or "https")}
    if isinstance(port, int):
        url["port"] = port
    out["http_request"] = {"url": url}
    method = str(record.get("method")).upper()
    if method in _OCSF_HTTP_METHODS:
        out["http_request"]["http_method"] = method
    else:  # OCSF 1.1 has no PATCH (nor WebDAV verbs): api.operation still names it
        out["unmapped_method"] = method


def _identity_change(out: dict[str, Any], record: dict[str, Any], user: dict[str, Any],
                     class_uid: int) -> None:
    """A grant or a held request decided, revoked or expired: who, for whom, which secrets."""
    out["user"] = user
    by = record.get("by")
    grant = record.get("grant")
    if isinstance(by, str) and by:
        # Who decided: a person (`console:alice`, `cli:bob`, `admin-api:ci`) or a system
        # (`broker-proxy` for a timeout, `policy-reload`, `exec`).
        out["actor"] = {"user": {"name": by, "uid": by}}
    if class_uid == AUTHORIZE_SESSION:
        if grant:
            out["session"] = {"uid": str(grant)}
        out["privileges"] = [str(name) for name in record.get("secrets") or []]
    else:
        out["policy"] = {"name": f"grant {grant}", "uid": str(grant)}
