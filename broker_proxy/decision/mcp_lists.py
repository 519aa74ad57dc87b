"""What the model sees matches what it may do: MCP list answers keep only what the rules allow.

An answer to ``tools/list``, ``prompts/list``, ``resources/list`` or
``resources/templates/list`` through a destination with ``mcp:`` rules loses the entries the
rules would refuse to call (tools and prompts by name, resources by URI, templates by URI
template), so an agent is never offered a tool it would be refused. The answer is a JSON-RPC
response as JSON, or one or more Server-Sent Events whose ``data`` is one (Streamable HTTP);
anything else is passed on unchanged (the calls are still refused one by one).

Pure bytes in, bytes out: addons/mcp_list_filter.py feeds it the scrubbed answer.
"""

from __future__ import annotations

import json
from typing import Any

from broker_proxy.request.outbound import McpListRules, NamePermits

MAX_ANSWER = 8 * 1024 * 1024  # a list answer larger than this is not passed on (fail closed)
# result key -> (the rules' list, the entry's key that names it)
_LISTS = {"tools": ("tools", "name"), "prompts": ("prompts", "name"),
          "resources": ("resources", "uri"), "resourceTemplates": ("resources", "uriTemplate")}


def _keep(entry: Any, rule: NamePermits | None, key: str) -> bool:
    if rule is None:
        return True
    name = entry.get(key) if isinstance(entry, dict) else None
    return isinstance(name, str) and rule.permits(name)


def filter_message(message: Any, rules: McpListRules) -> tuple[Any, int]:
    """The JSON-RPC response(s) with refused entries removed, and how many were removed."""
    if isinstance(message, list):
        removed = 0
        out = []
        for item in message:
            kept, count = filter_message(item, rules)
            out.append(kept)
            removed += count
        return out, removed
    result = message.get("result") if isinstance(message, dict) else None
    if not isinstance(result, dict):
        return message, 0
    removed = 0
    for key, (kind, name_key) in _LISTS.items():
        entries = result.get(key)
        rule = getattr(rules, kind)
        if not isinstance(entries, list) or rule is None:
            continue
        kept = [entry for entry in entries if _keep(entry, rule, name_key)]
        removed += len(entries) - len(kept)
        result[key] = kept
    return message, removed


def filter_json(body: bytes, rules: McpListRules) -> tuple[bytes, int]:
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return body, 0
    filtered, removed = filter_message(message, rules)
    if not removed:
        return body, 0
    return json.dumps(filtered, separators=(",", ":")).encode(), removed


def filter_sse(body: bytes, rules: McpListRules) -> tuple[bytes, int]:
    """Each event's data (its ``data:`` lines joined) filtered as a JSON-RPC message."""
    text = body.decode("utf-8", errors="strict")
    newline = "\r\n" if "\r\n" in text else "\n"
    events = text.split(newline * 2)
    removed = 0
    out = []
    for event in events:
        lines = event.split(newline)
        data = [line[5:].removeprefix(" ") for line in lines if line.startswith("data:")]
        if not data:
            out.append(event)
            continue
        try:
            message = json.loads("\n".join(data))
        except (ValueError, RecursionError):
            out.append(event)
            continue
        filtered, count = filter_message(message, rules)
        if not count:
            out.append(event)
            continue
        removed += count
        others = [line for line in lines if not line.startswith("data:")]
        out.append(newline.join([*others, "data: " + json.dumps(filtered,
                                                                separators=(",", ":"))]))
    if not removed:
        return body, 0
    return (newline * 2).join(out).encode("utf-8"), removed


def filter_answer(body: bytes, content_type: str | None, rules: McpListRules) -> tuple[bytes, int]:
    """The list answer ``body`` (content codings undone) with refused entries removed."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "text/event-stream":
        return filter_sse(body, rules)
    return filter_json(body, rules)
