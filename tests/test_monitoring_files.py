"""The Grafana dashboard and the alert rules only use metrics the broker really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from broker_proxy.metrics import BrokerMetrics

MONITORING = Path(__file__).resolve().parent.parent / "monitoring"
_METRIC = re.compile(r"\bbroker_[a-z0-9_]+\b")


def exported_series() -> set[str]:
    """Every series name a scrape can show, including _total/_bucket/_sum/_count forms."""
    metrics = BrokerMetrics()
    names: set[str] = set()
    for family in metrics.registry.collect():
        names.add(family.name)
        suffixes = {"counter": ("_total", "_created"),
                    "histogram": ("_bucket", "_sum", "_count", "_created")}
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
    return names


def expressions_in_dashboard() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def expressions_in_alerts() -> list[str]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_dashboard_uses_only_exported_metrics() -> None:
    used = {name for expr in expressions_in_dashboard() for name in _METRIC.findall(expr)}
    assert used, "the dashboard queries no broker metric"
    assert used <= exported_series(), sorted(used - exported_series())


def test_alert_rules_use_only_exported_metrics() -> None:
    used = {name for expr in expressions_in_alerts() for name in _METRIC.findall(expr)}
    assert used <= exported_series(), sorted(used - exported_series())


def test_alert_rules_cover_the_issue_s_four_alerts() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {"BrokerBlockedRequestSpike", "BrokerAuditWriteFailure", "BrokerPolicyReloadFailed",
            "BrokerGrantNearingExpiryInUse"} <= names
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] and rule["annotations"]["summary"]


def test_every_exported_metric_has_a_dashboard_panel() -> None:
    used = {name for expr in expressions_in_dashboard() for name in _METRIC.findall(expr)}
    bases = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
    families = {family.name for family in BrokerMetrics().registry.collect()}
    assert families <= bases, sorted(families - bases)


def test_policy_reload_alert_follows_the_file_state_not_a_time_window() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    by_name = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    assert "broker_policy_file_rejected" in by_name["BrokerPolicyReloadFailed"]["expr"]
    assert "[" not in by_name["BrokerPolicyReloadFailed"]["expr"]  # no range that lapses
    assert "broker_audit_log_unusable" in by_name["BrokerAuditLogUnusable"]["expr"]
