"""Signing in through a real OpenID provider (Node's oidc-provider, started here) in a real
browser (Debian's Chromium via Playwright), against the real proxy.

A viewer, an approver and an admin each see and may do exactly what their role allows, in the
page and at the server (403 naming the role that would allow it); an approver may not approve
the grant they issued; the admin token is break-glass; a replayed callback (state) or a reused
code is refused; every decision carries the person's identity in the audit, the report and the
OCSF export.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Page, expect

from broker_proxy.audit.log import AuditLog
from broker_proxy.devtools import prefork
from broker_proxy.devtools.local_pki import LocalPki
from broker_proxy.grants.issuer import issue_grant
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.policy.loader import load_policy
from broker_proxy.time_source import utc_now
from tests.conftest import PYTHON, Stack, Upstreams, start_stack
from tests.e2e_clients import via_httpx
from tests.oidc_provider_stack import CLIENT_ID, OidcProvider, installed_provider
from tests.test_console_browser import (  # noqa: F401 (fixtures)
    CONSOLE_POLICY,
    OTHER_AUTH,
    admin_token,
    browser,
    other_url,
    screenshot,
)

pytestmark = pytest.mark.e2e

SIGN_IN = """\
sign_in:
  oidc:
    issuer: {issuer}
    client_id: {client_id}
    client_secret: oidc_client
    allowed_domains: [example.com]
  roles:
    staff: viewer
    refund-approvers: approver
    broker-admins: admin
  separation_of_duties: true
"""


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    directory = installed_provider()
    running = OidcProvider(directory, tmp_path_factory.mktemp("oidc") / "provider.log")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def oidc_stack(tmp_path_factory: pytest.TempPathFactory, pki: LocalPki, upstreams: Upstreams,
               provider: OidcProvider) -> Iterator[Stack]:
    policy = CONSOLE_POLICY + SIGN_IN.format(issuer=provider.issuer, client_id=CLIENT_ID)
    running = start_stack(tmp_path_factory.mktemp("oidc-console"), pki, upstreams,
                          policy=policy)
    client_secret = secrets.token_urlsafe(24)
    stored = cli(running, "secret", "set", "oidc_client", stdin=client_secret + "\n")
    assert stored.returncode == 0, stored.stderr
    provider.configure(running.proxy.admin_url + "/ui/oidc/callback", client_secret)
    yield running
    running.proxy.stop()
    written = (running.root / "proxy.log").read_text(errors="replace")
    written += running.home.audit_log.read_text(errors="replace")
    for value in [*running.secret_values(), client_secret]:
        assert value not in written


def cli(stack: Stack, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return prefork.run([PYTHON, "-m", "broker_proxy.cli", "--home", str(stack.home.root),
                           *args], input=stdin, capture_output=True, text=True, timeout=120,
                          env=stack.env)


def sso_sign_in(page: Page, stack: Stack, account: str) -> None:
    page.goto(f"{stack.proxy.admin_url}/ui/")
    page.click("#oidc-link")
    page.fill("input[name=login]", account)
    page.fill("input[name=password]", "any")
    page.click("button[type=submit]")
    expect(page.locator("#nav")).to_be_visible(timeout=15_000)


def session_api(page: Page, stack: Stack, method: str, path: str,
                body: dict | None = None) -> requests.Response:
    """Call the admin API as the browser's session: its cookie and its CSRF token."""
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    jar = {"bp_console": cookies["bp_console"]}
    csrf = requests.get(stack.proxy.admin_url + "/ui/session", cookies=jar, timeout=10).json()
    return requests.request(method, stack.proxy.admin_url + path, cookies=jar, json=body,
                            headers={"X-CSRF-Token": csrf["csrf"]}, timeout=10)


def approve_as(chromium: Browser, stack: Stack, account: str,
               grant_id: str) -> requests.Response:
    """`account` signs in through the provider in a browser of their own and approves."""
    context = chromium.new_context()
    try:
        page = context.new_page()
        sso_sign_in(page, stack, account)
        return session_api(page, stack, "POST", f"/v1/grants/{grant_id}/approve", {})
    finally:
        context.close()


def test_each_role_sees_and_may_do_exactly_what_it_allows(
        browser: Browser, oidc_stack: Stack, tmp_path: Path) -> None:  # noqa: F811
    revocable = oidc_stack.issue("api_key")
    people = {"vera": "viewer", "alice": "approver", "adam": "admin"}
    for account, role in people.items():
        held_grant = oidc_stack.issue("api_key", agent="careful-bot")  # pending approval
        assert held_grant.grant.status == "pending"
        if role == "approver":
            alices = held_grant.grant.id
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        try:
            sso_sign_in(page, oidc_stack, account)
            expect(page.locator("#who")).to_contain_text(
                f"oidc:{account}@example.com ({role})")
            card = page.locator(".pending-grant", has_text=held_grant.grant.id)
            expect(card).to_be_visible(timeout=10_000)
            approve = card.get_by_role("button", name="Approve")
            if role == "viewer":
                expect(approve).to_be_disabled()
                expect(approve).to_have_attribute("title", "needs role approver")
            else:
                expect(approve).to_be_enabled()
            screenshot(page, tmp_path, f"oidc-{role}-approvals")
            if role == "approver":
                approve.click()
                expect(card.locator(".result")).to_contain_text(
                    "Approved by oidc:alice@example.com", timeout=10_000)
            page.goto(f"{oidc_stack.proxy.admin_url}/ui/#/grants")
            row = page.locator(f'tr[data-id="{revocable.grant.id}"]')
            expect(row).to_be_visible(timeout=10_000)
            expect(row.get_by_role("button", name="Revoke")).to_have_count(
                1 if role == "admin" else 0)
            screenshot(page, tmp_path, f"oidc-{role}-grants")
            # The server refuses regardless of the page: 403 naming the role that allows it.
            revoke = session_api(page, oidc_stack, "POST",
                                 f"/v1/grants/{revocable.grant.id}/revoke", {})
            issue = session_api(page, oidc_stack, "POST", "/v1/grants",
                                {"agent": "bot", "task": "t", "secrets": ["api_key"]})
            listed = session_api(page, oidc_stack, "GET", "/v1/grants")
            assert listed.status_code == 200
            if role == "admin":
                assert revoke.status_code == 200, revoke.text
                assert issue.status_code == 201, issue.text
            else:
                assert revoke.status_code == issue.status_code == 403
                assert revoke.json()["error"] == "role_required"
                assert revoke.json()["message"].startswith("role admin required: ")
                assert f"oidc:{account}@example.com has role {role}" in revoke.json()["message"]
            if role == "viewer":
                deny = session_api(page, oidc_stack, "POST",
                                   f"/v1/grants/{held_grant.grant.id}/deny", {})
                assert deny.status_code == 403
                assert deny.json()["message"].startswith("role approver required: ")
        finally:
            context.close()
    records = list(AuditLog.read_records(oidc_stack.home.audit_log))
    signed_in = [r["by"] for r in records if r["event"] == "console_signed_in"
                 and r["reason"] == "oidc"]
    assert {"oidc:vera@example.com", "oidc:alice@example.com",
            "oidc:adam@example.com"} <= set(signed_in)
    approved = [r for r in records if r["event"] == "grant_approved"
                and r["grant"] == alices]
    assert [r["by"] for r in approved] == ["oidc:alice@example.com"]
    revoked = [r for r in records if r["event"] == "grant_revoked"
               and r["grant"] == revocable.grant.id]
    assert [r["by"] for r in revoked] == ["oidc:adam@example.com"]
    # The identity in the report and the OCSF export too.
    report = cli(oidc_stack, "audit", "report", "--format", "json", "--grant",
                 alices)
    assert report.returncode == 0, report.stderr
    assert "oidc:alice@example.com" in report.stdout
    ocsf = cli(oidc_stack, "audit", "export", "--format", "ocsf").stdout.splitlines()
    actors = {json.loads(line).get("actor", {}).get("user", {}).get("name") for line in ocsf}
    assert {"oidc:alice@example.com", "oidc:adam@example.com"} <= actors
    assert cli(oidc_stack, "audit", "verify").returncode == 0


def test_an_approver_may_not_approve_a_grant_they_issued(
        browser: Browser, oidc_stack: Stack) -> None:  # noqa: F811
    context = browser.new_context()
    page = context.new_page()
    try:
        sso_sign_in(page, oidc_stack, "adam")
        issued = session_api(page, oidc_stack, "POST", "/v1/grants",
                             {"agent": "careful-bot", "task": "own", "secrets": ["api_key"]})
        assert issued.status_code == 201, issued.text
        grant_id = issued.json()["id"]
        refused = session_api(page, oidc_stack, "POST", f"/v1/grants/{grant_id}/approve", {})
        assert refused.status_code == 403
        assert refused.json()["error"] == "separation_of_duties"
        assert refused.json()["message"] == (
            f"separation of duties: oidc:adam@example.com issued grant {grant_id} and may not "
            "approve it; another approver must")
    finally:
        context.close()
    approved = approve_as(browser, oidc_stack, "alice", grant_id)
    assert approved.status_code == 200, approved.text
    records = [r for r in AuditLog.read_records(oidc_stack.home.audit_log)
               if r["grant"] == grant_id]
    assert [(r["event"], r["by"]) for r in records] == [
        ("grant_issued", "oidc:adam@example.com"),
        ("decision_refused", "oidc:adam@example.com"),
        ("grant_approved", "oidc:alice@example.com")]
    assert records[1]["reason"] == "separation_of_duties"


def test_the_issuer_stored_with_the_grant_holds_back_its_approval_without_an_audit_record(
        browser: Browser, oidc_stack: Stack) -> None:  # noqa: F811
    """Issued elsewhere (another replica's log, or before the last rotation): the grant says who
    issued it, and the CLI name adam@example.com is the same person as oidc:adam@example.com."""
    store = SqliteGrantStore(oidc_stack.home.grants_db)
    try:
        issued = issue_grant(load_policy(oidc_stack.policy_file), store, agent="careful-bot",
                             task="issued elsewhere", secrets=["api_key"], ttl=None,
                             max_uses=None, now=utc_now(), issued_by="Adam@example.com")
    finally:
        store.close()
    grant_id = issued.grant.id
    assert not [r for r in AuditLog.read_records(oidc_stack.home.audit_log)
                if r["grant"] == grant_id]
    refused = approve_as(browser, oidc_stack, "adam", grant_id)
    assert (refused.status_code, refused.json()["error"]) == (403, "separation_of_duties")
    approved = approve_as(browser, oidc_stack, "alice", grant_id)
    assert approved.status_code == 200, approved.text
    records = [r for r in AuditLog.read_records(oidc_stack.home.audit_log)
               if r["grant"] == grant_id]
    assert [(r["event"], r["by"], r["reason"]) for r in records] == [
        ("decision_refused", "oidc:adam@example.com", "separation_of_duties"),
        ("grant_approved", "oidc:alice@example.com", "approve")]


def test_the_admin_token_is_break_glass_once_a_provider_signs_people_in(
        oidc_stack: Stack) -> None:
    token = admin_token(oidc_stack)
    grant = oidc_stack.issue("api_key")
    answer = requests.post(f"{oidc_stack.proxy.admin_url}/v1/grants/{grant.grant.id}/revoke",
                           headers={"Authorization": f"Bearer {token}",
                                    "X-Broker-Actor": "ci"}, json={}, timeout=10)
    assert answer.status_code == 200
    [revoked] = [r for r in AuditLog.read_records(oidc_stack.home.audit_log)
                 if r["event"] == "grant_revoked" and r["grant"] == grant.grant.id]
    assert revoked["by"] == "token:break-glass"
    # A console sign-in with the admin token is break-glass too, whatever name it gives.
    signed_in = requests.post(f"{oidc_stack.proxy.admin_url}/ui/session", timeout=10,
                              json={"token": token, "name": "carol"})
    assert signed_in.status_code == 200
    assert signed_in.json()["identity"] == "token:break-glass"
    assert signed_in.json()["role"] == "admin"
    last = list(AuditLog.read_records(oidc_stack.home.audit_log))[-1]
    assert (last["event"], last["reason"], last["by"]) == (
        "console_signed_in", "admin_token", "token:break-glass")


def test_outsiders_and_people_without_a_role_are_refused(
        browser: Browser, oidc_stack: Stack, tmp_path: Path) -> None:  # noqa: F811
    for account, message in (("eve", "may not sign in here"),
                              ("nobody", "maps to a role here")):
        context = browser.new_context()
        page = context.new_page()
        try:
            page.goto(f"{oidc_stack.proxy.admin_url}/ui/")
            expect(page.locator("#oidc-link")).to_be_visible()
            screenshot(page, tmp_path, "oidc-sign-in")
            page.click("#oidc-link")
            page.fill("input[name=login]", account)
            page.fill("input[name=password]", "any")
            page.click("button[type=submit]")
            expect(page.locator("#oidc-error")).to_contain_text(message, timeout=15_000)
            screenshot(page, tmp_path, f"oidc-refused-{account}")
        finally:
            context.close()


def test_a_replayed_callback_or_a_reused_code_is_refused(
        browser: Browser, oidc_stack: Stack) -> None:  # noqa: F811
    context = browser.new_context()
    page = context.new_page()
    callbacks: list[str] = []
    page.on("request", lambda request: callbacks.append(request.url)
            if "/ui/oidc/callback" in request.url else None)
    try:
        sso_sign_in(page, oidc_stack, "vera")
        [callback] = callbacks
        binding = {c["name"]: c["value"] for c in context.cookies()}.get("bp_oidc")
        assert binding
        # The same callback again, from the same browser: its state is spent.
        replayed = requests.get(callback, cookies={"bp_oidc": binding}, timeout=10,
                                allow_redirects=False)
        assert replayed.status_code == 401
        assert 'data-code="oidc_state_invalid"' in replayed.text
        # A fresh login (new state, new binding), finished with the old code: the provider
        # refuses a code it already redeemed.
        session = requests.Session()
        begun = session.get(oidc_stack.proxy.admin_url + "/ui/oidc/login", timeout=10,
                            allow_redirects=False)
        assert begun.status_code == 302
        state = begun.headers["Location"].split("state=", 1)[1].split("&", 1)[0]
        code = callback.split("code=", 1)[1].split("&", 1)[0]
        reused = session.get(oidc_stack.proxy.admin_url + "/ui/oidc/callback",
                             params={"state": state, "code": code}, timeout=10,
                             allow_redirects=False)
        assert reused.status_code == 401
        assert 'data-code="oidc_provider_refused"' in reused.text
        assert "bp_console" not in reused.headers.get("Set-Cookie", "")
        # A state from another browser (no binding cookie) is refused too.
        begun = session.get(oidc_stack.proxy.admin_url + "/ui/oidc/login", timeout=10,
                            allow_redirects=False)
        state = begun.headers["Location"].split("state=", 1)[1].split("&", 1)[0]
        stranger = requests.get(oidc_stack.proxy.admin_url + "/ui/oidc/callback",
                                params={"state": state, "code": "x"}, timeout=10,
                                allow_redirects=False)
        assert stranger.status_code == 401 and "another browser" in stranger.text
    finally:
        context.close()


def test_an_approver_may_not_release_a_request_held_on_their_own_grant(
        browser: Browser, oidc_stack: Stack) -> None:  # noqa: F811
    context = browser.new_context()
    page = context.new_page()
    try:
        sso_sign_in(page, oidc_stack, "adam")
        issued = session_api(page, oidc_stack, "POST", "/v1/grants",
                             {"agent": "bot", "task": "refund", "secrets": ["other_key"]})
        assert issued.status_code == 201, issued.text
        grant_id, token = issued.json()["id"], issued.json()["token"]
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(via_httpx, oidc_stack, token, "POST", other_url(oidc_stack),
                               OTHER_AUTH, b'{"amount": 5}')
            hold_id = None
            for _ in range(100):
                waiting = session_api(page, oidc_stack, "GET", "/v1/requests").json()
                ids = [r["id"] for r in waiting["requests"] if r["grant"] == grant_id]
                if ids:
                    hold_id = ids[0]
                    break
                time.sleep(0.1)
            assert hold_id is not None
            refused = session_api(page, oidc_stack, "POST", f"/v1/requests/{hold_id}/approve",
                                  {})
            assert refused.status_code == 403
            assert refused.json()["error"] == "separation_of_duties"
            # Denying their own stays allowed: it gives nothing away.
            denied = session_api(page, oidc_stack, "POST", f"/v1/requests/{hold_id}/deny", {})
            assert denied.status_code == 200, denied.text
            assert held.result(timeout=20).json()["error"] == "request_denied"
    finally:
        context.close()
    decided = [(r["event"], r["by"]) for r in AuditLog.read_records(oidc_stack.home.audit_log)
               if r["grant"] == grant_id and r["event"] != "request"]
    assert ("decision_refused", "oidc:adam@example.com") in decided
    assert ("request_denied", "oidc:adam@example.com") in decided
    assert not any(r.header("Authorization") == f"Bearer {oidc_stack.other_key}"
                   for r in oidc_stack.upstreams.other.requests)
    for command in (("audit", "verify"), ("audit", "report", "--format", "json"),
                    ("audit", "export", "--format", "ocsf")):
        assert cli(oidc_stack, *command).returncode == 0, command
