"""Held requests end with their agent: a client that goes away while its request waits for a
person abandons it (recorded; a later approval spends nothing and sends nothing), and a proxy
that stops answers every held request 503 approval_interrupted with Retry-After (recorded)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker_proxy.audit.record_schema import first_schema_problem
from broker_proxy.audit.verify import verify_chain
from broker_proxy.devtools.local_pki import LocalPki
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from tests.approval_desk_client import Approver
from tests.conftest import API_HOST, Stack, Upstreams, start_stack
from tests.security.raw_proxy import RawAnswer, open_tunnel, read_answer
from tests.test_e2e_request_approval import APPROVAL_POLICY

pytestmark = pytest.mark.e2e


def _start(root: Path, pki: LocalPki, upstreams: Upstreams) -> Stack:
    return start_stack(root, pki, upstreams, policy=APPROVAL_POLICY.replace("TIMEOUT", "60s"))


@pytest.fixture
def held_stack(tmp_path: Path, pki: LocalPki, upstreams: Upstreams) -> Iterator[Stack]:
    running = _start(tmp_path, pki, upstreams)
    upstreams.clear()
    yield running
    running.proxy.stop()
    written = (running.root / "proxy.log").read_text(errors="replace")
    written += running.home.audit_log.read_text(errors="replace")
    assert running.api_key not in written


def _request(stack: Stack) -> bytes:
    return (f"GET /v1/held HTTP/1.1\r\nHost: {API_HOST}:{stack.upstreams.api.port}\r\n"
            "Authorization: Bearer {{secret:api_key}}\r\n\r\n").encode()


def _records(stack: Stack, grant_id: str) -> list[dict]:
    return [r for r in map(json.loads, stack.home.audit_log.read_text().splitlines())
            if r.get("grant") == grant_id]


def _wait_for_event(stack: Stack, grant_id: str, event: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in _records(stack, grant_id):
            if record["event"] == event:
                return record
        time.sleep(0.05)
    raise AssertionError(f"no {event} record for {grant_id}")


def _uses(stack: Stack, grant_id: str) -> int:
    store = SqliteGrantStore(stack.home.grants_db)
    try:
        grant = store.get(grant_id)
        assert grant is not None
        return grant.uses
    finally:
        store.close()


def test_a_held_request_whose_agent_disconnects_is_abandoned_and_cannot_be_approved(
        held_stack: Stack) -> None:
    stack = held_stack
    grant = stack.issue("api_key", max_uses=1)
    approver = Approver(stack)
    tls = open_tunnel(stack, grant.token, API_HOST, stack.upstreams.api.port)
    tls.sendall(_request(stack))
    item = approver.wait_for(grant.grant.id)[0]
    tls.close()  # the agent gives up
    abandoned = _wait_for_event(stack, grant.grant.id, "request_abandoned")
    assert abandoned["hold"] == item["id"] and abandoned["message"] == "the agent disconnected"
    assert approver.pending() == []
    # Approving it later changes nothing: no use, no injected request, nothing upstream.
    assert approver.decide(item["id"], "approve").status_code == 409
    time.sleep(0.5)
    assert stack.upstreams.api.requests == []
    assert _uses(stack, grant.grant.id) == 0
    assert [(r["event"], r["decision"], r["reason"]) for r in _records(stack, grant.grant.id)] \
        == [("request", "held", "approval_required"),
            ("request_abandoned", None, "abandoned")]
    result = verify_chain(stack.home.audit_log, stack.home.audit_key)
    assert result.ok, result.message
    records = map(json.loads, stack.home.audit_log.read_text().splitlines())
    assert first_schema_problem(records) is None


def test_a_stopping_proxy_answers_held_requests_503_approval_interrupted(
        held_stack: Stack) -> None:
    stack = held_stack
    grant = stack.issue("api_key")
    approver = Approver(stack)
    answers: list[RawAnswer] = []

    def agent() -> None:
        with open_tunnel(stack, grant.token, API_HOST, stack.upstreams.api.port) as tls:
            tls.sendall(_request(stack))
            answers.append(read_answer(tls))

    threads = [threading.Thread(target=agent) for _ in range(2)]
    for thread in threads:
        thread.start()
    held = approver.wait_for(grant.grant.id, count=2)
    assert stack.proxy.stop() == 0
    for thread in threads:
        thread.join(timeout=15)
    assert [answer.status for answer in answers] == [503, 503]
    for answer in answers:
        head = answer.raw.partition(b"\r\n\r\n")[0].lower()
        assert b"retry-after: 5" in head
        body = json.loads(answer.body)
        assert body["error"] == "approval_interrupted" and body["grant"] == grant.grant.id
    assert stack.upstreams.api.requests == []
    abandoned = [r for r in _records(stack, grant.grant.id) if r["event"] == "request_abandoned"]
    assert sorted(r["hold"] for r in abandoned) == sorted(item["id"] for item in held)
    assert all(r["message"] == "the proxy stopped" for r in abandoned)
    assert _uses(stack, grant.grant.id) == 0
    result = verify_chain(stack.home.audit_log, stack.home.audit_key)
    assert result.ok, result.message
    records = map(json.loads, stack.home.audit_log.read_text().splitlines())
    assert first_schema_problem(records) is None
