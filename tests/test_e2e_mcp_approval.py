"""Per-tool approval through the real proxy: `mcp.approval.per_request` holds a tools/call of a
listed tool until a person decides, and the preview names the tool and its arguments first.

The real `mcp` SDK is the client, the SDK's server behind local HTTPS the upstream, the admin
API the person (tests/approval_desk_client.py). Other tools of the same server pass unheld."""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from broker_proxy.cli import main
from broker_proxy.devtools.local_pki import LocalPki, write_pki
from broker_proxy.devtools.proxy_process import ProxyProcess
from broker_proxy.grants.issuer import issue_grant
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.home import Home
from broker_proxy.policy.loader import load_policy
from broker_proxy.secrets.master_key import load_or_create_master_key
from broker_proxy.secrets.vault import Vault
from broker_proxy.time_source import utc_now
from tests.approval_desk_client import Approver
from tests.conftest import master_key_in_environment, random_master_key
from tests.mcp_upstream import MCP_HOST, McpUpstream, run
from tests.test_console_browser import browser, screenshot, sign_in  # noqa: F401 (fixture)
from tests.test_e2e_mcp_rules import PLACEHOLDER, McpStack

pytestmark = pytest.mark.e2e

POLICY = """\
version: 1
approval_timeout: 60s
secrets:
  tracker:
    from: vault
    placeholder: "{placeholder}"
    destinations:
      - host: {host}
        port: {port}
        paths: [/mcp]
        mcp:
          tools: {{allow: ["list_*", "get_issue", delete_repository]}}
          approval: {{per_request: ["delete_*"]}}
agents:
  bot:
    secrets: [tracker]
network:
  allow_addresses: [127.0.0.0/8]
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpStack]:
    pki: LocalPki = write_pki(tmp_path_factory.mktemp("mcp-approval-pki"), [MCP_HOST])
    server = McpUpstream(pki, json_response=True).start()
    root = tmp_path_factory.mktemp("mcp-approval")
    home = Home(root / "home").ensure()
    env = dict(os.environ, BROKER_PROXY_MASTER_KEY=random_master_key())
    value = "real-tracker-" + secrets.token_urlsafe(24)
    with master_key_in_environment(env["BROKER_PROXY_MASTER_KEY"]):
        Vault(home.vault, load_or_create_master_key(home, create=True)).set("tracker", value)
    policy_file = root / "policy.yaml"
    policy_file.write_text(POLICY.format(placeholder=PLACEHOLDER, host=MCP_HOST,
                                         port=server.port))
    proxy = ProxyProcess(home.root, policy_file, upstream_ca=pki.ca_cert_path, env=env,
                         resolve={MCP_HOST: "127.0.0.1"}, log_path=root / "proxy.log").start()
    store = SqliteGrantStore(home.grants_db)
    try:
        grant = issue_grant(load_policy(policy_file), store, agent="bot", task="mcp approval",
                            secrets=["tracker"], ttl=None, max_uses=None, now=utc_now(),
                            proxy_url_base=proxy.info["listen"])
    finally:
        store.close()
    yield McpStack(root, home, proxy, server, server, value, grant.token)
    proxy.stop()
    server.stop()
    assert value not in home.audit_log.read_text() + (root / "proxy.log").read_text()


def _grant_id(stack: McpStack) -> str:
    return "_".join(stack.token.split("_")[1:3])  # bpt_g_<id>_<secret> -> g_<id>


def _call(stack: McpStack, tool: str, arguments: dict[str, object]) -> str:
    async def call() -> str:
        async with stack.session(stack.json_server) as session:
            listed = await session.call_tool("get_issue", {"number": 1})  # never held
            assert listed.content
            result = await session.call_tool(tool, arguments)
            return result.content[0].text  # type: ignore[union-attr]
    return str(run(call()))


def test_a_listed_tool_waits_and_the_person_sees_the_tool_and_its_arguments(
        stack: McpStack) -> None:
    approver = Approver(stack)
    with ThreadPoolExecutor(max_workers=1) as pool:
        answer = pool.submit(_call, stack, "delete_repository", {"name": "acme/app"})
        [item] = approver.wait_for(_grant_id(stack))
        time.sleep(0.3)
        assert not answer.done(), "the call waits for the person"
        assert not stack.json_server.received("delete_repository")
        tools = item["preview"]["tools"]
        assert [(t["method"], t["name"]) for t in tools] == [("tools/call", "delete_repository")]
        assert json.loads(tools[0]["arguments"]) == {"name": "acme/app"}
        assert stack.value not in json.dumps(item)
        assert approver.decide(item["id"], "approve").status_code == 200
        answer.result(timeout=30)
    assert stack.json_server.received("delete_repository")
    assert stack.carried(stack.json_server) >= 1
    held = [json.loads(line) for line in stack.home.audit_log.read_text().splitlines()
            if '"held"' in line]
    assert held and (held[-1]["mcp_method"], held[-1]["mcp_name"]) == (
        "tools/call", "delete_repository")


def test_a_denied_tool_call_never_reaches_the_server(stack: McpStack) -> None:
    stack.json_server.clear()
    approver = Approver(stack)
    with ThreadPoolExecutor(max_workers=1) as pool:
        answer = pool.submit(_call, stack, "delete_repository", {"name": "acme/other"})
        [item] = approver.wait_for(_grant_id(stack))
        assert approver.decide(item["id"], "deny", reason="no").status_code == 200
        with pytest.raises(ExceptionGroup) as raised:
            answer.result(timeout=30)
    from mcp.shared.exceptions import MCPError
    assert raised.group_contains(MCPError)
    assert stack.json_server.received('"get_issue"')  # the other tool passed unheld
    assert not stack.json_server.received("delete_repository")


def test_the_console_shows_the_tool_and_its_arguments_before_the_body(
        browser: Browser, stack: McpStack, tmp_path: Path) -> None:  # noqa: F811
    stack.json_server.clear()
    body = json.dumps({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {
        "name": "delete_repository", "arguments": {"name": "acme/console"}}}).encode()
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    try:
        sign_in(page, stack, name="alice")  # type: ignore[arg-type]
        with ThreadPoolExecutor(max_workers=1) as pool:
            answer = pool.submit(stack.post, stack.json_server, body, {})
            card = page.locator(".held", has_text=_grant_id(stack))
            expect(card).to_have_count(1, timeout=15_000)
            expect(card.locator(".label.tool")).to_have_text("MCP tools/call delete_repository")
            expect(card.locator("pre.arguments")).to_contain_text('"name": "acme/console"')
            # The call comes before the body and the headers: it is what the person judges.
            order = card.evaluate("""c => [...c.querySelectorAll('.label.tool, pre.body')]
                                           .map(e => e.className)""")
            assert order[0] == "label tool" and order[-1] == "body"
            assert stack.value not in page.content()
            screenshot(page, tmp_path, "held-mcp-tool")
            card.get_by_role("button", name="Deny").click()
            expect(card.locator(".result")).to_contain_text("Denied by console:alice")
            assert answer.result(timeout=20).status_code == 403
    finally:
        context.close()
    assert not stack.json_server.received("delete_repository")


def test_the_report_counts_approved_calls_as_uses_and_denied_ones_as_refused(
        stack: McpStack, tmp_path: Path) -> None:
    # After the three tests above: one call approved, two denied (admin API, console).
    home = str(stack.home.root)
    assert main(["--home", home, "audit", "verify"]) == 0
    out = tmp_path / "report.json"
    assert main(["--home", home, "audit", "report", "--format", "json", "-o", str(out)]) == 0
    [grant] = json.loads(out.read_text())["grants"]
    rows = {(row["method"], row["name"]): (row["uses"], row["refused"])
            for row in grant["actions"]["mcp"]}
    assert rows[("tools/call", "delete_repository")] == (1, 2)
    assert rows[("tools/call", "get_issue")] == (2, 0)
    assert grant["held_requests"]["outcomes"] == {"approved": 1, "denied": 2}
