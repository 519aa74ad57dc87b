"""What a policy that cannot be used is reported as: every problem, with where to fix it.

Apart from the loader because everything that reads a policy reports through these (the field
parsers, the composer, the linter), and because the loader's child process sends them back
pickled: the parent's restricted unpickler allows this module by name.
"""

from __future__ import annotations

from typing import NamedTuple


class PolicyIssue(NamedTuple):
    """One problem, pointing at the line and column (1-based) where the operator fixes it."""

    file: str
    line: int
    column: int
    field_path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.field_path}: {self.message}"


class PolicyError(Exception):
    """A policy that cannot be used; ``issues`` lists every problem found, in file order."""

    def __init__(self, issues: list[PolicyIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(issue) for issue in issues))
