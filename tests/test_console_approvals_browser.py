"""Deciding knowingly, in a real browser (Debian's chromium via Playwright) against the real proxy.

Two held refunds that differ only in their amount are told apart on screen, and the one the
person approves is the one that leaves; the approver's name is in the audit record, the access
report and the OCSF export. Also the console polish a person notices: the audit table fits a
1280 px window, routine revocations are not red, no favicon refusal, and a tab closed during a
long poll leaves no traceback in the proxy's log.
"""

from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, expect

from broker_proxy.audit.log import AuditLog
from broker_proxy.devtools import prefork
from tests.conftest import PYTHON, Stack
from tests.e2e_clients import via_httpx
from tests.test_console_browser import (  # noqa: F401 (fixtures)
    OTHER_AUTH,
    browser,
    console_stack,
    screenshot,
    sign_in,
)

pytestmark = pytest.mark.e2e
REFUND = {**OTHER_AUTH, "Content-Type": "application/json"}


def _refunds_upstream(stack: Stack) -> list[dict]:
    return [json.loads(r.body) for r in stack.upstreams.other.requests
            if r.header("Authorization") == f"Bearer {stack.other_key}"]


def _cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return prefork.run([PYTHON, "-m", "broker_proxy.cli", "--home", str(stack.home.root),
                           *args], capture_output=True, text=True, timeout=120)


def test_two_held_refunds_are_told_apart_and_the_approved_one_is_released(
        browser: Browser, console_stack: Stack, tmp_path: Path) -> None:  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    try:
        sign_in(page, console_stack, name="alice")
        grant = console_stack.issue("other_key")
        url = f"https://other.test.local:{console_stack.upstreams.other.port}/v1/refunds"
        with ThreadPoolExecutor(2) as pool:
            small = pool.submit(via_httpx, console_stack, grant.token, "POST", url + "?order=7",
                                REFUND, b'{"amount": 1200, "currency": "eur"}')
            time.sleep(0.3)  # the small one is held first: on top, as in the report
            large = pool.submit(via_httpx, console_stack, grant.token, "POST", url + "?order=7",
                                REFUND, b'{"amount": 99999, "currency": "eur"}')
            cards = page.locator(".held", has_text=grant.grant.id)
            expect(cards).to_have_count(2, timeout=15_000)
            first, second = cards.nth(0), cards.nth(1)
            # Each shows its body; each says it is like the other and marks what differs.
            expect(first.locator("pre.body")).to_contain_text('"amount": 1200')
            expect(second.locator("pre.body")).to_contain_text('"amount": 99999')
            expect(first.locator(".similar")).to_be_visible()
            expect(first.locator(".line.diff", has_text='"amount": 1200')).to_be_visible()
            expect(second.locator(".line.diff", has_text='"amount": 99999')).to_be_visible()
            expect(first.locator(".line.diff", has_text="currency")).to_have_count(0)
            expect(first.locator("pre.headers mark.ph")).to_contain_text("other-PLACEHOLDER")
            expect(first).to_contain_text("other_key → header:authorization")
            assert console_stack.other_key not in page.content()
            screenshot(page, tmp_path, "held-refunds")
            assert _refunds_upstream(console_stack) == []  # nothing of ours went out yet

            other_id = page.locator(".held", has=page.locator(
                "pre.body", has_text='"amount": 99999')).get_attribute("data-id")
            other = page.locator(f'.held[data-id="{other_id}"]')
            # Typed into one card, then the other is decided: the queue changes under the
            # person, and what they typed stays where they typed it.
            other.locator("input[aria-label=reason]").fill("too much")
            chosen = page.locator(".held", has=page.locator("pre.body",
                                                            has_text='"amount": 1200'))
            chosen.get_by_role("button", name="Allow once").click()
            expect(chosen.locator(".result")).to_contain_text("Allowed (once) by console:alice")
            assert small.result(timeout=20).status == 200
            time.sleep(0.5)
            assert _refunds_upstream(console_stack) == [{"amount": 1200, "currency": "eur"}]
            assert not large.done(), "the other refund still waits"
            expect(other.locator(".similar")).to_have_count(0, timeout=10_000)  # updated
            expect(other.locator("input[aria-label=reason]")).to_have_value("too much")
            other.get_by_role("button", name="Deny").click()
            expect(other.locator(".result")).to_contain_text("Denied by console:alice")
            assert large.result(timeout=20).json()["error"] == "request_denied"
        assert _refunds_upstream(console_stack) == [{"amount": 1200, "currency": "eur"}]
    finally:
        context.close()

    # The approver's name in the audit record, the report and the OCSF event.
    decided = [r for r in AuditLog.read_records(console_stack.home.audit_log)
               if r["event"] in ("request_approved", "request_denied")
               and r["grant"] == grant.grant.id]
    assert [(r["event"], r["by"]) for r in decided] == [
        ("request_approved", "console:alice"), ("request_denied", "console:alice")]
    assert all(r["shown_digest"] and r["carries"] == ["other_key@header:authorization"]
               for r in decided)
    report = _cli(console_stack, "audit", "report", "--format", "json", "--grant",
                  grant.grant.id)
    assert report.returncode == 0, report.stderr
    [row] = json.loads(report.stdout)["grants"]
    held = row["held_requests"]
    assert held["count"] == 2 and held["outcomes"] == {"approved": 1, "denied": 1}
    assert [(i["outcome"], i["choice"], i["by"]) for i in held["items"]] == [
        ("approved", "once", "console:alice"), ("denied", "deny", "console:alice")]
    assert held["items"][1]["reason"] == "too much"
    assert all(i["waited_seconds"] is not None for i in held["items"])
    text = _cli(console_stack, "audit", "report", "--grant", grant.grant.id).stdout
    assert "held for approval: 2 (approved 1, denied 1)" in text and "console:alice" in text
    ocsf = _cli(console_stack, "audit", "export", "--format", "ocsf").stdout.splitlines()
    approvals = [e for e in map(json.loads, ocsf)
                 if e["unmapped"]["event"] == "request_approved"
                 and e["unmapped"].get("grant") == grant.grant.id]
    assert [(e["actor"]["user"]["name"], e["disposition"]) for e in approvals] == [
        ("console:alice", "Approved")]


def test_the_audit_table_fits_1280_px_and_revocations_are_not_denials(
        browser: Browser, console_stack: Stack, tmp_path: Path) -> None:  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        sign_in(page, console_stack, name="alice")
        grant = console_stack.issue("api_key")
        console_stack.revoke(grant.grant.id)
        revoke_by_api = console_stack.issue("api_key")
        requests.post(f"{console_stack.proxy.admin_url}/v1/grants/{revoke_by_api.grant.id}"
                      "/revoke", timeout=10, headers={
                          "Authorization": "Bearer "
                          + console_stack.home.admin_token.read_text().strip(),
                          "X-Broker-Actor": "cleanup-job"}).raise_for_status()
        page.goto(f"{console_stack.proxy.admin_url}/ui/#/audit")
        row = page.locator("#audit tr", has_text=revoke_by_api.grant.id).filter(
            has_text="grant_revoked")
        expect(row).to_be_visible(timeout=10_000)
        expect(row).to_have_class("ended")
        assert "deny-text" not in (row.locator("td").nth(3).get_attribute("class") or "")
        expect(row).to_contain_text("admin-api:cleanup-job")
        overflow = page.evaluate(
            "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert overflow[0] <= overflow[1], f"horizontal overflow at 1280 px: {overflow}"
        screenshot(page, tmp_path, "audit-1280")
    finally:
        context.close()


def test_no_favicon_refusal_and_a_closed_tab_is_no_traceback(
        browser: Browser, console_stack: Stack) -> None:  # noqa: F811
    icon = requests.get(f"{console_stack.proxy.admin_url}/favicon.ico", timeout=10)
    assert icon.status_code == 204
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, console_stack, name="bob")
    page.goto(f"{console_stack.proxy.admin_url}/ui/#/approvals")
    page.wait_for_timeout(1500)  # the approvals page is in its long poll now
    context.close()  # the tab goes away mid-poll
    time.sleep(26)  # the long poll answers (25 s) into the closed connection
    log = (console_stack.root / "proxy.log").read_text(errors="replace")
    assert "Traceback" not in log and "BrokenPipe" not in log
