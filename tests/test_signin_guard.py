"""SigninGuard alone: the delay schedule, one record per source per window, nothing lost."""

from __future__ import annotations

from broker_proxy.signin_guard import FREE_FAILURES, MAX_DELAY, WINDOW, SigninGuard


class FakeAudit:
    def __init__(self) -> None:
        self.records: list[dict[str, object]] = []

    def append(self, event: str, *, durable: bool = False, **fields: object) -> object:
        self.records.append({"event": event, **fields})
        return self.records[-1]


def guard_with_clock() -> tuple[SigninGuard, FakeAudit, list[float], list[float]]:
    now, slept = [1000.0], []
    audit = FakeAudit()
    guard = SigninGuard(audit, clock=lambda: now[0], sleep=slept.append)
    return guard, audit, now, slept


def test_failures_beyond_the_free_ones_are_delayed_more_each_time_up_to_the_cap() -> None:
    guard, _audit, _now, slept = guard_with_clock()
    for _attempt in range(FREE_FAILURES + 6):
        assert guard.check("10.0.0.1", "admin_api_token", lambda: False) is False
    assert slept == [0.1, 0.2, 0.4, 0.8, MAX_DELAY, MAX_DELAY]
    assert guard.check("10.0.0.1", "admin_api_token", lambda: True) is True


def test_a_flood_is_one_record_now_and_one_per_window_after_with_every_failure_counted() -> None:
    guard, audit, now, _slept = guard_with_clock()
    for _attempt in range(500):
        guard.check("10.0.0.1", "admin_api_token", lambda: False)
    assert [r["failed_signins"] for r in audit.records] == [1]
    now[0] += WINDOW
    guard._flush(force=False)
    guard.check("10.0.0.1", "admin_api_token", lambda: False)  # a new window opens
    guard.close()
    assert sum(int(r["failed_signins"]) for r in audit.records) == 501
    assert len(audit.records) == 3
    assert {r["source"] for r in audit.records} == {"10.0.0.1"}


def test_sources_are_slowed_and_recorded_apart() -> None:
    guard, audit, _now, slept = guard_with_clock()
    for _attempt in range(FREE_FAILURES):
        guard.check("10.0.0.1", "admin_api_token", lambda: False)
        guard.check("10.0.0.2", "console_signin", lambda: False)
    assert slept == []
    guard.close()
    assert sorted((r["source"], r["reason"], r["failed_signins"]) for r in audit.records) == [
        ("10.0.0.1", "admin_api_token", 1), ("10.0.0.1", "admin_api_token", 4),
        ("10.0.0.2", "console_signin", 1), ("10.0.0.2", "console_signin", 4)]
