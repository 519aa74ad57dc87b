"""The approval desk on its own: what a decision allows, and that nothing else is allowed."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from broker_proxy.approvals.desk import (
    MAX_PENDING_PER_GRANT,
    ApprovalDesk,
    HeldRequest,
    HoldNotFound,
    HoldStateError,
)
from broker_proxy.approvals.digest import request_shape
from broker_proxy.approvals.webhook import WebhookNotifier
from broker_proxy.audit import AuditLog, AuditWriteError, verify_chain
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.request.outbound import OutboundRequest


def _request(body: bytes = b"{}", query: str = "", path: str = "/v1/pay") -> OutboundRequest:
    return OutboundRequest(method="POST", scheme="https", host="api.example.com", port=443,
                           path=path, query=query, headers=(("X-Id", "1"),), body=body)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def audit(tmp_path: Path):
    with AuditLog.open(tmp_path / "audit.log", tmp_path / "audit.key") as log:
        yield log


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "sqlite"])
def desk(request: pytest.FixtureRequest, audit: AuditLog, clock: Clock, tmp_path: Path
         ) -> Iterator[ApprovalDesk]:
    """The same desk on a table of one process and on the home's SQLite file."""
    if request.param == "memory":
        yield ApprovalDesk(audit, clock)
        return
    store = SqliteGrantStore(tmp_path / "grants.sqlite3")
    try:
        yield ApprovalDesk(audit, clock, table=store.hold_table())
    finally:
        store.close()


def _hold(desk: ApprovalDesk, request: OutboundRequest, grant: str = "g_1") -> HeldRequest:
    return desk.hold(grant=grant, agent="bot", task="t", secrets_=("pay",),
                     shape=request_shape(request), timeout=timedelta(seconds=30),
                     audit_fields={"decision": "held", "reason": "approval_required",
                                   "grant": grant})


def test_the_digest_binds_method_authority_path_query_and_body_not_headers() -> None:
    base = request_shape(_request())
    assert request_shape(_request(body=b'{"x": 1}')).digest != base.digest
    assert request_shape(_request(query="a=1")).digest != base.digest
    assert request_shape(_request(path="/v1/pay2")).digest != base.digest
    with_header = OutboundRequest(method="POST", scheme="https", host="api.example.com",
                                  port=443, path="/v1/pay", query="",
                                  headers=(("X-Id", "2"),), body=b"{}")
    assert request_shape(with_header).digest == base.digest
    other_port = OutboundRequest(method="POST", scheme="https", host="api.example.com",
                                 port=8443, path="/v1/pay", query="", headers=(), body=b"{}")
    assert request_shape(other_port).digest != base.digest
    # Shown as digest and size only: no body or query text reaches a console or a webhook.
    shown = json.dumps(request_shape(_request(body=b"very private", query="q=hidden"))
                       .to_public_dict())
    assert "private" not in shown and "hidden" not in shown


def test_an_approval_once_is_redeemed_once_by_its_own_request(desk: ApprovalDesk) -> None:
    item = _hold(desk, _request())
    desk.decide(item.id, True, by="alice")
    digest = item.shape.digest
    assert not desk.redeem(item.id, "g_other", digest), "another grant cannot use it"
    assert not desk.redeem(item.id, "g_1", "0" * 64), "another request cannot use it"
    assert desk.redeem(item.id, "g_1", digest)
    assert not desk.redeem(item.id, "g_1", digest), "spent"
    assert not desk.take_allowance("g_1", digest), "once leaves no standing allowance"


def test_n_uses_include_the_held_request(desk: ApprovalDesk) -> None:
    item = _hold(desk, _request())
    desk.decide(item.id, True, by="alice", uses=3)
    digest = item.shape.digest
    assert desk.redeem(item.id, "g_1", digest)
    assert [desk.take_allowance("g_1", digest) for _ in range(3)] == [True, True, False]
    assert not desk.take_allowance("g_2", digest)


def test_minutes_end_on_time(desk: ApprovalDesk, clock: Clock) -> None:
    item = _hold(desk, _request())
    desk.decide(item.id, True, by="alice", minutes=5)
    assert desk.take_allowance("g_1", item.shape.digest)
    clock.now += timedelta(minutes=5)
    assert not desk.take_allowance("g_1", item.shape.digest)


def test_a_denied_request_allows_nothing_and_cannot_be_decided_again(
        desk: ApprovalDesk) -> None:
    item = _hold(desk, _request())
    desk.decide(item.id, False, by="alice", reason="no")
    assert not desk.redeem(item.id, "g_1", item.shape.digest)
    with pytest.raises(HoldStateError):
        desk.decide(item.id, True, by="mallory")
    with pytest.raises(HoldNotFound):
        desk.decide("h_0000000000000000", True, by="alice")
    with pytest.raises(ValueError):
        desk.decide(_hold(desk, _request()).id, False, by="alice", uses=2)


def test_a_decision_that_cannot_be_audited_changes_nothing(desk: ApprovalDesk,
                                                          audit: AuditLog,
                                                          monkeypatch) -> None:
    item = _hold(desk, _request())

    def broken(*args, **kwargs):
        raise AuditWriteError("disk full")

    monkeypatch.setattr(audit, "append", broken)
    with pytest.raises(AuditWriteError):
        desk.decide(item.id, True, by="alice")
    assert desk.get(item.id).state == "pending"
    assert [held.id for held in desk.pending()] == [item.id]


def test_a_timeout_after_a_decision_keeps_the_decision(desk: ApprovalDesk) -> None:
    item = _hold(desk, _request())
    seen: list[str] = []
    desk.on_decided(item.id, lambda held: seen.append(held.state))
    desk.decide(item.id, True, by="alice")
    assert desk.time_out(item.id).state == "allowed"
    assert seen == ["allowed"]
    other = _hold(desk, _request(body=b"2"))
    assert desk.time_out(other.id).state == "timed_out"
    desk.on_decided(other.id, lambda held: seen.append(held.state))  # already over: at once
    assert seen == ["allowed", "timed_out"]


def test_held_and_decided_are_in_the_audit_chain(desk: ApprovalDesk, audit: AuditLog,
                                                 tmp_path: Path) -> None:
    item = _hold(desk, _request())
    desk.decide(item.id, True, by="alice", reason="ok", uses=2)
    records = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    held, approved = [r for r in records if r.get("hold") == item.id]
    assert (held["event"], held["decision"], held["digest"]) == (
        "request", "held", item.shape.digest)
    assert (approved["event"], approved["by"], approved["reason"], approved["uses"]) == (
        "request_approved", "alice", "uses", 2)
    assert verify_chain(tmp_path / "audit.log", tmp_path / "audit.key").ok


def test_the_live_version_moves_on_every_change(desk: ApprovalDesk) -> None:
    before = desk.version
    assert desk.wait_for_change(before - 1, 5) == before, "an unseen version answers at once"
    waiter = threading.Thread(target=lambda: _hold(desk, _request()))
    waiter.start()
    assert desk.wait_for_change(before, 5) != before
    waiter.join()


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []
    status = 200

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).received.append(json.loads(self.rfile.read(length)))
        self.send_response(type(self).status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        return


def test_the_webhook_gets_the_item_and_a_console_link_and_failures_are_counted(
        audit: AuditLog, clock: Clock) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    failures: list[int] = []
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hooks/secret-path"
        notifier = WebhookNotifier(lambda: url, lambda: "http://127.0.0.1:8081",
                                   lambda: failures.append(1))
        desk = ApprovalDesk(audit, clock, notifier)
        item = _hold(desk, _request())
        deadline = datetime.now() + timedelta(seconds=10)
        while not _Hook.received and datetime.now() < deadline:
            threading.Event().wait(0.02)
        [notice] = _Hook.received
        assert notice["request"]["id"] == item.id
        assert notice["console"] == f"http://127.0.0.1:8081/ui/#/approvals/{item.id}"
        _Hook.status = 500
        _hold(desk, _request(body=b"2"))
        while not failures and datetime.now() < deadline:
            threading.Event().wait(0.02)
        assert failures == [1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_dead_webhook_never_delays_a_hold(audit: AuditLog, clock: Clock) -> None:
    # A port nobody listens on, and a host that only times out: hold returns at once anyway.
    notifier = WebhookNotifier(lambda: "http://10.255.255.1:9/x", lambda: None, lambda: None)
    desk = ApprovalDesk(audit, clock, notifier)
    started = datetime.now()
    for n in range(20):
        _hold(desk, _request(body=str(n).encode()))
    assert datetime.now() - started < timedelta(seconds=2)


def test_one_grant_cannot_take_the_whole_queue(desk: ApprovalDesk) -> None:
    for index in range(MAX_PENDING_PER_GRANT):
        _hold(desk, _request(body=str(index).encode()), grant="g_busy")
    assert desk.full("g_busy")
    assert not desk.full("g_other") and not desk.full()
    _hold(desk, _request(), grant="g_other")  # another grant's request is still held
