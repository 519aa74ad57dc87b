"""The approval gate end to end, driven the way an operator does: the CLI against a running
proxy's home (the admin API's side is in test_admin_api.py)."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import timedelta

import pytest

from broker_proxy.audit.log import AuditLog
from broker_proxy.devtools import prefork
from tests.conftest import API_HOST, PYTHON, Stack
from tests.e2e_clients import CLIENTS

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": "Bearer {{secret:api_key}}"}


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    done = prefork.run([PYTHON, "-m", "broker_proxy.cli", "--home", str(stack.home.root),
                           *args], env=stack.env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done


def test_pending_grant_is_refused_until_approved_on_the_command_line(stack: Stack) -> None:
    issued = json.loads(cli(stack, "grant", "issue", "--agent", "careful-bot", "--task",
                            "needs a human", "--secret", "api_key", "--json",
                            "--policy", str(stack.policy_file)).stdout)
    assert issued["state"] == "pending"
    url = stack.url(stack.upstreams.api, API_HOST, "/v1/gate")
    curl = CLIENTS["curl"]
    refused = curl(stack, issued["token"], "GET", url, headers=AUTH)
    assert (refused.status, refused.json()["error"]) == (403, "grant_pending_approval")
    queue = json.loads(cli(stack, "grant", "list", "--pending", "--json").stdout)
    assert issued["id"] in [g["id"] for g in queue]

    approved = json.loads(cli(stack, "grant", "approve", issued["id"], "--json").stdout)
    assert approved["state"] == "active"
    assert approved["approved_by"] and approved["approved_at"]
    assert curl(stack, issued["token"], "GET", url, headers=AUTH).status == 200
    assert issued["id"] not in [g["id"] for g in json.loads(
        cli(stack, "grant", "list", "--pending", "--json").stdout)]
    records = [r for r in AuditLog.read_records(stack.home.audit_log)
               if r["grant"] == issued["id"] and r["event"] == "grant_approved"]
    assert records[0]["by"] == approved["approved_by"]


def test_denied_grant_stays_refused(stack: Stack) -> None:
    issued = stack.issue("api_key", agent="careful-bot")
    cli(stack, "grant", "deny", issued.grant.id)
    answer = CLIENTS["curl"](stack, issued.token, "GET",
                             stack.url(stack.upstreams.api, API_HOST, "/v1/x"), headers=AUTH)
    assert (answer.status, answer.json()["error"]) == (403, "grant_denied")
    assert stack.upstreams.api.requests == []


def test_pending_grant_nobody_approves_expires(stack: Stack) -> None:
    issued = stack.issue("api_key", agent="careful-bot", ttl=timedelta(seconds=1))
    time.sleep(1.2)
    answer = CLIENTS["curl"](stack, issued.token, "GET",
                             stack.url(stack.upstreams.api, API_HOST, "/v1/x"), headers=AUTH)
    assert (answer.status, answer.json()["error"]) == (403, "grant_expired")
    queue = json.loads(cli(stack, "grant", "list", "--pending", "--json").stdout)
    assert issued.grant.id not in [g["id"] for g in queue]
