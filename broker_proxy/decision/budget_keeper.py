"""The broker's side of LLM budgets: reserve when a request is admitted, settle from its answer.

Kept out of broker.py so the decision still reads top to bottom there; this holds the store
calls, the metrics and the audit fields of token use (llm_budget.py plans, llm_usage.py reads).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import Any

from broker_proxy.decision.llm_budget import (
    BUDGET_EXHAUSTED,
    CONCURRENCY_LIMITED,
    Unbounded,
    plan,
)
from broker_proxy.grants.model import Grant
from broker_proxy.grants.store import GrantStore, GrantStoreBusy, GrantStoreError
from broker_proxy.metrics import BrokerMetrics
from broker_proxy.policy.model import Policy, SecretPolicy
from broker_proxy.request.outbound import OutboundRequest
from broker_proxy.request.reservation import Reservation

log = logging.getLogger("broker_proxy")

_WORDS = {"input_tokens": "input tokens", "output_tokens": "output tokens",
          "micro_usd": "cost", "requests": "concurrent requests"}


@dataclass(frozen=True, slots=True)
class Reserved:
    """The reservations held, and the request as it will be sent (fields the proxy set)."""

    tickets: tuple[Reservation, ...]
    request: OutboundRequest
    body_changed: bool


def model_label(model: str | None, secret: SecretPolicy, policy: Policy) -> str:
    """A bounded metric label: the model when the policy names it, the glob it matched, or
    "other"; never a free-form string an agent chose."""
    if model is None:
        return "other"
    globs = [*secret.models, *(glob for glob, _ in policy.prices)]
    if model in globs:
        return model
    return next((glob for glob in globs if fnmatchcase(model, glob)), "other")


class BudgetKeeper:
    def __init__(self, grants: GrantStore, metrics: BrokerMetrics) -> None:
        self.grants = grants
        self.metrics = metrics
        # Settling runs in the answer's hook, on the proxy's event loop: a store call that
        # would wait (a Redis round trip, a SQLite lock another process holds) goes to this
        # thread instead. Until it lands the reservation stays held: stricter, never looser.
        self._settler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="budget-settle")

    def reserve(self, request: OutboundRequest, grant: Grant, policy: Policy,
                names: list[str], wait: bool,
                deadline: float | None = None) -> Reserved | Unbounded:
        """Plan and hold a reservation for each budgeted secret the request carries.

        GrantStoreBusy and GrantStoreError pass through after releasing what was held here.
        """
        tickets: list[Reservation] = []
        changed = False
        try:
            for name in names:
                secret = policy.secrets[name]
                budget = secret.budget
                if budget is None and secret.concurrency is None:
                    continue
                if budget is not None:
                    planned = plan(request, name, budget, policy.prices)
                    if isinstance(planned, Unbounded):
                        self.release(grant.id, tuple(tickets))
                        return planned
                    ticket, body = planned
                    if body is not None:
                        request, changed = replace(request, body=body), True
                else:
                    ticket = Reservation(name, None, 0, 0, 0, None, budgeted=False)
                ticket = replace(ticket, agent=grant.agent,
                                 slot=1 if secret.concurrency is not None else 0)
                caps = (budget.input_tokens, budget.output_tokens, budget.micro_usd) \
                    if budget is not None else (None, None, None)
                over = self.grants.reserve_budget(grant, name, (*caps, secret.concurrency),
                                                  _held(ticket), wait=wait,
                                                  deadline=deadline)
                if over is not None:
                    self.release(grant.id, tuple(tickets))
                    if over == "requests":
                        self.metrics.rate_limited.labels(name).inc()
                        return Unbounded(429, CONCURRENCY_LIMITED,
                                         f"this grant already has {secret.concurrency} "
                                         f'requests with secret "{name}" in flight')
                    self.metrics.budget_refusals.labels(name, over).inc()
                    return Unbounded(429, BUDGET_EXHAUSTED,
                                     f'this grant\'s {_WORDS[over]} budget for secret "{name}" '
                                     "would be exceeded by this request")
                tickets.append(ticket)
        except Exception:
            self.release(grant.id, tuple(tickets))
            raise
        return Reserved(tuple(tickets), request, changed)

    def release(self, grant_id: str, tickets: tuple[Reservation, ...]) -> None:
        """A request admitted against the budget did not leave: give its reservations back."""
        for ticket in tickets:
            # Possibly on the event loop, and right after the store said it was busy: never
            # wait for its lock here (see _store_settlement).
            self._store_settlement(grant_id, ticket, (0, 0, 0, 0))

    def settle(self, grant_id: str, tickets: tuple[Reservation, ...],
               usage: tuple[int, int] | None, policy: Policy) -> dict[str, Any]:
        """Charge the answer's usage (or, unread, each whole reservation); the audit fields."""
        fields: dict[str, Any] = {}
        for ticket in tickets:
            if not ticket.budgeted:
                used = (0, 0, 0, 0)  # only the slot is given back
            elif usage is None:
                used = (ticket.input_tokens, ticket.output_tokens, ticket.micro_usd, 0)
            else:
                used = (usage[0], usage[1], ticket.cost(*usage), 0)
            self._store_settlement(grant_id, ticket, used)
            if not ticket.budgeted:
                continue
            secret = policy.secrets.get(ticket.secret)
            label = model_label(ticket.model, secret, policy) if secret else "other"
            agent_label = ticket.agent if ticket.agent in policy.agents else "other"
            tokens = self.metrics.llm_tokens
            tokens.labels(agent_label, ticket.secret, label, "input").inc(used[0])
            tokens.labels(agent_label, ticket.secret, label, "output").inc(used[1])
            self.metrics.llm_cost.labels(agent_label, ticket.secret).inc(used[2] / 1_000_000)
            fields = {"model": ticket.model, "input_tokens": used[0], "output_tokens": used[1],
                      "cost_usd": used[2] / 1_000_000,
                      "usage": "reported" if usage is not None else "unreadable"}
        return fields


    def _store_settlement(self, grant_id: str, ticket: Reservation,
                          used: tuple[int, int, int, int]) -> None:
        if not self.grants.remote:
            try:
                self.grants.settle_budget(grant_id, ticket.secret, _held(ticket), used,
                                          wait=False)
                return
            except GrantStoreBusy:
                pass  # another writer holds the lock: settle on the thread
            except GrantStoreError as error:
                log.warning("budget settle failed: %s", error)
                return
        self._settler.submit(self._settle_waiting, grant_id, ticket, used)

    def _settle_waiting(self, grant_id: str, ticket: Reservation,
                        used: tuple[int, int, int, int]) -> None:
        try:
            self.grants.settle_budget(grant_id, ticket.secret, _held(ticket), used)
        except GrantStoreError as error:  # stays held: counted as spent, never as free
            log.warning("budget settle failed: %s", error)

    def close(self) -> None:
        """Wait for settlements in flight (the proxy is stopping)."""
        self._settler.shutdown(wait=True)


def _held(ticket: Reservation) -> tuple[int, int, int, int]:
    return ticket.input_tokens, ticket.output_tokens, ticket.micro_usd, ticket.slot
