"""The MCP and GraphQL rules of the destinations a secret-carrying request goes to.

A secret may list several destinations that cover one request (a wildcard host and an exact
one, say); like host, method and path, the request passes when one of them lets it: a covering
destination without ``mcp:``/``graphql:`` lets everything through, as it did before these rules.
Only secrets in ``ActivePolicy.protocol_limited`` are looked at, so flows without such rules
pay one set test.

What was read is kept for later: the audit record names the MCP call or the GraphQL operation,
and an allowed MCP ``*/list`` call carries the rules its answer is filtered with (mcp_lists.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from broker_proxy.decision.active_policy import ActivePolicy
from broker_proxy.decision.graphql_rules import (
    GraphqlOperation,
    GraphqlRefusal,
    operation_problem,
    read_operations,
)
from broker_proxy.decision.mcp_rules import McpCall, McpRefusal, call_problem, read_calls
from broker_proxy.policy.model import Destination
from broker_proxy.policy.protocol_rules import McpRules
from broker_proxy.request.outbound import OutboundRequest

Refusal = McpRefusal | GraphqlRefusal
LIST_METHODS = frozenset({"tools/list", "prompts/list", "resources/list",
                          "resources/templates/list"})
# The methods of the MCP specification (2025-03-26 to 2026-07-28): metric labels, never an
# agent's arbitrary string.
MCP_METHODS = frozenset({
    "initialize", "ping", "tools/list", "tools/call", "prompts/list", "prompts/get",
    "resources/list", "resources/templates/list", "resources/read", "resources/subscribe",
    "resources/unsubscribe", "completion/complete", "logging/setLevel", "tasks/get",
    "tasks/list", "tasks/result", "tasks/cancel", "notifications/initialized",
    "notifications/cancelled", "notifications/progress", "notifications/roots/list_changed",
    "sampling/createMessage", "elicitation/create", "roots/list"})
AUDIT_NAME_MAX = 200  # characters of a tool, prompt, URI or operation name in a record
AUDIT_LIST_MAX = 20  # calls or operations of a batch named in a record


@dataclass(slots=True)
class ProtocolReading:
    """The request read once as MCP calls and GraphQL operations, however many rules ask."""

    request: OutboundRequest
    refusal: Refusal | None = None
    # The rules an MCP list answer is filtered with: those of the destination that let it.
    list_rules: McpRules | None = None
    # The tools/call messages a person approves first (mcp.approval.per_request of the
    # destination that lets the request through).
    approval_calls: tuple[McpCall, ...] = ()
    _calls: list[McpCall] | McpRefusal | None = field(default=None, repr=False)
    _operations: list[GraphqlOperation] | GraphqlRefusal | None = field(default=None,
                                                                        repr=False)

    def mcp(self) -> list[McpCall] | McpRefusal:
        if self._calls is None:
            self._calls = read_calls(self.request)
        return self._calls

    def graphql(self) -> list[GraphqlOperation] | GraphqlRefusal:
        if self._operations is None:
            self._operations = read_operations(self.request)
        return self._operations

    def audit_fields(self) -> dict[str, Any]:
        """What the audit record says the request asked for (additive fields, bounded): the
        first MCP call or GraphQL operation as scalars, all of them when there are several."""
        fields: dict[str, Any] = {}
        if isinstance(self._calls, list) and self._calls:
            first = self._calls[0]
            fields["mcp_method"] = first.method[:AUDIT_NAME_MAX]
            fields["mcp_name"] = first.name[:AUDIT_NAME_MAX] if first.name is not None \
                else None
            if len(self._calls) > 1:
                fields["mcp_calls"] = [f"{c.method} {c.name or ''}".strip()[:AUDIT_NAME_MAX]
                                       for c in self._calls[:AUDIT_LIST_MAX]]
        if isinstance(self._operations, list) and self._operations:
            op = self._operations[0]
            fields["graphql_type"] = op.kind
            fields["graphql_name"] = op.name[:AUDIT_NAME_MAX] or None
            if len(self._operations) > 1:
                fields["graphql_operations"] = [
                    f"{o.kind} {o.name}".strip()[:AUDIT_NAME_MAX]
                    for o in self._operations[:AUDIT_LIST_MAX]]
        return fields


    def metric_actions(self) -> set[tuple[str, str]]:
        """(protocol, action) of what was read, from bounded sets only: label values."""
        found: set[tuple[str, str]] = set()
        if isinstance(self._calls, list):
            found |= {("mcp", c.method if c.method in MCP_METHODS else "other")
                      for c in self._calls}
        elif self._calls is not None:
            found.add(("mcp", "unreadable"))
        if isinstance(self._operations, list):
            found |= {("graphql", o.kind) for o in self._operations}
        elif self._operations is not None:
            found.add(("graphql", "unreadable"))
        return found


def read_protocol(request: OutboundRequest, policy: ActivePolicy,
                  names: list[str]) -> ProtocolReading | None:
    """The request checked against the MCP and GraphQL rules; None when none apply."""
    reading: ProtocolReading | None = None
    for name in names:
        if name not in policy.protocol_limited:
            continue
        covering = policy.index.allowing(name, request.scheme, request.host, request.port,
                                         request.method, request.path)
        if not covering or any(not d.protocol_rules for d in covering):
            continue
        reading = reading or ProtocolReading(request)
        first: Refusal | None = None
        for destination in covering:
            problem = _destination_problem(destination, reading, name)
            if problem is None:
                _note_lists(reading, destination)
                _note_approval(reading, destination)
                break
            first = first or problem
        else:
            reading.refusal = first
            return reading
    return reading


def protocol_refusal(request: OutboundRequest, policy: ActivePolicy,
                     names: list[str]) -> Refusal | None:
    """Why the MCP or GraphQL rules refuse this request for one of the secrets, or None."""
    reading = read_protocol(request, policy, names)
    return reading.refusal if reading is not None else None


def _note_lists(reading: ProtocolReading, destination: Destination) -> None:
    if destination.mcp is None or reading.list_rules is not None:
        return
    calls = reading.mcp()
    if isinstance(calls, list) and any(c.method in LIST_METHODS for c in calls):
        reading.list_rules = destination.mcp


def _note_approval(reading: ProtocolReading, destination: Destination) -> None:
    if destination.mcp is None or destination.mcp.approve_tools is None:
        return
    calls = reading.mcp()
    if isinstance(calls, list):
        gated = tuple(c for c in calls if destination.mcp.needs_approval(c.method, c.name))
        reading.approval_calls = tuple(dict.fromkeys((*reading.approval_calls, *gated)))


def _destination_problem(destination: Destination, reading: ProtocolReading,
                         secret: str) -> Refusal | None:
    if destination.mcp is not None:
        calls = reading.mcp()
        if isinstance(calls, McpRefusal):
            return calls
        for call in calls:
            if problem := call_problem(call, destination.mcp, secret):
                return problem
    if destination.graphql is not None:
        operations = reading.graphql()
        if isinstance(operations, GraphqlRefusal):
            return operations
        for operation in operations:
            if refused := operation_problem(operation, destination.graphql, secret):
                return refused
    return None
