"""Where the vault's 32-byte data key lives, and the one place a new key is ever made.

Lookup order: ``$BROKER_PROXY_MASTER_KEY`` (containers, CI), then the OS keyring (so the key
is not on disk next to the vault), then the 0600 file ``<home>/vault.key``. A new key is made
only while no vault exists: minting one for an existing vault would make it unreadable, so a
missing key for an existing vault is always an error, never a silent fresh start.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import tempfile
from pathlib import Path

import keyring
import keyring.backend
import keyring.backends.fail
import keyring.backends.null

from broker_proxy.errors import BrokerError
from broker_proxy.home import Home
from broker_proxy.secrets.vault import KEY_BYTES, vault_lock

ENV_VAR = "BROKER_PROXY_MASTER_KEY"
KEYRING_SERVICE = "broker-proxy"
_MAX_KEY_FILE_BYTES = 1024
_URLSAFE_BASE64 = re.compile(r"[A-Za-z0-9_-]+={0,2}")


class MasterKeyError(BrokerError):
    """The vault key cannot be found, read or made; one line, never holding key material."""


def keyring_username(home: Home) -> str:
    """One keyring entry per home, so two homes on one machine never share a vault key."""
    return "vault:" + str(home.root)


def usable_keyring() -> keyring.backend.KeyringBackend | None:
    """The OS keyring backend if it can really store something, else None.

    The fail and null backends (and a chainer with nothing to chain, priority <= 0) accept
    calls and store nothing; writing a new vault key there would lose it at once.
    """
    try:
        backend = keyring.get_keyring()
        priority = backend.priority
    except Exception:  # backend discovery runs third-party plugins; any failure means "none"
        return None
    if isinstance(backend, keyring.backends.fail.Keyring | keyring.backends.null.Keyring):
        return None
    if priority <= 0:
        return None
    return backend


def encode_master_key(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode("ascii")


def _decode_master_key(text: str, error: str) -> bytes:
    compact = text.strip()
    # b64decode(altchars=...) would also let the standard alphabet's '+' and '/' through.
    if _URLSAFE_BASE64.fullmatch(compact) is None:
        raise MasterKeyError(error)
    try:
        key = base64.b64decode(compact + "=" * (-len(compact) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise MasterKeyError(error) from None
    if len(key) != KEY_BYTES:
        raise MasterKeyError(error)
    return key


def _read_key_file(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as key_file:
            mode = os.fstat(key_file.fileno()).st_mode
            # Refused rather than fixed: a key another user could read may already be copied.
            if mode & 0o077:
                raise MasterKeyError(
                    f"vault key file {path} is readable by group or others: run chmod 600 {path}"
                )
            raw = key_file.read(_MAX_KEY_FILE_BYTES)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MasterKeyError(f"cannot read vault key file {path}: {exc.strerror}") from None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        text = "!"  # not base64: reported by the decoder below with the one message
    return _decode_master_key(
        text, f"vault key file {path} must hold 32 url-safe base64-encoded bytes"
    )


def _find_master_key(home: Home) -> bytes | None:
    from_env = os.environ.get(ENV_VAR)
    if from_env:
        return _decode_master_key(from_env, f"{ENV_VAR} must be 32 url-safe base64-encoded bytes")
    backend = usable_keyring()
    if backend is not None:
        try:
            stored = backend.get_password(KEYRING_SERVICE, keyring_username(home))
        except Exception:  # a locked or broken keyring; the key file may still hold the key
            stored = None
        if stored is not None:
            return _decode_master_key(
                stored, "vault key in the OS keyring must be 32 url-safe base64-encoded bytes"
            )
    return _read_key_file(home.vault_key)


def _not_found(home: Home) -> MasterKeyError:
    return MasterKeyError(
        f"vault key not found: set {ENV_VAR}, restore {home.vault_key}, or check the OS keyring"
    )


def load_or_create_master_key(home: Home, create: bool) -> bytes:
    """The vault's data key; with ``create`` a new one is made, but only if no vault exists yet."""
    key = _find_master_key(home)
    if key is not None:
        return key
    if home.vault.exists():
        raise _not_found(home)
    if not create:
        raise MasterKeyError(
            f"no vault at {home.vault} yet: add a secret with `broker-proxy secret set NAME`"
        )
    home.ensure()
    # Under the vault's writer lock, so two first `secret set` runs agree on one key.
    with vault_lock(home.vault):
        key = _find_master_key(home)
        if key is not None:
            return key
        if home.vault.exists():
            raise _not_found(home)
        return _create_master_key(home)


def _create_master_key(home: Home) -> bytes:
    key = os.urandom(KEY_BYTES)
    text = encode_master_key(key)
    backend = usable_keyring()
    if backend is not None:
        username = keyring_username(home)
        try:
            backend.set_password(KEYRING_SERVICE, username, text)
            stored = backend.get_password(KEYRING_SERVICE, username)
        except Exception:  # the keyring refused; the key file below is the documented fallback
            stored = None
        # Read back: only a key that is really retrievable may encrypt a vault.
        if stored == text:
            return key
    _create_key_file(home.vault_key, text)
    return key


def _create_key_file(path: Path, text: str) -> None:
    """Write the key 0600 so that no reader ever sees a partial file and no file is overwritten."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as tmp:  # mkstemp: O_EXCL, mode 0600
            tmp.write(text + "\n")
            tmp.flush()
            os.fsync(tmp.fileno())
        # link() fails if the name exists, unlike rename(): an existing key is never replaced.
        os.link(tmp_name, path)
    except FileExistsError:
        raise MasterKeyError(f"vault key file {path} already exists") from None
    except OSError as exc:
        raise MasterKeyError(f"cannot write vault key file {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def describe_key_location(home: Home) -> str:
    """For `secret list`: where the key would be taken from ("none" if nowhere yet)."""
    if os.environ.get(ENV_VAR):
        return f"env {ENV_VAR}"
    backend = usable_keyring()
    if backend is not None:
        try:
            in_keyring = backend.get_password(KEYRING_SERVICE, keyring_username(home)) is not None
        except Exception:  # described as not found; resolving will report the real failure
            in_keyring = False
        if in_keyring:
            return "keyring"
    if home.vault_key.exists():
        return f"file {home.vault_key}"
    return "none"
