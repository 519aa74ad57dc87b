"""A grant's limits as a person reads them: budget used, in flight and left, rates, concurrency.

One view for `grant show` and the admin API's `GET /v1/grants/{id}` (which the console's grant
page shows), so both say the same. Caps are the stricter of the policy's *current* ones and those
the grant asked for at issue, as the request path enforces them (decision/limit_checks.py); with
no policy to read, only what the store holds is shown, without what is left.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from broker_proxy.grants.budgets import BudgetUse, stricter_caps
from broker_proxy.grants.store import GrantStore
from broker_proxy.policy.model import SecretPolicy

_DIMENSIONS = ("input_tokens", "output_tokens", "cost_usd")
_MICRO = 1_000_000


def budget_view(use: Mapping[str, BudgetUse], secrets: Mapping[str, SecretPolicy],
                names: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """secret -> {dimension: {used, in_flight, left, cap}, requests_in_flight}.

    Secrets in `use` (the store has a row: the grant spent or asked for its own caps), and those
    of `names` the policy gives a budget (nothing spent yet: all of it left).
    """
    view: dict[str, dict[str, Any]] = {}
    budgeted = [n for n in names if n in secrets and secrets[n].budget is not None]
    for name in sorted(set(use) | set(budgeted)):
        spent = use.get(name) or BudgetUse((0, 0, 0, 0), (0, 0, 0, 0))
        budget = secrets[name].budget if name in secrets else None
        policy_caps = (budget.input_tokens, budget.output_tokens, budget.micro_usd) if budget \
            else (None, None, None)
        caps = stricter_caps(policy_caps, spent.own[:3])
        entry: dict[str, Any] = {}
        for dimension, cap, used, held in zip(_DIMENSIONS, caps, spent.used[:3],
                                             spent.held[:3], strict=True):
            left = None if cap is None else max(0, cap - used - held)
            if dimension == "cost_usd":
                entry[dimension] = {"used": used / _MICRO, "in_flight": held / _MICRO,
                                    "left": None if left is None else left / _MICRO,
                                    "cap": None if cap is None else cap / _MICRO}
            else:
                entry[dimension] = {"used": used, "in_flight": held, "left": left, "cap": cap}
        entry["requests_in_flight"] = spent.held[3] if len(spent.held) > 3 else 0
        view[name] = entry
    return view


def limits_view(store: GrantStore, grant_id: str, grant_secrets: Iterable[str],
                secrets: Mapping[str, SecretPolicy]) -> dict[str, Any]:
    """The `limits` member of the admin API's grant: {} for a grant whose secrets have none."""
    names = list(grant_secrets)
    use = store.budget_use(grant_id)
    own_rates = store.own_rates(grant_id)
    out: dict[str, Any] = {}
    budget = budget_view(use, secrets, names)
    if budget:
        out["budget"] = budget
    rates: dict[str, dict[str, Any]] = {}
    concurrency: dict[str, dict[str, Any]] = {}
    for name in names:
        policy = secrets.get(name)
        if policy is not None and policy.rate is not None:
            rates[name] = {"policy": str(policy.rate),
                           "grant": rate_text(*own_rates[name]) if name in own_rates else None}
        spent = use.get(name)
        own = spent.own[3] if spent is not None and len(spent.own) > 3 else None
        cap = stricter_caps((policy.concurrency if policy else None,), (own,))[0]
        if cap is not None:
            concurrency[name] = {"cap": cap,
                                 "in_flight": spent.held[3] if spent and len(spent.held) > 3
                                 else 0}
    if rates:
        out["rates"] = rates
    if concurrency:
        out["concurrency"] = concurrency
    return out


def rate_text(interval_us: int, burst: int) -> str:
    """A rate the grant asked for, as the policy would spell it ("30/minute, burst 5")."""
    for seconds, per in ((60, "minute"), (3600, "hour"), (86400, "day"), (1, "second")):
        count, rest = divmod(seconds * 1_000_000, interval_us)
        if rest == 0 and count >= 1:
            return f"{count}/{per}, burst {burst}"
    return f"1/{interval_us / 1_000_000:g}s, burst {burst}"
