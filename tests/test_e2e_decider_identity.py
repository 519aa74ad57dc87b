"""Who decided, from every door: `--by` on the CLI (default the OS user), the admin API's caller
label, and the name a console link signs in as. No decision is recorded as a bare `admin-api`."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from broker_proxy.audit.log import AuditLog
from broker_proxy.cli.common import default_actor
from broker_proxy.devtools import prefork
from tests.approval_desk_client import Approver
from tests.conftest import OTHER_HOST, PYTHON, Stack, Upstreams, start_stack
from tests.e2e_clients import via_httpx
from tests.test_console_browser import CONSOLE_POLICY, OTHER_AUTH

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def deciding(tmp_path_factory: pytest.TempPathFactory, pki, upstreams: Upstreams
             ) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("who"), pki, upstreams, policy=CONSOLE_POLICY)
    yield stack
    stack.proxy.stop()


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return prefork.run([PYTHON, "-m", "broker_proxy.cli", "--home", str(stack.home.root),
                           *args], capture_output=True, text=True, timeout=60,
                          env={**stack.env, "BROKER_PROXY_POLICY": str(stack.policy_file)})


def by_of(stack: Stack, event: str, grant: str) -> list[str]:
    return [r["by"] for r in AuditLog.read_records(stack.home.audit_log)
            if r["event"] == event and r["grant"] == grant]


def test_grant_decisions_on_the_cli_name_who_decided(deciding: Stack) -> None:
    issued = cli(deciding, "grant", "issue", "--agent", "careful-bot", "--task", "who",
                 "--secret", "api_key", "--json", "--by", "ops-carol")
    assert issued.returncode == 0, issued.stderr
    grant_id = json.loads(issued.stdout)["id"]
    assert by_of(deciding, "grant_issued", grant_id) == ["ops-carol"]
    bad = cli(deciding, "grant", "approve", grant_id, "--by", "carol smith")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    approved = cli(deciding, "grant", "approve", grant_id, "--by", "carol", "--json")
    assert json.loads(approved.stdout)["approved_by"] == "carol"
    assert cli(deciding, "grant", "revoke", grant_id).returncode == 0
    assert by_of(deciding, "grant_approved", grant_id) == ["carol"]
    assert by_of(deciding, "grant_revoked", grant_id) == [default_actor()]


def test_a_request_decided_on_the_cli_names_the_person(deciding: Stack) -> None:
    grant = deciding.issue("other_key")
    url = f"https://{OTHER_HOST}:{deciding.upstreams.other.port}/v1/pay"
    with ThreadPoolExecutor(1) as pool:
        sent = pool.submit(via_httpx, deciding, grant.token, "POST", url, OTHER_AUTH, b"x")
        [item] = Approver(deciding).wait_for(grant.grant.id)
        listed = cli(deciding, "request", "list")
        assert item["id"] in listed.stdout and "other_key@header:authorization" in listed.stdout
        done = cli(deciding, "request", "approve", item["id"], "--by", "dave")
        assert done.returncode == 0, done.stderr
        assert sent.result(timeout=20).status == 200
    records = [r for r in AuditLog.read_records(deciding.home.audit_log)
               if r.get("hold") == item["id"] and r["event"] == "request_approved"]
    assert [r["by"] for r in records] == ["admin-api:dave"]


def test_a_console_link_signs_in_as_the_person_who_asked_for_it(deciding: Stack) -> None:
    made = cli(deciding, "console", "--no-browser", "--as", "erin")
    assert made.returncode == 0, made.stderr
    assert "signs in as erin" in made.stdout
    code = made.stdout.split("#login=", 1)[1].split()[0]
    session = requests.post(f"{deciding.proxy.admin_url}/ui/session", json={"code": code},
                            timeout=10)
    assert session.status_code == 200 and session.json()["name"] == "erin"
    signed_in = [(r["by"], r["reason"]) for r in AuditLog.read_records(deciding.home.audit_log)
                 if r["event"] == "console_signed_in"]
    assert signed_in[-1] == ("console:erin", "login_link")
    token_without_name = requests.post(
        f"{deciding.proxy.admin_url}/ui/session", timeout=10,
        json={"token": deciding.home.admin_token.read_text().strip()})
    assert token_without_name.status_code == 400  # the admin token names nobody
    # A console session decides as its name; it cannot claim another one.
    grant = deciding.issue("api_key")
    cookies, csrf = session.cookies, session.json()["csrf"]
    claimed = requests.post(f"{deciding.proxy.admin_url}/v1/grants/{grant.grant.id}/revoke",
                            json={"by": "mallory"}, cookies=cookies, timeout=10,
                            headers={"X-CSRF-Token": csrf})
    assert claimed.status_code == 400
    revoked = requests.post(f"{deciding.proxy.admin_url}/v1/grants/{grant.grant.id}/revoke",
                            json={}, cookies=cookies, timeout=10, headers={"X-CSRF-Token": csrf})
    assert revoked.status_code == 200
    assert by_of(deciding, "grant_revoked", grant.grant.id) == ["console:erin"]
    assert "admin-api" not in [r.get("by") for r in AuditLog.read_records(
        deciding.home.audit_log)]
