"""A secret's request rate: ``rate: "60/minute"`` and ``burst: 10``.

The rate is per grant: each grant that holds the secret gets its own bucket, so one task cannot
spend another's allowance. The bucket lives in the grant store (see grants/rate_limits.py), so the
limit is exact across ``--workers N`` and Redis replicas, as ``max_uses`` is.
"""

from __future__ import annotations

import re

import yaml

from broker_proxy.policy.checking import NodeChecker
from broker_proxy.policy.model import RateLimit

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
