"""Two approval desks on one grant store behave as one desk: what one process holds another
lists and decides, the holder's waiter hears of it, the limits count both, and a stopped
process's items wait for the agent's retry. Run on SQLite (the processes of a home) and Redis
(replicas)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker_proxy.approvals import desk as desk_module
from broker_proxy.approvals.desk import ApprovalDesk, HeldRequest, HoldStateError, QueueFull
from broker_proxy.approvals.digest import request_shape
from broker_proxy.audit import AuditLog
from broker_proxy.devtools.redis_server import RedisServer
from broker_proxy.grants.redis_store import RedisGrantStore
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.request.outbound import OutboundRequest

Desks = Callable[[], ApprovalDesk]


def _request(path: str = "/v1/pay") -> OutboundRequest:
    return OutboundRequest(method="POST", scheme="https", host="api.example.com", port=443,
                           path=path, query="", headers=(), body=b"{}")


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["sqlite", "redis"])
def desks(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[Desks]:
    """A factory of desks that share one store, each as another process would have it."""
    closing: list[object] = []
    server = None
    if request.param == "redis":
        server = RedisServer(tmp_path / "redis").start()
    audit = AuditLog.open(tmp_path / "audit.log", tmp_path / "audit.key")

    def make() -> ApprovalDesk:
        store: SqliteGrantStore | RedisGrantStore = (
            SqliteGrantStore(tmp_path / "grants.sqlite3") if server is None
            else RedisGrantStore(server.url))
        closing.append(store)
        return ApprovalDesk(audit, clock, table=store.hold_table())

    try:
        yield make
    finally:
        for store in closing:
            store.close()  # type: ignore[attr-defined]
        audit.close()
        if server is not None:
            server.stop()


def _hold(desk: ApprovalDesk, grant: str = "g_1", path: str = "/v1/pay") -> HeldRequest:
    return desk.hold(grant=grant, agent="bot", task="t", secrets_=("pay",),
                     shape=request_shape(_request(path)), timeout=timedelta(seconds=30),
                     audit_fields={"decision": "held", "reason": "approval_required",
                                   "grant": grant})


def test_held_in_one_decided_in_another_and_the_holder_hears_of_it(desks: Desks) -> None:
    holder, decider = desks(), desks()
    version = decider.version
    item = _hold(holder)
    assert decider.version != version
    assert [i.id for i in decider.pending()] == [item.id]
    heard = threading.Event()
    ended: list[HeldRequest] = []
    holder.on_decided(item.id, lambda done: (ended.append(done), heard.set()))
    started = time.monotonic()
    decider.decide(item.id, True, by="alice", uses=3)
    assert heard.wait(5) and ended[0].state == "allowed" and ended[0].decided_by == "alice"
    assert time.monotonic() - started < 2
    with pytest.raises(HoldStateError):
        holder.decide(item.id, False, by="bob")  # one winner, whichever process asks
    # The approval and its standing uses are the store's: any process spends them, once.
    assert holder.redeem(item.id, "g_1", item.shape.digest)
    assert not decider.redeem(item.id, "g_1", item.shape.digest)
    assert [decider.take_allowance("g_1", item.shape.digest),
            holder.take_allowance("g_1", item.shape.digest),
            decider.take_allowance("g_1", item.shape.digest)] == [True, True, False]


def test_a_long_poll_in_one_process_wakes_on_a_hold_in_another(desks: Desks) -> None:
    holder, lister = desks(), desks()
    version = lister.version
    threading.Timer(0.3, lambda: _hold(holder)).start()
    started = time.monotonic()
    assert lister.wait_for_change(version, 10) != version
    assert time.monotonic() - started < 3


def test_the_limits_count_every_process(desks: Desks, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(desk_module, "MAX_PENDING", 3)
    monkeypatch.setattr(desk_module, "MAX_PENDING_PER_GRANT", 2)
    a, b = desks(), desks()
    _hold(a, "g_1")
    _hold(b, "g_1", "/v1/other")
    with pytest.raises(QueueFull):
        _hold(a, "g_1", "/v1/third")
    assert b.full("g_1") and not b.full("g_2")
    _hold(b, "g_2")
    with pytest.raises(QueueFull):
        _hold(a, "g_3")
    assert a.full()


@pytest.mark.parametrize("allow", [True, False])
def test_a_stopped_processs_items_wait_for_the_retry(desks: Desks, allow: bool) -> None:
    stopping = desks()
    item = _hold(stopping)
    answered: list[HeldRequest] = []
    stopping.on_decided(item.id, answered.append)
    assert [i.id for i in stopping.abandon_all("the proxy stopped")] == [item.id]
    assert answered[0].state == "pending" and answered[0].interrupted  # 503 interrupted
    restarted = desks()
    assert [i.id for i in restarted.pending()] == [item.id]
    restarted.decide(item.id, allow, by="alice", reason=None if allow else "no")
    digest = item.shape.digest
    assert restarted.resume("g_1", digest, ("pay", "other")) is None  # other secrets
    assert restarted.resume("g_2", digest, ("pay",)) is None  # another grant
    found = restarted.resume("g_1", digest, ("pay",))
    assert found is not None and found.id == item.id
    assert found.state == ("allowed" if allow else "denied")
    assert restarted.resume("g_1", digest, ("pay",)) is None  # taken up once
    if allow:  # spent by the retry: the request that waited cannot spend it again
        assert not restarted.redeem(item.id, "g_1", digest)


def test_a_pending_item_is_taken_up_again_and_one_nobody_decided_times_out(
        desks: Desks, clock: Clock) -> None:
    stopping = desks()
    first, second = _hold(stopping), _hold(stopping, path="/v1/other")
    for item in (first, second):
        stopping.on_decided(item.id, lambda _: None)
    stopping.abandon_all("the proxy stopped")
    restarted = desks()
    again = restarted.resume("g_1", first.shape.digest, ("pay",))
    assert again is not None and again.id == first.id and again.state == "pending"
    clock.now += timedelta(minutes=5)  # past approval_timeout: nobody waits on `second`
    assert [i.id for i in restarted.pending()] == [first.id]  # taken up: its waiter times it out
    ended = restarted.get(second.id)
    assert ended is not None and ended.state == "timed_out" and ended.decided_by == "broker-proxy"
    assert restarted.resume("g_1", second.shape.digest, ("pay",)) is None
