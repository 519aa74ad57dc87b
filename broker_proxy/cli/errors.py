"""Turning the core's typed errors into the one line an operator reads."""

from __future__ import annotations

from broker_proxy.admin_api import AdminApiError
from broker_proxy.audit.log import AuditError
from broker_proxy.durations import DurationError
from broker_proxy.grants.store import GrantError
from broker_proxy.policy.loader import PolicyError
from broker_proxy.replica import ReplicaIdError
from broker_proxy.secrets.backends import SecretUnavailable
from broker_proxy.secrets.master_key import MasterKeyError
from broker_proxy.secrets.vault import VaultError


class CliError(Exception):
    """A failure the command itself detected; its message is the whole story."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


_KNOWN = (
    AdminApiError,
    AuditError,
    DurationError,
    GrantError,
    MasterKeyError,
    ReplicaIdError,
    SecretUnavailable,
    VaultError,
)


def describe_error(error: Exception) -> str | None:
    """The operator's message for a known error, or None for a bug."""
    if isinstance(error, PolicyError):
        # One line per problem, each FILE:LINE:COL: field: message.
        return str(error)
    if isinstance(error, _KNOWN):
        return f"broker-proxy: {_one_line(str(error))}"
    if isinstance(error, OSError):
        where = f" {error.filename}" if error.filename else ""
        return f"broker-proxy: cannot use{where}: {error.strerror or error}"
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split()) if "\n" in text else text
