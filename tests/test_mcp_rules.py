"""MCP rules: the policy fields (FILE:LINE:COL errors, the JSON Schema) and the JSON-RPC reading
of decision/mcp_rules.py, without a proxy (tests/test_e2e_mcp_rules.py runs the real one)."""

from __future__ import annotations

import base64
import json
import textwrap

import jsonschema
import pytest
import yaml

from broker_proxy.decision.mcp_rules import (
    MCP_HEADER_MISMATCH,
    MCP_INVALID_REQUEST,
    MCP_PROMPT_NOT_ALLOWED,
    MCP_RESOURCE_NOT_ALLOWED,
    MCP_TOOL_NOT_ALLOWED,
    McpCall,
    McpRefusal,
    call_problem,
    read_calls,
)
from broker_proxy.policy.loader import PolicyError, load_policy_text
from broker_proxy.policy.protocol_rules import McpRules, NameRule
from broker_proxy.policy.schema import policy_json_schema
from broker_proxy.request.outbound import OutboundRequest

POLICY = """\
version: 1
secrets:
  tracker:
    from: env:TRACKER
    destinations:
      - host: mcp.example.com
        paths: [/mcp]
        mcp:
{rules}
agents:
  bot: {{secrets: [tracker]}}
"""


def policy(rules: str) -> str:
    return POLICY.format(rules=textwrap.indent(textwrap.dedent(rules).strip("\n"), " " * 10))


def test_rules_are_compiled_at_load() -> None:
    loaded = load_policy_text(policy("""
        tools: {allow: ["list_*", get_issue], deny: ["*delete*"]}
        methods: {deny: ["sampling/*"]}
        resources: {allow: ["repo://acme/*"]}
    """))
    rules = loaded.secrets["tracker"].destinations[0].mcp
    assert rules is not None and rules.tools is not None and rules.prompts is None
    assert rules.tools.permits("list_issues") and rules.tools.permits("get_issue")
    assert not rules.tools.permits("list_then_delete") and not rules.tools.permits("Get_issue")
    assert rules.methods is not None and not rules.methods.permits("sampling/createMessage")
    jsonschema.validate(yaml.safe_load(policy("tools: {allow: [a]}")), policy_json_schema())


@pytest.mark.parametrize(("rules", "expected"), [
    ("tool: {allow: [a]}", '9:11: secrets.tracker.destinations[0].mcp.tool: unknown field'),
    ("tools: {}", "9:18: secrets.tracker.destinations[0].mcp.tools: name allow or deny"),
    ("tools: {allow: [\"\"]}", "9:27: secrets.tracker.destinations[0].mcp.tools.allow[0]: "
                               'invalid tool glob ""'),
    ("tools: {allow: get_issue}", "9:26: secrets.tracker.destinations[0].mcp.tools.allow: "),
    ("tools: [get_issue]", "9:18: secrets.tracker.destinations[0].mcp.tools: "),
])
def test_mistakes_are_reported_with_file_line_and_column(rules: str, expected: str) -> None:
    with pytest.raises(PolicyError) as raised:
        load_policy_text(policy(rules), source="p.yaml")
    shown = [str(issue) for issue in raised.value.issues]
    assert any(line.startswith(f"p.yaml:{expected}") for line in shown), shown
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(yaml.safe_load(policy(rules)), policy_json_schema())


def post(body: object, headers: dict[str, str] | None = None) -> OutboundRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return OutboundRequest("POST", "https", "mcp.example.com", 443, "/mcp", "",
                           tuple((headers or {}).items()), raw)


def call(method: str, **params: object) -> dict[str, object]:
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}


def test_the_body_names_the_call() -> None:
    assert read_calls(post(call("tools/call", name="get_issue"))) == [
        McpCall("tools/call", "get_issue")]
    assert read_calls(post(call("resources/read", uri="repo://a"))) == [
        McpCall("resources/read", "repo://a")]
    # A response to a server's request carries no call; a notification does.
    assert read_calls(post({"jsonrpc": "2.0", "id": 4, "result": {}})) == []
    assert read_calls(post({"jsonrpc": "2.0", "method": "notifications/initialized"})) == [
        McpCall("notifications/initialized", None)]
    # GET (the server's stream) and DELETE (end of session) have no body to read.
    get = OutboundRequest("GET", "https", "mcp.example.com", 443, "/mcp", "", ())
    assert read_calls(get) == []


def test_headers_must_name_what_the_body_names() -> None:
    body = call("tools/call", name="naïve tool")
    encoded = "=?base64?" + base64.b64encode("naïve tool".encode()).decode() + "?="
    assert read_calls(post(body, {"Mcp-Method": "tools/call", "Mcp-Name": encoded})) == [
        McpCall("tools/call", "naïve tool")]
    for headers in ({"Mcp-Method": "tools/list"}, {"Mcp-Name": "other"},
                    {"Mcp-Method": "tools/call", "Mcp-Name": "=?base64?!!?="},
                    {"Mcp-Tool-Name": "other"}):
        refused = read_calls(post(body, headers))
        assert isinstance(refused, McpRefusal) and refused.code == MCP_HEADER_MISMATCH, headers
    twice = post(body, {"Mcp-Method": "tools/call"})
    twice = OutboundRequest(**{**{f: getattr(twice, f) for f in twice.__slots__},
                               "headers": (("Mcp-Method", "tools/call"),
                                           ("mcp-method", "tools/call"))})
    refused = read_calls(twice)
    assert isinstance(refused, McpRefusal) and refused.code == MCP_HEADER_MISMATCH


@pytest.mark.parametrize("body", [
    b"", b"[]", b"{}", b'"tools/call"', b'{"jsonrpc": "1.0", "method": "x"}',
    b'{"jsonrpc": "2.0", "method": 7}', b'{"jsonrpc": "2.0", "id": 1}',
    b'{"jsonrpc": "2.0", "method": "tools/call", "params": {"name": 3}}',
    b'{"jsonrpc": "2.0", "method": "tools/call", "method": "tools/list"}',
    b"[" * 100 + b"]" * 100,
])
def test_what_is_not_json_rpc_is_refused(body: bytes) -> None:
    refused = read_calls(post(body))
    assert isinstance(refused, McpRefusal) and refused.code == MCP_INVALID_REQUEST


def test_batches_are_read_element_by_element_where_the_version_has_them() -> None:
    batch = [call("tools/call", name="a"), call("prompts/get", name="b")]
    assert read_calls(post(batch)) == [McpCall("tools/call", "a"), McpCall("prompts/get", "b")]
    assert read_calls(post(batch, {"MCP-Protocol-Version": "2025-03-26"})) == [
        McpCall("tools/call", "a"), McpCall("prompts/get", "b")]
    for headers in ({"MCP-Protocol-Version": "2025-06-18"}, {"Mcp-Method": "tools/call"}):
        refused = read_calls(post(batch, headers))
        assert isinstance(refused, McpRefusal) and refused.code == MCP_INVALID_REQUEST


def test_the_rules_refuse_by_kind() -> None:
    rules = McpRules(tools=NameRule.of(("get_*",), ()), resources=NameRule.of((), ("secret://*",)),
                     prompts=NameRule.of(("triage",), ()))
    assert call_problem(McpCall("tools/call", "get_issue"), rules, "s") is None
    assert call_problem(McpCall("tools/list", None), rules, "s") is None
    for found, code in ((McpCall("tools/call", "drop"), MCP_TOOL_NOT_ALLOWED),
                        (McpCall("resources/read", "secret://x"), MCP_RESOURCE_NOT_ALLOWED),
                        (McpCall("prompts/get", "other"), MCP_PROMPT_NOT_ALLOWED)):
        refused = call_problem(found, rules, "s")
        assert refused is not None and refused.status == 403 and refused.code == code


def test_list_answers_keep_what_the_rules_allow() -> None:
    from broker_proxy.decision.mcp_lists import filter_answer
    rules = McpRules(tools=NameRule.of(("get_*",), ()), resources=NameRule.of((), ("secret:*",)))
    answer = {"jsonrpc": "2.0", "id": 2, "result": {
        "tools": [{"name": "get_issue"}, {"name": "drop_table"}, {"title": "no name"}],
        "resources": [{"uri": "repo://a"}, {"uri": "secret://b"}],
        "resourceTemplates": [{"uriTemplate": "secret:{x}"}]}}
    body, removed = filter_answer(json.dumps(answer).encode(), "application/json", rules)
    assert removed == 4
    assert json.loads(body)["result"] == {"tools": [{"name": "get_issue"}],
                                          "resources": [{"uri": "repo://a"}],
                                          "resourceTemplates": []}
    sse = (b"event: message\r\nid: 1\r\ndata: " + json.dumps(answer).encode() + b"\r\n\r\n"
           b": keep-alive\r\n\r\n")
    body, removed = filter_answer(sse, "text/event-stream; charset=utf-8", rules)
    assert removed == 4 and b"drop_table" not in body and b"get_issue" in body
    assert body.startswith(b"event: message\r\nid: 1\r\ndata: {")
    assert body.endswith(b"\r\n\r\n: keep-alive\r\n\r\n")
    untouched = json.dumps({"jsonrpc": "2.0", "id": 3, "result": {"content": []}}).encode()
    assert filter_answer(untouched, "application/json", rules) == (untouched, 0)
