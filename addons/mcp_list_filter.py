"""MCP list answers filtered to what the destination's rules allow (decision/mcp_lists.py).

Called by ScrubAnswers after the scrubbing of the same hook, so what is filtered is the answer
as the agent would get it, secrets already taken out. Only flows whose verdict carries
``mcp_lists`` (an allowed ``*/list`` call through a destination with ``mcp:`` rules) are
touched; every other answer streams as before.

A list answer is read whole: one that the scrubber streams is collected behind it (bounded by
``MAX_ANSWER``) and sent when complete; one that would stream untouched is buffered instead.
One that cannot be read (over the bound, undecodable) is cut or withheld, never passed on
unfiltered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from mitmproxy import http

from broker_proxy.decision.mcp_lists import MAX_ANSWER, filter_answer
from broker_proxy.request import codes
from broker_proxy.request.outbound import Allowed, Denied, McpListRules

log = logging.getLogger("broker_proxy.addon")

Stream = Callable[[bytes], Iterable[bytes] | bytes]


class _Collecting:
    """A response stream function: the inner one's output held until the end, then filtered."""

    def __init__(self, flow: http.HTTPFlow, inner: Stream | None, rules: McpListRules,
                 content_type: str | None) -> None:
        self._flow = flow
        self._inner = inner
        self._rules = rules
        self._content_type = content_type
        self._held = bytearray()
        self._failed = False

    def _through(self, data: bytes) -> bytes:
        if self._inner is None:
            return data
        out = self._inner(data)
        return out if isinstance(out, bytes) else b"".join(out)

    def __call__(self, data: bytes) -> list[bytes]:
        if self._failed:
            return []
        try:
            self._held += self._through(data)
            if len(self._held) > MAX_ANSWER:
                raise ValueError("an MCP list answer over the bound")
            if data:
                return []
            filtered, removed = filter_answer(bytes(self._held), self._content_type,
                                              self._rules)
            if removed:
                log.info("MCP list answer: %d entries the rules refuse left out", removed)
            return [filtered] if filtered else []
        except Exception as error:  # cut rather than offer what the rules refuse
            log.warning("MCP list answer cut: %s", type(error).__name__)
            self._failed = True
            if self._flow.killable:
                self._flow.kill()
            return []


def _rules(flow: http.HTTPFlow, verdict: Allowed | None) -> McpListRules | None:
    if verdict is None or verdict.mcp_lists is None or flow.response is None:
        return None
    return verdict.mcp_lists if flow.response.status_code == 200 else None


def on_response_headers(flow: http.HTTPFlow, verdict: Allowed | None) -> None:
    if (rules := _rules(flow, verdict)) is None:
        return
    response = flow.response
    assert response is not None
    if callable(response.stream):  # the scrubber streams it, codings undone: collect behind it
        response.stream = _Collecting(flow, response.stream, rules,
                                      response.headers.get("content-type"))
    elif response.stream:  # would stream untouched: read it whole instead
        response.stream = False


def on_response(flow: http.HTTPFlow, verdict: Allowed | None) -> None:
    if (rules := _rules(flow, verdict)) is None:
        return
    response = flow.response
    assert response is not None and verdict is not None
    if response.stream or not response.raw_content:
        return  # streamed: filtered by _Collecting
    try:
        body = response.get_content(strict=True)
        if body is None or len(body) > MAX_ANSWER:
            raise ValueError("an MCP list answer that cannot be read")
        filtered, removed = filter_answer(body, response.headers.get("content-type"), rules)
    except Exception as error:  # withhold rather than offer what the rules refuse
        log.warning("MCP list answer withheld: %s", type(error).__name__)
        denied = Denied(502, codes.RESPONSE_WITHHELD, "the MCP list answer could not be read",
                        verdict.grant_id)
        flow.response = http.Response.make(502, denied.body(), denied.headers())
        return
    if removed:
        log.info("MCP list answer: %d entries the rules refuse left out", removed)
        for name in ("content-md5", "digest", "content-digest", "repr-digest"):
            response.headers.pop(name, None)
        response.set_content(filtered)
