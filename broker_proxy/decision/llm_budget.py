"""Admitting an LLM request against a grant's token and cost budget: what it may spend at most.

A request is admitted with a *reservation*: input tokens at most the body's length in bytes (a
text token is at least one byte), output tokens at most its ``max_tokens``-style field (or the
policy's ``default_max_tokens``, which the proxy then writes into the request, so the vendor
enforces it), times the choices asked for; cost from the prices table. The answer's usage
settles it (llm_usage.py); an answer without readable usage is charged the whole reservation.

For streamed OpenAI Chat Completions the proxy also sets ``stream_options.include_usage``, so
the stream reports its usage at the end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from broker_proxy.policy.model import Budget, Price
from broker_proxy.request.model_rules import UnreadableModel, requested_models
from broker_proxy.request.outbound import OutboundRequest
from broker_proxy.request.reservation import Reservation

BUDGET_EXHAUSTED = "budget_exhausted"  # 429: the grant's tokens or dollars for a secret are spent
BUDGET_REQUEST_UNREADABLE = "budget_request_unreadable"  # 400: cannot bound what it would spend
CONCURRENCY_LIMITED = "concurrency_limited"  # 429: the grant has its requests at once in flight
MODEL_NOT_PRICED = "model_not_priced"  # 403: a cost budget and no price for the model
_GEMINI_GENERATE = (":generateContent", ":streamGenerateContent")


@dataclass(frozen=True, slots=True)
class Unbounded:
    """The request cannot be admitted against a budget; status, code and message to answer."""

    status: int
    code: str
    message: str


def price_of(model: str | None, prices: tuple[tuple[str, Price], ...]) -> tuple[str, Price] | None:
    """The first (glob, price) of the table that matches the model."""
    if model is None:
        return None
    return next(((glob, price) for glob, price in prices if fnmatchcase(model, glob)), None)


def plan(request: OutboundRequest, secret: str, budget: Budget,
         prices: tuple[tuple[str, Price], ...]) -> tuple[Reservation, bytes | None] | Unbounded:
    """The reservation for this request, and its body rewritten when the proxy sets a field."""
    try:
        models = requested_models(request)
    except UnreadableModel as error:
        return Unbounded(400, BUDGET_REQUEST_UNREADABLE, f"the request's model: {error}")
    model = models[0] if models else None
    path = request.path
    generates = path.endswith(("/chat/completions", "/responses", "/messages")) \
        or path.endswith(_GEMINI_GENERATE)
    document: Any = None
    if request.body:
        try:
            document = json.loads(request.body)
        except (ValueError, RecursionError):
            document = None
    if generates and not isinstance(document, dict):
        return Unbounded(400, BUDGET_REQUEST_UNREADABLE,
                         "an LLM request under a budget must have a JSON object body")
    rewritten = False
    output = 0
    if generates:
        assert isinstance(document, dict)
        found = _output_cap(document, path)
        if isinstance(found, Unbounded):
            return found
        output, rewritten = found
        if path.endswith("/chat/completions") and document.get("stream") is True:
            options = document.get("stream_options")
            if options is None or (isinstance(options, dict)
                                   and options.get("include_usage") is not True):
                document["stream_options"] = {**(options or {}), "include_usage": True}
                rewritten = True
        if output == 0:
            output = budget.default_max_tokens
            _set_output_cap(document, path, output)
            rewritten = True
        output *= _choices(document, path)
    price = None
    # A request that names no model and generates nothing (GET /v1/models, a file upload) is
    # not priced; anything else under a cost budget must be.
    if budget.micro_usd is not None and (model is not None or generates):
        found_price = price_of(model, prices)
        if found_price is None:
            shown = json.dumps((model or "")[:100]) if model else "an unnamed model"
            return Unbounded(403, MODEL_NOT_PRICED, f'secret "{secret}" has a cost budget and '
                                                    f"the prices table has no price for {shown}")
        price = found_price[1]
    body = json.dumps(document, ensure_ascii=False).encode() if rewritten else None
    tokens_in = len(body if body is not None else request.body)
    rates = None if price is None else (price.input, price.output)
    reservation = Reservation(secret, model, tokens_in, output, 0, rates)
    return (Reservation(secret, model, tokens_in, output, reservation.cost(tokens_in, output),
                        rates), body)


def _output_cap(document: dict[str, Any], path: str) -> tuple[int, bool] | Unbounded:
    """(the request's own output cap, 0 when it sets none; False: nothing rewritten)."""
    if path.endswith(_GEMINI_GENERATE):
        config = document.get("generationConfig")
        if config is not None and not isinstance(config, dict):
            return Unbounded(400, BUDGET_REQUEST_UNREADABLE, "generationConfig is not an object")
        values = [(config or {}).get("maxOutputTokens")]
    elif path.endswith("/responses"):
        values = [document.get("max_output_tokens")]
    elif path.endswith("/messages"):
        values = [document.get("max_tokens")]
    else:
        values = [document.get("max_completion_tokens"), document.get("max_tokens")]
    caps = []
    for value in values:
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return Unbounded(400, BUDGET_REQUEST_UNREADABLE,
                             "the request's output token cap is not a positive integer")
        caps.append(value)
    # Both OpenAI fields given: the vendor honours one of them; reserve for the larger.
    return (max(caps) if caps else 0), False


def _set_output_cap(document: dict[str, Any], path: str, cap: int) -> None:
    if path.endswith(_GEMINI_GENERATE):
        document["generationConfig"] = {**(document.get("generationConfig") or {}),
                                        "maxOutputTokens": cap}
    elif path.endswith("/responses"):
        document["max_output_tokens"] = cap
    elif path.endswith("/messages"):
        document["max_tokens"] = cap
    else:
        document["max_completion_tokens"] = cap


def _choices(document: dict[str, Any], path: str) -> int:
    """How many answers the output cap applies to (OpenAI ``n``, Gemini ``candidateCount``)."""
    if path.endswith(_GEMINI_GENERATE):
        value = (document.get("generationConfig") or {}).get("candidateCount", 1)
    elif path.endswith("/chat/completions"):
        value = document.get("n", 1)
    else:
        value = 1
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 \
        else 1
