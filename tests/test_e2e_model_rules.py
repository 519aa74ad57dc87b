"""LLM rules through the real proxy: a secret's ``models`` globs, read from the body (OpenAI,
Anthropic, with their SDKs) or the path (Gemini's REST shape, Azure deployments), and its
``hosted_tools``; any other model is refused with 403 model_not_allowed, any other vendor-run
tool with 403 hosted_tool_not_allowed, and nothing reaches the upstream."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from broker_proxy.request.model_rules import UnreadableModel, requested_models
from broker_proxy.request.outbound import OutboundRequest
from tests.llm_stack import GEMINI, PLACEHOLDERS, LlmStack, llm_policy, llm_stack_fixture

if TYPE_CHECKING:
    import anthropic
    import openai

pytestmark = pytest.mark.e2e

POLICY = llm_policy(openai="""\
models: ["gpt-4o-mini", "gpt-4.1-*"]
hosted_tools: [web_search]
""", anthropic='models: ["claude-haiku-*"]\n', gemini='models: ["gemini-2.0-flash"]\n')


llm = llm_stack_fixture("models", POLICY, check_leaks=True)


@pytest.fixture(autouse=True)
def _clear(llm: LlmStack) -> None:
    llm.upstream.clear()


def _refusal(error: openai.APIStatusError | anthropic.APIStatusError) -> dict:
    assert error.status_code == 403
    return error.response.json()


def test_openai_sdk_allowed_model_goes_through(llm: LlmStack) -> None:
    client = llm.openai(llm.issue().token)
    answer = client.chat.completions.create(model="gpt-4.1-nano",
                                            messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "ok"
    assert llm.carried("openai") == 1


def test_openai_sdk_other_model_is_refused_and_nothing_is_sent(llm: LlmStack) -> None:
    import openai
    client = llm.openai(llm.issue().token)
    with pytest.raises(openai.PermissionDeniedError) as raised:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user",
                                                                 "content": "hi"}])
    body = _refusal(raised.value)
    assert body["error"] == "model_not_allowed" and '"gpt-4o"' in body["message"]
    with pytest.raises(openai.PermissionDeniedError):
        client.responses.create(model="o3", input="hi")
    assert llm.upstream.requests == []


def test_anthropic_sdk_models_are_checked(llm: LlmStack) -> None:
    import anthropic
    client = llm.anthropic(llm.issue().token)
    ok = client.messages.create(model="claude-haiku-4-5", max_tokens=10,
                                messages=[{"role": "user", "content": "hi"}])
    assert ok.content[0].text == "ok"  # type: ignore[union-attr]
    with pytest.raises(anthropic.PermissionDeniedError) as raised:
        client.messages.create(model="claude-opus-4-1", max_tokens=10,
                               messages=[{"role": "user", "content": "hi"}])
    assert _refusal(raised.value)["error"] == "model_not_allowed"
    assert llm.carried("anthropic") == 1


@pytest.mark.parametrize(("path", "status"), [
    ("/v1beta/models/gemini-2.0-flash:generateContent", 200),
    ("/v1beta/models/gemini-2.0-flash:streamGenerateContent", 200),
    ("/v1beta/models/gemini-2.5-pro:generateContent", 403),
    ("/v1beta/models/gemini-2.5%2Dpro:generateContent", 403),  # an escape spells the same name
])
def test_gemini_model_is_read_from_the_path(llm: LlmStack, path: str, status: int) -> None:
    with llm.http(llm.issue().token) as client:
        answer = client.post(GEMINI + path, headers={"x-goog-api-key": PLACEHOLDERS["gemini"]},
                             json={"contents": [{"parts": [{"text": "hi"}]}]})
    assert answer.status_code == status, answer.text
    if status == 403:
        assert answer.json()["error"] == "model_not_allowed"
        assert llm.upstream.requests == []


def test_a_body_naming_model_twice_is_refused(llm: LlmStack) -> None:
    body = b'{"model": "gpt-4o-mini", "model": "gpt-4o", "messages": []}'
    with llm.http(llm.issue().token) as client:
        answer = client.post("https://api.openai.com/v1/chat/completions", content=body,
                             headers={"Authorization": f"Bearer {PLACEHOLDERS['openai']}",
                                      "Content-Type": "application/json"})
    assert answer.status_code == 403 and answer.json()["error"] == "model_not_allowed"
    assert llm.upstream.requests == []


def test_audit_records_the_refusals(llm: LlmStack) -> None:
    records = [json.loads(line) for line in llm.home.audit_log.read_text().splitlines()]
    refused = [r for r in records if r.get("reason") == "model_not_allowed"]
    assert refused and all(r["status"] == 403 for r in refused)


def test_anthropic_server_tools_and_mcp_connector_are_refused(llm: LlmStack) -> None:
    import anthropic
    client = llm.anthropic(llm.issue().token)
    for extra in ({"tools": [{"type": "web_search_20250305", "name": "web_search",
                              "max_uses": 3}]},
                  {"tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]},
                  {"extra_body": {"mcp_servers": [{"type": "url", "name": "x",
                                                   "url": "https://mcp.example/sse"}]}}):
        with pytest.raises(anthropic.PermissionDeniedError) as raised:
            client.messages.create(model="claude-haiku-4-5", max_tokens=10,
                                   messages=[{"role": "user", "content": "hi"}],
                                   **extra)  # type: ignore[arg-type]
        assert _refusal(raised.value)["error"] == "hosted_tool_not_allowed"
    # The agent's own tools (executed by its code) are no egress: allowed.
    client.messages.create(model="claude-haiku-4-5", max_tokens=10,
                           messages=[{"role": "user", "content": "hi"}],
                           tools=[{"name": "lookup", "input_schema": {"type": "object"}},
                                  {"type": "bash_20250124", "name": "bash"}])
    assert llm.carried("anthropic") == 1


def test_openai_hosted_tools_only_as_the_policy_lists(llm: LlmStack) -> None:
    import openai
    client = llm.openai(llm.issue().token)
    allowed = client.responses.create(model="gpt-4.1-mini", input="hi",
                                      tools=[{"type": "web_search"},
                                             {"type": "function", "name": "f",
                                              "parameters": {"type": "object"}}])
    assert allowed.output_text == "ok"
    for tool in ({"type": "mcp", "server_label": "x", "server_url": "https://mcp.example"},
                 {"type": "code_interpreter", "container": {"type": "auto"}},
                 {"type": "image_generation"}, {"type": "some_future_tool_20990101"}):
        with pytest.raises(openai.PermissionDeniedError) as raised:
            client.responses.create(model="gpt-4.1-mini", input="hi",
                                    tools=[tool])  # type: ignore[list-item]
        assert _refusal(raised.value)["error"] == "hosted_tool_not_allowed"
    assert llm.carried("openai") == 1


def test_gemini_google_search_is_refused(llm: LlmStack) -> None:
    with llm.http(llm.issue().token) as client:
        answer = client.post(GEMINI + "/v1beta/models/gemini-2.0-flash:generateContent",
                             headers={"x-goog-api-key": PLACEHOLDERS["gemini"]},
                             json={"contents": [{"parts": [{"text": "hi"}]}],
                                   "tools": [{"googleSearch": {}}]})
    assert answer.status_code == 403 and answer.json()["error"] == "hosted_tool_not_allowed"
    assert llm.upstream.requests == []


# -- where the model is read (no proxy needed) -------------------------------------------------


def _request(path: str, body: bytes = b"") -> OutboundRequest:
    return OutboundRequest("POST", "https", "example.test", 443, path, "", (), body)


def test_models_are_read_from_body_and_paths() -> None:
    assert requested_models(_request("/v1/chat/completions", b'{"model": "gpt-4o"}')) == [
        "gpt-4o"]
    assert requested_models(_request(
        "/v1/projects/p/locations/us/publishers/google/models/gemini-2.0-flash:generateContent"
    )) == ["gemini-2.0-flash"]
    assert requested_models(_request(
        "/openai/deployments/my-gpt4/chat/completions", b'{"messages": []}')) == ["my-gpt4"]
    assert requested_models(_request("/v1/models")) == []
    assert requested_models(_request("/v1/files", b"not json, mentions \"model\"")) == []
    with pytest.raises(UnreadableModel):
        requested_models(_request("/v1/chat/completions", b'{"model": ["a", "b"]}'))


def test_a_wrong_models_list_is_reported_at_its_line_and_column() -> None:
    from broker_proxy.policy.loader import PolicyError, load_policy_text

    text = POLICY.format(**PLACEHOLDERS).replace('models: ["claude-haiku-*"]',
                                                 'models: ["claude haiku"]')
    with pytest.raises(PolicyError) as raised:
        load_policy_text(text, "p.yaml")
    assert "p.yaml:13:14: secrets.anthropic.models[0]: a model glob is 1 to 200" in str(
        raised.value)
    empty = POLICY.format(**PLACEHOLDERS).replace('models: ["claude-haiku-*"]', "models: []")
    with pytest.raises(PolicyError, match="must list at least one model"):
        load_policy_text(empty, "p.yaml")
