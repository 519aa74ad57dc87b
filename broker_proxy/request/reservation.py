"""What one LLM request may spend through one secret: a plain value the verdict carries from
admission (llm_budget.py) to settling (budget_keeper.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reservation:
    """What one request may spend through one secret, held until its answer settles it."""

    secret: str
    model: str | None
    input_tokens: int
    output_tokens: int
    micro_usd: int
    # USD per million tokens (input, output), from the policy's prices; plain numbers so that
    # this module, which the verdict types import, imports nothing of the policy package.
    price: tuple[float, float] | None
    agent: str | None = None  # the grant's agent, for the metrics' bounded agent label
    slot: int = 0  # 1: holds one of the secret's concurrent requests (policy ``concurrency``)
    budgeted: bool = True  # False: only a concurrency slot, no tokens to charge or report

    def cost(self, tokens_in: int, tokens_out: int) -> int:
        """Micro-dollars for this usage, rounded up."""
        if self.price is None:
            return 0
        return math.ceil(tokens_in * self.price[0] + tokens_out * self.price[1])
