"""Per-request approvals in the access report, and one verdict from the three readers of a log.

`audit verify`, the report's integrity statement and the console's "Verify now" call the same
verifier: a log holding held requests is good for all three, a record of the wrong shape is bad
for all three, with the same first problem.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema

from broker_proxy.audit.integrity import integrity_statement
from broker_proxy.audit.log import AuditLog
from broker_proxy.audit.record_schema import REPORT_SCHEMA_FILE, load_schema
from broker_proxy.audit.report import build_report
from broker_proxy.audit.report_html import render_html
from broker_proxy.audit.report_text import render_csv, render_text
from broker_proxy.console.views import ChainStatus
from broker_proxy.devtools import prefork

GRANT = {"grant": "g_1", "agent": "bot", "task": "refunds"}
REQUEST = {"secrets": ["pay"], "method": "POST", "scheme": "https", "host": "api.pay.test",
           "port": 443, "path": "/v1/refunds", **GRANT}


def held_log(home: Path) -> None:
    log = AuditLog.open(home / "audit.log", home / "audit.key")
    log.append("grant_issued", decision="allow", reason="issued", by="ops", **GRANT,
               secrets=["pay"], grant_status="active")
    outcomes = [("h_1", "request_approved", "allow", "once", "console:alice", None),
                ("h_2", "request_denied", "deny", "deny", "cli:bob", "too much"),
                ("h_3", "request_timed_out", "deny", "timeout", "broker-proxy", None)]
    for hold, *_ in outcomes:
        log.append("request", decision="held", reason="approval_required", hold=hold,
                   digest="d" * 64, shown_digest="e" * 64, carries=["pay@header:authorization"],
                   **REQUEST)
    for hold, event, decision, choice, by, message in outcomes:
        log.append(event, decision=decision, reason=choice, by=by, hold=hold, message=message,
                   digest="d" * 64, shown_digest="e" * 64, **REQUEST)
    log.append("request", decision="allow", reason="injected", **REQUEST)
    log.append("request", decision="held", reason="approval_required", hold="h_4", **REQUEST)
    log.close()


def report_of(home: Path) -> dict[str, Any]:
    report = build_report(AuditLog.read_records(home / "audit.log"))
    integrity = integrity_statement([home / "audit.log"], home / "audit.key")
    # As `audit report --format json` writes it: the verdict first.
    return {"integrity_ok": integrity["ok"], "headline": integrity["headline"],
            "integrity": integrity, **report}


def test_the_report_shows_each_held_request_and_how_it_ended(tmp_path: Path) -> None:
    held_log(tmp_path)
    report = report_of(tmp_path)
    jsonschema.validate(report, load_schema(REPORT_SCHEMA_FILE))
    [grant] = report["grants"]
    held = grant["held_requests"]
    assert held["count"] == 4
    assert held["outcomes"] == {"approved": 1, "denied": 1, "pending": 1, "timed_out": 1}
    rows = [(i["hold"], i["outcome"], i["choice"], i["by"], i["reason"]) for i in held["items"]]
    assert rows == [("h_1", "approved", "once", "console:alice", None),
                    ("h_2", "denied", "deny", "cli:bob", "too much"),
                    ("h_3", "timed_out", "timeout", "broker-proxy", None),
                    ("h_4", "pending", None, None, None)]
    assert held["items"][0]["shown_digest"] == "e" * 64
    # A denial and a timeout are refusals; a held request is not a request without a secret.
    assert {r["reason"]: r["count"] for r in grant["refusals"]} == {
        "request_denied": 1, "approval_timed_out": 1}
    assert grant["requests_without_secret"] == 0 and grant["uses"] == 1
    text = render_text(report)
    assert "held for approval: 4 (approved 1, denied 1, pending 1, timed_out 1)" in text
    assert "approved (once) by console:alice" in text and "; too much" in text
    assert "\nheld,g_1,bot,refunds,pay,POST," in render_csv(report)
    assert "console:alice" in render_html(report)


def _cli_verify(home: Path) -> subprocess.CompletedProcess[str]:
    return prefork.run([sys.executable, "-m", "broker_proxy.cli", "--home", str(home),
                           "audit", "verify"], capture_output=True, text=True, timeout=60)


def test_verify_report_and_console_give_one_verdict(tmp_path: Path) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    held_log(good)
    log = AuditLog.open(bad / "audit.log", bad / "audit.key")
    log.append("request", decision="held", reason="approval_required", hold="h_1", **REQUEST)
    log.append("request", decision="maybe", reason="x", **REQUEST)  # not the published shape
    log.close()
    for home, ok in ((good, True), (bad, False)):
        cli = _cli_verify(home)
        statement = integrity_statement([home / "audit.log"], home / "audit.key")
        console = ChainStatus(home / "audit.log", home / "audit.key",
                              home / "audit.checkpoints").verify()
        assert (cli.returncode == 0, statement["ok"], console["ok"]) == (ok, ok, ok)
        if ok:
            assert cli.stdout.splitlines()[-1] == console["verdict"] == "audit log ok"
            assert statement["headline"].startswith("INTEGRITY OK")
        else:
            problem = "seq 1: field 'decision' does not match the audit record schema"
            assert problem in cli.stderr and problem in statement["headline"]
            assert problem in console["verdict"]
            assert cli.stderr.strip().endswith(console["verdict"])
            assert json.dumps(console)  # the admin API can send it as it is
