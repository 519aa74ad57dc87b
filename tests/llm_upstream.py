"""A local stand-in for the LLM APIs, answering in each one's documented shapes.

OpenAI Chat Completions and Responses, Anthropic Messages and Gemini generateContent, as JSON or
as a server-sent event stream (when the request asks for one); gzip-compressed when the request
carries ``X-Test-Gzip: 1``, over 1 MiB (so the proxy streams it) with ``X-Test-Large: 1``. Each
answer reports the usage in ``USAGE`` (input, output tokens) where that API puts it; with
``X-Test-No-Usage: 1`` it reports none.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

from broker_proxy.devtools.echo_server import ReceivedRequest

LLM_HOSTS = ("api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com")
USAGE = (11, 7)  # input tokens, output tokens


def _sse(events: list[tuple[str | None, dict[str, Any] | str]]) -> bytes:
    lines = []
    for name, data in events:
        if name is not None:
            lines.append(f"event: {name}")
        lines.append("data: " + (data if isinstance(data, str) else json.dumps(data)))
        lines.append("")
    return ("\n".join(lines) + "\n").encode()


def _openai_chat(model: str, stream: bool, usage: bool, include: bool) -> tuple[str, bytes]:
    tokens_in, tokens_out = USAGE
    counted = {"prompt_tokens": tokens_in, "completion_tokens": tokens_out,
               "total_tokens": tokens_in + tokens_out}
    if not stream:
        body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                             "message": {"role": "assistant", "content": "ok",
                                         "refusal": None}}]}
        if usage:
            body["usage"] = counted
        return "application/json", json.dumps(body).encode()
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0,
             "model": model}
    events: list[tuple[str | None, dict[str, Any] | str]] = [
        (None, chunk | {"choices": [{"index": 0, "delta": {"role": "assistant",
                                                            "content": "ok"},
                                     "finish_reason": None}]}),
        (None, chunk | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
    ]
    if usage and include:  # the API only sends usage when stream_options.include_usage asks
        events.append((None, chunk | {"choices": [], "usage": counted}))
    events.append((None, "[DONE]"))
    return "text/event-stream", _sse(events)


def _openai_responses(model: str, stream: bool, usage: bool) -> tuple[str, bytes]:
    tokens_in, tokens_out = USAGE
    response: dict[str, Any] = {
        "id": "resp_1", "object": "response", "created_at": 0, "model": model,
        "status": "completed", "output": [{"type": "message", "id": "msg_1",
                                           "status": "completed", "role": "assistant",
                                           "content": [{"type": "output_text", "text": "ok",
                                                        "annotations": []}]}],
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": []}
    if usage:
        response["usage"] = {"input_tokens": tokens_in, "output_tokens": tokens_out,
                             "total_tokens": tokens_in + tokens_out,
                             "input_tokens_details": {"cached_tokens": 0},
                             "output_tokens_details": {"reasoning_tokens": 0}}
    if not stream:
        return "application/json", json.dumps(response).encode()
    created = {k: v for k, v in response.items() if k != "usage"} | {"status": "in_progress",
                                                                     "output": []}
    return "text/event-stream", _sse([
        ("response.created", {"type": "response.created", "sequence_number": 0,
                              "response": created}),
        ("response.completed", {"type": "response.completed", "sequence_number": 1,
                                "response": response}),
    ])


def _anthropic(model: str, stream: bool, usage: bool) -> tuple[str, bytes]:
    tokens_in, tokens_out = USAGE
    if not stream:
        body = {"id": "msg_1", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": tokens_in if usage else 0,
                          "output_tokens": tokens_out if usage else 0}}
        if not usage:
            del body["usage"]
        return "application/json", json.dumps(body).encode()
    start_usage = {"input_tokens": tokens_in, "output_tokens": 1} if usage else {}
    return "text/event-stream", _sse([
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": start_usage or {"input_tokens": 0, "output_tokens": 0}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "ok"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta",
                           "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": tokens_out if usage else 0}}),
        ("message_stop", {"type": "message_stop"}),
    ])


def _gemini(stream: bool, usage: bool) -> tuple[str, bytes]:
    tokens_in, tokens_out = USAGE
    body: dict[str, Any] = {"candidates": [{"content": {"role": "model",
                                                        "parts": [{"text": "ok"}]},
                                            "finishReason": "STOP", "index": 0}]}
    if usage:
        body["usageMetadata"] = {"promptTokenCount": tokens_in,
                                 "candidatesTokenCount": tokens_out,
                                 "totalTokenCount": tokens_in + tokens_out}
    if not stream:
        return "application/json", json.dumps(body).encode()
    first = {"candidates": [{"content": {"role": "model", "parts": [{"text": "o"}]},
                             "index": 0}]}
    return "text/event-stream", _sse([(None, first), (None, body)])


def llm_reply(request: ReceivedRequest) -> tuple[int, dict[str, str], bytes]:
    host = (request.header("Host") or "").split(":")[0]
    path = request.path.split("?")[0]
    try:
        asked = json.loads(request.body) if request.body else {}
    except ValueError:
        asked = {}
    stream = bool(asked.get("stream")) or ":streamGenerateContent" in path
    usage = request.header("X-Test-No-Usage") != "1"
    model = str(asked.get("model", "unknown"))
    if host == "api.openai.com" and path.endswith("/responses"):
        kind, body = _openai_responses(model, stream, usage)
    elif host == "api.openai.com":
        include = bool((asked.get("stream_options") or {}).get("include_usage"))
        kind, body = _openai_chat(model, stream, usage, include)
    elif host == "api.anthropic.com":
        kind, body = _anthropic(model, stream, usage)
    else:
        kind, body = _gemini(stream, usage)
    headers = {"Content-Type": kind}
    if request.header("X-Test-Large") == "1" and kind == "text/event-stream":
        # Over the proxy's 1 MiB buffering threshold: the answer goes through as a stream.
        body = b": padding\n\n" * 100_000 + body
    if request.header("X-Test-Gzip") == "1":
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    return 200, headers, body
