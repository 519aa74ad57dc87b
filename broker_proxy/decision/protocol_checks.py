"""The MCP and GraphQL rules of the destinations a secret-carrying request goes to.

A secret may list several destinations that cover one request (a wildcard host and an exact
one, say); like host, method and path, the request passes when one of them lets it: a covering
destination without ``mcp:``/``graphql:`` lets everything through, as it did before these rules.
Only secrets in ``ActivePolicy.protocol_limited`` are looked at, so flows without such rules
pay one set intersection.
"""

from __future__ import annotations

from broker_proxy.decision.active_policy import ActivePolicy
from broker_proxy.decision.graphql_rules import GraphqlRefusal, graphql_problem
from broker_proxy.decision.mcp_rules import McpCall, McpRefusal, call_problem, read_calls
from broker_proxy.decision.outbound import OutboundRequest
from broker_proxy.policy.model import Destination

Refusal = McpRefusal | GraphqlRefusal


class _Reading:
    """The request's body read once as MCP calls, however many destinations ask."""

    __slots__ = ("_calls", "request")

    def __init__(self, request: OutboundRequest) -> None:
        self.request = request
        self._calls: list[McpCall] | McpRefusal | None = None

    def mcp(self) -> list[McpCall] | McpRefusal:
        if self._calls is None:
            self._calls = read_calls(self.request)
        return self._calls


def protocol_refusal(request: OutboundRequest, policy: ActivePolicy,
                     names: list[str]) -> Refusal | None:
    """Why the MCP or GraphQL rules refuse this request for one of the secrets, or None."""
    reading = _Reading(request)
    for name in names:
        if name not in policy.protocol_limited:
            continue
        covering = policy.index.allowing(name, request.scheme, request.host, request.port,
                                         request.method, request.path)
        if not covering or any(not d.protocol_rules for d in covering):
            continue
        first: Refusal | None = None
        for destination in covering:
            problem = _destination_problem(destination, reading, name)
            if problem is None:
                break
            first = first or problem
        else:
            return first
    return None


def _destination_problem(destination: Destination, reading: _Reading,
                         secret: str) -> Refusal | None:
    if destination.mcp is not None:
        calls = reading.mcp()
        if isinstance(calls, McpRefusal):
            return calls
        for call in calls:
            if problem := call_problem(call, destination.mcp, secret):
                return problem
    if destination.graphql is not None:
        return graphql_problem(reading.request, destination.graphql, secret)
    return None
