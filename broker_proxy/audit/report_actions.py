"""MCP tools and GraphQL operations as the access report shows them (report.py), per grant.

One URL (`POST /mcp`, `POST /graphql`) serves every action, so a grant's uses by destination
say little: a reviewer wants to know which tools it called and which mutations it ran. The
proxy writes `mcp_method`/`mcp_name` (`mcp_calls` for a batch) and `graphql_type`/
`graphql_name` (`graphql_operations` for several) into the request record of every request to
a destination with such rules (docs/mcp-graphql.md); this module counts them, uses and
refusals, per grant. The names are chosen by the agent, so a grant keeps at most NAME_LIMIT
distinct ones per protocol: the rest are counted together under the name `(other)`, and
memory stays bounded whatever the log holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

NAME_LIMIT: Final = 200  # distinct (action, name) per grant and protocol; then "(other)"
PENDING_LIMIT: Final = 1000  # held requests remembered until a person decides (the desk's cap)
OTHER: Final = "(other)"


def _calls(record: dict[str, Any]) -> Iterator[tuple[str, str, str | None]]:
    """(protocol, action, name) of each MCP message or GraphQL operation a record names."""
    batch = record.get("mcp_calls")
    if isinstance(batch, list) and batch:
        for item in batch:
            if isinstance(item, str):
                method, _, name = item.partition(" ")
                yield "mcp", method, name or None
    elif isinstance(record.get("mcp_method"), str):
        tool = record.get("mcp_name")
        yield "mcp", record["mcp_method"], tool if isinstance(tool, str) else None
    operations = record.get("graphql_operations")
    if isinstance(operations, list) and operations:
        for item in operations:
            if isinstance(item, str):
                kind, _, operation = item.partition(" ")
                yield "graphql", kind, operation or None
    elif isinstance(record.get("graphql_type"), str):
        named = record.get("graphql_name")
        yield "graphql", record["graphql_type"], named if isinstance(named, str) else None


class GrantActions:
    """One grant's MCP calls and GraphQL operations, used or refused; fed its request records."""

    __slots__ = ("counts", "held")

    def __init__(self) -> None:
        # protocol -> (action, name) -> [uses, refused]
        self.counts: dict[str, dict[tuple[str, str | None], list[int]]] = {}
        # hold id -> its request record, until the person's decision (approval.per_request)
        self.held: dict[str, dict[str, Any]] = {}

    def hold(self, hold: object, record: dict[str, Any]) -> None:
        """Remember a held request that names an MCP call or GraphQL operation: a denial (or a
        timeout) counts it as refused; an approval is counted when the request goes out."""
        if (isinstance(hold, str) and len(self.held) < PENDING_LIMIT
                and next(_calls(record), None) is not None):
            self.held[hold] = record

    def hold_ended(self, hold: object, refused: bool) -> None:
        record = self.held.pop(hold, None) if isinstance(hold, str) else None
        if record is not None and refused:
            self.feed(record, refused=True)

    def feed(self, record: dict[str, Any], refused: bool) -> None:
        """Count what an allowed use (refused=False) or a refusal (refused=True) asked for."""
        for protocol, action, name in _calls(record):
            table = self.counts.setdefault(protocol, {})
            key = (action, name)
            if key not in table and len(table) >= NAME_LIMIT:
                key = (OTHER, None)
            row = table.setdefault(key, [0, 0])
            row[1 if refused else 0] += 1

    def as_dict(self) -> dict[str, Any] | None:
        """The grant's `actions` member; None for a grant that touched no destination with MCP
        or GraphQL rules. Rows sorted by uses and refusals, most first."""
        if not self.counts:
            return None
        out: dict[str, Any] = {}
        for protocol, label in (("mcp", "method"), ("graphql", "type")):
            rows = sorted(self.counts.get(protocol, {}).items(),
                          key=lambda kv: (-(kv[1][0] + kv[1][1]), kv[0][0], kv[0][1] or ""))
            out[protocol] = [{label: action, "name": name, "uses": uses, "refused": refused}
                             for (action, name), (uses, refused) in rows]
        return out


def action_rows(actions: dict[str, Any] | None) -> list[tuple[str, str, str | None, int, int]]:
    """(protocol, action, name, uses, refused) of a grant's `actions`, for the text, CSV and HTML
    renderings."""
    if not actions:
        return []
    return [(protocol, row[label], row["name"], row["uses"], row["refused"])
            for protocol, label in (("mcp", "method"), ("graphql", "type"))
            for row in actions[protocol]]
