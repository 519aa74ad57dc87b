"""The admin API of a real `broker-proxy run`: bearer auth first, then grants over JSON."""

from __future__ import annotations

import json
import socket
import stat
import urllib.parse
from pathlib import Path

import pytest
import requests

from broker_proxy.admin_token import AdminTokenError, load_or_create_admin_token
from broker_proxy.audit.log import AuditLog
from tests.conftest import API_HOST, Stack
from tests.e2e_clients import CLIENTS

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": "Bearer {{secret:api_key}}"}


def admin_token(stack: Stack) -> str:
    return stack.home.admin_token.read_text().strip()


RIGHT = "use the admin token"


ACTOR = "tests"  # every change names its caller (X-Broker-Actor), unless a test says otherwise


def call(stack: Stack, method: str, path: str, *, token: str | None = RIGHT,
         body: object = None, headers: dict[str, str] | None = None,
         actor: str | None = ACTOR) -> requests.Response:
    sent = dict(headers or {})
    if method == "POST" and actor is not None and not (isinstance(body, dict) and "by" in body):
        sent.setdefault("X-Broker-Actor", actor)
    if token == RIGHT:
        sent["Authorization"] = f"Bearer {admin_token(stack)}"
    elif token is not None:
        sent["Authorization"] = token
    return requests.request(method, stack.proxy.admin_url + path, headers=sent,
                            json=body, timeout=10)


def snapshot(stack: Stack) -> tuple[list[dict], list[dict]]:
    """Everything a request could change: the grants and the audit log's records (but the
    signin_failed records a refused token is meant to leave)."""
    answer = call(stack, "GET", "/v1/grants")
    grants = [{k: v for k, v in g.items() if k != "state"} for g in answer.json()]
    records = [r for r in AuditLog.read_records(stack.home.audit_log)
               if r["event"] != "signin_failed"]
    return grants, records


def test_admin_token_is_created_private_at_first_start(stack: Stack) -> None:
    mode = stat.S_IMODE(stack.home.admin_token.stat().st_mode)
    assert mode == 0o600
    assert len(admin_token(stack)) >= 40
    assert stack.proxy.info["admin"].startswith("127.0.0.1:")


def test_admin_token_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "admin.token"
    token = load_or_create_admin_token(path)
    assert load_or_create_admin_token(path) == token
    path.chmod(0o644)
    with pytest.raises(AdminTokenError, match="readable by others"):
        load_or_create_admin_token(path)


@pytest.mark.parametrize("token", [None, "Bearer wrong-token-0000000000000000000000000000000",
                                   "Bearer ", "Basic right", "Bearer  right-but-spaced"])
def test_missing_or_wrong_token_is_401_everywhere_and_changes_nothing(stack: Stack,
                                                                      token: str | None) -> None:
    pending = stack.issue("api_key", agent="careful-bot")
    active = stack.issue("api_key")
    if token == "Basic right":
        token = f"Basic {admin_token(stack)}"
    if token == "Bearer  right-but-spaced":
        token = f"Bearer {admin_token(stack)}x"
    before = snapshot(stack)
    issue_body = {"agent": "bot", "task": "sneaky", "secrets": ["api_key"]}
    attempts = [
        ("GET", "/v1/grants", None),
        ("POST", "/v1/grants", issue_body),
        ("GET", f"/v1/grants/{active.grant.id}", None),
        ("POST", f"/v1/grants/{pending.grant.id}/approve", None),
        ("POST", f"/v1/grants/{pending.grant.id}/deny", None),
        ("POST", f"/v1/grants/{active.grant.id}/revoke", None),
        ("GET", "/v1/no-such-route", None),
        ("DELETE", f"/v1/grants/{active.grant.id}", None),
        ("POST", "/healthz", None),
    ]
    for method, path, body in attempts:
        answer = call(stack, method, path, token=token, body=body)
        assert answer.status_code == 401, (method, path)
        assert answer.json()["error"] == "unauthorized"
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert admin_token(stack) not in answer.text
    assert snapshot(stack) == before


def test_probes_and_openapi_need_no_token(stack: Stack) -> None:
    assert call(stack, "GET", "/healthz", token=None).json() == {"status": "ok"}
    ready = call(stack, "GET", "/readyz", token=None)
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    # vault: the policy has a `from: vault` secret; audit_checkpoints: checkpoints are on.
    assert set(ready.json()["checks"]) == {"grant_store", "audit_log", "policy", "vault",
                                          "audit_checkpoints"}
    document = call(stack, "GET", "/openapi.json", token=None).json()
    shipped = json.loads((Path(__file__).parent.parent / "broker_proxy" /
                          "admin_openapi.json").read_text())
    assert document == shipped


def test_grant_issued_approved_and_revoked_over_the_api_gates_requests(stack: Stack) -> None:
    answer = call(stack, "POST", "/v1/grants",
                  body={"agent": "careful-bot", "task": "api task", "secrets": ["api_key"],
                        "ttl": "10m", "max_uses": 5})
    assert answer.status_code == 201
    issued = answer.json()
    assert issued["state"] == "pending"
    assert issued["placeholders"] == {"api_key": "{{secret:api_key}}"}
    assert issued["proxy_url"].endswith("@" + stack.proxy.info["listen"])
    grant_id, token = issued["id"], issued["token"]
    url = stack.url(stack.upstreams.api, API_HOST, "/v1/admin")
    curl = CLIENTS["curl"]

    refused = curl(stack, token, "GET", url, headers=AUTH)
    assert (refused.status, refused.json()["error"]) == (403, "grant_pending_approval")
    pending = call(stack, "GET", "/v1/grants?pending=true").json()
    assert grant_id in [g["id"] for g in pending]

    approved = call(stack, "POST", f"/v1/grants/{grant_id}/approve", body={"by": "alice"})
    assert approved.status_code == 200
    assert (approved.json()["state"], approved.json()["approved_by"]) == ("active",
                                                                           "admin-api:alice")
    assert curl(stack, token, "GET", url, headers=AUTH).status == 200
    assert call(stack, "GET", f"/v1/grants/{grant_id}").json()["uses"] == 1

    assert call(stack, "POST", f"/v1/grants/{grant_id}/revoke").json()["state"] == "revoked"
    after = curl(stack, token, "GET", url, headers=AUTH)
    assert (after.status, after.json()["error"]) == (403, "grant_revoked")
    assert len(stack.upstreams.api.requests) == 1

    records = [r for r in AuditLog.read_records(stack.home.audit_log) if r["grant"] == grant_id]
    events = [(r["event"], r.get("by")) for r in records if r["event"].startswith("grant_")]
    assert events == [("grant_issued", "admin-api:tests"), ("grant_approved", "admin-api:alice"),
                      ("grant_revoked", "admin-api:tests")]
    assert token not in stack.home.audit_log.read_text()


def test_a_change_without_a_named_caller_names_the_token_holder(stack: Stack) -> None:
    """Nobody decides as an anonymous `admin-api`: a caller that names nobody is recorded as the
    holder of the admin token (scripts written to the bearer-token contract keep working), and
    a clash between the header and the body is refused without changing anything."""
    issued = call(stack, "POST", "/v1/grants", body={
        "agent": "careful-bot", "task": "who", "secrets": ["api_key"]}).json()
    before = snapshot(stack)
    clash = call(stack, "POST", f"/v1/grants/{issued['id']}/approve", body={"by": "alice"},
                 headers={"X-Broker-Actor": "mallory"})
    assert clash.status_code == 400
    assert snapshot(stack) == before
    unnamed = call(stack, "POST", f"/v1/grants/{issued['id']}/approve", actor=None)
    assert unnamed.status_code == 200, unnamed.text
    assert unnamed.json()["approved_by"] == "admin-api:token-holder"
    named = call(stack, "POST", "/v1/grants", actor="ci-pipeline", body={
        "agent": "careful-bot", "task": "who", "secrets": ["api_key"]}).json()
    issued_by = {r["grant"]: r.get("by") for r in AuditLog.read_records(stack.home.audit_log)
                 if r["event"] == "grant_issued"}
    assert issued_by[named["id"]] == "admin-api:ci-pipeline"
    by = [r.get("by") for r in AuditLog.read_records(stack.home.audit_log)]
    assert "admin-api" not in by


def test_grant_denied_over_the_api_stays_refused(stack: Stack) -> None:
    issued = call(stack, "POST", "/v1/grants", body={
        "agent": "careful-bot", "task": "deny me", "secrets": ["api_key"]}).json()
    denied = call(stack, "POST", f"/v1/grants/{issued['id']}/deny")
    assert denied.json()["state"] == "denied"
    answer = CLIENTS["curl"](stack, issued["token"], "GET",
                             stack.url(stack.upstreams.api, API_HOST, "/v1/x"), headers=AUTH)
    assert (answer.status, answer.json()["error"]) == (403, "grant_denied")
    again = call(stack, "POST", f"/v1/grants/{issued['id']}/approve")
    assert (again.status_code, again.json()["error"]) == (409, "grant_state_conflict")


def test_refusals_have_stable_codes(stack: Stack) -> None:
    unknown = call(stack, "GET", "/v1/grants/g_0123456789abcdef")
    assert (unknown.status_code, unknown.json()["error"]) == (404, "grant_not_found")
    outside = call(stack, "POST", "/v1/grants", body={
        "agent": "careful-bot", "task": "t", "secrets": ["other_key"]})
    missing = call(stack, "POST", "/v1/grants", body={
        "agent": "careful-bot", "task": "t", "secrets": ["no_such_secret"]})
    assert (outside.status_code, outside.json()["error"]) == (422, "grant_not_allowed")
    # Asking is no way to learn which secrets exist.
    assert outside.json()["message"].replace("other_key", "X") == (
        missing.json()["message"].replace("no_such_secret", "X"))
    extra = call(stack, "POST", "/v1/grants", body={
        "agent": "bot", "task": "t", "secrets": ["api_key"], "admin": True})
    assert (extra.status_code, extra.json()["error"]) == (400, "invalid_request")
    too_long = call(stack, "POST", "/v1/grants", body={
        "agent": "bot", "task": "t", "secrets": ["api_key"], "ttl": "2h"})
    assert too_long.status_code == 422
    assert call(stack, "GET", "/v1/grants?pending=maybe").status_code == 400
    # A state filter names a state: empty or unknown is refused, as the OpenAPI enum says.
    assert call(stack, "GET", "/v1/grants?state=").status_code == 400
    assert call(stack, "GET", "/v1/grants?state=gone").status_code == 400
    assert call(stack, "GET", "/v1/grants?state=active").status_code == 200
    assert call(stack, "GET", "/v1/grants?limit=").status_code == 400
    assert call(stack, "GET", "/v1/audit?agent=&=").status_code == 400  # a nameless parameter
    assert call(stack, "GET", "/v1/audit?agent=").status_code == 200  # an empty filter: none


@pytest.mark.parametrize(("raw", "reason"), [
    (b'{"agent": "bot", "task": "t", "secrets": ["api_key"], "max_uses": '
     b'100000000000000000000000000}', "out of range"),
    (b'{"agent": "bot", "task": "t", "secrets": ["api_key"], "max_uses": 1000000001}',
     "max_uses"),
    (b'{"agent": "bot", "agent": "careful-bot", "task": "t", "secrets": ["api_key"]}',
     "duplicate key"),
    (b'{"agent": "bot", "task": "t", "secrets": ["api_key"], "x": ' + b"[" * 30000
     + b"]" * 30000 + b"}", "nested deeper"),
    (b'{"agent": "bot", "task": "t", "secrets": ["api_key"], "max_uses": NaN}',
     "not a number"),
])
def test_json_out_of_bounds_is_a_clear_400_and_changes_nothing(stack: Stack, raw: bytes,
                                                               reason: str) -> None:
    before = snapshot(stack)
    answer = requests.post(stack.proxy.admin_url + "/v1/grants", data=raw, timeout=10,
                           headers={"Authorization": f"Bearer {admin_token(stack)}",
                                    "X-Broker-Actor": ACTOR,
                                    "Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_request"
    assert reason in answer.json()["message"]
    assert snapshot(stack) == before


def test_a_content_length_that_is_not_ascii_digits_is_a_400(stack: Stack) -> None:
    """`²` passes str.isdigit() but not int(): the answer is a 400, and the listener keeps
    answering (the chat door reads the body of unauthenticated callers too)."""
    url = urllib.parse.urlsplit(stack.proxy.admin_url)
    assert url.scheme == "http" and url.hostname and url.port
    before = snapshot(stack)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/grants HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n"
                     + f"Authorization: Bearer {admin_token(stack)}\r\n".encode()
                     + b"X-Broker-Actor: tests\r\nContent-Length: \xb2\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer
    assert json.loads(body)["message"] == "bad Content-Length"
    assert snapshot(stack) == before
