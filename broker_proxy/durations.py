"""Durations as people write them in policies and on the command line: "15m", "2h30m", "1d".

Only s, m, h and d exist, largest first, so "1m" can never be misread as a month and
"90m" or "1h30m" both say what they mean. A grant outliving a month is not a task-scoped
grant any more, so 30 days is the ceiling for every duration parsed here.
"""

from __future__ import annotations

import re
from datetime import timedelta

from broker_proxy.errors import BrokerError

MAX_DURATION = timedelta(days=30)

_UNIT_SECONDS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
# Each unit at most once and largest first; digits are capped so a typo cannot build a huge int.
# ASCII digits only: \d would also take fullwidth and other scripts' digits.
_DURATION = re.compile("".join(f"(?:([0-9]{{1,9}}){unit})?" for unit in _UNIT_SECONDS))


class DurationError(BrokerError, ValueError):
    """A duration that is not one of the forms above, zero, or longer than MAX_DURATION."""


def parse_duration(text: str) -> timedelta:
    """Parse "1h30m" into a timedelta; a DurationError names the text and the fix."""
    match = _DURATION.fullmatch(text) if isinstance(text, str) else None
    if match is None or not text:
        raise DurationError(
            f"invalid duration {_shown(text)}: use a number with s, m, h or d, e.g. 15m"
        )
    seconds = sum(
        int(amount) * _UNIT_SECONDS[unit]
        for amount, unit in zip(match.groups(), "dhms", strict=True)
        if amount is not None
    )
    if seconds <= 0:
        raise DurationError(f"invalid duration {_shown(text)}: must be longer than zero")
    if seconds > MAX_DURATION.total_seconds():
        raise DurationError(
            f"invalid duration {_shown(text)}: must be at most {format_duration(MAX_DURATION)}"
        )
    return timedelta(seconds=seconds)


def format_duration(duration: timedelta) -> str:
    """The inverse of parse_duration ("1d2h", "15m", "0s"); fractions of a second are dropped."""
    if duration < timedelta(0):
        raise DurationError("cannot format a negative duration")
    remaining = int(duration.total_seconds())
    parts = []
    for unit, size in _UNIT_SECONDS.items():
        amount, remaining = divmod(remaining, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts) or "0s"


def _shown(text: object) -> str:
    """Quote what the user typed, escaped and cut short, so a message stays one line."""
    shown = str(text)
    if len(shown) > 40:
        shown = shown[:40] + "..."
    return '"' + shown.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
