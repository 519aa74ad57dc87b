"""The console's grant page shows a grant's limits: budget used, in flight and left, its rates and
requests in flight, read from the grant store through the admin API (grants/limits_view.py).

The real proxy in front of the LLM stand-in (llm_upstream.py: 7 output tokens per answer), the
real openai SDK spends part of the budget, then the system Chromium (Playwright) signs in with a
name and opens the grant's page. Screenshot in the test's tmp dir.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from broker_proxy.devtools.browser import find_chromium
from tests.llm_stack import LlmStack, llm_policy, llm_stack_fixture

pytestmark = pytest.mark.e2e

POLICY = llm_policy(head="""\
prices:
  as_of: "2026-12-01"
  models:
    gpt-4o-mini: {{input: 0.15, output: 0.60}}
""", openai="""\
rate: 60/minute
burst: 10
concurrency: 4
budget: {{output_tokens: 100, cost_usd: 5}}
""")
HI = [{"role": "user", "content": "hi"}]


llm = llm_stack_fixture("console-limits", POLICY)


def _admin(stack: LlmStack, path: str) -> dict:
    token = stack.home.admin_token.read_text().strip()
    request = urllib.request.Request(stack.proxy.admin_url + path,
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def test_admin_api_grant_has_limits_and_a_grant_without_none(llm: LlmStack) -> None:
    limited = llm.issue("openai", rates=["30/minute"], cost_usd=["2"])
    sdk = llm.openai(limited.token)
    for _ in range(2):
        sdk.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=20)  # type: ignore[arg-type]
    limits = _admin(llm, f"/v1/grants/{limited.grant.id}")["limits"]
    budget = limits["budget"]["openai"]
    assert budget["output_tokens"] == {"used": 14, "in_flight": 0, "left": 86, "cap": 100}
    assert budget["cost_usd"]["cap"] == 2  # the grant asked for less than the policy's $5
    assert budget["cost_usd"]["left"] == pytest.approx(2 - budget["cost_usd"]["used"])
    assert budget["input_tokens"] == {"used": 22, "in_flight": 0, "left": None, "cap": None}
    assert budget["requests_in_flight"] == 0
    assert limits["rates"] == {"openai": {"policy": "60/minute (burst 10)",
                                          "grant": "30/minute, burst 10"}}
    assert limits["concurrency"] == {"openai": {"cap": 4, "in_flight": 0}}
    plain = llm.issue("anthropic")
    assert "limits" not in _admin(llm, f"/v1/grants/{plain.grant.id}")


def test_console_grant_page_shows_budget_used_and_left(llm: LlmStack, tmp_path: Path) -> None:
    issued = llm.issue("openai")
    llm.openai(issued.token).chat.completions.create(
        model="gpt-4o-mini", messages=HI, max_tokens=20)  # type: ignore[arg-type]
    token = llm.home.admin_token.read_text().strip()
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=find_chromium(), headless=True,
                                             args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(f"{llm.proxy.admin_url}/ui/")
            page.fill("#name", "alice")
            page.fill("#token", token)
            page.click("#sign-in button[type=submit]")
            expect(page.locator("#nav")).to_be_visible()
            page.goto(f"{llm.proxy.admin_url}/ui/#/grants/{issued.grant.id}")
            row = page.locator("#budget tr[data-dimension=output_tokens]")
            expect(row).to_be_visible(timeout=10_000)
            cells = row.locator("td").all_inner_texts()
            cost = page.locator("#budget tr[data-dimension=cost_usd] td").all_inner_texts()
            rates = page.locator("#rates tr[data-secret=openai] td").all_inner_texts()
            flight = page.locator("#concurrency tr[data-secret=openai] td").all_inner_texts()
            width = page.locator("#budget tr[data-dimension=output_tokens] .meter span") \
                .evaluate("e => e.style.width")
            page.screenshot(path=str(tmp_path / "console-grant-limits.png"), full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert cells[:6] == ["openai", "output tokens", "7", "0", "93", "100"]
    assert width == "7%"
    assert cost[1] == "cost (USD)" and cost[5] == "$5" and cost[2].startswith("$0.0000")
    assert rates == ["openai", "60/minute (burst 10)", "the policy's"]
    assert flight == ["openai", "0", "4"]
