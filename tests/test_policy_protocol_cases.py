"""`mcp:` and `graphql:` in a policy test case build the request a client would send."""

from __future__ import annotations

import json

import pytest

from broker_proxy.policy_tools.protocol_cases import (
    ProtocolCaseError,
    graphql_request,
    mcp_request,
)


def test_a_tool_call_gets_its_json_rpc_body_and_mcp_headers() -> None:
    headers, body = mcp_request({"tool": "get_issue", "arguments": {"token": "{placeholder}"}})
    assert json.loads(body) == {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                "params": {"name": "get_issue",
                                           "arguments": {"token": "{placeholder}"}}}
    assert headers["Mcp-Method"] == "tools/call" and headers["Mcp-Name"] == "get_issue"
    assert headers["Content-Type"] == "application/json"


def test_prompts_resources_and_bare_methods() -> None:
    assert json.loads(mcp_request({"prompt": "triage"})[1])["method"] == "prompts/get"
    headers, body = mcp_request({"resource": "repo://acme/app", "mcp_headers": False})
    assert json.loads(body)["params"] == {"uri": "repo://acme/app"}
    assert "Mcp-Method" not in headers
    headers, body = mcp_request({"method": "tools/list"})
    assert "params" not in json.loads(body) and "Mcp-Name" not in headers


def test_a_graphql_operation_gets_its_body() -> None:
    headers, body = graphql_request({"query": "query A { x }", "operation_name": "A",
                                     "variables": {"n": 1}})
    assert json.loads(body) == {"query": "query A { x }", "operationName": "A",
                                "variables": {"n": 1}}
    assert headers == {"Content-Type": "application/json"}
    assert json.loads(graphql_request({"persisted": "abc"})[1]) == {
        "extensions": {"persistedQuery": {"version": 1, "sha256Hash": "abc"}}}


@pytest.mark.parametrize("spec", [{}, {"tool": "a", "prompt": "b"}, {"tool": 3},
                                  {"name": "x"}, {"tool": "a", "params": {}}, "tools/list"])
def test_a_call_that_cannot_be_built_is_an_error(spec: object) -> None:
    with pytest.raises(ProtocolCaseError, match=r"^mcp: "):
        mcp_request(spec)
