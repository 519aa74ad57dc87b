"""A secret's request rate: ``rate: "60/minute"`` and ``burst: 10``.

The rate is per grant: each grant that holds the secret gets its own bucket, so one task cannot
spend another's allowance. The bucket lives in the grant store (see grants/rate_limits.py), so the
limit is exact across ``--workers N`` and Redis replicas, as ``max_uses`` is.
"""

from __future__ import annotations

import re

import yaml

from broker_proxy.policy.checking import NodeChecker
from broker_proxy.policy.model import Budget, Price, RateLimit

# Seconds in each period a rate may be written per.
PERIODS: dict[str, int] = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
RATE_PATTERN = r"^[1-9][0-9]{0,8}/(second|minute|hour|day)$"
MAX_BURST = 1_000_000
_RATE = re.compile(RATE_PATTERN)


class RateSpellingError(ValueError):
    """A rate that is not "N/second|minute|hour|day" (the CLI shows it as one line)."""


def parse_rate_text(text: str, burst: int | None = None) -> RateLimit:
    """"60/minute" (and an optional burst) as a RateLimit; RateSpellingError otherwise."""
    if not _RATE.fullmatch(text):
        raise RateSpellingError(
            f'invalid rate "{text[:40]}": write N/second, N/minute, N/hour or N/day, '
            'e.g. "60/minute"')
    count, per = text.split("/")
    return RateLimit(int(count), PERIODS[per], burst if burst is not None else int(count))


def parse_rate(rate_node: yaml.Node, burst_node: yaml.Node | None, path: str,
               checker: NodeChecker) -> RateLimit | None:
    """The secret's ``rate`` and ``burst`` fields; None (and a reported issue) when wrong.

    The burst defaults to the count: "60/minute" lets 60 requests through at once, then one a
    second.
    """
    text = checker.string(rate_node, f"{path}.rate", 'a rate such as "60/minute"')
    burst = None
    burst_ok = True
    if burst_node is not None:
        burst = checker.integer(burst_node, f"{path}.burst")
        if burst is not None and not 1 <= burst <= MAX_BURST:
            checker.report(burst_node, f"{path}.burst", f"must be from 1 to {MAX_BURST}")
        burst_ok = burst is not None and 1 <= burst <= MAX_BURST
    if text is None:
        return None
    try:
        rate = parse_rate_text(text, burst)
    except RateSpellingError as error:
        checker.report(rate_node, f"{path}.rate", str(error))
        return None
    return rate if burst_ok else None


MODEL_GLOB = re.compile(r"[!-~]{1,200}")


def parse_models(node: yaml.Node, path: str, checker: NodeChecker) -> tuple[str, ...]:
    """The secret's ``models``: a non-empty list of globs ("gpt-4o*", "claude-sonnet-4-*")."""
    listed = checker.strings(node, path, "a list of model names or globs")
    if listed is None:
        return ()
    if not listed and not len(node.value):
        checker.report(node, path, "must list at least one model (leave it out for any)")
        return ()
    globs = []
    for item_path, item, value in listed:
        if not MODEL_GLOB.fullmatch(value):
            checker.report(item, item_path, "a model glob is 1 to 200 printable characters, "
                                            "no spaces")
            continue
        globs.append(value)
    return tuple(globs)


DEFAULT_MAX_TOKENS = 4096
MAX_TOKENS_CAP = 10**12
MAX_USD = 10**6
_NUMBER = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _number(node: yaml.Node, path: str, checker: NodeChecker, at_most: float) -> float | None:
    """A plain decimal such as 5 or 0.15 (no exponent, no sign), from 0 to ``at_most``."""
    if not checker.kind(node, path, yaml.ScalarNode, "a number"):
        return None
    if not node.tag.endswith((":int", ":float")) or not _NUMBER.fullmatch(node.value):
        checker.report(node, path, f"expected a number such as 5 or 0.15, got {node.value!r}")
        return None
    value = float(node.value)
    if value > at_most:
        checker.report(node, path, f"must be at most {at_most:g}")
        return None
    return value


def parse_budget(node: yaml.Node, path: str, checker: NodeChecker) -> Budget | None:
    """A secret's ``budget``: input_tokens, output_tokens, cost_usd, default_max_tokens."""
    fields = checker.fields(node, path, "budget", node)
    if fields is None:
        return None
    before = len(checker.issues)
    counts: dict[str, int | None] = {}
    for name in ("input_tokens", "output_tokens", "default_max_tokens"):
        counts[name] = None
        if name in fields:
            value = checker.integer(fields[name][1], f"{path}.{name}")
            if value is not None and not 1 <= value <= MAX_TOKENS_CAP:
                checker.report(fields[name][1], f"{path}.{name}",
                               f"must be from 1 to {MAX_TOKENS_CAP}")
            counts[name] = value
    micro_usd = None
    if "cost_usd" in fields:
        usd = _number(fields["cost_usd"][1], f"{path}.cost_usd", checker, MAX_USD)
        micro_usd = None if usd is None else round(usd * 1_000_000)
    if not {"input_tokens", "output_tokens", "cost_usd"} & set(fields):
        checker.report(node, path, "name at least one of input_tokens, output_tokens, cost_usd")
    if len(checker.issues) > before:
        return None
    return Budget(counts["input_tokens"], counts["output_tokens"], micro_usd,
                  counts["default_max_tokens"] or DEFAULT_MAX_TOKENS)


def parse_prices(node: yaml.Node, path: str, checker: NodeChecker
                 ) -> tuple[tuple[tuple[str, Price], ...], str | None]:
    """The top-level ``prices``: ``as_of`` (a date) and ``models`` (glob -> input, output)."""
    fields = checker.fields(node, path, "prices", node)
    if fields is None:
        return (), None
    as_of = None
    if "as_of" in fields:
        as_of = checker.string(fields["as_of"][1], f"{path}.as_of", "a date such as 2026-12-01")
        if as_of is not None and not _DATE.fullmatch(as_of):
            checker.report(fields["as_of"][1], f"{path}.as_of", "write the date as YYYY-MM-DD")
    table: list[tuple[str, Price]] = []
    if "models" in fields:
        models_path = f"{path}.models"
        for glob, key, value in _entries(fields["models"][1], models_path, checker):
            where = f"{models_path}.{glob}"
            if not MODEL_GLOB.fullmatch(glob):
                checker.report(key, where, "a model glob is 1 to 200 printable characters, "
                                           "no spaces")
                continue
            price = checker.fields(value, where, "price", key)
            if price is None or set(price) != {"input", "output"}:
                continue
            rates = [_number(price[n][1], f"{where}.{n}", checker, 10_000)
                     for n in ("input", "output")]
            if rates[0] is not None and rates[1] is not None:
                table.append((glob, Price(rates[0], rates[1])))
    return tuple(table), as_of


def _entries(node: yaml.Node, path: str, checker: NodeChecker
             ) -> list[tuple[str, yaml.Node, yaml.Node]]:
    if not checker.kind(node, path, yaml.MappingNode, "a mapping of model globs"):
        return []
    found = []
    for key, value in node.value:
        if isinstance(key, yaml.ScalarNode):
            found.append((str(key.value), key, value))
    return found


_TOOL_KIND = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


def parse_hosted_tools(node: yaml.Node, path: str, checker: NodeChecker) -> frozenset[str]:
    """The secret's ``hosted_tools``: kinds such as web_search or mcp; [] allows none."""
    listed = checker.strings(node, path, "a list of hosted tool kinds such as web_search")
    kinds = set()
    for item_path, item, value in listed or ():
        if not _TOOL_KIND.fullmatch(value):
            checker.report(item, item_path, "a hosted tool kind is a name such as web_search, "
                                            "web_fetch, code_execution or mcp")
            continue
        kinds.add(value)
    return frozenset(kinds)
