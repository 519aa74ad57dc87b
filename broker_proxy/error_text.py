"""The one line an operator reads for a known failure of the core.

Used by the CLI and by the `mitmdump -s` entry point alike, so a bad option or file reads the
same in both, and the addon layer never has to import the CLI to say why it cannot start.
"""

from __future__ import annotations

from broker_proxy.admin_api import AdminApiError
from broker_proxy.audit.log import AuditError
from broker_proxy.durations import DurationError
from broker_proxy.grants.store import GrantError
from broker_proxy.policy.loader import PolicyError
from broker_proxy.policy.resolve_pins import PinError
from broker_proxy.runtime.home_lock import HomeBusy
from broker_proxy.runtime.replica import ReplicaIdError
from broker_proxy.secrets.backends import SecretUnavailable
from broker_proxy.secrets.master_key import MasterKeyError
from broker_proxy.secrets.vault import VaultError

_KNOWN = (
    AdminApiError,
    AuditError,
    DurationError,
    GrantError,
    HomeBusy,
    MasterKeyError,
    PinError,
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
