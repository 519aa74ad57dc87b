"""`policy diff` for a destination's ``mcp:`` and ``graphql:`` rules: a widened tool, method,
resource, prompt or operation list is flagged.

Destinations are paired by where they lead (scheme, host, port, methods, paths): the rules of a
destination that stays are compared list by list. Glob coverage is not worked out: an allow
glob that was not there before, a deny glob dropped, an allow list dropped (any name now), an
operation type or persisted id added, or the rules removed altogether is a widening; the
opposite changes narrow.
"""

from __future__ import annotations

from broker_proxy.policy.model import Destination, SecretPolicy
from broker_proxy.policy.protocol_rules import MCP_LISTS, GraphqlRules, McpRules, NameRule

Found = list[tuple[str, str, bool]]  # (kind, detail, widening), as limit_changes gives them


def _place(destination: Destination) -> tuple[object, ...]:
    return (destination.scheme, destination.host, destination.port,
            tuple(sorted(destination.methods)), destination.paths)


def _where(destination: Destination) -> str:
    paths = ",".join(destination.paths) or "/**"
    return f"{destination.scheme}://{destination.host}:{destination.port}{paths}"


def _names(kind: str, what: str, where: str, before: NameRule | None,
           after: NameRule | None) -> Found:
    old_allow = before.allow if before else ()
    new_allow = after.allow if after else ()
    old_deny = set(before.deny if before else ())
    new_deny = set(after.deny if after else ())
    found: Found = []
    if old_allow and not new_allow:
        found.append((f"{kind}_widened", f"{where}: any {what} now (its allow list is gone)",
                      True))
    elif new_allow:
        added = [glob for glob in new_allow if glob not in old_allow]
        if added and old_allow:
            found.append((f"{kind}_widened", f"{where}: {what}s now allowed: "
                                             f"{', '.join(added)}", True))
        removed = [glob for glob in old_allow if glob not in new_allow]
        if removed or not old_allow:
            found.append((f"{kind}_narrowed", f"{where}: {what}s allowed: "
                                              f"{', '.join(new_allow)}", False))
    if dropped := sorted(old_deny - new_deny):
        found.append((f"{kind}_widened", f"{where}: {what}s no longer denied: "
                                         f"{', '.join(dropped)}", True))
    if added_deny := sorted(new_deny - old_deny):
        found.append((f"{kind}_narrowed", f"{where}: {what}s now denied: "
                                          f"{', '.join(added_deny)}", False))
    return found


def _mcp(where: str, before: McpRules | None, after: McpRules | None) -> Found:
    if before is None and after is None:
        return []
    if after is None:
        return [("mcp_rules_removed", f"{where}: MCP rules removed (any tool, any method)",
                 True)]
    if before is None:
        return [("mcp_rules_added", f"{where}: MCP rules added", False)]
    found: Found = []
    for key in MCP_LISTS:
        found += _names(f"mcp_{key}", f"MCP {key[:-1]}", where, getattr(before, key),
                        getattr(after, key))
    # approval.per_request: a tool glob dropped lets its calls through without a person.
    old_gated = set(before.approve_tools.allow) if before.approve_tools else set()
    new_gated = set(after.approve_tools.allow) if after.approve_tools else set()
    if dropped := sorted(old_gated - new_gated):
        found.append(("mcp_approval_widened", f"{where}: MCP tools no longer held for a "
                                              f"person's approval: {', '.join(dropped)}", True))
    if added := sorted(new_gated - old_gated):
        found.append(("mcp_approval_narrowed", f"{where}: MCP tools now held for a person's "
                                               f"approval: {', '.join(added)}", False))
    return found


def _graphql(where: str, before: GraphqlRules | None, after: GraphqlRules | None) -> Found:
    if before is None and after is None:
        return []
    if after is None:
        return [("graphql_rules_removed", f"{where}: GraphQL rules removed (any operation)",
                 True)]
    if before is None:
        return [("graphql_rules_added", f"{where}: GraphQL rules added", False)]
    found: Found = []
    if added := sorted(after.operations - before.operations):
        found.append(("graphql_operations_widened",
                      f"{where}: GraphQL {', '.join(added)} now allowed", True))
    if removed := sorted(before.operations - after.operations):
        found.append(("graphql_operations_narrowed",
                      f"{where}: GraphQL {', '.join(removed)} no longer allowed", False))
    found += _names("graphql_names", "GraphQL operation name", where, before.names, after.names)
    found += _names("graphql_fields", "GraphQL field", where, before.fields, after.fields)
    if new_ids := sorted(after.persisted - before.persisted):
        found.append(("graphql_persisted_widened",
                      f"{where}: persisted queries now allowed: {', '.join(new_ids)}", True))
    return found


def protocol_changes(before: SecretPolicy, after: SecretPolicy) -> Found:
    """The rule changes of the destinations ``before`` and ``after`` both have."""
    old = {_place(d): d for d in before.destinations}
    found: Found = []
    for destination in after.destinations:
        previous = old.get(_place(destination))
        if previous is None:
            continue  # a new destination: diff.py's destination_widened says so
        where = _where(destination)
        found += _mcp(where, previous.mcp, destination.mcp)
        found += _graphql(where, previous.graphql, destination.graphql)
    return found
