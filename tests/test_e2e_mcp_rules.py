"""MCP rules through the real proxy, with the real `mcp` SDK on both ends (Streamable HTTP).

An allowed tool is called with the real credential injected; a denied tool is refused with
403 mcp_tool_not_allowed and nothing reaches the server; Mcp-Method/Mcp-Name headers that
disagree with the body are refused (400 mcp_header_mismatch); a body that is not JSON-RPC is
refused; batches are checked element by element.
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from broker_proxy.devtools.local_pki import LocalPki, write_pki
from broker_proxy.devtools.proxy_process import ProxyProcess
from broker_proxy.grants.issuer import issue_grant
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.home import Home
from broker_proxy.policy.loader import load_policy
from broker_proxy.secrets.master_key import load_or_create_master_key
from broker_proxy.secrets.vault import Vault
from broker_proxy.time_source import utc_now
from tests.conftest import master_key_in_environment, random_master_key
from tests.mcp_upstream import MCP_HOST, McpUpstream, mcp_session, run

pytestmark = pytest.mark.e2e

PLACEHOLDER = "tracker-PLACEHOLDER-0000000000"
POLICY = """\
version: 1
secrets:
  tracker:
    from: vault
    placeholder: "{placeholder}"
    inject: [header, body]
    destinations:
      - host: {host}
        port: {json_port}
        paths: [/mcp]
        mcp:
          tools: {{allow: ["list_*", "get_issue"], deny: ["*delete*"]}}
      - host: {host}
        port: {sse_port}
        paths: [/mcp]
        mcp:
          tools: {{allow: ["list_*", "get_issue"], deny: ["*delete*"]}}
agents:
  bot:
    secrets: [tracker]
network:
  allow_addresses: [127.0.0.0/8]
"""


@dataclass
class McpStack:
    root: Path
    home: Home
    proxy: ProxyProcess
    json_server: McpUpstream
    sse_server: McpUpstream
    value: str
    token: str

    def url(self, server: McpUpstream) -> str:
        return f"https://{MCP_HOST}:{server.port}/mcp"

    def session(self, server: McpUpstream, placeholder: str = PLACEHOLDER):  # type: ignore[no-untyped-def]
        return mcp_session(self.url(server), self.proxy.proxy_url(self.token, "bot"),
                           str(self.proxy.ca_path), {"Authorization": f"Bearer {placeholder}"})

    def post(self, server: McpUpstream, body: bytes, headers: dict[str, str]) -> httpx.Response:
        context = ssl.create_default_context(cafile=str(self.proxy.ca_path))
        with httpx.Client(proxy=self.proxy.proxy_url(self.token, "bot"), verify=context,
                          timeout=20) as client:
            return client.post(self.url(server), content=body, headers={
                "Authorization": f"Bearer {PLACEHOLDER}", "Content-Type": "application/json",
                "Accept": "application/json, text/event-stream", **headers})

    def carried(self, server: McpUpstream) -> int:
        return sum(1 for auth in server.authorizations if auth == f"Bearer {self.value}")


@pytest.fixture(scope="module")
def mcp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpStack]:
    pki: LocalPki = write_pki(tmp_path_factory.mktemp("mcp-pki"), [MCP_HOST])
    json_server = McpUpstream(pki, json_response=True).start()
    sse_server = McpUpstream(pki, json_response=False).start()
    root = tmp_path_factory.mktemp("mcp")
    home = Home(root / "home").ensure()
    env = dict(os.environ, BROKER_PROXY_MASTER_KEY=random_master_key())
    value = "real-tracker-" + secrets.token_urlsafe(24)
    with master_key_in_environment(env["BROKER_PROXY_MASTER_KEY"]):
        Vault(home.vault, load_or_create_master_key(home, create=True)).set("tracker", value)
    policy_file = root / "policy.yaml"
    policy_file.write_text(POLICY.format(placeholder=PLACEHOLDER, host=MCP_HOST,
                                         json_port=json_server.port,
                                         sse_port=sse_server.port))
    proxy = ProxyProcess(home.root, policy_file, upstream_ca=pki.ca_cert_path, env=env,
                         resolve={MCP_HOST: "127.0.0.1"},
                         log_path=root / "proxy.log").start()
    store = SqliteGrantStore(home.grants_db)
    try:
        grant = issue_grant(load_policy(policy_file), store, agent="bot", task="mcp e2e",
                            secrets=["tracker"], ttl=None, max_uses=None, now=utc_now(),
                            proxy_url_base=proxy.info["listen"])
    finally:
        store.close()
    stack = McpStack(root, home, proxy, json_server, sse_server, value, grant.token)
    yield stack
    proxy.stop()
    json_server.stop()
    sse_server.stop()
    written = home.audit_log.read_text() + (root / "proxy.log").read_text()
    assert value not in written


@pytest.fixture(autouse=True)
def _clear(mcp: McpStack) -> None:
    mcp.json_server.clear()
    mcp.sse_server.clear()


def _audit(mcp: McpStack) -> list[dict[str, object]]:
    return [json.loads(line) for line in mcp.home.audit_log.read_text().splitlines()]


@pytest.mark.parametrize("which", ["json", "sse"])
def test_an_allowed_tool_is_called_with_the_real_credential(mcp: McpStack, which: str) -> None:
    server = mcp.json_server if which == "json" else mcp.sse_server

    async def call() -> str:
        async with mcp.session(server) as session:
            result = await session.call_tool("get_issue", {"number": 7})
            return result.content[0].text  # type: ignore[union-attr]

    assert run(call()) == "issue #7: crash on start"
    assert server.received('"get_issue"')
    # Every request of the session (initialize, notifications, the call) carried the value.
    assert mcp.carried(server) == len(server.authorizations) >= 3


@pytest.mark.parametrize("which", ["json", "sse"])
def test_a_denied_tool_is_refused_and_never_reaches_the_server(mcp: McpStack,
                                                               which: str) -> None:
    server = mcp.json_server if which == "json" else mcp.sse_server

    async def call() -> None:
        async with mcp.session(server) as session:
            await session.call_tool("delete_repository", {"name": "acme/app"})

    # The SDK turns the proxy's 403 into an error of the call: no result, no fallback.
    with pytest.raises(ExceptionGroup) as raised:
        run(call())
    from mcp.shared.exceptions import MCPError
    assert raised.group_contains(MCPError)
    assert server.received('"initialize"')  # the session was made
    assert not server.received("delete_repository")
    refusals = [r for r in _audit(mcp) if r.get("reason") == "mcp_tool_not_allowed"]
    assert refusals and refusals[-1]["decision"] == "deny"
    # The record names the call it refused.
    assert (refusals[-1]["mcp_method"], refusals[-1]["mcp_name"]) == ("tools/call",
                                                                      "delete_repository")


def test_a_placeholder_in_an_allowed_call_is_injected(mcp: McpStack) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "get_issue", "arguments": {"number": 3,
                                                                     "_token": PLACEHOLDER}}})
    mcp.post(mcp.json_server, body.encode(), {"Mcp-Method": "tools/call",
                                              "Mcp-Name": "get_issue"})
    assert mcp.json_server.received(mcp.value)  # headers and arguments both swapped
    assert mcp.carried(mcp.json_server) == 1
    used = [r for r in _audit(mcp) if r["event"] == "request" and r["decision"] == "allow"]
    assert (used[-1]["mcp_method"], used[-1]["mcp_name"]) == ("tools/call", "get_issue")


def test_the_refusal_names_a_stable_code_and_nothing_is_sent(mcp: McpStack) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "delete_repository",
                                  "arguments": {"name": PLACEHOLDER}}}).encode()
    answer = mcp.post(mcp.json_server, body, {})
    assert answer.status_code == 403
    assert answer.json()["error"] == "mcp_tool_not_allowed"
    assert mcp.json_server.authorizations == []


def test_headers_that_disagree_with_the_body_are_refused(mcp: McpStack) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "delete_repository", "arguments": {}}}).encode()
    # The header names an allowed tool, the body a denied one: refused before the rules.
    answer = mcp.post(mcp.json_server, body, {"Mcp-Method": "tools/call",
                                              "Mcp-Name": "get_issue"})
    assert answer.status_code == 400
    assert answer.json()["error"] == "mcp_header_mismatch"
    answer = mcp.post(mcp.json_server, body.replace(b"delete_repository", b"get_issue"),
                      {"Mcp-Method": "tools/list"})
    assert answer.status_code == 400
    assert answer.json()["error"] == "mcp_header_mismatch"
    assert mcp.json_server.authorizations == []


@pytest.mark.parametrize("body", [
    b"not json",
    b'{"id": 1, "method": "tools/call", "params": {"name": "get_issue"}}',  # no "jsonrpc"
    b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}}',  # no tool name
    # Two "name"s: one parser reads the first, another the last.
    b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", '
    b'"params": {"name": "get_issue", "name": "delete_repository"}}',
])
def test_a_body_that_is_not_json_rpc_is_refused(mcp: McpStack, body: bytes) -> None:
    answer = mcp.post(mcp.json_server, body, {})
    assert answer.status_code == 400
    assert answer.json()["error"] == "mcp_invalid_request"
    assert mcp.json_server.authorizations == []


def test_batches_are_checked_element_by_element(mcp: McpStack) -> None:
    allowed = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
               "params": {"name": "list_issues", "arguments": {}}}
    denied = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
              "params": {"name": "delete_repository", "arguments": {"name": "x"}}}
    old = {"Mcp-Protocol-Version": "2025-03-26"}
    answer = mcp.post(mcp.json_server, json.dumps([allowed, denied]).encode(), old)
    assert answer.status_code == 403
    assert answer.json()["error"] == "mcp_tool_not_allowed"
    assert _audit(mcp)[-1]["mcp_calls"] == ["tools/call list_issues",
                                            "tools/call delete_repository"]
    exported = httpx.get(mcp.proxy.metrics_url, timeout=10).text
    assert 'broker_protocol_checks_total{action="tools/call",outcome="refused",' \
           'protocol="mcp"}' in exported
    # A version without batches: refused as such, whatever the elements.
    answer = mcp.post(mcp.json_server, json.dumps([allowed]).encode(),
                      {"Mcp-Protocol-Version": "2025-06-18"})
    assert answer.status_code == 400
    assert answer.json()["error"] == "mcp_invalid_request"
    assert mcp.json_server.authorizations == []


@pytest.mark.parametrize("which", ["json", "sse"])
def test_tools_list_offers_only_the_tools_the_rules_allow(mcp: McpStack, which: str) -> None:
    server = mcp.json_server if which == "json" else mcp.sse_server

    async def listed() -> list[str]:
        async with mcp.session(server) as session:
            return sorted(tool.name for tool in (await session.list_tools()).tools)

    assert run(listed()) == ["get_issue", "list_issues"]  # delete_repository left out
    assert server.received('"tools/list"')


def test_a_raw_tools_list_answer_is_filtered_too(mcp: McpStack) -> None:
    body = {"jsonrpc": "2.0", "id": 9, "method": "tools/list", "params": {}}
    # A stateless-looking POST: the server wants a session, so make one first.
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"}}}
    first = mcp.post(mcp.sse_server, json.dumps(init).encode(), {})
    session = first.headers.get("mcp-session-id")
    headers = {"Mcp-Session-Id": session} if session else {}
    answer = mcp.post(mcp.sse_server, json.dumps(body).encode(), headers)
    assert answer.status_code == 200, answer.text
    assert "delete_repository" not in answer.text and "get_issue" in answer.text
