"""A destination's ``mcp:`` and ``graphql:`` rules: what an MCP or GraphQL request may ask for.

One URL of an MCP server (``POST /mcp``) or a GraphQL API (``POST /graphql``) serves every
action, so host, method and path cannot tell "list issues" from "delete the repository". These
rules name the actions themselves: MCP methods, tools, resources and prompts, GraphQL operation
types, operation names and top-level fields. The request path reads them in
decision/mcp_rules.py and decision/graphql_rules.py.

Compiled here, at policy load, into ``NameRule`` objects (one anchored regex per list); a
destination without ``mcp:`` or ``graphql:`` carries None and its requests pay nothing.

Stdlib only (plus yaml for the nodes): the checker passed in is the loader's, so every problem
is reported in the same FILE:LINE:COL form.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from fnmatch import translate
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from broker_proxy.policy.checking import NodeChecker

MCP_LISTS = ("methods", "tools", "resources", "prompts")
GRAPHQL_TYPES = ("query", "mutation", "subscription")
GLOB_MAX = 200  # characters of one glob: names and URIs are short


@dataclass(frozen=True, slots=True)
class NameRule:
    """Globs a name must match (``allow``; empty: any) and must not match (``deny``).

    Globs are fnmatch's, case-sensitive (``*``, ``?``, ``[...]``): MCP tool names and GraphQL
    names are case-sensitive identifiers.
    """

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    _allow: re.Pattern[str] | None = field(default=None, compare=False, repr=False)
    _deny: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, allow: tuple[str, ...], deny: tuple[str, ...]) -> NameRule:
        def one(globs: tuple[str, ...]) -> re.Pattern[str] | None:
            return re.compile("|".join(translate(g) for g in globs)) if globs else None
        return cls(allow, deny, one(allow), one(deny))

    def permits(self, name: str) -> bool:
        if self._deny is not None and self._deny.match(name):
            return False
        return self._allow is None or self._allow.match(name) is not None


@dataclass(frozen=True, slots=True)
class McpRules:
    """``mcp:`` on a destination; a list left out allows every name of its kind."""

    methods: NameRule | None = None
    tools: NameRule | None = None
    resources: NameRule | None = None  # resource URIs (resources/read, subscribe, unsubscribe)
    prompts: NameRule | None = None
    # ``approval: {per_request: [globs]}``: tools/call of these tools waits for a person.
    approve_tools: NameRule | None = None

    def needs_approval(self, method: str, name: str | None) -> bool:
        """True for a tools/call of a tool listed under ``approval.per_request``."""
        return (self.approve_tools is not None and method == "tools/call" and name is not None
                and self.approve_tools.permits(name))


@dataclass(frozen=True, slots=True)
class GraphqlRules:
    """``graphql:`` on a destination."""

    operations: frozenset[str] = frozenset(GRAPHQL_TYPES)  # allowed operation types
    names: NameRule | None = None  # operation names (an anonymous operation has none)
    fields: NameRule | None = None  # top-level fields, after fragments are spread
    persisted: frozenset[str] = frozenset()  # persisted-query hashes sent without a document


def parse_name_rule(node: yaml.Node, path: str, checker: NodeChecker,
                    kind: str) -> NameRule | None:
    """``{allow: [globs], deny: [globs]}``; at least one of the two."""
    before = len(checker.issues)
    fields = checker.fields(node, path, "name_rule", node)
    if fields is None:
        return None
    if not fields:
        checker.report(node, path, "name allow or deny (or both), or leave it out")
    lists: dict[str, tuple[str, ...]] = {}
    for key in ("allow", "deny"):
        if key not in fields:
            continue
        found = []
        for item_path, item, text in checker.strings(fields[key][1], f"{path}.{key}") or ():
            if not text or len(text) > GLOB_MAX or any(c < " " for c in text):
                checker.report(item, item_path,
                               f"invalid {kind} glob {json.dumps(text[:100])}: 1 to "
                               f"{GLOB_MAX} printable characters")
                continue
            found.append(text)
        lists[key] = tuple(found)
    if len(checker.issues) > before:
        return None
    return NameRule.of(lists.get("allow", ()), lists.get("deny", ()))


def parse_mcp(node: yaml.Node, path: str, checker: NodeChecker) -> McpRules | None:
    """A destination's ``mcp:``: methods, tools, resources and prompts, each allow/deny."""
    before = len(checker.issues)
    fields = checker.fields(node, path, "mcp", node)
    if fields is None:
        return None
    rules = {key: parse_name_rule(fields[key][1], f"{path}.{key}", checker, key[:-1])
             for key in MCP_LISTS if key in fields}
    if "approval" in fields:
        approval = checker.fields(fields["approval"][1], f"{path}.approval", "mcp_approval",
                                  fields["approval"][1])
        if approval and "per_request" in approval:
            globs = []
            for item_path, item, text in checker.strings(approval["per_request"][1],
                                                         f"{path}.approval.per_request") or ():
                if not text or len(text) > GLOB_MAX or any(c < " " for c in text):
                    checker.report(item, item_path, f"invalid tool glob {json.dumps(text[:100])}")
                    continue
                globs.append(text)
            if not globs:
                checker.report(fields["approval"][1], f"{path}.approval.per_request",
                               "name at least one tool glob")
            rules["approve_tools"] = NameRule.of(tuple(globs), ())
    if len(checker.issues) > before:
        return None
    return McpRules(**rules)


def parse_graphql(node: yaml.Node, path: str, checker: NodeChecker) -> GraphqlRules | None:
    """A destination's ``graphql:``: operation types, operation and field names, persisted."""
    before = len(checker.issues)
    fields = checker.fields(node, path, "graphql", node)
    if fields is None:
        return None
    operations = frozenset(GRAPHQL_TYPES)
    if "operations" in fields:
        chosen = set()
        for item_path, item, text in checker.strings(fields["operations"][1],
                                                     f"{path}.operations") or ():
            if text not in GRAPHQL_TYPES:
                checker.report(item, item_path, f"unknown operation type {json.dumps(text)}: "
                                                "use query, mutation or subscription")
            chosen.add(text)
        operations = frozenset(chosen)
    names = parse_name_rule(fields["names"][1], f"{path}.names", checker, "operation name") \
        if "names" in fields else None
    top = parse_name_rule(fields["fields"][1], f"{path}.fields", checker, "field") \
        if "fields" in fields else None
    persisted: set[str] = set()
    if "persisted" in fields:
        for item_path, item, text in checker.strings(fields["persisted"][1],
                                                     f"{path}.persisted") or ():
            if not re.fullmatch(r"[0-9A-Za-z_.:-]{1,128}", text):
                checker.report(item, item_path, f"invalid persisted query id "
                                                f"{json.dumps(text[:100])}")
            persisted.add(text)
    if len(checker.issues) > before:
        return None
    return GraphqlRules(operations=operations, names=names, fields=top,
                        persisted=frozenset(persisted))
