"""Reading a secret's placeholder, and keeping every placeholder of a policy apart from the others.

The placeholder is what an agent writes where the secret goes; two secrets whose placeholders
are equal, or one inside the other, would make the swap ambiguous, so the loader checks all of
them once every secret is read.
"""

from __future__ import annotations

import re

import yaml

from broker_proxy.policy.checking import NodeChecker
from broker_proxy.policy.field_checker import quoted
from broker_proxy.policy.spec import PLACEHOLDER_MAX, PLACEHOLDER_MIN

# The shape of a default placeholder: no name holds a brace, so two different placeholders of
# this shape can never hold one another ("{{" begins each only at its start): only equal ones
# and placeholders of other shapes need comparing, which keeps a policy of 100,000 secrets O(n).
_DEFAULT_SHAPE = re.compile(r"\{\{secret:[A-Za-z][A-Za-z0-9_.-]{0,63}\}\}")


def default_placeholder(name: str) -> str:
    """The placeholder of secret ``name`` when its entry names none."""
    return "{{secret:" + name + "}}"


def parse_placeholder(node: yaml.Node, path: str, checker: NodeChecker) -> str | None:
    """A secret's own ``placeholder``: printable ASCII without spaces, of a bounded length."""
    placeholder = checker.string(node, path)
    if placeholder is None:
        return None
    printable = all("!" <= char <= "~" for char in placeholder)
    if not printable or not PLACEHOLDER_MIN <= len(placeholder) <= PLACEHOLDER_MAX:
        checker.report(node, path, f"must be {PLACEHOLDER_MIN} to {PLACEHOLDER_MAX} printable "
                                   "ASCII characters without spaces")
        return None
    return placeholder


def check_placeholders_apart(placeholders: list[tuple[str, str, yaml.Node | yaml.Mark, str]],
                             checker: NodeChecker) -> None:
    """One placeholder inside another would make the swap ambiguous: which secret was meant?

    ``placeholders`` are (secret name, placeholder, where, field path) in file order. Each
    placeholder is reported against the first earlier one it clashes with.
    """
    first_of: dict[str, int] = {}
    others: list[int] = []  # indices of placeholders not of the default shape
    for index, (_, placeholder, where, path) in enumerate(placeholders):
        clash = first_of.get(placeholder)
        if _DEFAULT_SHAPE.fullmatch(placeholder):
            earlier: list[int] | range = others
        else:
            earlier = range(clash if clash is not None else index)
            others.append(index)
        for other_index in earlier:
            if clash is not None and other_index >= clash:
                break
            other = placeholders[other_index][1]
            if placeholder in other or other in placeholder:
                clash = other_index
                break
        first_of.setdefault(placeholder, index)
        if clash is None:
            continue
        other_name, other = placeholders[clash][0], placeholders[clash][1]
        if placeholder == other:
            checker.report(where, path, f"placeholder is already used by secret "
                                        f"{quoted(other_name)}")
        else:
            checker.report(where, path, f"placeholder overlaps the placeholder of secret "
                                        f"{quoted(other_name)}: neither may contain the other")
