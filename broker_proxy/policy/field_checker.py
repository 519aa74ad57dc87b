"""The checker every policy field parser reads through: typed access to YAML nodes, each
problem collected with the line and column the operator has to fix.

Field parsers name it by the ``checking.NodeChecker`` protocol; the loader makes one per file
and raises ``PolicyError`` with everything it collected. Nothing here knows a policy section:
``fields`` takes the names a kind of mapping may hold from spec.py.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Container
from dataclasses import dataclass, field

import yaml

from broker_proxy.policy.issues import PolicyIssue
from broker_proxy.policy.spec import FIELDS, NAME_PATTERN, REQUIRED

_NAME = re.compile(NAME_PATTERN)
DECIMAL = re.compile(r"0|[1-9][0-9]*")

_YAML = "tag:yaml.org,2002:"
STR_TAG, INT_TAG, NULL_TAG = _YAML + "str", _YAML + "int", _YAML + "null"
_MERGE = _YAML + "merge"
_STANDARD_TAGS = frozenset(
    _YAML + name for name in ("str", "int", "float", "bool", "null", "seq", "map", "timestamp")
)
_TYPE_NAMES = {
    INT_TAG: "an integer", _YAML + "float": "a number", _YAML + "bool": "a boolean",
    NULL_TAG: "nothing", _YAML + "timestamp": "a date", STR_TAG: "a string",
}
_FREE_TEXT = ("a string", "a variable name")


def join_path(path: str, name: str) -> str:
    """The field path of ``name`` under ``path`` as messages show it: ``secrets.k.inject``."""
    return f"{path}.{name}" if path else name


def quoted(value: str) -> str:
    """A value from the file as a message quotes it: JSON-escaped, cut at 100 characters."""
    shown = value if len(value) <= 100 else value[:100] + "..."
    return json.dumps(shown, ensure_ascii=False)


def suggestion(name: str, known: tuple[str, ...] | list[str]) -> str:
    """``; did you mean "x"?`` for a close known name, else nothing."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.7)
    return f'; did you mean "{close[0]}"?' if close else ""


@dataclass
class FieldChecker:
    """Reads nodes of one file and collects its problems (``issues``, in report order)."""

    source: str
    issues: list[PolicyIssue] = field(default_factory=list)

    def report(self, where: yaml.Node | yaml.Mark, path: str, message: str) -> None:
        mark = where.start_mark if isinstance(where, yaml.Node) else where
        self.issues.append(
            PolicyIssue(self.source, mark.line + 1, mark.column + 1, path or "policy", message)
        )

    def standard(self, node: yaml.Node, path: str) -> bool:
        """Only plain YAML types: a custom tag would mean something this loader ignores."""
        if node.tag in _STANDARD_TAGS:
            return True
        tag = "!!" + node.tag.removeprefix(_YAML) if node.tag.startswith(_YAML) else node.tag
        self.report(node, path, f"unsupported YAML tag {quoted(tag)}; use plain values")
        return False

    def kind(self, node: yaml.Node, path: str, node_type: type, expected: str) -> bool:
        # The set test first: this runs for every node of the file.
        if node.tag not in _STANDARD_TAGS and not self.standard(node, path):
            return False
        if isinstance(node, node_type):
            return True
        got = _TYPE_NAMES.get(node.tag, "a list" if isinstance(node, yaml.SequenceNode)
                              else "a mapping")
        self.report(node, path, f"expected {expected}, got {got}")
        return False

    def string(self, node: yaml.Node, path: str, expected: str = "a string") -> str | None:
        if not self.kind(node, path, yaml.ScalarNode, expected):
            return None
        if node.tag != STR_TAG:
            # YAML reads NO, 1.5 or 12345678 as other types; quoting helps where any text may go.
            hint = "; put it in quotes" if node.tag != NULL_TAG and expected in _FREE_TEXT else ""
            self.report(node, path,
                        f"expected {expected}, got {_TYPE_NAMES.get(node.tag, '?')}{hint}")
            return None
        text: str = node.value  # a str-tagged scalar's value is its text (PyYAML is untyped)
        return text

    def choice(self, node: yaml.Node, path: str, what: str, known: Container[str],
               hint: str) -> str | None:
        """A string from a closed set, so every enumerated field words its refusal alike."""
        value = self.string(node, path)
        if value is not None and value not in known:
            self.report(node, path, f"unknown {what} {quoted(value)}: {hint}")
            return None
        return value

    def integer(self, node: yaml.Node, path: str) -> int | None:
        if not self.kind(node, path, yaml.ScalarNode, "an integer"):
            return None
        # Decimal only: YAML 1.1 would read "0443" as octal and "0x1bb" as hex.
        if node.tag != INT_TAG or not DECIMAL.fullmatch(node.value):
            self.report(node, path, f"expected an integer, got {quoted(node.value)}")
            return None
        return int(node.value)

    def items(self, node: yaml.Node, path: str, expected: str) -> list[tuple[str, yaml.Node]]:
        """A sequence's items with their paths; ``expected`` names the list in messages."""
        if not self.kind(node, path, yaml.SequenceNode, expected):
            return []
        return [(f"{path}[{index}]", item) for index, item in enumerate(node.value)]

    def strings(self, node: yaml.Node, path: str,
                expected: str = "a list of strings") -> list[tuple[str, yaml.Node, str]] | None:
        """A list of strings as (path, node, value); None when it is not a list at all."""
        if not self.kind(node, path, yaml.SequenceNode, expected):
            return None
        found = []
        for item_path, item in self.items(node, path, expected):
            value = self.string(item, item_path)
            if value is not None:
                found.append((item_path, item, value))
        return found

    def entries(self, node: yaml.Node, path: str) -> list[tuple[str, yaml.Node, yaml.Node]]:
        """A mapping's (key, key node, value node) triples; duplicate and odd keys reported."""
        if not self.kind(node, path, yaml.MappingNode, "a mapping"):
            return []
        found: list[tuple[str, yaml.Node, yaml.Node]] = []
        first_line: dict[str, int] = {}
        for key, value in node.value:
            if key.tag == _MERGE:
                self.report(key, path, 'YAML merge keys ("<<") are not supported; '
                                       "write the fields out")
                continue
            if key.tag not in _STANDARD_TAGS and not self.standard(key, path):
                continue
            if not isinstance(key, yaml.ScalarNode) or key.tag == NULL_TAG:
                self.report(key, path, "expected a plain name as the key")
                continue
            name = key.value
            if name in first_line:
                self.report(key, join_path(path, name),
                            f"duplicate key {quoted(name)} (first at line {first_line[name]})")
                continue
            first_line[name] = key.start_mark.line + 1
            found.append((name, key, value))
        return found

    def fields(self, node: yaml.Node, path: str, kind: str, where: yaml.Node
               ) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
        """A fixed-field mapping of ``kind`` (spec.py); unknown fields (with a close suggestion)
        and missing required ones reported. ``where`` is the node a missing field is reported
        at."""
        if not self.kind(node, path, yaml.MappingNode, "a mapping"):
            return None
        known = FIELDS[kind]
        found: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for name, key, value in self.entries(node, path):
            if name not in known:
                self.report(key, join_path(path, name),
                            f"unknown field {quoted(name)}{suggestion(name, known)}")
                continue
            found[name] = (key, value)
        for name in REQUIRED[kind]:
            if name not in found:
                self.report(where, path, f"missing required field {quoted(name)}")
        return found

    def name(self, key: yaml.Node, path: str, what: str) -> bool:
        if _NAME.fullmatch(key.value):
            return True
        self.report(key, path, f"invalid {what} name {quoted(key.value)}: start with a letter,"
                               ' then up to 63 letters, digits, "_", "." or "-"')
        return False
