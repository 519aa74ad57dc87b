"""LLM use and cost as the access report shows them (report.py): per grant, agent and model.

The proxy writes `model`, `input_tokens`, `output_tokens`, `cost_usd` and `usage` into the
response record of every request under an LLM budget (decision/llm_usage.py); this module adds
them up. Only counts are kept, one tally per (grant, model), so memory grows with the number of
grants and models, never with the number of records. A `usage: unreadable` answer was charged its
whole reservation: it is counted with the rest and also on its own, so a reviewer sees how much
of the spend is an estimate.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Final

# Refusals that come from a grant's limits (docs/limits.md), shown together under "limits".
LIMIT_REFUSALS: Final = ("rate_limited", "concurrency_limited", "budget_exhausted",
                         "budget_request_unreadable", "model_not_allowed", "model_not_priced",
                         "hosted_tool_not_allowed")
USAGE_VALUES: Final = frozenset({"reported", "unreadable"})


def usd(value: float) -> str:
    """`0.00000585`, `1.25`: enough decimals for a single small call, no float noise."""
    text = f"{value:.8f}".rstrip("0").rstrip(".")
    return text or "0"


@dataclass(slots=True)
class LlmTally:
    """Requests, tokens and dollars charged for one grant (or agent) and model."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    unreadable: int = 0

    def add_record(self, record: dict[str, Any]) -> None:
        self.requests += 1
        self.input_tokens += _count(record.get("input_tokens"))
        self.output_tokens += _count(record.get("output_tokens"))
        cost = record.get("cost_usd")
        if isinstance(cost, int | float) and not isinstance(cost, bool) and cost >= 0:
            self.cost_usd += float(cost)
        if record.get("usage") == "unreadable":
            self.unreadable += 1

    def add_row(self, row: dict[str, Any]) -> None:
        self.requests += row["requests"]
        self.input_tokens += row["input_tokens"]
        self.output_tokens += row["output_tokens"]
        self.cost_usd += row["cost_usd"]
        self.unreadable += row["usage_unreadable"]

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "cost_usd": round(self.cost_usd, 9),
                "usage_unreadable": self.unreadable}


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class GrantLlm:
    """One grant's LLM use, by model; fed the grant's response records."""

    __slots__ = ("models",)

    def __init__(self) -> None:
        self.models: dict[str | None, LlmTally] = {}

    def feed(self, record: dict[str, Any]) -> None:
        """Count a response record if it is one of an LLM request under a budget."""
        if record.get("usage") not in USAGE_VALUES:
            return
        model = record.get("model")
        key = model if isinstance(model, str) else None
        tally = self.models.get(key)
        if tally is None:
            tally = self.models[key] = LlmTally()
        tally.add_record(record)

    def as_dict(self, refusals: dict[str, Counter[str]]) -> dict[str, Any] | None:
        """The grant's `llm` member; None for a grant that neither used an LLM budget nor hit a
        limit."""
        limited = {reason: sum(refusals[reason].values())
                   for reason in LIMIT_REFUSALS if reason in refusals}
        if not self.models and not limited:
            return None
        total = LlmTally()
        by_model = []
        for model, tally in sorted(self.models.items(), key=lambda kv: kv[0] or ""):
            total.add_row(tally.as_dict())
            by_model.append({"model": model, **tally.as_dict()})
        return {**total.as_dict(), "by_model": by_model, "limit_refusals": limited}


def agent_llm(grants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """LLM use per agent: the sum of its grants' `llm` members (agents without any left out)."""
    rows: dict[str, tuple[LlmTally, Counter[str]]] = {}
    for grant in grants:
        llm = grant.get("llm")
        if not llm:
            continue
        tally, limited = rows.setdefault(grant["agent"] or "?", (LlmTally(), Counter()))
        tally.add_row(llm)
        limited.update(llm["limit_refusals"])
    return [{"agent": agent, **tally.as_dict(),
             "limit_refusals": {r: limited[r] for r in LIMIT_REFUSALS if limited[r]}}
            for agent, (tally, limited) in sorted(rows.items())]


def model_llm(grants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """LLM use per model across grants, with how many grants used each."""
    rows: dict[str, tuple[LlmTally, set[str]]] = {}
    names: dict[str, str | None] = {}
    for grant in grants:
        for row in (grant.get("llm") or {}).get("by_model", ()):
            key = row["model"] if row["model"] is not None else "\0"
            names[key] = row["model"]
            tally, users = rows.setdefault(key, (LlmTally(), set()))
            tally.add_row(row)
            users.add(grant["id"])
    return [{"model": names[key], "grants": len(users), **tally.as_dict()}
            for key, (tally, users) in sorted(rows.items())]
