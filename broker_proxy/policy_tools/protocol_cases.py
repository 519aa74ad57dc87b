"""`mcp:` and `graphql:` in a policy test case: the call named, the request built for it.

A case for an MCP or GraphQL destination is about a tool or an operation, not a body; writing
the JSON-RPC or GraphQL body by hand (with its quoting) hides what the case tests. So a case may
say

```yaml
mcp: {tool: get_issue, arguments: {number: 7}}          # tools/call (the default method)
mcp: {method: prompts/get, name: triage_bug}            # or prompt: / resource: URI
mcp: {method: tools/list}
graphql: {query: "query Issues { viewer { login } }", operation_name: Issues,
          variables: {n: 1}}
graphql: {persisted: 7a1f...}                           # a persisted-query id, no document
```

and gets the body and headers a client would send (MCP: `Mcp-Method`/`Mcp-Name` too, as MCP
2026-07-28 clients do; `mcp_headers: false` leaves them out). Headers the case gives itself
win, so a case can still send headers that disagree with the body. `"{placeholder}"` in the
arguments or variables is filled like anywhere else in a case.
"""

from __future__ import annotations

import json
from typing import Any

_MCP_KEYS = frozenset({"method", "tool", "prompt", "resource", "name", "arguments", "params",
                       "id", "mcp_headers"})
_GRAPHQL_KEYS = frozenset({"query", "operation_name", "variables", "persisted"})
_NAMED = {"tool": "tools/call", "prompt": "prompts/get", "resource": "resources/read"}
_JSON = {"Content-Type": "application/json"}


class ProtocolCaseError(ValueError):
    """An `mcp:` or `graphql:` member a request cannot be built from."""


def mcp_request(spec: object) -> tuple[dict[str, str], str]:
    """Headers and body of the JSON-RPC call an `mcp:` member names."""
    if not isinstance(spec, dict) or not spec:
        raise ProtocolCaseError("mcp: expected a mapping such as {tool: NAME, arguments: {...}}")
    unknown = sorted(set(spec) - _MCP_KEYS)
    if unknown:
        raise ProtocolCaseError(f"mcp: unknown key {unknown[0]!r} (use "
                                f"{', '.join(sorted(_MCP_KEYS))})")
    given = [key for key in ("tool", "prompt", "resource", "name") if key in spec]
    if len(given) > 1:
        raise ProtocolCaseError(f"mcp: {given[0]} and {given[1]} together; name the call once")
    method = spec.get("method") or (_NAMED.get(given[0]) if given else None)
    if not isinstance(method, str) or not method:
        raise ProtocolCaseError("mcp: method: expected a JSON-RPC method such as tools/list "
                                "(or tool:, prompt:, resource:)")
    name = spec[given[0]] if given else None
    if name is not None and not isinstance(name, str):
        raise ProtocolCaseError(f"mcp: {given[0]}: expected a string")
    for key in ("arguments", "params"):
        if key in spec and not isinstance(spec[key], dict):
            raise ProtocolCaseError(f"mcp: {key}: expected a mapping")
    if "params" in spec and (name is not None or "arguments" in spec):
        raise ProtocolCaseError("mcp: params: give either params or the name and arguments")
    params: dict[str, Any] | None = spec.get("params")
    if params is None and name is not None:
        if method.startswith("resources/") or given[0] == "resource":
            params = {"uri": name}
        else:
            params = {"name": name, "arguments": spec.get("arguments") or {}}
    rid = spec.get("id", 1)
    if not isinstance(rid, int | str) or isinstance(rid, bool):
        raise ProtocolCaseError("mcp: id: expected a number or a string")
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        message["params"] = params
    flag = spec.get("mcp_headers", True)
    if not isinstance(flag, bool):
        raise ProtocolCaseError("mcp: mcp_headers: expected true or false")
    headers = {**_JSON, "Accept": "application/json, text/event-stream"}
    if flag:
        headers["Mcp-Method"] = method
        if name is not None:
            headers["Mcp-Name"] = name
    return headers, json.dumps(message)


def graphql_request(spec: object) -> tuple[dict[str, str], str]:
    """Headers and body of the GraphQL request a `graphql:` member names."""
    if not isinstance(spec, dict) or not ({"query", "persisted"} & set(spec)):
        raise ProtocolCaseError("graphql: expected a mapping with query: DOCUMENT "
                                "(or persisted: ID)")
    unknown = sorted(set(spec) - _GRAPHQL_KEYS)
    if unknown:
        raise ProtocolCaseError(f"graphql: unknown key {unknown[0]!r} (use "
                                f"{', '.join(sorted(_GRAPHQL_KEYS))})")
    for key in ("query", "operation_name", "persisted"):
        if key in spec and not isinstance(spec[key], str):
            raise ProtocolCaseError(f"graphql: {key}: expected a string")
    if "variables" in spec and not isinstance(spec["variables"], dict):
        raise ProtocolCaseError("graphql: variables: expected a mapping")
    body: dict[str, Any] = {}
    if "query" in spec:
        body["query"] = spec["query"]
    if "operation_name" in spec:
        body["operationName"] = spec["operation_name"]
    if "variables" in spec:
        body["variables"] = spec["variables"]
    if "persisted" in spec:
        body["extensions"] = {"persistedQuery": {"version": 1, "sha256Hash": spec["persisted"]}}
    return dict(_JSON), json.dumps(body)
