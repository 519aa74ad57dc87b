"""The grant watcher records each expiry once and keeps the grant metrics from the store."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from broker_proxy.audit import AuditLog, verify_chain
from broker_proxy.grants.issuer import issue_grant
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.grants.store import GrantCounts
from broker_proxy.metrics import BrokerMetrics
from broker_proxy.policy.loader import load_policy_text
from broker_proxy.runtime.grant_watch import GrantWatcher
from broker_proxy.time_source import utc_now

POLICY = """\
version: 1
secrets:
  api_key:
    from: env:BP_WATCH_KEY
    destinations:
      - host: api.example.com
agents:
  bot:
    secrets: [api_key]
    max_ttl: 1h
  careful:
    secrets: [api_key]
    max_ttl: 1h
    approval: [api_key]
"""


class Clock:
    def __init__(self) -> None:
        self.now = utc_now()

    def __call__(self) -> datetime:
        return self.now


def scrape(metrics: BrokerMetrics) -> dict[str, float]:
    text = generate_latest(metrics.registry).decode()
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name.startswith("broker_grants") and not sample.name.endswith("_created")}


def test_expiry_is_recorded_once_and_counted(tmp_path: Path) -> None:
    policy = load_policy_text(POLICY, "policy.yaml")
    store = SqliteGrantStore(tmp_path / "grants.sqlite3")
    audit = AuditLog.open(tmp_path / "audit.log", tmp_path / "audit.key")
    metrics = BrokerMetrics()
    clock = Clock()
    watcher = GrantWatcher(store, audit, metrics, clock=clock, min_gap=0)
    metrics.scrape_hooks.append(watcher.sweep)
    clock.now += timedelta(seconds=1)

    def issue(agent: str, ttl: timedelta) -> str:
        return issue_grant(policy, store, agent=agent, task="t", secrets=["api_key"], ttl=ttl,
                           max_uses=None, now=clock.now).grant.id

    short = issue("bot", timedelta(minutes=2))
    long = issue("bot", timedelta(minutes=30))
    revoked = issue("bot", timedelta(minutes=2))
    pending = issue("careful", timedelta(minutes=30))
    store.revoke(revoked, clock.now)
    store.reserve_use(short, clock.now)

    assert scrape(metrics) == {
        "broker_grants_issued_total": 4, "broker_grants_revoked_total": 1,
        "broker_grants_expired_total": 0, "broker_grants_active": 2,
        "broker_grants_pending": 1, "broker_grants_expiring_in_use": 1,
    }

    clock.now += timedelta(minutes=3)
    for _ in range(3):  # sweeps after the first find nothing new
        values = scrape(metrics)
    assert values["broker_grants_expired_total"] == 1  # the revoked one did not also expire
    assert values["broker_grants_active"] == 1 and values["broker_grants_issued_total"] == 4
    assert values["broker_grants_expiring_in_use"] == 0
    audit.close()
    expired = [r for r in AuditLog.read_records(tmp_path / "audit.log")
               if r["event"] == "grant_expired"]
    assert [(r["grant"], r["reason"], r["agent"], r["secrets"], r["uses"]) for r in expired] == [
        (short, "grant_expired", "bot", ["api_key"], 1)]
    assert verify_chain(tmp_path / "audit.log", tmp_path / "audit.key").ok
    assert long and pending
    store.close()


def test_grants_issued_before_the_watcher_started_are_not_counted(tmp_path: Path) -> None:
    policy = load_policy_text(POLICY, "policy.yaml")
    store = SqliteGrantStore(tmp_path / "grants.sqlite3")
    clock = Clock()
    issue_grant(policy, store, agent="bot", task="t", secrets=["api_key"],
                ttl=timedelta(minutes=1), max_uses=None, now=clock.now - timedelta(seconds=5))
    with AuditLog.open(tmp_path / "audit.log", tmp_path / "audit.key") as audit:
        metrics = BrokerMetrics()
        watcher = GrantWatcher(store, audit, metrics, clock=clock, min_gap=0)
        watcher.sweep()
        assert metrics.grants_issued._value.get() == 0
        assert metrics.grants_active._value.get() == 1
    store.close()


class SlowStore:
    """A store whose answers take a known time, as a slow one would."""

    def __init__(self, inner: SqliteGrantStore, seconds: float) -> None:
        self._inner, self._seconds = inner, seconds

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def counts(self, now: datetime, within: timedelta) -> GrantCounts:
        time.sleep(self._seconds)
        return self._inner.counts(now, within)


def test_periodic_sweeps_back_off_when_a_sweep_is_costly(tmp_path: Path) -> None:
    store = SqliteGrantStore(tmp_path / "grants.sqlite3")
    audit = AuditLog.open(tmp_path / "audit.log", tmp_path / "audit.key")
    cheap = GrantWatcher(store, audit, BrokerMetrics(), interval=5.0, min_gap=0)
    cheap.sweep()
    assert cheap.next_wait() == 5.0
    costly = GrantWatcher(SlowStore(store, 0.1), audit, BrokerMetrics(),  # type: ignore[arg-type]
                          interval=5.0, min_gap=0, max_share=0.01)
    costly.sweep()
    assert costly.next_wait() >= 10.0  # 0.1 s of work at most 1% of the time
