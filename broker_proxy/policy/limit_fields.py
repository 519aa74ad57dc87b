"""A secret's request rate: ``rate: "60/minute"`` and ``burst: 10``.

The rate is per grant: each grant that holds the secret gets its own bucket, so one task cannot
spend another's allowance. The bucket lives in the grant store (see grants/rate_limits.py), so the
limit is exact across ``--workers N`` and Redis replicas, as ``max_uses`` is.
"""

from __future__ import annotations

import re

import yaml

from broker_proxy.policy.checking import NodeChecker
from broker_proxy.policy.model import Budget, HostedToolRule, Price, RateLimit

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


# Kinds whose tools take a domain allow-list and a use cap (Anthropic web_search/web_fetch,
# OpenAI web_search's filters.allowed_domains): decision/hosted_tool_rules.py writes them.
REWRITABLE_KINDS = ("web_search", "web_fetch")
DOMAIN_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,62})(\.[a-z0-9][a-z0-9-]{0,62})*$"
MAX_DOMAINS = 100
MAX_TOOL_USES = 1000
_DOMAIN = re.compile(DOMAIN_PATTERN)


def parse_hosted_tools(node: yaml.Node, path: str, checker: NodeChecker
                       ) -> tuple[frozenset[str], tuple[tuple[str, HostedToolRule], ...]]:
    """The secret's ``hosted_tools``: kinds such as web_search or mcp; [] allows none.

    Either a list of kinds (allowed as the request asks for them) or a mapping of kind to
    ``{allowed_domains, max_uses}``, which the proxy writes into the tool (web_search and
    web_fetch only); ``{}`` as a kind's value allows it as-is, like the list form.
    """
    if isinstance(node, yaml.MappingNode):
        return _hosted_tool_mapping(node, path, checker)
    listed = checker.strings(node, path, "a list of hosted tool kinds such as web_search, "
                                         "or a mapping of kind to {allowed_domains, max_uses}")
    kinds = set()
    for item_path, item, value in listed or ():
        if _tool_kind(item, item_path, value, checker):
            kinds.add(value)
    return frozenset(kinds), ()


def _tool_kind(node: yaml.Node, path: str, value: str, checker: NodeChecker) -> bool:
    if _TOOL_KIND.fullmatch(value):
        return True
    checker.report(node, path, "a hosted tool kind is a name such as web_search, "
                               "web_fetch, code_execution or mcp")
    return False


def _hosted_tool_mapping(node: yaml.MappingNode, path: str, checker: NodeChecker
                         ) -> tuple[frozenset[str], tuple[tuple[str, HostedToolRule], ...]]:
    kinds: set[str] = set()
    rules: list[tuple[str, HostedToolRule]] = []
    for key, value in node.value:
        kind = str(key.value) if isinstance(key, yaml.ScalarNode) else ""
        where = f"{path}.{kind}"
        if not _tool_kind(key, where, kind, checker):
            continue
        if kind in kinds:
            checker.report(key, where, "this kind is named twice")
            continue
        kinds.add(kind)
        if isinstance(value, yaml.ScalarNode) and value.tag == "tag:yaml.org,2002:null":
            continue  # "web_search:" with nothing under it: allowed as-is
        fields = checker.fields(value, where, "hosted_tool", key)
        if fields is None:
            continue
        rule = _hosted_tool_rule(fields, where, checker)
        if rule.rewrites and kind not in REWRITABLE_KINDS:
            checker.report(key, where, "allowed_domains and max_uses are only written into "
                                       + " and ".join(REWRITABLE_KINDS) + " tools")
            continue
        if rule.rewrites:
            rules.append((kind, rule))
    return frozenset(kinds), tuple(sorted(rules, key=lambda rule: rule[0]))


def _hosted_tool_rule(fields: dict[str, tuple[yaml.Node, yaml.Node]], where: str,
                      checker: NodeChecker) -> HostedToolRule:
    domains = None
    if "allowed_domains" in fields:
        listed = checker.strings(fields["allowed_domains"][1], f"{where}.allowed_domains",
                                 "a list of domains such as docs.python.org")
        found = []
        for item_path, item, value in listed or ():
            if not _DOMAIN.fullmatch(value) or len(value) > 253:
                checker.report(item, item_path, "a domain in lower case without scheme or path, "
                                                "such as docs.python.org (subdomains included)")
                continue
            found.append(value)
        if listed is not None and not 1 <= len(listed) <= MAX_DOMAINS:
            checker.report(fields["allowed_domains"][1], f"{where}.allowed_domains",
                           f"list 1 to {MAX_DOMAINS} domains")
        domains = tuple(sorted(set(found)))
    uses = None
    if "max_uses" in fields:
        uses = checker.integer(fields["max_uses"][1], f"{where}.max_uses")
        if uses is not None and not 1 <= uses <= MAX_TOOL_USES:
            checker.report(fields["max_uses"][1], f"{where}.max_uses",
                           f"must be from 1 to {MAX_TOOL_USES}")
    return HostedToolRule(domains, uses)
