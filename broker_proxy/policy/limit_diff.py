"""`policy diff` for a secret's limits: a raised or dropped limit widens, a new or lower one
narrows (docs/limits.md)."""

from __future__ import annotations

from broker_proxy.policy.model import Budget, RateLimit, SecretPolicy

# (kind, detail, widening) per change; diff.py turns them into its Change lines.
LimitChange = tuple[str, str, bool]


def limit_changes(before: SecretPolicy, after: SecretPolicy) -> list[LimitChange]:
    found: list[LimitChange] = []
    found += _rate(before.rate, after.rate)
    found += _cap("concurrency", before.concurrency, after.concurrency)
    found += _budget(before.budget, after.budget)
    old_models, new_models = set(before.models), set(after.models)
    if before.models and (not after.models or new_models - old_models):
        added = sorted(new_models - old_models)
        found.append(("limit_widened", "models: " + (", ".join(added) + " added" if after.models
                                                     else "any model now"), True))
    elif after.models and (not before.models or old_models - new_models):
        found.append(("limit_narrowed", "models: " + ", ".join(sorted(new_models)), False))
    if before.llm_rules and not after.llm_rules:
        found.append(("limit_widened", "no LLM rules: hosted tools no longer refused", True))
    elif before.llm_rules:
        added_tools = (after.hosted_tools or frozenset()) - (before.hosted_tools or frozenset())
        if added_tools:
            found.append(("limit_widened", "hosted tools now allowed: "
                          + ", ".join(sorted(added_tools)), True))
    return found


def _rate(before: RateLimit | None, after: RateLimit | None) -> list[LimitChange]:
    if before == after:
        return []
    if after is None:
        return [("limit_widened", f"rate {before} removed", True)]
    if before is None or after.at_most(before):
        return [("limit_narrowed", f"rate now {after}", False)]
    return [("limit_widened", f"rate {before} -> {after}", True)]


def _cap(name: str, before: float | None, after: float | None) -> list[LimitChange]:
    if before == after:
        return []
    if after is None:
        return [("limit_widened", f"{name} {before} removed", True)]
    if before is None or after < before:
        return [("limit_narrowed", f"{name} now {after}", False)]
    return [("limit_widened", f"{name} {before} -> {after}", True)]


def _budget(before: Budget | None, after: Budget | None) -> list[LimitChange]:
    if before == after:
        return []
    def usd(micro: int | None) -> float | None:
        return None if micro is None else micro / 1_000_000

    old = (None, None, None) if before is None else (
        before.input_tokens, before.output_tokens, usd(before.micro_usd))
    new = (None, None, None) if after is None else (
        after.input_tokens, after.output_tokens, usd(after.micro_usd))
    found: list[LimitChange] = []
    for name, a, b in zip(("budget.input_tokens", "budget.output_tokens", "budget.cost_usd"),
                          old, new, strict=True):
        found += _cap(name, a, b)
    return found
