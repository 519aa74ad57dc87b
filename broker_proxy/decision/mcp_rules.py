"""MCP rules on a destination: which JSON-RPC methods, tools, resources and prompts a request
carrying a secret may name (the Streamable HTTP transport: JSON-RPC messages in POST bodies).

Read only for secrets whose destination has ``mcp:`` (policy/protocol_rules.py); every other
flow pays nothing. What is checked, before any secret is resolved or placed:

* The POST body is JSON-RPC 2.0: one message, or (protocol 2025-03-26 only) a batch, each
  element checked in turn; anything else is refused (``400 mcp_invalid_request``), as are
  duplicate keys (parsers disagree on which one wins) and bodies over ``MAX_BODY``.
* ``Mcp-Method`` and ``Mcp-Name`` (MCP 2026-07-28; also the draft's ``Mcp-Tool-Name``,
  ``Mcp-Resource`` and ``Mcp-Prompt-Name``), when sent, name what the body names: a server or
  gateway may route or log by the header while the body does something else
  (``400 mcp_header_mismatch``). Older clients send none and are checked on the body alone.
* Requests name a method the rules allow; ``tools/call`` a tool, ``resources/read`` (and
  subscribe) a URI, ``prompts/get`` a prompt the rules allow (``403 mcp_tool_not_allowed``
  and its siblings). Notifications and responses (the client answering a server's request)
  carry no action of the client's own and pass, but their method is still checked.

Nothing is rewritten: a refused request is refused whole, and its placeholders are never
swapped (this runs before secrets are resolved).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from broker_proxy.policy.protocol_rules import McpRules, NameRule
from broker_proxy.request.outbound import OutboundRequest
from broker_proxy.strict_json import loads

MCP_INVALID_REQUEST = "mcp_invalid_request"  # 400: not JSON-RPC where MCP rules apply
MCP_HEADER_MISMATCH = "mcp_header_mismatch"  # 400: Mcp-Method/Mcp-Name disagree with the body
MCP_METHOD_NOT_ALLOWED = "mcp_method_not_allowed"  # 403
MCP_TOOL_NOT_ALLOWED = "mcp_tool_not_allowed"  # 403
MCP_RESOURCE_NOT_ALLOWED = "mcp_resource_not_allowed"  # 403
MCP_PROMPT_NOT_ALLOWED = "mcp_prompt_not_allowed"  # 403

MAX_BODY = 4 * 1024 * 1024  # a JSON-RPC request is small; tool arguments rarely exceed KBs
MAX_BATCH = 100
MAX_DEPTH = 64
BATCHING_VERSIONS = frozenset({"2025-03-26"})  # the one revision with JSON-RPC batches
# method -> (params key of its subject, kind of subject)
_SUBJECTS = {"tools/call": ("name", "tools"), "prompts/get": ("name", "prompts"),
             "resources/read": ("uri", "resources"), "resources/subscribe": ("uri", "resources"),
             "resources/unsubscribe": ("uri", "resources")}
_CODES = {"tools": MCP_TOOL_NOT_ALLOWED, "resources": MCP_RESOURCE_NOT_ALLOWED,
          "prompts": MCP_PROMPT_NOT_ALLOWED}
_KIND_WORD = {"tools": "tool", "resources": "resource", "prompts": "prompt"}
_NAME_HEADERS = ("mcp-name", "mcp-tool-name", "mcp-resource", "mcp-prompt-name")
# A header value that would not survive HTTP as it is: "=?base64?UTF-8 bytes?=" (the SDKs').
_BASE64 = re.compile(r"=\?base64\?(.*)\?=")


@dataclass(frozen=True, slots=True)
class McpRefusal:
    status: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class McpCall:
    """What one request asks an MCP server for (for the audit record)."""

    method: str
    name: str | None  # the tool, prompt or resource URI, when the method has one


def _header(headers: tuple[tuple[str, str], ...], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name]


def _header_text(value: str) -> str | None:
    """A Mcp-* header's value as the body would spell it; None when its base64 is corrupt."""
    if (wrapped := _BASE64.fullmatch(value)) is None:
        return value
    try:
        raw = base64.b64decode(wrapped.group(1), validate=True)
        return raw.decode("utf-8") if base64.b64encode(raw).decode() == wrapped.group(1) \
            else None
    except (binascii.Error, UnicodeDecodeError):
        return None


def _shown(text: str) -> str:
    return json.dumps(text[:100])


def read_calls(request: OutboundRequest) -> list[McpCall] | McpRefusal:
    """The JSON-RPC requests and notifications of a POST body, checked against its headers."""
    if request.method.upper() != "POST":
        if request.body:
            return McpRefusal(400, MCP_INVALID_REQUEST,
                              f"an MCP {request.method} request carries no body")
        return []
    if len(request.body) > MAX_BODY:
        return McpRefusal(400, MCP_INVALID_REQUEST,
                          f"an MCP request body over {MAX_BODY} bytes is not read")
    try:
        document = loads(request.body, max_depth=MAX_DEPTH)
    except (ValueError, RecursionError) as error:
        return McpRefusal(400, MCP_INVALID_REQUEST,
                          f"the body is not JSON-RPC: {str(error)[:120]}")
    headers = request.headers
    versions = _header(headers, "mcp-protocol-version")
    method_headers = _header(headers, "mcp-method")
    name_headers = {key: values for key in _NAME_HEADERS if (values := _header(headers, key))}
    if len(method_headers) > 1 or any(len(v) > 1 for v in name_headers.values()):
        return McpRefusal(400, MCP_HEADER_MISMATCH, "an Mcp-Method or Mcp-Name header is sent "
                                                    "more than once")
    if isinstance(document, list):
        if method_headers or name_headers or (versions and versions[0] not in
                                              BATCHING_VERSIONS):
            return McpRefusal(400, MCP_INVALID_REQUEST, "JSON-RPC batches are not part of "
                                                        "this MCP protocol version")
        if not document or len(document) > MAX_BATCH:
            return McpRefusal(400, MCP_INVALID_REQUEST,
                              f"a JSON-RPC batch holds 1 to {MAX_BATCH} messages")
        messages = document
    else:
        messages = [document]
    calls: list[McpCall] = []
    for message in messages:
        call = _message(message)
        if isinstance(call, McpRefusal):
            return call
        if call is not None:
            calls.append(call)
    if (method_headers or name_headers) and (
            problem := _headers_problem(calls, method_headers, name_headers)):
        return problem
    return calls


def _message(message: Any) -> McpCall | McpRefusal | None:
    """One JSON-RPC message: a request or notification (its call), a response (None)."""
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return McpRefusal(400, MCP_INVALID_REQUEST, 'each message must be a JSON-RPC 2.0 '
                                                    'object ("jsonrpc": "2.0")')
    if "method" not in message:
        if "id" in message and ("result" in message or "error" in message):
            return None  # the client answering a server's request (sampling, elicitation)
        return McpRefusal(400, MCP_INVALID_REQUEST, "a JSON-RPC message names no method")
    method = message["method"]
    if not isinstance(method, str):
        return McpRefusal(400, MCP_INVALID_REQUEST, "a JSON-RPC method must be a string")
    subject = _SUBJECTS.get(method)
    if subject is None:
        return McpCall(method, None)
    params = message.get("params")
    name = params.get(subject[0]) if isinstance(params, dict) else None
    if not isinstance(name, str):
        return McpRefusal(400, MCP_INVALID_REQUEST,
                          f'{method} needs a string "params.{subject[0]}"')
    return McpCall(method, name)


def _headers_problem(calls: list[McpCall], method_headers: list[str],
                     name_headers: dict[str, list[str]]) -> McpRefusal | None:
    if len(calls) != 1:
        return McpRefusal(400, MCP_HEADER_MISMATCH,
                          "Mcp-Method names one request but the body holds none")
    call = calls[0]
    if method_headers and _header_text(method_headers[0]) != call.method:
        return McpRefusal(400, MCP_HEADER_MISMATCH,
                          f"the Mcp-Method header says {_shown(method_headers[0])} but the "
                          f"body's method is {_shown(call.method)}")
    for header, values in name_headers.items():
        if _header_text(values[0]) != (call.name or ""):
            return McpRefusal(400, MCP_HEADER_MISMATCH,
                              f"the {header} header says {_shown(values[0])} but the body "
                              f"names {_shown(call.name or '')}")
    return None


def _permits(rule: NameRule | None, name: str) -> bool:
    return rule is None or rule.permits(name)


def call_problem(call: McpCall, rules: McpRules, secret: str) -> McpRefusal | None:
    """Why ``rules`` refuse this call, or None."""
    if not _permits(rules.methods, call.method):
        return McpRefusal(403, MCP_METHOD_NOT_ALLOWED, f'secret "{secret}" may not be used for '
                                                       f"MCP method {_shown(call.method)}")
    subject = _SUBJECTS.get(call.method)
    if subject is not None and call.name is not None:
        kind = subject[1]
        if not _permits(getattr(rules, kind), call.name):
            return McpRefusal(403, _CODES[kind], f'secret "{secret}" may not be used for MCP '
                                                 f"{_KIND_WORD[kind]} {_shown(call.name)}")
    return None
