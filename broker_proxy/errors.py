"""The one base of the broker's known errors: a one-line message, an HTTP status and a code.

A known error is one the operator (or the agent, through the proxy's JSON answer) can act on:
its message is the line they read, never a traceback, and never a secret value. Anything that
is not a ``BrokerError`` (nor an ``OSError`` naming a file) is reported as a bug.
``describe_error`` in error_text.py reads this base instead of a hand-kept list of types, and
a caller that answers over HTTP takes ``status`` and ``code`` from the error's class instead of
from its message text.

This module imports nothing of the package: every layer may raise these.
"""

from __future__ import annotations


class BrokerError(Exception):
    """Base of the errors an operator or agent is told about in one line."""

    status: int = 500
    code: str = "internal_error"

    @property
    def one_line(self) -> str:
        """The message on one line (a multi-line message is joined with single spaces)."""
        text = str(self)
        return " ".join(text.split()) if "\n" in text else text
