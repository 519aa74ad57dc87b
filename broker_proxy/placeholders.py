"""Finding placeholders in request text and swapping them for secret values.

One compiled regular expression covers every placeholder of the policy plus the generic
``{{secret:NAME}}`` form, so a request is scanned once whatever the number of secrets. The
generic form also matches names that are not in the policy: such a request must be refused with
the same answer as for a secret that exists but is not granted, so the agent learns nothing about
which names exist.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

GENERIC_PLACEHOLDER = r"\{\{secret:(?P<name>[A-Za-z0-9_.\-]{1,64})\}\}"
# Any "{{secret:" that is not a well-formed generic placeholder is still a reference to a
# secret: it is reported (name None) rather than passed through, so a malformed attempt cannot
# slip a half-substituted value past the checks.
MALFORMED_PLACEHOLDER = r"\{\{secret:"


def default_placeholder(secret_name: str) -> str:
    return "{{secret:" + secret_name + "}}"


class PlaceholderHit(NamedTuple):
    start: int
    end: int
    secret: str | None  # None: looks like a placeholder but names nothing we can parse


class PlaceholderScanner:
    """Scans text for the placeholders of one policy; built once per policy load."""

    def __init__(self, placeholders: Mapping[str, str]) -> None:
        """``placeholders`` maps each secret name to its placeholder string."""
        self._secret_by_custom = {
            text: name
            for name, text in placeholders.items()
            if text != default_placeholder(name)
        }
        # Longest first so that one placeholder that is a prefix of another cannot win.
        custom = sorted(self._secret_by_custom, key=len, reverse=True)
        alternatives = [f"(?P<custom>{'|'.join(map(re.escape, custom))})"] if custom else []
        alternatives.append(f"(?P<generic>{GENERIC_PLACEHOLDER})")
        alternatives.append(f"(?P<malformed>{MALFORMED_PLACEHOLDER})")
        self._pattern = re.compile("|".join(alternatives))
        # A fast pre-check: most requests carry no placeholder at all.
        self._markers = ("{{secret:", *custom)

    def might_contain(self, text: str) -> bool:
        return any(marker in text for marker in self._markers)

    def find(self, text: str) -> list[PlaceholderHit]:
        if not self.might_contain(text):
            return []
        return [self._hit(match) for match in self._pattern.finditer(text)]

    def substitute(self, text: str, value_of: Callable[[str], str]) -> str:
        """Replace every placeholder in one pass.

        A single pass means a secret value that itself contains a placeholder is never expanded
        again. The caller has already checked every hit, so a hit without a name is a bug.
        """

        def replace(match: re.Match[str]) -> str:
            hit = self._hit(match)
            if hit.secret is None:
                raise ValueError("unchecked malformed placeholder")
            return value_of(hit.secret)

        return self._pattern.sub(replace, text)

    def _hit(self, match: re.Match[str]) -> PlaceholderHit:
        groups = match.groupdict()
        if groups.get("name") is not None:
            name: str | None = groups["name"]
        elif groups.get("custom") is not None:
            name = self._secret_by_custom[groups["custom"]]
        else:
            name = None
        return PlaceholderHit(match.start(), match.end(), name)


def names_in(hits: Iterable[PlaceholderHit]) -> set[str | None]:
    return {hit.secret for hit in hits}
