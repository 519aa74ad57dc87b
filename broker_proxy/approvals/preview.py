"""What a person deciding a held request reads: the request as the agent sent it.

Method, URL with its query, the headers, and a bounded body preview (JSON pretty-printed, form
fields listed, text as is, anything else summarised), with every placeholder marked and the
secret it names. The request holds placeholders, never values: the hold comes before anything is
resolved, so no secret can be in it. A destination's `approval_preview` reduces what is shown:
`headers` (no body text) or `none` (method, host and path only).

The preview is bounded (a few KiB per held request, 1,000 at most are held) and its SHA-256
(`shown_digest`) is recorded with the hold and with the decision: the audit says what the person
was shown.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote

from broker_proxy.approvals.digest import PlaceholderFinder
from broker_proxy.policy.approval_fields import APPROVAL_PREVIEWS
from broker_proxy.request.outbound import OutboundRequest

MAX_BODY_TEXT = 4096
MAX_FIELDS = 100
MAX_VALUE = 300
MAX_HEADERS = 40
MAX_QUERY = 2048
# Never shown: the grant token's header is removed before the decision anyway; a cookie is the
# agent's session with the upstream, named but not shown.
HIDDEN_HEADERS = frozenset({"proxy-authorization"})
MASKED_HEADERS = frozenset({"cookie"})


def preview_level(levels: list[str]) -> str:
    """The most reduced of the levels that apply (several gated secrets, several destinations)."""
    return max(levels or ["full"], key=APPROVAL_PREVIEWS.index)  # ordered full, headers, none


def build_preview(request: OutboundRequest, scanner: PlaceholderFinder,
                  carries: tuple[str, ...], level: str = "full",
                  tools: Sequence[Any] = ()) -> dict[str, Any]:
    """The preview of a held request at `level` (full, headers or none).

    `tools`: the MCP tool calls held under `mcp.approval.per_request` (McpCall); the preview
    names them first, with their arguments (at level full), so a person judges the action and
    not only a JSON-RPC body."""
    marks: dict[str, str] = {}  # placeholder text -> secret

    def mark(text: str) -> str:
        for hit in scanner.find(text):
            if hit.secret:
                marks.setdefault(text[hit.start:hit.end], hit.secret)
        return text

    url = f"{request.scheme}://{request.host}:{request.port}{request.path}"
    preview: dict[str, Any] = {
        "level": level, "method": request.method, "url": url, "query": None,
        "headers": None, "body": None,
        "carries": [{"secret": c.partition("@")[0], "where": c.partition("@")[2]}
                    for c in carries],
    }
    if level != "none":
        if request.query:
            query = request.query[:MAX_QUERY]
            mark(unquote(query))
            preview["query"] = {"text": mark(query), "truncated": len(request.query) > MAX_QUERY,
                                "fields": [[_cut(mark(k)), _cut(mark(v))] for k, v in
                                           parse_qsl(query, keep_blank_values=True)[:MAX_FIELDS]]}
        preview["headers"] = _headers(request, mark)
        preview["body"] = _body(request, mark, level == "full")
    if tools:
        preview["tools"] = _tools(request, tools, mark, level == "full")
    preview["placeholders"] = [{"text": text, "secret": secret}
                               for text, secret in sorted(marks.items())]
    return preview


def shown_digest(preview: dict[str, Any]) -> str:
    """SHA-256 of the preview as shown: recorded with the hold and the decision."""
    canonical = json.dumps(preview, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _tools(request: OutboundRequest, tools: Sequence[Any], mark: Any,
             with_arguments: bool) -> list[dict[str, Any]]:
    """Each held tool call: its name, and its arguments as pretty JSON (bounded) at level full.

    The arguments come from the body the rules already read (one message or a batch); a call
    is matched by name, so a batch shows each gated call's own arguments."""
    wanted = {tool.name for tool in tools}
    found: dict[str, Any] = {}
    try:
        message = json.loads(request.body)
    except ValueError:
        message = None
    for item in message if isinstance(message, list) else [message]:
        params = item.get("params") if isinstance(item, dict) else None
        if (isinstance(item, dict) and item.get("method") == "tools/call"
                and isinstance(params, dict) and params.get("name") in wanted):
            found.setdefault(params["name"], params.get("arguments"))
    shown = []
    for tool in list(tools)[:MAX_FIELDS]:
        entry: dict[str, Any] = {"method": tool.method, "name": _cut(mark(tool.name or "")),
                                 "arguments": None, "truncated": False}
        if with_arguments and tool.name in found:
            text = mark(json.dumps(found[tool.name], indent=2, ensure_ascii=False))
            entry["arguments"] = text[:MAX_BODY_TEXT]
            entry["truncated"] = len(text) > MAX_BODY_TEXT
        shown.append(entry)
    return shown


def _headers(request: OutboundRequest, mark: Any) -> list[list[str]]:
    shown = []
    for name, value in request.headers[:MAX_HEADERS]:
        lowered = name.lower()
        if lowered in HIDDEN_HEADERS:
            continue
        if lowered in MASKED_HEADERS:
            shown.append([name, f"({len(value)} characters, not shown)"])
            continue
        shown.append([name, _cut(mark(value))])
    if len(request.headers) > MAX_HEADERS:
        shown.append(["…", f"{len(request.headers) - MAX_HEADERS} more headers"])
    return shown


def _body(request: OutboundRequest, mark: Any, with_text: bool) -> dict[str, Any]:
    body = request.body
    content_type = next((value for name, value in request.headers
                         if name.lower() == "content-type"), "")
    kind = content_type.split(";", 1)[0].strip().lower()
    summary: dict[str, Any] = {"size": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                               "content_type": content_type[:MAX_VALUE] or None, "kind": "empty",
                               "text": None, "fields": None, "truncated": False}
    if not body:
        return summary
    if not with_text:
        summary["kind"] = "hidden"  # approval_preview: headers
        mark(body.decode("latin-1"))  # its placeholders are still named
        return summary
    text = _text_of(body)
    if text is None:
        summary["kind"] = "binary"
        mark(body.decode("latin-1"))
        return summary
    if kind == "application/x-www-form-urlencoded":
        pairs = parse_qsl(text, keep_blank_values=True)
        summary["kind"] = "form"
        summary["fields"] = [[_cut(mark(k)), _cut(mark(v))] for k, v in pairs[:MAX_FIELDS]]
        summary["truncated"] = len(pairs) > MAX_FIELDS
        return summary
    if kind == "application/json" or kind.endswith("+json") or text.lstrip()[:1] in ("{", "["):
        try:
            text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
            summary["kind"] = "json"
        except ValueError:
            summary["kind"] = "text"
    else:
        summary["kind"] = "text"
    mark(text)
    summary["text"] = text[:MAX_BODY_TEXT]
    summary["truncated"] = len(text) > MAX_BODY_TEXT
    return summary


def _text_of(body: bytes) -> str | None:
    """The body as text, or None when it is not UTF-8 text a person can read."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any(ord(c) < 0x20 and c not in "\t\r\n" for c in text[:MAX_BODY_TEXT]):
        return None
    return text


def _cut(text: str) -> str:
    return text if len(text) <= MAX_VALUE else text[:MAX_VALUE] + "…"
