"""The report's per-grant MCP/GraphQL tally stays bounded: names are the agent's choice."""

from __future__ import annotations

from broker_proxy.audit.report_actions import NAME_LIMIT, OTHER, GrantActions


def test_names_past_the_limit_are_counted_together() -> None:
    actions = GrantActions()
    for index in range(NAME_LIMIT + 50):
        actions.feed({"mcp_method": "tools/call", "mcp_name": f"tool_{index}"}, refused=False)
    actions.feed({"mcp_method": "tools/call", "mcp_name": "tool_0"}, refused=True)
    result = actions.as_dict()
    assert result is not None and result["graphql"] == []
    rows = result["mcp"]
    assert len(rows) == NAME_LIMIT + 1
    assert rows[0] == {"method": OTHER, "name": None, "uses": 50, "refused": 0}
    assert {"method": "tools/call", "name": "tool_0", "uses": 1, "refused": 1} in rows
    assert sum(row["uses"] + row["refused"] for row in rows) == NAME_LIMIT + 51


def test_a_record_without_protocol_fields_adds_nothing() -> None:
    actions = GrantActions()
    actions.feed({"method": "GET", "path": "/"}, refused=False)
    assert actions.as_dict() is None
