"""The broker's limit checks: LLM rules (models, hosted tools), budgets and rates.

A mixin of ``Broker`` so that ``Broker.decide`` still reads top to bottom in broker.py, with
each limit one line there; the store calls and refusals of each are here.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime
from typing import Any

from broker_proxy.decision.active_policy import ActivePolicy
from broker_proxy.decision.budget_keeper import BudgetKeeper, Reserved
from broker_proxy.decision.hosted_tool_rules import ToolTermsRefused, apply_tool_rules
from broker_proxy.decision.hosted_tools import HOSTED_TOOL_NOT_ALLOWED, hosted_tool_problem
from broker_proxy.decision.llm_budget import CONCURRENCY_LIMITED, Unbounded
from broker_proxy.decision.request_scan import RequestRewriter
from broker_proxy.grants.model import Grant
from broker_proxy.grants.store import GrantStore, GrantStoreBusy, GrantStoreError
from broker_proxy.metrics import BrokerMetrics
from broker_proxy.request import codes
from broker_proxy.request.model_rules import MODEL_NOT_ALLOWED, model_problem
from broker_proxy.request.outbound import Allowed, Denied, OutboundRequest


class DecisionMustWait(Exception):
    """The decision needs the grant store's write lock, which another writer holds."""


class LimitChecks:
    # Provided by Broker (a dataclass): declared here for the type checker only.
    policy: ActivePolicy
    grants: GrantStore
    metrics: BrokerMetrics
    budgets: BudgetKeeper

    def _deny(self, request: OutboundRequest, grant: Grant | None, status: int, code: str,
              message: str, *, challenge: bool = False,
              fields: dict[str, Any] | None = None) -> Denied:
        raise NotImplementedError

    def _llm_rule_refusal(self, request: OutboundRequest, grant: Grant, policy: ActivePolicy,
                          names: list[str]) -> Denied | OutboundRequest | None:
        """403 for a model or a hosted tool the secrets' LLM rules do not allow.

        A request whose hosted tools the policy allows on terms (hosted_tool_rules.py) comes
        back with those terms written into its body, before anything is spent or signed.
        """
        rewritten = None
        for name in names:
            secret = policy.policy.secrets[name]
            if not secret.llm_rules:
                continue
            if secret.models and (problem := model_problem(request, secret.models, name)):
                return self._deny(request, grant, 403, MODEL_NOT_ALLOWED, problem)
            if problem := hosted_tool_problem(request.body, secret.hosted_tools or frozenset(),
                                              name):
                return self._deny(request, grant, 403, HOSTED_TOOL_NOT_ALLOWED, problem)
            if secret.hosted_tool_rules:
                try:
                    body = apply_tool_rules(request.body, dict(secret.hosted_tool_rules), name)
                except ToolTermsRefused as error:
                    return self._deny(request, grant, 403, HOSTED_TOOL_NOT_ALLOWED, str(error))
                if body is not None:
                    request = rewritten = replace(request, body=body)
        return rewritten

    @staticmethod
    def _body_to_send(rewriter: RequestRewriter, body: bytes, changed: bool) -> bytes | None:
        """The body with its placeholders swapped; also when only the proxy changed it."""
        swapped = rewriter.body(body)
        return body if swapped is None and changed else swapped

    def _budget_reservations(self, request: OutboundRequest, grant: Grant,
                             policy: ActivePolicy, names: list[str],
                             wait: bool, deadline: float | None = None) -> Reserved | Denied:
        """Hold the LLM budget reservations of this request (budget_keeper.py), or refuse."""
        try:
            reserved = self.budgets.reserve(request, grant, policy.policy, names, wait,
                                            deadline)
        except GrantStoreBusy:
            raise DecisionMustWait from None  # what was held is given back already
        except GrantStoreError:
            return self._deny(request, grant, 503, codes.GRANT_STORE_UNAVAILABLE,
                              "the grant store cannot be used; nothing was sent")
        if isinstance(reserved, Unbounded):
            denied = self._deny(request, grant, reserved.status, reserved.code,
                                reserved.message)
            # A slot frees when an answer completes: worth trying again soon.
            return replace(denied, retry_after=1) if reserved.code == CONCURRENCY_LIMITED \
                else denied
        return reserved

    def settle_budget(self, allowed: Allowed, usage: tuple[int, int] | None) -> dict[str, Any]:
        """The answer of a budgeted request came (or never will): charge it; audit fields."""
        if not allowed.budget:
            return {}
        return self.budgets.settle(allowed.grant_id, allowed.budget, usage,
                                   self.policy.policy)

    def _rate_refusal(self, request: OutboundRequest, grant: Grant, policy: ActivePolicy,
                      names: list[str], now: datetime, wait: bool,
                      deadline: float | None = None) -> Denied | None:
        """429 when a secret this request carries is over the grant's rate (rate_limits.py).

        Checked before the use is spent, so a refused request costs no use; each secret's
        bucket is taken in turn, so a request refused for its second secret has spent one
        step of its first (the rate errs on the side of fewer requests, never more).
        """
        for name in names:
            rate = policy.policy.secrets[name].rate
            if rate is None:
                continue
            try:
                waiting = self.grants.take_rate(grant, name, rate, now, wait=wait,
                                                  deadline=deadline)
            except GrantStoreBusy:
                raise DecisionMustWait from None  # nothing written or spent yet
            except GrantStoreError:
                return self._deny(request, grant, 503, codes.GRANT_STORE_UNAVAILABLE,
                                  "the grant store cannot be used; nothing was sent")
            if waiting > 0:
                self.metrics.rate_limited.labels(name).inc()
                retry = max(1, math.ceil(waiting))
                denied = self._deny(request, grant, 429, codes.RATE_LIMITED,
                                    f'this grant\'s rate for secret "{name}" is spent; '
                                    f"retry in {retry}s")
                return replace(denied, retry_after=retry)
        return None

