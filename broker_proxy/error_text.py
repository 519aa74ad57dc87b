"""The one line an operator reads for a known failure of the core.

Used by the CLI and by the `mitmdump -s` entry point alike, so a bad option or file reads the
same in both, and the addon layer never has to import the CLI to say why it cannot start. A
known error is a ``BrokerError`` (broker_proxy/errors.py); no list of types to keep.
"""

from __future__ import annotations

from broker_proxy.errors import BrokerError
from broker_proxy.policy.loader import PolicyError


def describe_error(error: Exception) -> str | None:
    """The operator's message for a known error, or None for a bug."""
    if isinstance(error, PolicyError):
        # One line per problem, each FILE:LINE:COL: field: message.
        return str(error)
    if isinstance(error, BrokerError):
        return f"broker-proxy: {error.one_line}"
    if isinstance(error, OSError):
        where = f" {error.filename}" if error.filename else ""
        return f"broker-proxy: cannot use{where}: {error.strerror or error}"
    return None
