"""Secrets: the value type that cannot leak, the encrypted vault, its key, and the backends.

Import from here; the submodules are split by job (value, vault, master_key, backends).
"""

from broker_proxy.secrets.backends import SecretResolver, SecretUnavailable
from broker_proxy.secrets.master_key import (
    MasterKeyError,
    describe_key_location,
    load_or_create_master_key,
)
from broker_proxy.secrets.value import SecretValue
from broker_proxy.secrets.vault import (
    InvalidSecretName,
    InvalidSecretValue,
    SecretNotFound,
    Vault,
    VaultError,
    check_secret_name,
)

__all__ = [
    "InvalidSecretName",
    "InvalidSecretValue",
    "MasterKeyError",
    "SecretNotFound",
    "SecretResolver",
    "SecretUnavailable",
    "SecretValue",
    "Vault",
    "VaultError",
    "check_secret_name",
    "describe_key_location",
    "load_or_create_master_key",
]
