"""Approval per request through the real proxy: a request that would carry a secret marked
`approval: per_request` waits until a person decides, and only the request shown goes out."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from broker_proxy.devtools import prefork
from broker_proxy.devtools.local_pki import LocalPki
from tests.approval_desk_client import Approver
from tests.conftest import API_HOST, EGRESS_HOST, PYTHON, Stack, Upstreams, start_stack
from tests.e2e_clients import Answer, via_curl, via_httpx
from tests.replay_property import assert_replay_unchanged

pytestmark = pytest.mark.e2e

APPROVAL_POLICY = """\
version: 1
approval_timeout: TIMEOUT
secrets:
  api_key:
    from: vault
    approval: per_request
    destinations:
      - host: {api}
        port: {api_port}
        methods: [GET, POST]
        paths: ["/v1/**"]
agents:
  bot:
    secrets: [api_key]
    max_ttl: 1h
  bot2:
    secrets: [api_key]
    max_ttl: 1h
egress:
  allow: [{egress}]
network:
  allow_addresses: [127.0.0.0/8]
"""
AUTH = {"Authorization": "Bearer {{secret:api_key}}"}


def _start(root: Path, pki: LocalPki, upstreams: Upstreams, timeout: str) -> Stack:
    return start_stack(root, pki, upstreams,
                       policy=APPROVAL_POLICY.replace("TIMEOUT", timeout))


@pytest.fixture(scope="module")
def held_stack(tmp_path_factory: pytest.TempPathFactory, pki: LocalPki,
               upstreams: Upstreams) -> Iterator[Stack]:
    running = _start(tmp_path_factory.mktemp("approvals"), pki, upstreams, "60s")
    yield running
    running.proxy.stop()
    written = (running.root / "proxy.log").read_text(errors="replace")
    written += running.home.audit_log.read_text(errors="replace")
    assert running.api_key not in written, "a secret value reached the log or audit log"
    assert_replay_unchanged(running.home.audit_log, running.policy_file)


@pytest.fixture(autouse=True)
def _clear(upstreams: Upstreams) -> None:
    upstreams.clear()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


def _post(stack: Stack, client, token: str, body: bytes, pool: ThreadPoolExecutor
          ) -> Future[Answer]:
    url = f"https://{API_HOST}:{stack.upstreams.api.port}/v1/items"
    return pool.submit(client, stack, token, "POST", url, AUTH, body)


def _injected(stack: Stack) -> list[bytes]:
    """Bodies of the requests upstream that carried the real key."""
    return [r.body for r in stack.upstreams.api.requests
            if r.header("Authorization") == f"Bearer {stack.api_key}"]


def _audit(stack: Stack) -> list[dict]:
    return [json.loads(line) for line in stack.home.audit_log.read_text().splitlines()]


@pytest.mark.parametrize("client", [via_curl, via_httpx], ids=["curl", "httpx"])
def test_held_request_goes_out_once_approved(held_stack: Stack, pool: ThreadPoolExecutor,
                                             client) -> None:
    grant = held_stack.issue("api_key")
    approver = Approver(held_stack)
    answer = _post(held_stack, client, grant.token, b'{"n": 1}', pool)
    [item] = approver.wait_for(grant.grant.id)
    time.sleep(0.3)
    assert not answer.done(), "the client must still be waiting"
    assert held_stack.upstreams.api.requests == [], "nothing goes upstream while held"
    assert item["agent"] == "bot" and item["secrets"] == ["api_key"]
    shown = item["request"]
    assert (shown["method"], shown["host"], shown["path"]) == ("POST", API_HOST, "/v1/items")
    assert shown["body_size"] == len(b'{"n": 1}')
    assert held_stack.api_key not in json.dumps(item)

    assert approver.decide(item["id"], "approve", reason="looks fine").status_code == 200
    assert answer.result(timeout=20).status == 200
    assert _injected(held_stack) == [b'{"n": 1}']
    records = [r for r in _audit(held_stack) if r.get("hold") == item["id"]]
    assert [(r["event"], r["decision"]) for r in records] == [
        ("request", "held"), ("request_approved", "allow")]
    assert records[1]["by"] == "admin-api:approver-bot" and records[1]["reason"] == "once"


def test_approved_once_then_the_same_request_is_held_again(held_stack: Stack,
                                                          pool: ThreadPoolExecutor) -> None:
    grant = held_stack.issue("api_key")
    approver = Approver(held_stack)
    first = _post(held_stack, via_httpx, grant.token, b"same", pool)
    [item] = approver.wait_for(grant.grant.id)
    approver.decide(item["id"], "approve")
    assert first.result(timeout=20).status == 200
    # The same client: curl would add a Content-Type httpx does not send, and how the body is
    # read is part of what was approved.
    second = _post(held_stack, via_httpx, grant.token, b"same", pool)
    [again] = approver.wait_for(grant.grant.id)
    assert again["id"] != item["id"]
    assert again["request"]["digest"] == item["request"]["digest"]
    assert len(_injected(held_stack)) == 1, "one approval, exactly one injection"
    approver.decide(again["id"], "deny")
    assert second.result(timeout=20).status == 403
    assert len(_injected(held_stack)) == 1


def test_denied_request_is_refused_and_nothing_is_sent(held_stack: Stack,
                                                      pool: ThreadPoolExecutor) -> None:
    grant = held_stack.issue("api_key")
    approver = Approver(held_stack)
    answer = _post(held_stack, via_curl, grant.token, b"delete everything", pool)
    [item] = approver.wait_for(grant.grant.id)
    assert approver.decide(item["id"], "deny", reason="not today",
                           by="alice").status_code == 200
    result = answer.result(timeout=20)
    assert result.status == 403
    assert result.json()["error"] == "request_denied"
    assert "not today" in result.json()["message"]
    assert held_stack.upstreams.api.requests == []
    [record] = [r for r in _audit(held_stack) if r["event"] == "request_denied"
                and r.get("hold") == item["id"]]
    assert record["by"] == "admin-api:alice" and record["message"] == "not today"
    # Decided once: a second decision changes nothing.
    assert approver.decide(item["id"], "approve").status_code == 409


def test_n_uses_let_exactly_n_identical_requests_through(held_stack: Stack,
                                                         pool: ThreadPoolExecutor) -> None:
    grant = held_stack.issue("api_key")
    approver = Approver(held_stack)
    first = _post(held_stack, via_httpx, grant.token, b"poll", pool)
    [item] = approver.wait_for(grant.grant.id)
    approver.decide(item["id"], "approve", uses=3)
    assert first.result(timeout=20).status == 200
    for _ in range(2):
        assert via_httpx(held_stack, grant.token, "POST",
                         f"https://{API_HOST}:{held_stack.upstreams.api.port}/v1/items",
                         AUTH, b"poll").status == 200
    fourth = _post(held_stack, via_curl, grant.token, b"poll", pool)
    [held_again] = approver.wait_for(grant.grant.id)
    assert len(_injected(held_stack)) == 3
    approver.decide(held_again["id"], "deny")
    assert fourth.result(timeout=20).status == 403
    assert len(_injected(held_stack)) == 3


def test_approval_binds_to_the_request_shown(held_stack: Stack,
                                             pool: ThreadPoolExecutor) -> None:
    """Approved for ten minutes: the same request passes, a changed body is held again."""
    grant = held_stack.issue("api_key")
    approver = Approver(held_stack)
    shown = _post(held_stack, via_curl, grant.token, b'{"amount": 1}', pool)
    [item] = approver.wait_for(grant.grant.id)
    approver.decide(item["id"], "approve", minutes=10)
    assert shown.result(timeout=20).status == 200
    swapped = _post(held_stack, via_httpx, grant.token, b'{"amount": 1000000}', pool)
    [held] = approver.wait_for(grant.grant.id)
    assert held["request"]["digest"] != item["request"]["digest"]
    assert _injected(held_stack) == [b'{"amount": 1}']
    approver.decide(held["id"], "deny")
    assert swapped.result(timeout=20).json()["error"] == "request_denied"
    assert _injected(held_stack) == [b'{"amount": 1}']


def test_two_agents_are_held_and_decided_independently(held_stack: Stack,
                                                       pool: ThreadPoolExecutor) -> None:
    one, two = held_stack.issue("api_key"), held_stack.issue("api_key", agent="bot2")
    approver = Approver(held_stack)
    from_one = _post(held_stack, via_curl, one.token, b"from one", pool)
    from_two = _post(held_stack, via_httpx, two.token, b"from two", pool)
    [held_one] = approver.wait_for(one.grant.id)
    [held_two] = approver.wait_for(two.grant.id)
    assert held_two["agent"] == "bot2"
    # Meanwhile other requests on other connections flow.
    started = time.monotonic()
    egress = via_httpx(held_stack, one.token, "GET",
                       f"https://{EGRESS_HOST}:{held_stack.upstreams.egress.port}/simple/")
    assert egress.status == 200 and time.monotonic() - started < 10
    approver.decide(held_two["id"], "approve")
    assert from_two.result(timeout=20).status == 200
    assert not from_one.done()
    approver.decide(held_one["id"], "deny")
    assert from_one.result(timeout=20).status == 403
    assert _injected(held_stack) == [b"from two"]


def test_a_held_request_counts_against_nothing_until_allowed(
        held_stack: Stack, pool: ThreadPoolExecutor) -> None:
    grant = held_stack.issue("api_key", max_uses=1)
    approver = Approver(held_stack)
    denied = _post(held_stack, via_curl, grant.token, b"first", pool)
    approver.decide(approver.wait_for(grant.grant.id)[0]["id"], "deny")
    assert denied.result(timeout=20).status == 403
    allowed = _post(held_stack, via_curl, grant.token, b"second", pool)
    approver.decide(approver.wait_for(grant.grant.id)[0]["id"], "approve")
    assert allowed.result(timeout=20).status == 200
    assert _injected(held_stack) == [b"second"]


def test_a_grant_revoked_while_held_is_refused_after_approval(
        held_stack: Stack, pool: ThreadPoolExecutor) -> None:
    grant = held_stack.issue("api_key")
    approver = Approver(held_stack)
    answer = _post(held_stack, via_httpx, grant.token, b"late", pool)
    [item] = approver.wait_for(grant.grant.id)
    held_stack.revoke(grant.grant.id)
    approver.decide(item["id"], "approve")
    assert answer.result(timeout=20).json()["error"] == "grant_revoked"
    assert held_stack.upstreams.api.requests == []


def test_time_from_approval_to_the_request_leaving(held_stack: Stack,
                                                   pool: ThreadPoolExecutor) -> None:
    """Not a benchmark: prints the figure, and fails only if it is absurd."""
    grant = held_stack.issue("api_key")
    approver = Approver(held_stack)
    figures = []
    for n in range(5):
        answer = _post(held_stack, via_httpx, grant.token, f"timing {n}".encode(), pool)
        [item] = approver.wait_for(grant.grant.id)
        before = len(held_stack.upstreams.api.requests)
        started = time.monotonic()
        approver.decide(item["id"], "approve")
        while len(held_stack.upstreams.api.requests) == before:
            time.sleep(0.001)
        figures.append((time.monotonic() - started) * 1000)
        assert answer.result(timeout=20).status == 200
    print(f"approve -> upstream received: median {sorted(figures)[2]:.1f} ms, "
          f"max {max(figures):.1f} ms")
    assert max(figures) < 5000


def test_nobody_deciding_ends_in_its_own_error(tmp_path: Path, pki: LocalPki,
                                               upstreams: Upstreams) -> None:
    stack = _start(tmp_path, pki, upstreams, "2s")
    try:
        grant = stack.issue("api_key")
        started = time.monotonic()
        answer = via_curl(stack, grant.token, "GET",
                          f"https://{API_HOST}:{upstreams.api.port}/v1/slow", AUTH)
        waited = time.monotonic() - started
        assert answer.status == 403
        assert answer.json()["error"] == "approval_timed_out"
        assert waited >= 1.9
        assert upstreams.api.requests == []
        assert Approver(stack).pending() == []
        assert [r["event"] for r in _audit(stack)
                if r["event"] == "request_timed_out"] == ["request_timed_out"]
    finally:
        stack.proxy.stop()


def _cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return prefork.run([PYTHON, "-m", "broker_proxy.cli", "--home", str(stack.home.root),
                           "request", *args], capture_output=True, text=True, timeout=60,
                          env=stack.env)


def test_the_cli_lists_approves_and_denies_held_requests(held_stack: Stack,
                                                         pool: ThreadPoolExecutor) -> None:
    grant = held_stack.issue("api_key")
    approver = Approver(held_stack)
    first = _post(held_stack, via_curl, grant.token, b"by cli", pool)
    [item] = approver.wait_for(grant.grant.id)
    listed = _cli(held_stack, "list")
    assert listed.returncode == 0, listed.stderr
    assert item["id"] in listed.stdout and f"POST https://{API_HOST}" in listed.stdout
    assert json.loads(_cli(held_stack, "list", "--json").stdout)[0]["id"] == item["id"]
    approved = _cli(held_stack, "approve", item["id"], "--uses", "2", "--reason", "cli ok")
    assert approved.returncode == 0, approved.stderr
    assert first.result(timeout=20).status == 200
    assert via_curl(held_stack, grant.token, "POST",
                    f"https://{API_HOST}:{held_stack.upstreams.api.port}/v1/items", AUTH,
                    b"by cli").status == 200
    third = _post(held_stack, via_curl, grant.token, b"by cli", pool)
    [again] = approver.wait_for(grant.grant.id)
    denied = _cli(held_stack, "deny", again["id"], "--reason", "enough")
    assert denied.returncode == 0, denied.stderr
    assert third.result(timeout=20).json()["error"] == "request_denied"
    assert _injected(held_stack) == [b"by cli", b"by cli"]
    again_denied = _cli(held_stack, "deny", again["id"])
    assert again_denied.returncode == 1
    assert "already denied" in again_denied.stderr and "Traceback" not in again_denied.stderr


def test_a_hold_longer_than_the_request_head_timeout_still_completes(
        tmp_path: Path, pki: LocalPki, upstreams: Upstreams, pool: ThreadPoolExecutor) -> None:
    """The head deadline bounds a client that sends slowly, not one waiting for a person."""
    stack = start_stack(tmp_path, pki, upstreams, extra_args=("--request-head-timeout", "1s"),
                        policy=APPROVAL_POLICY.replace("TIMEOUT", "60s"))
    try:
        grant = stack.issue("api_key")
        approver = Approver(stack)
        answer = _post(stack, via_curl, grant.token, b"slow person", pool)
        [item] = approver.wait_for(grant.grant.id)
        time.sleep(3)
        approver.decide(item["id"], "approve")
        assert answer.result(timeout=20).status == 200
        assert _injected(stack) == [b"slow person"]
    finally:
        stack.proxy.stop()
