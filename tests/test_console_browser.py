"""The web console in a real browser (the system's Chromium driven by Playwright) against the real
proxy: sign in, approve and deny grants and held requests, revoke, read the audit trail.

Screenshots of each page go to the test's tmp dir; with BROKER_PROXY_DOCS_SCREENSHOTS=1 they
are also written (small) to docs/ for the README.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Page, expect, sync_playwright

from broker_proxy.devtools.browser import BrowserNotFound, find_chromium
from broker_proxy.devtools.local_pki import LocalPki
from tests.conftest import E2E_POLICY, OTHER_HOST, Stack, Upstreams, start_stack
from tests.e2e_clients import via_httpx
from tests.test_exec import grant_of, start_exec, wait_for

pytestmark = pytest.mark.e2e

DOCS = Path(__file__).resolve().parent.parent / "docs"
# other_key needs a person's yes for every request; api_key's grants for careful-bot need one.
CONSOLE_POLICY = E2E_POLICY.replace(
    '    placeholder: "other-PLACEHOLDER-0000"\n',
    '    placeholder: "other-PLACEHOLDER-0000"\n    approval: per_request\n')
OTHER_AUTH = {"Authorization": "Bearer other-PLACEHOLDER-0000"}


@pytest.fixture(scope="module")
def console_stack(tmp_path_factory: pytest.TempPathFactory, pki: LocalPki,
                  upstreams: Upstreams) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("console"), pki, upstreams,
                          policy=CONSOLE_POLICY)
    yield running
    running.proxy.stop()
    written = (running.root / "proxy.log").read_text(errors="replace")
    written += running.home.audit_log.read_text(errors="replace")
    for value in running.secret_values():
        assert value not in written


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    try:
        chromium = find_chromium()
    except BrowserNotFound as error:  # fails rather than skips: make test installs or names it
        pytest.fail(str(error))
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    opened = context.new_page()
    yield opened
    context.close()


@pytest.fixture(autouse=True)
def _clear(upstreams: Upstreams) -> None:
    upstreams.clear()


def admin_token(stack: Stack) -> str:
    return stack.home.admin_token.read_text().strip()


def sign_in(page: Page, stack: Stack, name: str = "alice") -> None:
    page.goto(f"{stack.proxy.admin_url}/ui/")
    page.fill("#name", name)
    page.fill("#token", admin_token(stack))
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#nav")).to_be_visible()


def screenshot(page: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"console-{name}.png"
    page.screenshot(path=str(path), full_page=False)
    if os.environ.get("BROKER_PROXY_DOCS_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        shutil.copy(path, DOCS / f"console-{name}.png")


def other_url(stack: Stack, path: str = "/v1/pay") -> str:
    return stack.url(stack.upstreams.other, OTHER_HOST, path)


def injected(stack: Stack) -> list[bytes]:
    return [r.body for r in stack.upstreams.other.requests
            if r.header("Authorization") == f"Bearer {stack.other_key}"]


def test_wrong_token_is_refused(page: Page, console_stack: Stack) -> None:
    page.goto(f"{console_stack.proxy.admin_url}/ui/")
    page.fill("#name", "mallory")
    page.fill("#token", "bpa_wrong")
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#sign-in-error")).to_contain_text("wrong admin token")
    expect(page.locator("#nav")).to_be_hidden()


def test_approving_a_pending_grant_lets_exec_proceed_and_denying_stops_it(
        page: Page, console_stack: Stack, tmp_path: Path) -> None:
    sign_in(page, console_stack)
    process, task, out = start_exec(console_stack, tmp_path, agent="careful-bot",
                                    extra=("--wait-approval", "60s"))
    card = page.locator(".pending-grant", has_text=task)
    expect(card).to_be_visible(timeout=15_000)
    screenshot(page, tmp_path, "approvals")
    assert not out.exists(), "exec must wait for the approval"
    card.locator("input[aria-label=reason]").fill("ticket 42")
    card.get_by_role("button", name="Approve").click()
    expect(card).to_have_count(0, timeout=5000)
    assert wait_for(out, process)["status"] == 200
    process.communicate(timeout=60)
    assert process.returncode == 0

    denied_dir = tmp_path / "denied"
    denied_dir.mkdir()
    process, task, out = start_exec(console_stack, denied_dir, agent="careful-bot",
                                    extra=("--wait-approval", "60s"))
    card = page.locator(".pending-grant", has_text=task)
    expect(card).to_be_visible(timeout=15_000)
    card.get_by_role("button", name="Deny").click()
    process.communicate(timeout=60)
    assert process.returncode == 1 and not out.exists()
    assert grant_of(console_stack, task).status in ("denied", "revoked")


def test_a_held_request_allowed_once_goes_out_once_then_is_held_again(
        page: Page, console_stack: Stack, tmp_path: Path) -> None:
    sign_in(page, console_stack)
    grant = console_stack.issue("other_key")
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(via_httpx, console_stack, grant.token, "POST",
                            other_url(console_stack), OTHER_AUTH, b'{"pay": 5}')
        card = page.locator(".held", has_text=grant.grant.id)
        expect(card).to_be_visible(timeout=15_000)
        expect(card).to_contain_text("POST https://other.test.local")
        expect(card).to_contain_text("10 B")  # the body's size, and its text (placeholders only)
        expect(card.locator("pre.body")).to_contain_text('"pay": 5')
        screenshot(page, tmp_path, "held-request")
        assert console_stack.upstreams.other.requests == []
        clicked = time.monotonic()
        card.get_by_role("button", name="Allow once").click()
        while not console_stack.upstreams.other.requests and time.monotonic() - clicked < 15:
            time.sleep(0.002)
        leaving_ms = (time.monotonic() - clicked) * 1000
        assert first.result(timeout=20).status == 200
        # The result is said where the click was, with who decided.
        expect(card.locator(".result")).to_contain_text("Allowed (once) by console:alice")
        print(f"click -> held request reached the upstream: {leaving_ms:.0f} ms")
        second = pool.submit(via_httpx, console_stack, grant.token, "POST",
                             other_url(console_stack), OTHER_AUTH, b'{"pay": 5}')
        pending = page.locator(".held:not(.decided)", has_text=grant.grant.id)
        expect(pending).to_be_visible(timeout=15_000)
        assert injected(console_stack) == [b'{"pay": 5}'], "one approval, one injection"
        pending.get_by_role("button", name="Deny").click()
        assert second.result(timeout=20).json()["error"] == "request_denied"
    assert injected(console_stack) == [b'{"pay": 5}']


def test_allow_n_uses_lets_exactly_n_through(page: Page, console_stack: Stack) -> None:
    sign_in(page, console_stack)
    grant = console_stack.issue("other_key")
    with ThreadPoolExecutor(2) as pool:
        send = lambda: pool.submit(via_httpx, console_stack, grant.token, "POST",  # noqa: E731
                                   other_url(console_stack), OTHER_AUTH, b"n")
        first = send()
        card = page.locator(".held", has_text=grant.grant.id)
        expect(card).to_be_visible(timeout=15_000)
        card.locator("input[aria-label=uses]").fill("2")
        card.get_by_role("button", name="Allow N uses").click()
        assert first.result(timeout=20).status == 200
        assert send().result(timeout=20).status == 200
        third = send()
        pending = page.locator(".held:not(.decided)", has_text=grant.grant.id)
        expect(pending).to_be_visible(timeout=15_000)
        assert len(injected(console_stack)) == 2
        pending.get_by_role("button", name="Deny").click()
        assert third.result(timeout=20).status == 403
    assert len(injected(console_stack)) == 2


def test_revoking_a_grant_refuses_its_next_request_and_the_audit_shows_it(
        page: Page, console_stack: Stack, tmp_path: Path) -> None:
    sign_in(page, console_stack)
    grant = console_stack.issue("api_key")
    url = console_stack.url(console_stack.upstreams.api, "api.test.local", "/v1/before")
    auth = {"Authorization": "Bearer {{secret:api_key}}"}
    assert via_httpx(console_stack, grant.token, "GET", url, auth).status == 200
    page.goto(f"{console_stack.proxy.admin_url}/ui/#/grants")
    page.fill("form.filters input[name=agent]", "bot")
    page.select_option("form.filters select[name=state]", "active")
    page.click("form.filters button[type=submit]")
    row = page.locator(f"tr[data-id={grant.grant.id}]")
    expect(row).to_be_visible(timeout=10_000)
    screenshot(page, tmp_path, "grants")
    row.locator("input[aria-label='revoke reason']").fill("done with it")
    row.get_by_role("button", name="Revoke").click()
    expect(page.locator("#status")).to_contain_text("revoked")
    answer = via_httpx(console_stack, grant.token, "GET", url, auth)
    assert answer.status == 403 and answer.json()["error"] == "grant_revoked"

    page.goto(f"{console_stack.proxy.admin_url}/ui/#/grants/{grant.grant.id}")
    expect(page.locator("#audit")).to_contain_text("grant_revoked", timeout=10_000)
    expect(page.locator("#audit")).to_contain_text("done with it")
    page.goto(f"{console_stack.proxy.admin_url}/ui/#/audit")
    page.fill("form.filters input[name=grant]", grant.grant.id)
    page.click("form.filters button[type=submit]")
    expect(page.locator("#audit")).to_contain_text("grant_revoked", timeout=10_000)
    expect(page.locator("#audit")).to_contain_text("injected")
    page.get_by_role("button", name="Verify now").click()
    expect(page.locator("#chain")).to_contain_text("audit log ok", timeout=30_000)
    page.fill("form.filters input[name=grant]", "")
    page.click("form.filters button[type=submit]")
    expect(page.locator("#audit tr").nth(5)).to_be_visible(timeout=10_000)
    screenshot(page, tmp_path, "audit")
    page.goto(f"{console_stack.proxy.admin_url}/ui/#/policy")
    expect(page.locator("#policy-secrets")).to_contain_text("per request")
    expect(page.locator("#policy-status")).to_contain_text("in force")
    screenshot(page, tmp_path, "policy")
    # No page shows a secret value.
    for path in ("#/approvals", "#/grants", "#/audit", "#/policy"):
        page.goto(f"{console_stack.proxy.admin_url}/ui/{path}")
        page.wait_for_timeout(300)
        html = page.content()
        assert all(value not in html for value in console_stack.secret_values())


def test_a_state_change_without_the_csrf_token_is_refused(page: Page,
                                                          console_stack: Stack) -> None:
    sign_in(page, console_stack)
    grant = console_stack.issue("api_key")
    # The page's own cookie, but no CSRF header: as a forged cross-site form or script would.
    status = page.evaluate("""async (id) => (await fetch(`/v1/grants/${id}/revoke`,
        {method: 'POST', credentials: 'same-origin'})).status""", grant.grant.id)
    assert status == 403
    wrong = page.evaluate("""async (id) => (await fetch(`/v1/grants/${id}/revoke`,
        {method: 'POST', credentials: 'same-origin', headers: {'X-CSRF-Token': 'nope'}})).status""",
                          grant.grant.id)
    assert wrong == 403
    assert grant_of_id(console_stack, grant.grant.id)["state"] == "active"
    # The cookie is out of reach of page scripts.
    assert "bp_console" not in page.evaluate("document.cookie")
    [cookie] = [c for c in page.context.cookies() if c["name"] == "bp_console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["expires"] > 0


def grant_of_id(stack: Stack, grant_id: str) -> dict:
    answer = requests.get(f"{stack.proxy.admin_url}/v1/grants/{grant_id}", timeout=10,
                          headers={"Authorization": f"Bearer {admin_token(stack)}"})
    return answer.json()


def test_an_expired_session_is_refused_and_changes_nothing(
        browser: Browser, tmp_path: Path, pki: LocalPki, upstreams: Upstreams) -> None:
    stack = start_stack(tmp_path / "short", pki, upstreams, policy=CONSOLE_POLICY,
                        extra_args=("--console-session-ttl", "2s"))
    context = browser.new_context()
    page = context.new_page()
    try:
        sign_in(page, stack)
        grant = stack.issue("api_key")
        csrf = page.evaluate("async () => (await (await fetch('/ui/session')).json()).csrf")
        time.sleep(2.5)
        status = page.evaluate("""async ([id, csrf]) => (await fetch(
            `/v1/grants/${id}/revoke`, {method: 'POST', credentials: 'same-origin',
                                        headers: {'X-CSRF-Token': csrf}})).status""",
                               [grant.grant.id, csrf])
        assert status == 401
        assert grant_of_id(stack, grant.grant.id)["state"] == "active"
        page.goto(f"{stack.proxy.admin_url}/ui/#/grants")
        expect(page.locator("#sign-in")).to_be_visible()
    finally:
        context.close()
        stack.proxy.stop()


def test_a_one_time_login_link_signs_in_once_and_leaves_no_code_in_history(
        browser: Browser, console_stack: Stack) -> None:
    made = requests.post(f"{console_stack.proxy.admin_url}/v1/console/login-links", timeout=10,
                         headers={"Authorization": f"Bearer {admin_token(console_stack)}"},
                         json={"name": "carol"})
    link = console_stack.proxy.admin_url + made.json()["path"]
    for attempt in ("first", "second"):
        context = browser.new_context()
        page = context.new_page()
        try:
            page.goto(link)
            if attempt == "first":
                expect(page.locator("#nav")).to_be_visible()
                expect(page.locator("#who")).to_have_text("signed in as carol")
                assert "login=" not in page.url
                assert "login=" not in json.dumps(page.evaluate("history.length"))
            else:
                expect(page.locator("#sign-in-error")).to_contain_text("login link")
        finally:
            context.close()
