"""Turning the core's typed errors into the one line an operator reads."""

from __future__ import annotations

from broker_proxy.error_text import describe_error

__all__ = ["CliError", "describe_error"]


class CliError(Exception):
    """A failure the command itself detected; its message is the whole story."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
