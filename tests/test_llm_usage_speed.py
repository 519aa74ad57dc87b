"""Reading usage from a streamed LLM answer stays far below 0.1 ms per event (p50).

Prints the figure docs/limits.md quotes; the bound asserted is generous (the measured figure is
about a hundredth of it), so a loaded machine does not fail it.
"""

from __future__ import annotations

import json
import statistics
import time

from broker_proxy.decision.llm_usage import UsageMeter

BOUND_US = 100.0


def _anthropic_stream(deltas: int) -> list[bytes]:
    def event(name: str, data: dict) -> bytes:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

    return [event("message_start", {"type": "message_start", "message": {
        "usage": {"input_tokens": 11, "output_tokens": 1}}}),
        *(event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": "hello " * 8}})
          for _ in range(deltas)),
        event("message_delta", {"type": "message_delta", "usage": {"output_tokens": deltas}})]


def _openai_stream(deltas: int) -> list[bytes]:
    chunk = {"id": "c", "object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": {"content": "hello "}}]}
    usage = {"id": "c", "choices": [], "usage": {"prompt_tokens": 11,
                                                 "completion_tokens": deltas}}
    return [*(f"data: {json.dumps(chunk)}\n\n".encode() for _ in range(deltas)),
            f"data: {json.dumps(usage)}\n\n".encode(), b"data: [DONE]\n\n"]


def test_usage_parsing_costs_well_under_a_tenth_of_a_millisecond_per_event() -> None:
    for name, events in (("anthropic", _anthropic_stream(1000)),
                         ("openai-chat", _openai_stream(1000))):
        per_event = []
        for _ in range(20):
            meter = UsageMeter("text/event-stream")
            started = time.perf_counter()
            for event in events:
                meter.feed(event)
            assert meter.finish() == (11, 1000)
            per_event.append((time.perf_counter() - started) / len(events) * 1e6)
        p50 = statistics.median(per_event)
        print(f"{name}: {len(events)} events, p50 {p50:.2f} us/event")
        assert p50 < BOUND_US
