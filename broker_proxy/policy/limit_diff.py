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
        found += _tool_terms(before, after)
    return found


def _tool_terms(before: SecretPolicy, after: SecretPolicy) -> list[LimitChange]:
    """A hosted tool's terms (allowed_domains, max_uses) loosened or dropped widens."""
    found: list[LimitChange] = []
    old, new = dict(before.hosted_tool_rules), dict(after.hosted_tool_rules)
    for kind in sorted(set(old) | set(new)):
        if kind not in (after.hosted_tools or ()):
            continue  # no longer allowed at all: not a loosening
        was, now = old.get(kind), new.get(kind)
        if was is None and now is not None:
            if kind in (before.hosted_tools or ()):
                found.append(("limit_narrowed", f"hosted tool {kind}: terms added", False))
            continue
        if was is None or now is None:
            if was is not None:
                found.append(("limit_widened", f"hosted tool {kind}: allow-list and use cap "
                              "dropped", True))
            continue
        wider = []
        if was.allowed_domains is not None and (now.allowed_domains is None or set(
                now.allowed_domains) - set(was.allowed_domains)):
            wider.append("domains " + (", ".join(sorted(set(now.allowed_domains)
                                                        - set(was.allowed_domains)))
                                       + " added" if now.allowed_domains else "any"))
        if was.max_uses is not None and (now.max_uses or 10**9) > was.max_uses:
            wider.append(f"max_uses {was.max_uses} -> {now.max_uses or 'none'}")
        if wider:
            found.append(("limit_widened", f"hosted tool {kind}: " + "; ".join(wider), True))
        elif was != now:
            found.append(("limit_narrowed", f"hosted tool {kind}: terms tightened", False))
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
