"""Approvals through the real proxy bind to what the person was shown, and show the request.

- A standing approval ("this request, N uses") never lets the same request carry a secret it
  was not shown: another gated secret, or one more, in a header is held again.
- The person sees the request as the agent sent it (placeholders, never values): method, URL
  with query, headers, the body pretty-printed, each placeholder and the secret it names; the
  audit records the digest of what was shown with the hold and with the decision.
- A destination's `approval_preview: none` shows only the shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from broker_proxy.audit.log import AuditLog
from tests.approval_desk_client import Approver
from tests.conftest import API_HOST, OTHER_HOST, Stack, Upstreams, start_stack
from tests.e2e_clients import Answer, via_httpx

pytestmark = pytest.mark.e2e

POLICY = """\
version: 1
approval_timeout: 60s
secrets:
  api_key:
    from: vault
    approval: per_request
    inject: [header, body]
    destinations:
      - host: {api}
        port: {api_port}
        paths: ["/v1/**"]
      - host: {other}
        port: {other_port}
        approval_preview: none
  other_key:
    from: env:E2E_OTHER_KEY
    approval: per_request
    destinations:
      - host: {api}
        port: {api_port}
        paths: ["/v1/**"]
agents:
  bot:
    secrets: [api_key, other_key]
    max_ttl: 1h
egress:
  allow: [{egress}]
network:
  allow_addresses: [127.0.0.0/8]
"""
A = {"Authorization": "Bearer {{secret:api_key}}", "Content-Type": "application/json"}
B = {"Authorization": "Bearer {{secret:other_key}}", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def bound(tmp_path_factory: pytest.TempPathFactory, pki, upstreams: Upstreams
          ) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("bound"), pki, upstreams, policy=POLICY)
    yield stack
    stack.proxy.stop()
    written = stack.home.audit_log.read_text() + (stack.root / "proxy.log").read_text()
    assert all(value not in written for value in stack.secret_values())


@pytest.fixture(autouse=True)
def _clear(upstreams: Upstreams) -> None:
    upstreams.clear()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


def _send(stack: Stack, pool: ThreadPoolExecutor, token: str, headers: dict[str, str],
          body: bytes, path: str = "/v1/refunds") -> Future[Answer]:
    url = f"https://{API_HOST}:{stack.upstreams.api.port}{path}"
    return pool.submit(via_httpx, stack, token, "POST", url, headers, body)


def _carried_upstream(stack: Stack) -> list[str]:
    """Which real values reached the API upstream, one entry per request."""
    names = {f"Bearer {stack.api_key}": "api_key", f"Bearer {stack.other_key}": "other_key"}
    return [names.get(r.header("Authorization") or "", "none")
            for r in stack.upstreams.api.requests]


def test_a_standing_approval_never_carries_a_secret_it_was_not_shown(
        bound: Stack, pool: ThreadPoolExecutor) -> None:
    grant = bound.issue("api_key", "other_key")
    approver = Approver(bound)
    body = b'{"amount": 1200}'
    first = _send(bound, pool, grant.token, A, body)
    [item] = approver.wait_for(grant.grant.id)
    assert item["request"]["carries"] == ["api_key@header:authorization"]
    assert approver.decide(item["id"], "approve", uses=3).status_code == 200
    assert first.result(timeout=20).status == 200
    # Control: the approved request goes out again on the standing approval, with its value.
    assert _send(bound, pool, grant.token, A, body).result(timeout=20).status == 200
    assert _carried_upstream(bound) == ["api_key", "api_key"]

    # Same method, path, query and body, another gated secret in the header: held again.
    swapped = _send(bound, pool, grant.token, B, body)
    [held] = approver.wait_for(grant.grant.id)
    assert held["secrets"] == ["other_key"]
    assert held["request"]["carries"] == ["other_key@header:authorization"]
    assert not swapped.done()
    # One more secret beside the approved one: held too.
    both = _send(bound, pool, grant.token, {**A, "X-Other": "{{secret:other_key}}"}, body)
    held_both = [i for i in approver.wait_for(grant.grant.id, count=2) if i["id"] != held["id"]]
    assert held_both[0]["secrets"] == ["api_key", "other_key"]
    assert held_both[0]["request"]["carries"] == ["api_key@header:authorization",
                                                  "other_key@header:x-other"]
    for pending in (held, held_both[0]):
        assert approver.decide(pending["id"], "deny", reason="not shown").status_code == 200
    assert swapped.result(timeout=20).status == 403 and both.result(timeout=20).status == 403
    assert _carried_upstream(bound) == ["api_key", "api_key"], "other_key never left"


def test_the_person_sees_the_request_as_sent_and_the_audit_records_what_was_shown(
        bound: Stack, pool: ThreadPoolExecutor) -> None:
    grant = bound.issue("api_key")
    approver = Approver(bound)
    body = b'{"amount": 99999, "currency": "eur", "note": "{{secret:api_key}}"}'
    sent = _send(bound, pool, grant.token, {**A, "X-Trace": "t-1"}, body,
                 path="/v1/refunds?order=o_77&fast=1")
    [item] = approver.wait_for(grant.grant.id)
    preview = item["preview"]
    assert preview["level"] == "full" and preview["method"] == "POST"
    assert preview["url"] == f"https://{API_HOST}:{bound.upstreams.api.port}/v1/refunds"
    assert preview["query"]["fields"] == [["order", "o_77"], ["fast", "1"]]
    headers = dict((k.lower(), v) for k, v in preview["headers"])
    assert headers["authorization"] == "Bearer {{secret:api_key}}"
    assert headers["x-trace"] == "t-1" and "proxy-authorization" not in headers
    assert preview["body"]["kind"] == "json"
    assert '"amount": 99999' in preview["body"]["text"]
    assert preview["placeholders"] == [{"text": "{{secret:api_key}}", "secret": "api_key"}]
    assert {(c["secret"], c["where"]) for c in preview["carries"]} == {
        ("api_key", "header:authorization"), ("api_key", "body")}
    assert bound.api_key not in json.dumps(item)

    wrong = approver.decide(item["id"], "approve", shown_digest="0" * 64)
    assert (wrong.status_code, wrong.json()["error"]) == (409, "request_not_as_shown")
    assert approver.decide(item["id"], "approve", shown_digest=item["shown_digest"],
                           by="dana").status_code == 200
    assert sent.result(timeout=20).status == 200
    records = [r for r in AuditLog.read_records(bound.home.audit_log)
               if r.get("hold") == item["id"]]
    assert [(r["event"], r["shown_digest"]) for r in records] == [
        ("request", item["shown_digest"]), ("request_approved", item["shown_digest"])]
    assert records[1]["by"] == "admin-api:dana"
    assert records[1]["carries"] == item["request"]["carries"]


def test_approval_preview_none_shows_only_the_shape(bound: Stack,
                                                    pool: ThreadPoolExecutor) -> None:
    grant = bound.issue("api_key")
    approver = Approver(bound)
    url = f"https://{OTHER_HOST}:{bound.upstreams.other.port}/pay?card=4111"
    sent = pool.submit(via_httpx, bound, grant.token, "POST", url, A, b'{"amount": 5}')
    [item] = approver.wait_for(grant.grant.id)
    preview = item["preview"]
    assert preview["level"] == "none"
    assert preview["query"] is None and preview["headers"] is None and preview["body"] is None
    assert "4111" not in json.dumps(preview) and "amount" not in json.dumps(preview)
    assert preview["carries"] == [{"secret": "api_key", "where": "header:authorization"}]
    approver.decide(item["id"], "deny")
    assert sent.result(timeout=20).status == 403
