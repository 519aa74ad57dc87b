"""Finding placeholders in request text and swapping them for secret values.

One compiled regular expression covers every placeholder of the policy plus the generic
``{{secret:NAME}}`` form, so a request is scanned once whatever the number of secrets. The
generic form also matches names that are not in the policy: such a request must be refused with
the same answer as for a secret that exists but is not granted, so the agent learns nothing about
which names exist.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from broker_proxy.policy.model import PlaceholderFormat

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

    def __init__(self, placeholders: Mapping[str, str],
                 formats: Mapping[str, PlaceholderFormat] | None = None) -> None:
        """``placeholders`` maps each secret name to its placeholder string; ``formats`` the
        secrets whose grants each draw their own placeholder (see ``for_grant``)."""
        self._secret_by_custom = {
            text: name
            for name, text in placeholders.items()
            if text != default_placeholder(name)
        }
        # Longest first so that one placeholder that is a prefix of another cannot win.
        custom = sorted(self._secret_by_custom, key=len, reverse=True)
        alternatives = [f"(?P<custom>{'|'.join(map(re.escape, custom))})"] if custom else []
        # Per-grant placeholders: one generic pattern per format, never one regex per grant.
        # Any text of that shape is a hit; ``for_grant`` says which secret (if any) it names
        # for the grant at hand, so a placeholder of another grant is refused, not passed on.
        shapes = sorted({_format_pattern(shape) for shape in (formats or {}).values()},
                        key=len, reverse=True)
        if shapes:
            alternatives.append(f"(?P<formatted>{'|'.join(shapes)})")
        self._per_grant: dict[str, str] = {}
        alternatives.append(f"(?P<generic>{GENERIC_PLACEHOLDER})")
        alternatives.append(f"(?P<malformed>{MALFORMED_PLACEHOLDER})")
        self._pattern = re.compile("|".join(alternatives))
        # A fast pre-check: most requests carry no placeholder at all.
        prefixes = sorted({shape.prefix for shape in (formats or {}).values()})
        self._markers = ("{{secret:", *custom, *prefixes)
        # One C-level search instead of a generator over the markers, per header and field.
        self._marker_search = re.compile("|".join(re.escape(m) for m in self._markers)).search

    def for_grant(self, placeholders: Mapping[str, str]) -> PlaceholderScanner:
        """The same scanner, reading per-grant placeholders as this grant's (name -> text).

        Cheap (a dict, no compiling), so it is made per request rather than cached.
        """
        if not placeholders:
            return self
        bound = copy.copy(self)
        bound._per_grant = {text: name for name, text in placeholders.items()}
        return bound

    def might_contain(self, text: str) -> bool:
        return self._marker_search(text) is not None

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
        elif groups.get("formatted") is not None:
            name = self._per_grant.get(groups["formatted"])
        else:
            name = None
        return PlaceholderHit(match.start(), match.end(), name)


def _format_pattern(shape: PlaceholderFormat) -> str:
    alphabet = "".join(re.escape(char) for char in shape.alphabet)
    # Not followed by another alphabet character: a longer token is something else.
    return f"{re.escape(shape.prefix)}[{alphabet}]{{{shape.length}}}(?![{alphabet}])"


def names_in(hits: Iterable[PlaceholderHit]) -> set[str | None]:
    return {hit.secret for hit in hits}
