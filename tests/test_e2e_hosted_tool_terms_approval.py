"""Hosted-tool terms and per-request approval through the real proxy: the person is shown the
body with the terms already written in (what will be sent), the approval is bound to that body,
and a standing approval lets the same request through again (the rewriting is deterministic, so
its digest does not change)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from tests.approval_desk_client import Approver
from tests.conftest import API_HOST, Stack, Upstreams, start_stack
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
    hosted_tools:
      web_search: {{allowed_domains: [python.org], max_uses: 2}}
    destinations:
      - host: {api}
        port: {api_port}
        paths: ["/v1/**"]
agents:
  bot:
    secrets: [api_key]
    max_ttl: 1h
network:
  allow_addresses: [127.0.0.0/8]
"""
HEADERS = {"Authorization": "Bearer {{secret:api_key}}", "Content-Type": "application/json"}
BODY = json.dumps({"model": "claude-haiku-4-5", "max_tokens": 5,
                   "messages": [{"role": "user", "content": "{{secret:api_key}} hi"}],
                   "tools": [{"type": "web_search_20250305", "name": "web_search"}]}).encode()
WRITTEN = {"type": "web_search_20250305", "name": "web_search",
           "allowed_domains": ["python.org"], "max_uses": 2}


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory, pki, upstreams: Upstreams
         ) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("terms-approval"), pki, upstreams,
                        policy=POLICY)
    yield stack
    stack.proxy.stop()
    written = stack.home.audit_log.read_text() + (stack.root / "proxy.log").read_text()
    assert all(value not in written for value in stack.secret_values())


def _send(stack: Stack, pool: ThreadPoolExecutor, token: str) -> Future[Answer]:
    url = f"https://{API_HOST}:{stack.upstreams.api.port}/v1/messages"
    return pool.submit(via_httpx, stack, token, "POST", url, HEADERS, BODY)


def test_the_approved_body_carries_the_terms_and_a_standing_approval_holds(
        held: Stack, upstreams: Upstreams) -> None:
    upstreams.clear()
    grant = held.issue("api_key")
    approver = Approver(held)
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = _send(held, pool, grant.token)
        [item] = approver.wait_for(grant.grant.id)
        shown = json.loads(item["preview"]["body"]["text"])
        assert shown["tools"] == [WRITTEN]  # the person sees what will be sent
        assert approver.decide(item["id"], "approve", uses=2,
                               shown_digest=item["shown_digest"]).status_code == 200
        assert first.result(timeout=20).status == 200
        # The same request again: rewritten the same way, so the standing approval covers it.
        assert _send(held, pool, grant.token).result(timeout=20).status == 200
    assert approver.pending() == []
    received = upstreams.api.requests
    assert len(received) == 2
    for request in received:
        sent = json.loads(request.body)
        assert sent["tools"] == [WRITTEN]
        assert sent["messages"][0]["content"] == f"{held.api_key} hi"  # swapped in the body
        assert request.header("authorization") == f"Bearer {held.api_key}"
