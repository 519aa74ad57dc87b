"""`policy diff` flags a widened MCP tool list or GraphQL operation list, through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker_proxy.cli import main

BASE = """\
version: 1
secrets:
  tracker:
    from: env:T
    destinations:
      - host: mcp.example.com
        paths: [/mcp]
{mcp}
      - host: api.github.com
        paths: [/graphql]
{graphql}
agents:
  bot: {{secrets: [tracker]}}
"""
MCP = """\
        mcp:
          tools: {allow: ["get_*"], deny: ["*delete*"]}"""
GRAPHQL = """\
        graphql:
          operations: [query]"""


def diff(tmp_path: Path, capsys: pytest.CaptureFixture[str], mcp: str, graphql: str
         ) -> list[str]:
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(BASE.format(mcp=MCP, graphql=GRAPHQL))
    new.write_text(BASE.format(mcp=mcp, graphql=graphql))
    main(["policy", "diff", str(old), str(new)])
    return [line for line in capsys.readouterr().out.splitlines() if "WIDENS" in line]


def test_a_new_allowed_tool_and_a_dropped_deny_widen(tmp_path, capsys) -> None:
    wider = MCP.replace('["get_*"]', '["get_*", "drop_*"]').replace(
        ', deny: ["*delete*"]', "")
    widens = diff(tmp_path, capsys, wider, GRAPHQL)
    assert any("MCP tools now allowed: drop_*" in line for line in widens), widens
    assert any("MCP tools no longer denied: *delete*" in line for line in widens), widens


def test_mutations_allowed_or_rules_removed_widen(tmp_path, capsys) -> None:
    widens = diff(tmp_path, capsys, "", GRAPHQL.replace("[query]", "[query, mutation]"))
    assert any("MCP rules removed" in line for line in widens), widens
    assert any("GraphQL mutation now allowed" in line for line in widens), widens


def test_narrowing_is_not_flagged(tmp_path, capsys) -> None:
    narrower = MCP.replace('deny: ["*delete*"]', 'deny: ["*delete*", "*admin*"]')
    assert diff(tmp_path, capsys, narrower, GRAPHQL) == []


def test_a_tool_no_longer_held_for_approval_widens(tmp_path, capsys) -> None:
    gated = MCP + '\n          approval: {per_request: ["close_*", "get_secret*"]}'
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(BASE.format(mcp=gated, graphql=GRAPHQL))
    new.write_text(BASE.format(mcp=gated.replace('"close_*", ', ""), graphql=GRAPHQL))
    main(["policy", "diff", str(old), str(new)])
    widens = [line for line in capsys.readouterr().out.splitlines() if "WIDENS" in line]
    assert len(widens) == 1 and "no longer held for a person's approval: close_*" in widens[0]
    main(["policy", "diff", str(new), str(old)])  # adding a gate narrows
    assert "WIDENS" not in capsys.readouterr().out
