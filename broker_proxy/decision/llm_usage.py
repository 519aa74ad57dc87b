"""Reading token usage out of an LLM answer as it passes, JSON or server-sent events.

Fed the decoded body in pieces (the scrubber's plain bytes); keeps at most one partial line of an
event stream, or the JSON body up to a cap. Where each API reports usage:

* OpenAI Chat Completions: ``usage.prompt_tokens`` / ``completion_tokens`` (a stream: the last
  chunk, when ``stream_options.include_usage`` asked for it: the proxy adds that).
* OpenAI Responses: ``usage.input_tokens`` / ``output_tokens``; a stream: ``response.completed``'s
  ``response.usage``.
* Anthropic Messages: ``usage.input_tokens`` (+ cache creation and reads) / ``output_tokens``; a
  stream: ``message_start``'s ``message.usage``, then ``message_delta``'s cumulative ``usage``.
* Gemini: ``usageMetadata.promptTokenCount`` / ``candidatesTokenCount`` (+ ``thoughtsTokenCount``);
  a stream repeats it, cumulative.

Counts only grow within one answer, so the largest seen of each is the answer's usage.
"""

from __future__ import annotations

import json
from contextlib import suppress
from typing import Any

MAX_JSON_BODY = 16 * 1024 * 1024  # a bigger JSON answer is not parsed: usage unreadable
MAX_EVENT_LINE = 1024 * 1024
_USAGE_WORD = b"sage"  # "usage", "usageMetadata": a line without it is skipped unparsed


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def usage_of(document: Any) -> tuple[int, int] | None:
    """(input, output) tokens reported in one JSON object (an answer or a stream event)."""
    if not isinstance(document, dict):
        return None
    found = None
    for holder in (document, document.get("response"), document.get("message")):
        if not isinstance(holder, dict):
            continue
        usage = holder.get("usage")
        if isinstance(usage, dict):
            tokens_in = (_count(usage.get("prompt_tokens")) + _count(usage.get("input_tokens"))
                         + _count(usage.get("cache_creation_input_tokens"))
                         + _count(usage.get("cache_read_input_tokens")))
            tokens_out = (_count(usage.get("completion_tokens"))
                          + _count(usage.get("output_tokens")))
            found = _larger(found, (tokens_in, tokens_out))
    metadata = document.get("usageMetadata")
    if isinstance(metadata, dict):
        found = _larger(found, (_count(metadata.get("promptTokenCount")),
                                _count(metadata.get("candidatesTokenCount"))
                                + _count(metadata.get("thoughtsTokenCount"))))
    return found


def _larger(a: tuple[int, int] | None, b: tuple[int, int] | None) -> tuple[int, int] | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a[0], b[0]), max(a[1], b[1])


class UsageMeter:
    """Fed an answer's decoded bytes; ``usage`` is (input, output) tokens, or None if unread."""

    def __init__(self, content_type: str | None) -> None:
        self.events = "text/event-stream" in (content_type or "").lower()
        self._buffer = bytearray()
        self._overflow = False
        self.usage: tuple[int, int] | None = None

    def feed(self, data: bytes) -> None:
        if self._overflow or not data:
            return
        self._buffer += data
        if not self.events:
            if len(self._buffer) > MAX_JSON_BODY:
                self._overflow = True
                self._buffer.clear()
            return
        end = self._buffer.rfind(b"\n")
        if end < 0:
            if len(self._buffer) > MAX_EVENT_LINE:
                self._buffer.clear()  # one absurd line: skipped, later lines still read
            return
        lines = bytes(self._buffer[:end])
        del self._buffer[:end + 1]
        for line in lines.split(b"\n"):
            self._event_line(line)

    def finish(self) -> tuple[int, int] | None:
        if self._overflow:
            return None
        if self.events:
            self._event_line(bytes(self._buffer))
        else:
            with suppress(ValueError, RecursionError):
                self.usage = _larger(self.usage, usage_of(json.loads(bytes(self._buffer))))
        self._buffer.clear()
        return self.usage

    def _event_line(self, line: bytes) -> None:
        if not line.startswith(b"data:") or _USAGE_WORD not in line:
            return
        try:
            document = json.loads(line[5:])
        except (ValueError, RecursionError):
            return
        self.usage = _larger(self.usage, usage_of(document))
