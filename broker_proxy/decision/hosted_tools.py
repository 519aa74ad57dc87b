"""Hosted tools: an LLM request that asks the vendor to fetch, search or run code for the agent.

The vendor then reaches out on the agent's behalf, an egress path no proxy sees; a secret with
LLM rules (``models``, ``budget`` or ``hosted_tools`` in the policy) refuses such requests unless
its ``hosted_tools`` lists the kind. Read from the JSON body:

* Anthropic Messages: ``tools[].type`` of a server tool (``web_search_20250305``,
  ``web_fetch_20250910``, ``code_execution_20250825``, ...), and ``mcp_servers`` (the MCP
  connector).
* OpenAI Responses: ``tools[].type`` (``web_search``, ``web_search_preview``, ``mcp``,
  ``code_interpreter``, ``file_search``, ``image_generation``, ...); Chat Completions:
  ``web_search_options``.
* Gemini: a ``tools[]`` entry's key (``googleSearch``, ``urlContext``, ``codeExecution``, ...).

Fail closed: any tool type that is not known to run on the agent's side (functions, custom
tools, Anthropic's bash/text editor/computer/memory, OpenAI's computer use and local shell) is
hosted, named by its type without a version date, so a tool type added by a vendor tomorrow is
refused until the policy names it.
"""

from __future__ import annotations

import json
import re
from typing import Any

HOSTED_TOOL_NOT_ALLOWED = "hosted_tool_not_allowed"  # 403
KNOWN_KINDS = ("web_search", "web_fetch", "code_execution", "mcp", "file_search",
               "image_generation")
# Tool types the agent's own code executes: no vendor-side egress.
_CLIENT_TYPES = frozenset({"function", "custom", "computer_use_preview", "computer_use",
                           "local_shell", "shell", "apply_patch"})
_CLIENT_PREFIXES = ("bash_", "text_editor_", "computer_", "memory_")
_DATED = re.compile(r"(_preview)?(_[0-9]{4}_?[0-9]{2}_?[0-9]{2})?$")
_SYNONYMS = {"code_interpreter": "code_execution", "web_search_preview": "web_search",
             "googleSearch": "web_search", "google_search": "web_search",
             "googleSearchRetrieval": "web_search", "google_search_retrieval": "web_search",
             "urlContext": "web_fetch", "url_context": "web_fetch",
             "codeExecution": "code_execution", "code_execution": "code_execution"}
_GEMINI_CLIENT_KEYS = frozenset({"functionDeclarations", "function_declarations"})


def hosted_tool_kinds(body: bytes) -> set[str]:
    """The hosted tools a JSON request body asks for, by kind (empty for anything else)."""
    if not body or (b"tools" not in body and b"mcp_servers" not in body
                    and b"web_search_options" not in body):
        return set()
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return set()
    if not isinstance(document, dict):
        return set()
    kinds: set[str] = set()
    if document.get("mcp_servers"):
        kinds.add("mcp")
    if document.get("web_search_options") is not None:
        kinds.add("web_search")
    tools = document.get("tools")
    for tool in tools if isinstance(tools, list) else []:
        kinds |= tool_kind(tool)
    return kinds


def tool_kind(tool: Any) -> set[str]:
    """The hosted kinds one ``tools[]`` entry asks for (empty for a tool the agent runs)."""
    if not isinstance(tool, dict):
        return set()
    kind = tool.get("type")
    if isinstance(kind, str):
        if kind in _CLIENT_TYPES or kind.startswith(_CLIENT_PREFIXES):
            return set()
        return {_kind(kind)}
    if kind is not None:
        return {"unknown"}
    # No "type": an Anthropic/OpenAI client tool ({"name", "input_schema"}) or a Gemini entry.
    gemini = {key for key in tool if key not in _GEMINI_CLIENT_KEYS}
    if "name" in tool or not gemini:
        return set()
    return {_SYNONYMS.get(key, key) for key in gemini}


def _kind(tool_type: str) -> str:
    if tool_type in _SYNONYMS:
        return _SYNONYMS[tool_type]
    base = _DATED.sub("", tool_type)
    return _SYNONYMS.get(base, base)


def hosted_tool_problem(body: bytes, allowed: frozenset[str], secret: str) -> str | None:
    """Why the request may not carry ``secret`` with the hosted tools it asks for, or None."""
    refused = sorted(hosted_tool_kinds(body) - allowed)
    if not refused:
        return None
    return (f'secret "{secret}" may not be used to have the vendor run hosted tools: '
            f"{', '.join(refused)}")
