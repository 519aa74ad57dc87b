"""Hosted tools allowed on terms through the real proxy, with the real anthropic and openai SDKs.

A secret's ``hosted_tools: {web_search: {allowed_domains: [...], max_uses: N}}`` lets the
request through with the allow-list and use cap written into the tool definition the vendor
reads (asserted on what the local upstream received), alongside the placeholder swap and a
budget's default max_tokens; a request naming other domains is refused with 403
hosted_tool_not_allowed and nothing reaches the upstream.
"""

from __future__ import annotations

import json

import pytest

from broker_proxy.decision.hosted_tool_rules import ToolTermsRefused, apply_tool_rules
from broker_proxy.policy.loader import PolicyError, load_policy_text
from broker_proxy.policy.model import HostedToolRule
from tests.llm_stack import PLACEHOLDERS, LlmStack, llm_policy, llm_stack_fixture

pytestmark = pytest.mark.e2e

POLICY = llm_policy(openai="""\
hosted_tools:
  web_search: {{allowed_domains: [python.org, example.com]}}
  file_search:
""", anthropic="""\
budget: {{output_tokens: 100000, default_max_tokens: 64}}
hosted_tools:
  web_search: {{allowed_domains: [docs.python.org], max_uses: 3}}
  web_fetch: {{max_uses: 2}}
""", gemini="hosted_tools: [web_search]\n")


llm = llm_stack_fixture("tools", POLICY, check_leaks=True)


@pytest.fixture(autouse=True)
def _clear(llm: LlmStack) -> None:
    llm.upstream.clear()


def _sent(llm: LlmStack) -> dict:
    """The one request body the upstream received, as JSON."""
    assert len(llm.upstream.requests) == 1
    return json.loads(llm.upstream.requests[0].body)


def test_anthropic_web_search_gets_the_policy_allow_list_and_cap(llm: LlmStack) -> None:
    client = llm.anthropic(llm.issue().token)
    answer = client.messages.create(
        model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}],
        max_tokens=10, tools=[{"type": "web_search_20250305", "name": "web_search",
                               "max_uses": 10}])
    assert answer.content[0].type == "text"
    sent = _sent(llm)
    assert sent["tools"] == [{"type": "web_search_20250305", "name": "web_search",
                              "max_uses": 3, "allowed_domains": ["docs.python.org"]}]
    assert llm.carried("anthropic") == 1  # the placeholder was swapped in the rewritten body
    assert PLACEHOLDERS["anthropic"] not in llm.upstream.requests[0].body.decode()


def test_anthropic_terms_and_budget_default_are_both_written(llm: LlmStack) -> None:
    # No max_tokens of its own (sent raw: the SDK insists on it): the budget writes 64 too.
    with llm.http(llm.issue().token) as client:
        answer = client.post("https://api.anthropic.com/v1/messages", headers={
            "x-api-key": PLACEHOLDERS["anthropic"], "anthropic-version": "2023-06-01"},
            json={"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}],
                  "tools": [{"type": "web_fetch_20250910", "name": "web_fetch",
                             "allowed_domains": ["anywhere.example"]},
                            {"type": "web_search_20250305", "name": "web_search",
                             "allowed_domains": ["sub.docs.python.org/3/"], "max_uses": 1}]})
    assert answer.status_code == 200, answer.text
    sent = _sent(llm)
    assert sent["max_tokens"] == 64
    assert sent["tools"] == [
        {"type": "web_fetch_20250910", "name": "web_fetch", "allowed_domains":
         ["anywhere.example"], "max_uses": 2},  # no domain rule for web_fetch: kept as asked
        {"type": "web_search_20250305", "name": "web_search",  # a subdomain, fewer uses: kept
         "allowed_domains": ["sub.docs.python.org/3/"], "max_uses": 1}]
    assert int(llm.upstream.requests[0].header("content-length") or 0) == len(
        llm.upstream.requests[0].body)
    assert llm.carried("anthropic") == 1


def test_anthropic_domains_outside_the_allow_list_are_refused(llm: LlmStack) -> None:
    import anthropic
    client = llm.anthropic(llm.issue().token)
    for tool in ({"type": "web_search_20250305", "name": "web_search",
                  "allowed_domains": ["docs.python.org", "evil.example"]},
                 {"type": "web_search_20250305", "name": "web_search",
                  "blocked_domains": ["evil.example"]},
                 {"type": "web_search_20250305", "name": "web_search",
                  "allowed_domains": ["python.org"]}):  # the parent domain is wider
        with pytest.raises(anthropic.PermissionDeniedError) as raised:
            client.messages.create(model="claude-haiku-4-5", max_tokens=10,
                                   messages=[{"role": "user", "content": "hi"}],
                                   tools=[tool])  # type: ignore[list-item]
        body = raised.value.response.json()
        assert body["error"] == "hosted_tool_not_allowed"
    assert "evil.example" in body["message"] or "python.org" in body["message"]
    assert llm.upstream.requests == []


def test_openai_web_search_gets_filters_allowed_domains(llm: LlmStack) -> None:
    client = llm.openai(llm.issue().token)
    answer = client.responses.create(model="gpt-4.1-mini", input="hi",
                                     tools=[{"type": "web_search",
                                             "search_context_size": "low"}])
    assert answer.output_text == "ok"
    assert _sent(llm)["tools"] == [{"type": "web_search", "search_context_size": "low",
                                    "filters": {"allowed_domains":
                                                ["example.com", "python.org"]}}]
    assert llm.carried("openai") == 1
    llm.upstream.clear()
    client.responses.create(model="gpt-4.1-mini", input="hi", tools=[
        {"type": "web_search", "filters": {"allowed_domains": ["docs.python.org"]}},
        {"type": "file_search", "vector_store_ids": ["vs_1"]}])  # listed plainly: as-is
    assert _sent(llm)["tools"] == [
        {"type": "web_search", "filters": {"allowed_domains": ["docs.python.org"]}},
        {"type": "file_search", "vector_store_ids": ["vs_1"]}]


def test_openai_tools_that_cannot_carry_the_terms_are_refused(llm: LlmStack) -> None:
    import openai
    client = llm.openai(llm.issue().token)
    for call in (
            lambda: client.responses.create(model="gpt-4.1-mini", input="hi", tools=[
                {"type": "web_search", "filters": {"allowed_domains": ["evil.example"]}}]),
            lambda: client.responses.create(model="gpt-4.1-mini", input="hi",
                                            tools=[{"type": "web_search_preview"}]),
            lambda: client.chat.completions.create(
                model="gpt-4o-search-preview", web_search_options={},
                messages=[{"role": "user", "content": "hi"}])):
        with pytest.raises(openai.PermissionDeniedError) as raised:
            call()
        assert raised.value.response.json()["error"] == "hosted_tool_not_allowed"
    assert llm.upstream.requests == []


def test_the_refusals_are_audited(llm: LlmStack) -> None:
    records = [json.loads(line) for line in llm.home.audit_log.read_text().splitlines()]
    reasons = [r.get("reason") for r in records if r.get("event") == "request"]
    assert "hosted_tool_not_allowed" in reasons


# -- the policy form and the rewriting (no proxy needed) ----------------------------------------


def test_the_mapping_form_loads_and_the_list_form_still_does() -> None:
    policy = load_policy_text(POLICY.format(**PLACEHOLDERS), "p.yaml")
    openai_secret = policy.secrets["openai"]
    assert openai_secret.hosted_tools == frozenset({"web_search", "file_search"})
    assert openai_secret.hosted_tool_rules == (
        ("web_search", HostedToolRule(("example.com", "python.org"), None)),)
    assert policy.secrets["gemini"].hosted_tools == frozenset({"web_search"})
    assert policy.secrets["gemini"].hosted_tool_rules == ()


@pytest.mark.parametrize(("replacement", "message"), [
    ("web_fetch: {{allowed_domains: [https://python.org]}}", "a domain in lower case"),
    ("web_fetch: {{max_uses: 0}}", "must be from 1 to 1000"),
    ("mcp: {{max_uses: 2}}", "only written into web_search and web_fetch"),
    ("web_fetch: {{allowed: [python.org]}}", "allowed"),
    ("web_fetch: 3", "hosted_tool"),
])
def test_wrong_terms_are_reported(replacement: str, message: str) -> None:
    text = POLICY.replace("web_fetch: {{max_uses: 2}}", replacement)
    with pytest.raises(PolicyError, match=message):
        load_policy_text(text.format(**PLACEHOLDERS), "p.yaml")


def test_rewriting_is_deterministic_and_keeps_other_fields() -> None:
    rules = {"web_search": HostedToolRule(("python.org",), 4)}
    body = json.dumps({"model": "m", "tools": [
        {"type": "web_search_20260209", "name": "web_search", "user_location": {"city": "Oslo"}},
        {"name": "mine", "input_schema": {}}]}).encode()
    first = apply_tool_rules(body, rules, "s")
    assert first is not None and first == apply_tool_rules(body, rules, "s")
    assert json.loads(first)["tools"][0] == {
        "type": "web_search_20260209", "name": "web_search", "user_location": {"city": "Oslo"},
        "allowed_domains": ["python.org"], "max_uses": 4}
    assert apply_tool_rules(first, rules, "s") is None  # already within the terms
    with pytest.raises(ToolTermsRefused, match="use cap"):
        apply_tool_rules(b'{"tools": [{"type": "web_search"}]}', rules, "s")


def test_the_published_schema_takes_both_forms_and_refuses_wrong_terms() -> None:
    import jsonschema
    import yaml

    from broker_proxy.policy.schema import policy_json_schema

    validator = jsonschema.Draft202012Validator(policy_json_schema())
    document = yaml.safe_load(POLICY.format(**PLACEHOLDERS))
    assert list(validator.iter_errors(document)) == []
    document["secrets"]["openai"]["hosted_tools"]["web_search"]["max_uses"] = 0
    assert list(validator.iter_errors(document))


def test_policy_diff_flags_loosened_terms_as_widening() -> None:
    from broker_proxy.policy.diff import diff_policies

    old = load_policy_text(POLICY.format(**PLACEHOLDERS), "old.yaml")
    looser = load_policy_text(POLICY.replace(
        "allowed_domains: [docs.python.org], max_uses: 3",
        "allowed_domains: [docs.python.org, evil.example], max_uses: 5").replace(
        "web_fetch: {{max_uses: 2}}", "web_fetch:").format(**PLACEHOLDERS), "new.yaml")
    changes = {(c.detail, c.widening) for c in diff_policies(old, looser)}
    assert ("hosted tool web_search: domains evil.example added; max_uses 3 -> 5",
            True) in changes
    assert ("hosted tool web_fetch: allow-list and use cap dropped", True) in changes
    back = {(c.detail, c.widening) for c in diff_policies(looser, old)}
    assert ("hosted tool web_search: terms tightened", False) in back
    assert ("hosted tool web_fetch: terms added", False) in back
