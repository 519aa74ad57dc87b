"""`audit report` groups a grant's uses by MCP tool and GraphQL operation, from logs the real
proxy wrote: the MCP stack of test_e2e_mcp_rules.py and the GraphQL stack of
test_e2e_graphql_rules.py (fresh ones for this module), driven with httpx. JSON (validated
against the published schema), text, CSV, and HTML rendered in headless Chromium."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from broker_proxy.cli import main
from tests import test_e2e_graphql_rules as graphql_rules
from tests import test_e2e_mcp_rules as mcp_rules
from tests.html_page import opened_html
from tests.test_e2e_graphql_rules import GraphqlStack
from tests.test_e2e_mcp_rules import McpStack

pytestmark = pytest.mark.e2e

# The two stacks, under names of this module (pytest names a fixture by its attribute here).
mcp_stack = mcp_rules.mcp
gql_stack = graphql_rules.gql

SCHEMA = Path(__file__).parents[1] / "broker_proxy/audit/schemas/audit-report.v1.json"
DOC = (Path(__file__).parents[1] / "docs" / "mcp-graphql.md").read_text()


def _rpc(method: str, name: str | None = None, rid: int = 1) -> dict[str, Any]:
    params: dict[str, Any] = {} if name is None else {"name": name, "arguments": {}}
    return {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}


@pytest.fixture(scope="module")
def mcp_home(mcp_stack: McpStack) -> Path:
    """Two calls of get_issue, one of delete_repository (refused), a tools/list and a batch."""
    server = mcp_stack.json_server
    for rid in (1, 2):
        mcp_stack.post(server, json.dumps(_rpc("tools/call", "get_issue", rid)).encode(), {})
    refused = mcp_stack.post(server, json.dumps(_rpc("tools/call", "delete_repository")).encode(),
                             {})
    assert refused.status_code == 403
    mcp_stack.post(server, json.dumps(_rpc("tools/list")).encode(), {})
    batch = [_rpc("tools/call", "get_issue", 5), _rpc("tools/call", "list_issues", 6)]
    mcp_stack.post(server, json.dumps(batch).encode(), {})
    return mcp_stack.home.root


@pytest.fixture(scope="module")
def gql_home(gql_stack: GraphqlStack) -> Path:
    """GetRepo twice, an anonymous query, a refused mutation and a two-operation document."""
    for _ in range(2):
        assert gql_stack.send("POST", body={
            "query": 'query GetRepo { repository(name: "a") { name } }'}).status_code == 200
    gql_stack.send("POST", body={"query": '{ repository(name: "b") { issues } }'})
    assert gql_stack.send("POST", body={
        "query": 'mutation Drop { deleteRepository(name: "a") }'}).status_code == 403
    gql_stack.send("POST", body={
        "query": 'query One { repository(name: "a") { name } } '
                 'query Two { repository(name: "b") { name } }', "operationName": "One"})
    return gql_stack.home.root


def _report(home: Path, fmt: str, out: Path) -> str:
    assert main(["--home", str(home), "audit", "report", "--format", fmt, "-o", str(out)]) == 0
    return out.read_text()


def _actions(home: Path, tmp_path: Path) -> dict[str, Any]:
    assert main(["--home", str(home), "audit", "verify"]) == 0
    data = json.loads(_report(home, "json", tmp_path / "report.json"))
    jsonschema.validate(data, json.loads(SCHEMA.read_text()))
    [grant] = data["grants"]
    return grant["actions"]


def test_json_report_counts_mcp_tools_used_and_refused(mcp_home: Path, tmp_path: Path) -> None:
    actions = _actions(mcp_home, tmp_path)
    assert actions["graphql"] == []
    assert actions["mcp"] == [
        {"method": "tools/call", "name": "get_issue", "uses": 3, "refused": 0},
        {"method": "tools/call", "name": "delete_repository", "uses": 0, "refused": 1},
        {"method": "tools/call", "name": "list_issues", "uses": 1, "refused": 0},
        {"method": "tools/list", "name": None, "uses": 1, "refused": 0}]


def test_json_report_counts_graphql_operations(gql_home: Path, tmp_path: Path) -> None:
    actions = _actions(gql_home, tmp_path)
    assert actions["mcp"] == []
    assert actions["graphql"] == [
        {"type": "query", "name": "GetRepo", "uses": 2, "refused": 0},
        {"type": "mutation", "name": "Drop", "uses": 0, "refused": 1},
        {"type": "query", "name": None, "uses": 1, "refused": 0},
        {"type": "query", "name": "One", "uses": 1, "refused": 0},
        {"type": "query", "name": "Two", "uses": 1, "refused": 0}]


def test_text_and_csv_reports_show_the_same_counts(mcp_home: Path, gql_home: Path,
                                                   tmp_path: Path) -> None:
    assert "broker-proxy audit report --format text" in DOC
    text = _report(mcp_home, "text", tmp_path / "report.txt")
    lines = [line.split() for line in text.splitlines()]
    assert ["mcp", "tools/call", "3", "0", "get_issue"] in lines
    assert ["mcp", "tools/call", "0", "1", "delete_repository"] in lines
    assert ["mcp", "tools/list", "1", "0", "-"] in lines
    rows = list(csv.DictReader(io.StringIO(  # after the integrity headline
        _report(gql_home, "csv", tmp_path / "r.csv").split("\n", 1)[1])))
    graphql = [(r["method"], r["count"], r["detail"]) for r in rows if r["section"] == "graphql"]
    assert ("mutation", "0", "name=Drop refused=1") in graphql
    assert ("query", "2", "name=GetRepo refused=0") in graphql
    assert ("query", "1", "refused=0") in graphql  # the anonymous one has no name


def test_html_report_shows_the_tools_in_chromium(mcp_home: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    _report(mcp_home, "html", out)
    problems: list[str] = []
    with opened_html(out, problems) as page:
        overflow = page.evaluate("document.documentElement.scrollWidth - innerWidth")
        rows = page.locator("tr", has_text="delete_repository").all_inner_texts()
        page.screenshot(path=str(tmp_path / "report-actions.png"), full_page=True)
    assert problems == []
    assert overflow <= 0
    assert [row.split() for row in rows] == [["mcp", "tools/call", "delete_repository", "0", "1"]]
    assert (tmp_path / "report-actions.png").stat().st_size > 1000
