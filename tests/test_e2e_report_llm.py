"""`audit report` shows LLM use and cost per grant, agent and model, and refusals by limits.

The log is written by the real proxy in front of the LLM stand-in (llm_upstream.py: 11 input
and 7 output tokens per answer), driven by httpx and the real openai SDK: answers with usage,
one without (charged its whole reservation), a model the policy does not allow, a hosted tool,
a spent budget and a spent rate. The report is read in JSON (checked against the published
schema), text, CSV and HTML (rendered in headless Chromium, screenshot kept in tmp_path).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from broker_proxy.audit.report import REPORT_SCHEMA
from broker_proxy.cli import main
from tests.html_page import opened_html
from tests.llm_stack import LlmStack, llm_policy, running_llm_stack

pytestmark = pytest.mark.e2e

POLICY = llm_policy(head="""\
prices:
  as_of: "2026-12-01"
  models:
    gpt-4o-mini: {{input: 0.15, output: 0.60}}
    "claude-haiku-*": {{input: 1.00, output: 5.00}}
""", openai="""\
models: [gpt-4o-mini]
budget: {{output_tokens: 100, cost_usd: 5}}
""", anthropic="""\
rate: 2/hour
budget: {{output_tokens: 1000, cost_usd: 1}}
""")
OPENAI = "https://api.openai.com/v1/chat/completions"
ANTHROPIC = "https://api.anthropic.com/v1/messages"
HI = [{"role": "user", "content": "hi"}]
SCHEMA = Path(__file__).parents[1] / "broker_proxy/audit/schemas/audit-report.v1.json"


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LlmStack, str, str]]:
    with running_llm_stack(tmp_path_factory, "report-llm", POLICY) as stack:
        first, second = stack.issue("openai", "anthropic"), stack.issue("openai")
        _drive(stack, first.token, second.token)
    yield stack, first.grant.id, second.grant.id


def _drive(stack: LlmStack, first: str, second: str) -> None:
    import openai
    sdk = stack.openai(first)
    for _ in range(2):  # usage reported: 11 + 7 tokens each
        sdk.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=40)  # type: ignore[arg-type]
    # No usage in the answer: charged its whole reservation (40 output tokens).
    sdk.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=40,  # type: ignore[arg-type]
                                extra_headers={"X-Test-No-Usage": "1"})
    with pytest.raises(openai.RateLimitError):  # 54 used + 50 > 100
        sdk.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=50)  # type: ignore[arg-type]
    with stack.http(first) as client:
        refused = client.post(OPENAI, json={"model": "gpt-4.1", "messages": HI, "max_tokens": 5},
                              headers={"Authorization": "Bearer "
                                       "sk-proj-PLACEHOLDER-openai-0000000000"})
        assert refused.status_code == 403 and refused.json()["error"] == "model_not_allowed"
        tool = client.post("https://api.openai.com/v1/responses",
                           json={"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 5,
                                 "tools": [{"type": "web_search"}]},
                           headers={"Authorization": "Bearer "
                                    "sk-proj-PLACEHOLDER-openai-0000000000"})
        assert tool.status_code == 403 and tool.json()["error"] == "hosted_tool_not_allowed"
        statuses = []
        for _ in range(3):  # rate 2/hour: the third is refused
            answer = client.post(ANTHROPIC, json={"model": "claude-haiku-4-5", "max_tokens": 20,
                                                  "messages": HI},
                                 headers={"x-api-key": "sk-ant-PLACEHOLDER-anthropic-00000000",
                                          "anthropic-version": "2023-06-01"})
            statuses.append((answer.status_code, answer.json().get("error")))
        assert statuses[2] == (429, "rate_limited"), statuses
    stack.openai(second).chat.completions.create(model="gpt-4o-mini", messages=HI,  # type: ignore[arg-type]
                                                 max_tokens=10)


DOC = (Path(__file__).parents[1] / "docs" / "limits.md").read_text()


def _report(stack: LlmStack, fmt: str, out: Path) -> str:
    if fmt in ("json", "html"):  # the commands docs/limits.md shows
        assert f"broker-proxy audit report --format {fmt} -o report.{fmt}" in DOC
    assert main(["--home", str(stack.home.root), "audit", "report", "--format", fmt,
                 "-o", str(out)]) == 0
    return out.read_text()


def _charged(stack: LlmStack, grant_id: str) -> dict[str, float]:
    """USD per model as the proxy's own response records say, the report's source of truth."""
    charged: dict[str, float] = {}
    for line in stack.home.audit_log.read_text().splitlines():
        record = json.loads(line)
        if record.get("grant") == grant_id and record.get("event") == "response" \
                and "cost_usd" in record:
            charged[record["model"]] = charged.get(record["model"], 0.0) + record["cost_usd"]
    return charged


def _grant(data: dict[str, Any], grant_id: str) -> dict[str, Any]:
    [grant] = [g for g in data["grants"] if g["id"] == grant_id]
    return grant


def test_json_report_has_llm_use_per_grant_agent_and_model(
        llm: tuple[LlmStack, str, str], tmp_path: Path) -> None:
    stack, first_id, second_id = llm
    assert main(["--home", str(stack.home.root), "audit", "verify"]) == 0
    data = json.loads(_report(stack, "json", tmp_path / "r.json"))
    jsonschema.validate(data, json.loads(SCHEMA.read_text()))
    assert data["schema"] == REPORT_SCHEMA and data["integrity_ok"]
    first = _grant(data, first_id)["llm"]
    by_model = {row["model"]: row for row in first["by_model"]}
    gpt = by_model["gpt-4o-mini"]
    assert gpt["requests"] == 3 and gpt["usage_unreadable"] == 1
    assert gpt["output_tokens"] == 7 + 7 + 40
    assert gpt["input_tokens"] > 22  # 11 + 11 + the unreadable answer's body-length reservation
    charged = _charged(stack, first_id)
    assert gpt["cost_usd"] == pytest.approx(charged["gpt-4o-mini"])
    assert gpt["cost_usd"] == pytest.approx(  # the proxy rounds each charge up to a micro-dollar
        gpt["input_tokens"] * 0.15e-6 + gpt["output_tokens"] * 0.60e-6, abs=3e-6)
    claude = by_model["claude-haiku-4-5"]
    assert (claude["requests"], claude["input_tokens"], claude["output_tokens"],
            claude["usage_unreadable"]) == (2, 22, 14, 0)
    assert claude["cost_usd"] == pytest.approx(charged["claude-haiku-4-5"])
    assert claude["cost_usd"] == pytest.approx(22 * 1e-6 + 14 * 5e-6, abs=2e-6)
    assert first["requests"] == 5 and first["usage_unreadable"] == 1
    assert first["limit_refusals"] == {"rate_limited": 1, "budget_exhausted": 1,
                                       "model_not_allowed": 1, "hosted_tool_not_allowed": 1}
    refused = {r["reason"]: r["count"] for r in _grant(data, first_id)["refusals"]}
    assert {k: refused[k] for k in first["limit_refusals"]} == first["limit_refusals"]
    second = _grant(data, second_id)["llm"]
    assert (second["requests"], second["output_tokens"], second["limit_refusals"]) == (1, 7, {})
    [agent] = data["summary"]["llm_agents"]
    assert agent["agent"] == "bot" and agent["requests"] == 6
    assert agent["output_tokens"] == 54 + 14 + 7
    assert agent["cost_usd"] == pytest.approx(first["cost_usd"] + second["cost_usd"])
    assert agent["limit_refusals"]["rate_limited"] == 1
    models = {row["model"]: row for row in data["summary"]["llm_models"]}
    assert models["gpt-4o-mini"]["grants"] == 2 and models["gpt-4o-mini"]["requests"] == 4
    assert models["claude-haiku-4-5"]["grants"] == 1


def test_text_and_csv_report_show_the_same_use(
        llm: tuple[LlmStack, str, str], tmp_path: Path) -> None:
    stack, first_id, _ = llm
    text = _report(stack, "text", tmp_path / "r.txt")
    assert "LLM USE PER AGENT" in text and "LLM USE PER MODEL" in text
    assert "llm: 5 request(s)" in text and "usage unreadable: 1" in text
    assert ("refused by limits: rate_limited x1, budget_exhausted x1, model_not_allowed x1, "
            "hosted_tool_not_allowed x1") in text
    rows = list(csv.DictReader(io.StringIO(
        _report(stack, "csv", tmp_path / "r.csv").split("\n", 1)[1])))
    llm_rows = [r for r in rows if r["section"] == "llm" and r["grant"] == first_id]
    assert {r["detail"].split()[0] for r in llm_rows} == {"model=gpt-4o-mini",
                                                          "model=claude-haiku-4-5"}
    assert any("usage_unreadable=1" in r["detail"] for r in llm_rows)
    assert [r["count"] for r in rows if r["section"] == "llm_agent"] == ["6"]
    assert {r["detail"].split()[0] for r in rows if r["section"] == "llm_model"} == {
        "model=gpt-4o-mini", "model=claude-haiku-4-5"}


def test_html_report_shows_llm_use_in_chromium(
        llm: tuple[LlmStack, str, str], tmp_path: Path) -> None:
    stack, _, _ = llm
    out = tmp_path / "report.html"
    _report(stack, "html", out)
    problems: list[str] = []
    with opened_html(out, problems) as page:
        overflow = page.evaluate("document.documentElement.scrollWidth - innerWidth")
        section = page.locator("#llm").inner_text()
        text = page.inner_text("body")
        page.locator("#llm").scroll_into_view_if_needed()
        page.screenshot(path=str(tmp_path / "report-llm.png"), full_page=True)
    assert problems == []
    assert overflow <= 0
    assert section == "LLM use and cost"
    assert "claude-haiku-4-5" in text and "usage unreadable" in text
    assert "Refused by limits: rate_limited x1, budget_exhausted x1" in text
    assert "None" not in text
    assert (tmp_path / "report-llm.png").stat().st_size > 1000
