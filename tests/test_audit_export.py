"""`audit export`: OCSF events that validate against the OCSF schema, and an export that, killed
mid-way and started again, has written every record exactly once.

tests/data/ocsf-1.8.0-excerpt.json holds the OCSF 1.8.0 class schemas the mapping uses (API
Activity 6003, Authorize Session 3003, Account Change 3001, Application Lifecycle 6002, each with
the security_control profile), with the objects they reference embedded (its `_source` says how
it was made).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from broker_proxy.audit.export import resume_point
from broker_proxy.audit.log import AuditLog
from broker_proxy.audit.record_schema import OCSF_EXPORT_SCHEMA_FILE, load_schema
from broker_proxy.devtools import prefork

OCSF = json.loads((Path(__file__).parent / "data" / "ocsf-1.8.0-excerpt.json").read_text())
GRANT = {"grant": "g_1", "agent": "bot", "task": "sync"}


def export(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    return prefork.run([sys.executable, "-m", "broker_proxy.cli", "--home", str(home),
                           "audit", "export", *args], capture_output=True, timeout=timeout)


def every_kind_of_record(home: Path) -> None:
    log = AuditLog.open(home / "audit.log", home / "audit.key")
    log.rotate_at(4096)
    log.append("proxy_started", decision="allow", reason="started")
    log.append("policy_loaded", decision="allow", reason="startup", policy="abc")
    log.append("grant_issued", decision="allow", reason="issued", by="ops", secrets=["github"],
               expires_at="2030-01-01T00:00:00Z", max_uses=5, grant_status="pending", **GRANT)
    log.append("grant_approved", decision="allow", reason="approve", by="alice",
               secrets=["github"], **GRANT)
    for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "PROPFIND"):
        log.append("request", decision="allow", reason="injected", secrets=["github"],
                   method=method, scheme="https", host="api.github.com", port=443,
                   path="/repos/acme/x", fingerprints=["github:0011"], **GRANT)
        log.append("response", decision="allow", reason="injected", secrets=["github"],
                   grant="g_1", method=method, scheme="https", host="api.github.com",
                   port=443, path="/repos/acme/x", status=200, duration_ms=4.5, redactions=1)
    held = {"secrets": ["github"], "method": "POST", "scheme": "https",
            "host": "api.github.com", "port": 443, "path": "/repos/acme/x", **GRANT}
    log.append("request", decision="held", reason="approval_required", hold="h_1",
               digest="d" * 64, **held)
    log.append("request_approved", decision="allow", reason="once", by="console:alice",
               hold="h_1", digest="d" * 64, shown_digest="e" * 64, **held)
    log.append("request", decision="held", reason="approval_required", hold="h_2", **held)
    log.append("request_denied", decision="deny", reason="deny", by="cli:bob", hold="h_2",
               message="not today", **held)
    log.append("request", decision="held", reason="approval_required", hold="h_3", **held)
    log.append("request_timed_out", decision="deny", reason="timeout", by="broker-proxy",
               hold="h_3", **held)
    log.append("request", decision="deny", reason="destination_not_allowed", method="POST",
               scheme="https", host="paste.example.net", port=443, path="/", status=403,
               **GRANT)
    log.append("request", decision="deny", reason="proxy_auth_required", method="GET",
               scheme="https", host="x.example", port=443, path="/", status=407)
    log.append("grant_denied", decision="deny", reason="deny", by="bob", secrets=["github"],
               grant="g_2", agent="bot", task="other")
    log.append("grant_revoked", decision="deny", reason="revoke", by="ops", secrets=["github"],
               **GRANT)
    log.append("grant_expired", decision="deny", reason="grant_expired", secrets=["github"],
               expires_at="2030-01-01T00:00:00Z", uses=3, max_uses=5, **GRANT)
    log.append("policy_reloaded", decision="allow", reason="sighup", policy="def",
               revoked_grants=0)
    log.append("proxy_stopped", decision="allow", reason="stopped")
    log.close()


def test_ocsf_export_validates_against_the_ocsf_schema(tmp_path: Path) -> None:
    every_kind_of_record(tmp_path)
    done = export(tmp_path, "--format", "ocsf")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    records = [r for file in sorted(tmp_path.glob("audit.log*"))
               for r in AuditLog.read_records(file)]
    assert len(events) == len(records) >= 28
    assert [e["metadata"]["sequence"] for e in events] == list(range(len(events)))
    validators = {uid: jsonschema.Draft202012Validator(schema)
                  for uid, schema in OCSF["classes"].items()}
    ours = jsonschema.Draft202012Validator(load_schema(OCSF_EXPORT_SCHEMA_FILE))
    seen = set()
    for event in events:
        errors = [e.message for e in validators[str(event["class_uid"])].iter_errors(event)]
        assert errors == [], (event["unmapped"]["event"], errors)
        ours.validate(event)
        seen.add((event["unmapped"]["event"], event["class_uid"], event["activity_id"]))
    assert {("request", 6003, 2), ("request", 6003, 1), ("request", 6003, 3),
            ("request", 6003, 4), ("request", 6003, 99), ("response", 6003, 2),
            ("grant_issued", 3003, 1), ("grant_approved", 3003, 1), ("grant_denied", 3003, 1),
            ("grant_revoked", 3001, 8), ("grant_expired", 3001, 8),
            ("proxy_started", 6002, 3), ("proxy_stopped", 6002, 4),
            ("policy_reloaded", 6002, 99), ("audit_rotated", 6002, 99)} <= seen
    refused = next(e for e in events if e.get("status_detail") == "destination_not_allowed")
    assert (refused["status_id"], refused["dst_endpoint"]["hostname"]) == (
        2, "paste.example.net")
    assert refused["actor"]["session"]["uid"] == "g_1"
    assert refused["disposition_id"] == 2 and refused["metadata"]["version"] == "1.8.0"
    assert ("request_approved", 3003, 1) in seen


def test_ocsf_names_the_approver_and_never_calls_a_held_request_a_success(
        tmp_path: Path) -> None:
    every_kind_of_record(tmp_path)
    events = [json.loads(line) for line in export(tmp_path, "--format", "ocsf").stdout.splitlines()]
    by_event: dict[str, list[dict]] = {}
    for event in events:
        by_event.setdefault(event["unmapped"]["event"], []).append(event)
    held = [e for e in by_event["request"] if e["unmapped"].get("hold")]
    assert len(held) == 3
    assert {(e["status_id"], e["disposition_id"], e["action_id"]) for e in held} == {(0, 14, 0)}
    approved = by_event["request_approved"][0]
    assert (approved["disposition_id"], approved["disposition"]) == (8, "Approved")
    assert approved["actor"]["user"]["name"] == "console:alice"
    assert approved["user"]["name"] == "bot" and approved["status_id"] == 1
    assert approved["unmapped"]["path"] == "/repos/acme/x"
    denied = by_event["request_denied"][0]
    assert (denied["disposition_id"], denied["status_id"], denied["actor"]["user"]["name"]) == (
        25, 2, "cli:bob")
    timed_out = by_event["request_timed_out"][0]
    assert (timed_out["disposition_id"], timed_out["actor"]["user"]["name"]) == (
        2, "broker-proxy")
    assert by_event["grant_approved"][0]["disposition_id"] == 8
    assert by_event["grant_approved"][0]["actor"]["user"]["name"] == "alice"


def test_jsonl_export_is_the_records_themselves(tmp_path: Path) -> None:
    every_kind_of_record(tmp_path)
    done = export(tmp_path, "--from-seq", "5")
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0]["seq"] == 5
    originals = {}
    for file in sorted(tmp_path.glob("audit.log*")):
        for record in AuditLog.read_records(file):
            originals[record["seq"]] = record
    assert lines == [originals[seq] for seq in range(5, len(originals))]


def seqs_in(output: Path, key: str) -> list[int]:
    found = []
    for line in output.read_bytes().splitlines():
        data = json.loads(line)
        found.append(data["seq"] if key == "jsonl" else data["metadata"]["sequence"])
    return found


@pytest.mark.parametrize("fmt", ["jsonl", "ocsf"])
def test_killed_export_resumes_without_loss_or_duplicates(tmp_path: Path, fmt: str) -> None:
    log = AuditLog.open(tmp_path / "audit.log", tmp_path / "audit.key")
    log.rotate_at(1 << 20)
    for index in range(40000):
        log.append("request", decision="allow", reason="injected", secrets=["github"],
                   method="GET", scheme="https", host="api.github.com", port=443,
                   path=f"/v1/{index}", **GRANT)
    total, _last = log.head()  # with the rotation records
    log.close()
    output = tmp_path / f"out.{fmt}"
    command = [sys.executable, "-m", "broker_proxy.cli", "--home", str(tmp_path), "audit",
               "export", "--format", fmt, "--output", str(output)]
    kills = 0
    for _attempt in range(3):
        child = prefork.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        start = output.stat().st_size if output.exists() else 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            if output.exists() and output.stat().st_size > start + 200_000:
                break
            time.sleep(0.005)
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            kills += 1
            with output.open("ab") as handle:
                handle.write(b'{"seq": 12')  # what a kill inside a write leaves behind
    assert kills >= 1, "the export finished before it could be killed: make the log bigger"
    done = subprocess.run(command, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert seqs_in(output, fmt) == list(range(total))
    assert resume_point(output) == total
    again = subprocess.run(command, capture_output=True, timeout=120)
    assert again.returncode == 0 and seqs_in(output, fmt) == list(range(total))


def test_follow_exports_new_records_across_rotations_exactly_once(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit.log", tmp_path / "audit.key")
    log.rotate_at(4096)
    log.append("proxy_started", decision="allow", reason="started")
    output = tmp_path / "out.jsonl"
    child = prefork.Popen([sys.executable, "-m", "broker_proxy.cli", "--home", str(tmp_path),
                              "audit", "export", "--follow", "--output", str(output)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for batch in range(5):
            for index in range(40):
                log.append("request", decision="allow", reason="allowed", method="GET",
                           scheme="https", host="pypi.org", port=443, path=f"/{batch}/{index}")
            time.sleep(0.3)
        count, _last = log.head()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if output.exists() and len(output.read_bytes().splitlines()) >= count:
                break
            time.sleep(0.1)
    finally:
        child.kill()
        child.wait()
        log.close()
    assert len(list(tmp_path.glob("audit.log.*"))) >= 3, "the test must rotate"
    assert seqs_in(output, "jsonl") == list(range(count))


def test_from_seq_that_disagrees_with_the_output_is_refused(tmp_path: Path) -> None:
    every_kind_of_record(tmp_path)
    output = tmp_path / "out.jsonl"
    assert export(tmp_path, "--output", str(output)).returncode == 0
    done = export(tmp_path, "--output", str(output), "--from-seq", "3")
    assert done.returncode == 1
    assert b"would lose or repeat records" in done.stderr and b"Traceback" not in done.stderr


def test_a_rotation_while_the_chain_is_read_again_loses_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The live name can point at a newer file than the list of files read just before it."""
    from broker_proxy.audit import reading
    from broker_proxy.audit.export import Exporter

    log = AuditLog.open(tmp_path / "audit.log", tmp_path / "audit.key")
    log.rotate_at(4096)

    def fill(count: int) -> None:
        for index in range(count):
            log.append("request", decision="allow", reason="allowed", method="GET",
                       scheme="https", host="pypi.org", port=443, path=f"/{index}")

    fill(30)
    listed = reading.chain_files

    def rotating_after_listing(live: Path) -> list[Path]:
        files = listed(live)
        fill(30)  # enough to rotate: the name now points past what `files` knows
        monkeypatch.setattr(reading, "chain_files", listed)
        return files

    sink = (tmp_path / "out.jsonl").open("wb")
    exporter = Exporter(tmp_path / "audit.log", "jsonl", sink, 0)
    monkeypatch.setattr(reading, "chain_files", rotating_after_listing)
    for _ in range(3):
        exporter.run_once()
    sink.close()
    count, _last = log.head()
    log.close()
    assert len(list(tmp_path.glob("audit.log.*"))) >= 2, "the test must rotate"
    assert seqs_in(tmp_path / "out.jsonl", "jsonl") == list(range(count))
