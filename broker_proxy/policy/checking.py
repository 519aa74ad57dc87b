"""What a field parser needs from the policy loader's checker: read a YAML node, report a problem.

The loader makes the checker (field_checker.FieldChecker collects every issue of one file, with
its line and column); the field parsers only call it. They name it by this protocol, not by the
class, so a parser states what it reads through and nothing else.
"""

from __future__ import annotations

from collections.abc import Container, Sized
from typing import Protocol

import yaml


class NodeChecker(Protocol):
    @property
    def issues(self) -> Sized:
        """The problems reported so far: a parser compares counts to see whether it added one."""

    def report(self, where: yaml.Node | yaml.Mark, path: str, message: str) -> None: ...

    def kind(self, node: yaml.Node, path: str, node_type: type, expected: str) -> bool: ...

    def string(self, node: yaml.Node, path: str, expected: str = "a string") -> str | None: ...

    def integer(self, node: yaml.Node, path: str) -> int | None: ...

    def choice(self, node: yaml.Node, path: str, what: str, known: Container[str],
               hint: str) -> str | None: ...

    def items(self, node: yaml.Node, path: str, expected: str
              ) -> list[tuple[str, yaml.Node]]: ...

    def strings(self, node: yaml.Node, path: str, expected: str = "a list of strings"
                ) -> list[tuple[str, yaml.Node, str]] | None: ...

    def entries(self, node: yaml.Node, path: str
                ) -> list[tuple[str, yaml.Node, yaml.Node]]: ...

    def fields(self, node: yaml.Node, path: str, kind: str, where: yaml.Node
               ) -> dict[str, tuple[yaml.Node, yaml.Node]] | None: ...

    def name(self, key: yaml.Node, path: str, what: str) -> bool: ...
