"""The report's findings, chains that span files and replicas, and the record schema check.

Time-dependent findings (bursts, fast approvals, usual hours) are fed to the ReportBuilder as
the records the log holds, with the timestamps the scenario needs; everything about files is
written by the real AuditLog.
"""

from __future__ import annotations

import copy
import json
import shlex
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from broker_proxy.audit.log import AuditLog
from broker_proxy.audit.reading import chains_of, read_merged
from broker_proxy.audit.record_schema import (
    RECORD_SCHEMA_FILE,
    REPORT_SCHEMA_FILE,
    load_schema,
    record_problem,
)
from broker_proxy.audit.report import (
    EVIDENCE_LIMIT,
    ReportBuilder,
    Scope,
    build_report,
    normalise_time,
    parse_window,
)
from broker_proxy.cli import main
from broker_proxy.devtools import prefork

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
GRANT = {"grant": "g_1", "agent": "bot", "task": "sync"}


def ts(seconds: float) -> str:
    moment = START + timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class Records:
    """Records as the log holds them, with chosen timestamps."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, at: float, event: str, **fields: Any) -> None:
        record = {"seq": len(self.items), "ts": ts(at), "event": event, "secrets": [],
                  **fields}
        self.items.append(record)

    def use(self, at: float, grant: dict[str, str] = GRANT, path: str = "/v1/x") -> None:
        self.add(at, "request", decision="allow", reason="injected", secrets=["github"],
                 method="GET", scheme="https", host="api.github.com", port=443, path=path,
                 **grant)

    def issue(self, at: float, **extra: Any) -> None:
        self.add(at, "grant_issued", decision="allow", reason="issued", by="ops",
                 secrets=["github"], **GRANT, **extra)


def kinds(report: dict[str, Any]) -> list[str]:
    return [anomaly["kind"] for anomaly in report["anomalies"]]


def test_burst_far_above_the_grants_own_rate_is_an_anomaly() -> None:
    log = Records()
    log.issue(0)
    for minute in range(10):
        log.use(minute * 60 + 5)  # one use a minute: the grant's own rate
    for index in range(40):
        log.use(11 * 60 + index)  # then forty in one minute
    report = build_report(log.items)
    [burst] = [a for a in report["anomalies"] if a["kind"] == "burst"]
    assert burst["grant"] == "g_1" and burst["count"] == 40
    assert burst["records"] == ["audit.log#11", "audit.log#50"]  # first and last of the minute
    assert "40 uses in the minute from 2026-03-02T09:11Z" in burst["message"]


def test_steady_use_is_not_a_burst() -> None:
    log = Records()
    log.issue(0)
    for index in range(200):
        log.use(index * 2)  # thirty a minute, every minute
    assert "burst" not in kinds(build_report(log.items))


def test_use_after_a_policy_change_removed_access_is_an_anomaly() -> None:
    log = Records()
    log.issue(0)
    log.use(1)
    log.add(2, "policy_reloaded", decision="allow", reason="file_changed", policy="abc",
            revoked_grants=1)
    log.add(2.1, "grant_revoked", decision="deny", reason="outside_policy", by="policy-reload",
            secrets=["github"], **GRANT)
    log.use(3)  # must never happen; if a log shows it, a reviewer must see it
    report = build_report(log.items)
    [found] = [a for a in report["anomalies"] if a["kind"] == "use_after_policy_change"]
    assert found["records"] == ["audit.log#4"]
    assert report["policy_changes"][0]["policy"] == "abc"


def test_approval_decided_in_under_a_second_is_an_anomaly() -> None:
    log = Records()
    log.issue(0, grant_status="pending")
    log.add(0.4, "grant_approved", decision="allow", reason="approve", by="alice",
            secrets=["github"], **GRANT)
    report = build_report(log.items)
    [found] = [a for a in report["anomalies"] if a["kind"] == "fast_approval"]
    assert found["message"] == "approved 0.400 s after it was issued"
    approval = report["grants"][0]["approval"]
    assert approval == {"requested": True, "decision": "approved", "by": "alice",
                        "at": ts(0.4), "waited_seconds": 0.4}


def test_activity_outside_the_usual_hours_is_flagged() -> None:
    log = Records()
    log.issue(0)
    log.use(60)  # 09:01, inside 08:00-18:00
    log.use(11 * 3600)  # 20:00
    report = build_report(log.items, Scope(window=parse_window("08:00-18:00")))
    [found] = [a for a in report["anomalies"] if a["kind"] == "outside_window"]
    assert found["records"] == ["audit.log#2"]
    night = build_report(log.items, Scope(window=parse_window("22:00-06:00")))
    assert [a["records"] for a in night["anomalies"] if a["kind"] == "outside_window"] == [
        ["audit.log#1", "audit.log#2"]]


def test_evidence_is_capped_and_the_count_is_not() -> None:
    log = Records()
    log.issue(0)
    for index in range(50):
        log.add(1 + index, "request", decision="deny", reason="destination_not_allowed",
                method="POST", scheme="https", host="paste.example.net", port=443, path="/",
                status=403, **GRANT)
    [found] = build_report(log.items)["anomalies"]
    assert found["count"] == 50 and len(found["records"]) == EVIDENCE_LIMIT


def test_since_and_until_accept_dates_and_offsets() -> None:
    assert normalise_time("2026-03-02") == "2026-03-02T00:00:00.000Z"
    assert normalise_time("2026-03-02T10:00+01:00") == "2026-03-02T09:00:00.000Z"
    log = Records()
    log.issue(0)
    log.use(10)
    log.use(100)
    scoped = build_report(log.items, Scope(since=ts(10), until=ts(100)))
    assert scoped["grants"][0]["uses"] == 1


def write(path: Path, key: Path, uses: int, *, replica: str | None = None,
          rotate: int | None = None) -> None:
    log = AuditLog.open(path, key)
    if rotate:
        log.rotate_at(rotate)
    if replica:
        log.stamp_records(replica=replica)
    for index in range(uses):
        log.append("request", decision="allow", reason="injected", secrets=["github"],
                   method="GET", scheme="https", host="api.github.com", port=443,
                   path=f"/v1/{index % 3}", **GRANT)
    log.close()


def test_replica_logs_in_a_directory_are_one_report_and_each_chain_is_verified(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "audit.key"
    write(tmp_path / "replica-a.log", key, 7, replica="a")
    write(tmp_path / "replica-b.log", key, 5, replica="b", rotate=4096)
    assert main(["--home", str(tmp_path), "audit", "report", str(tmp_path), "--key", str(key),
                 "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["integrity_ok"] is True
    assert [(Path(c["log"]).name, c["records"]) for c in data["integrity"]["chains"]] == [
        ("replica-a.log", 7), ("replica-b.log", 5)]
    assert data["grants"][0]["uses"] == 12
    assert sum(u["count"] for u in data["grants"][0]["uses_by_target"]) == 12
    times = [r["ts"] for r in read_merged(chains_of([tmp_path]))]
    assert times == sorted(times)


def test_rotated_files_are_one_chain_in_the_report(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "audit.log", tmp_path / "audit.key", 120, rotate=4096)
    assert main(["--home", str(tmp_path), "audit", "report", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    [chain] = data["integrity"]["chains"]
    assert chain["rotations"] >= 5 and chain["ok"]
    assert data["grants"][0]["uses"] == 120
    jsonschema.Draft202012Validator(load_schema(REPORT_SCHEMA_FILE)).validate(data)
    # The command the report gives to re-verify works as printed.
    argv = shlex.split(data["integrity"]["reverify"])
    assert argv[0] == "broker-proxy"
    done = prefork.run([sys.executable, "-m", "broker_proxy.cli", *argv[1:]],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "records verify in" in done.stdout, done.stderr


def test_missing_key_is_not_reported_as_verified(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "audit.log", tmp_path / "audit.key", 3)
    assert main(["--home", str(tmp_path), "audit", "report",
                 "--key", str(tmp_path / "nope.key")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("INTEGRITY FAILED: the audit log does not verify: cannot be verified")


def test_fast_record_check_agrees_with_a_full_validator(tmp_path: Path) -> None:
    write(tmp_path / "audit.log", tmp_path / "audit.key", 3)
    log = AuditLog.open(tmp_path / "audit.log", tmp_path / "audit.key")
    log.append("grant_issued", decision="allow", reason="issued", by="ops", secrets=["a"],
               expires_at="2030-01-01T00:00:00Z", max_uses=None, grant_status="pending",
               **GRANT)
    log.append("policy_reloaded", decision="allow", reason="sighup", policy="d",
               revoked_grants=2)
    log.close()
    validator = jsonschema.Draft202012Validator(load_schema(RECORD_SCHEMA_FILE))
    records = list(AuditLog.read_records(tmp_path / "audit.log"))
    bad_variants = []
    for record in records:
        assert record_problem(record) is None
        assert validator.is_valid(record)
        for name, value in (("port", "443"), ("secrets", "github"), ("decision", "maybe"),
                            ("seq", 1.5), ("status", True), ("extra", {"nested": 1}),
                            ("secrets", [1])):
            variant = copy.deepcopy(record)
            variant[name] = value
            bad_variants.append(variant)
        missing = copy.deepcopy(record)
        del missing["host"]
        bad_variants.append(missing)
    for variant in bad_variants:
        assert validator.is_valid(variant) is (record_problem(variant) is None), variant


def test_audit_verify_names_a_record_of_the_wrong_shape(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit.log", tmp_path / "audit.key")
    log.append("request", decision="allow", reason="allowed", method="GET", host="h",
               port=443)
    log.append("request", decision="allow", reason="allowed", method="GET", host="h",
               port="443")  # a writer bug: chained and MAC'd, but not the published shape
    log.close()
    done = prefork.run([sys.executable, "-m", "broker_proxy.cli", "--home", str(tmp_path),
                           "audit", "verify"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "seq 1: field 'port' does not match the audit record schema" in done.stderr
    assert "Traceback" not in done.stderr


def test_report_builder_feeds_in_bounded_state() -> None:
    """A million uses of one destination are one group with a count, not a million entries."""
    builder = ReportBuilder()
    log = Records()
    log.issue(0)
    for record in log.items:
        builder.feed(record)
    for index in range(20000):
        builder.feed({"seq": index + 1, "ts": ts(index * 0.001), "event": "request",
                      "decision": "allow", "reason": "injected", "secrets": ["github"],
                      "method": "GET", "scheme": "https", "host": "api.github.com",
                      "port": 443, "path": "/v1/x", **GRANT})
    [grant] = builder.result()["grants"]
    assert grant["uses"] == 20000 and len(grant["uses_by_target"]) == 1


def test_signed_checkpoints_are_named_in_the_integrity_statement(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "audit.log", tmp_path / "audit.key", 4)
    assert main(["--home", str(tmp_path), "audit", "checkpoint"]) == 0
    public = (tmp_path / "audit-checkpoint.pub").read_text().strip()
    capsys.readouterr()
    assert main(["--home", str(tmp_path), "audit", "report", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["integrity"]["checkpoints"]["key"] == public
    assert data["integrity"]["checkpoints"]["count"] == 1
    assert data["headline"].endswith(f"1 signed checkpoint(s) match (key {public})")
    assert "--checkpoints" in data["integrity"]["reverify"]
    # Cut the newest record at a line boundary: only the checkpoint can tell.
    lines = (tmp_path / "audit.log").read_bytes().splitlines(keepends=True)
    (tmp_path / "audit.log").write_bytes(b"".join(lines[:-1]))
    assert main(["--home", str(tmp_path), "audit", "report"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("INTEGRITY FAILED") and "checkpoint" in first


def test_csv_cells_an_agent_controls_never_start_a_formula(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = AuditLog.open(tmp_path / "audit.log", tmp_path / "audit.key")
    log.append("grant_issued", decision="allow", reason="issued", by="ops", secrets=["github"],
               grant="g_9", agent="bot", task='=HYPERLINK("http://evil.example","x")')
    log.close()
    assert main(["--home", str(tmp_path), "audit", "report", "--format", "csv"]) == 0
    text = capsys.readouterr().out
    assert "'=HYPERLINK" in text and ',=HYPERLINK' not in text
