"""The local secret store: one AES-256-GCM encrypted file holding every vault secret.

The whole store is one blob so that names are encrypted too and a file can never be half
updated. File format::

    b"BPV1" | 12-byte random nonce | AESGCM(key, nonce, canonical JSON, AAD)

with ``{"version": 1, "secrets": {name: value}}`` as the plaintext. A fresh nonce is drawn for
every write: GCM loses both confidentiality and integrity if a nonce repeats under one key.

Value history: a value replaced by ``set`` (or dropped by ``remove``) stays in the store as
*retired* under ``"retired": {name: [[value, since, until], ...]}`` (ISO times, UTC) until its
window ends or ``forget_retired`` drops it. The provider usually keeps an old key valid for a
while, and wherever the old value was stored upstream it can still be read back: the proxy
scrubs retired values from answers and never injects them. Older readers ignore the key.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker_proxy.secrets.value import SecretValue

MAGIC = b"BPV1"
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
AAD = b"broker-proxy vault v1"
FORMAT_VERSION = 1
MAX_VALUE_BYTES = 64 * 1024
SECRET_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
# How long a replaced value is still scrubbed from answers, unless `secret set --retire-for`
# says otherwise.
DEFAULT_RETIRE_FOR = timedelta(days=30)
MAX_RETIRED_PER_SECRET = 16  # the oldest goes first: a bound on what every answer is searched for


class VaultError(Exception):
    """The vault cannot be read or written; the message is one line and never holds a value."""


class SecretNotFound(VaultError, KeyError):
    """No secret of that name in the vault (also when the vault file does not exist yet)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"secret {name!r} is not in the vault")
        self.name = name

    def __str__(self) -> str:
        # KeyError.__str__ would wrap the message in quotes.
        return str(self.args[0])


class InvalidSecretName(VaultError, ValueError):
    def __init__(self, name: str) -> None:
        shown = name if len(name) <= 80 else name[:80] + "..."
        super().__init__(
            f"invalid secret name {shown!r}: "
            "use a letter, then up to 63 letters, digits, '_', '.' or '-'"
        )


class InvalidSecretValue(VaultError, ValueError):
    """The value is refused; the message describes the rule, never the value."""


@dataclass(frozen=True, slots=True)
class RetiredValue:
    """A replaced value, scrubbed from answers (never injected) from ``since`` to ``until``."""

    value: SecretValue
    since: datetime
    until: datetime


@dataclass(frozen=True, slots=True)
class VaultContents:
    """The current values and the retired ones still within their window."""

    secrets: dict[str, SecretValue]
    retired: dict[str, tuple[RetiredValue, ...]]


def check_secret_name(name: str) -> str:
    if not isinstance(name, str) or SECRET_NAME.fullmatch(name) is None:
        raise InvalidSecretName(str(name))
    return name


def _check_secret_value(value: str) -> None:
    if not isinstance(value, str):
        raise InvalidSecretValue("secret value must be text")
    if not value:
        raise InvalidSecretValue("secret value must not be empty")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        # Not the exception's text: it quotes the offending character.
        raise InvalidSecretValue("secret value must be valid Unicode text") from None
    if size > MAX_VALUE_BYTES:
        raise InvalidSecretValue(f"secret value must be at most {MAX_VALUE_BYTES} bytes")


@contextlib.contextmanager
def vault_lock(vault_path: Path) -> Iterator[None]:
    """Hold the exclusive lock that serializes every writer of this vault (and its key creation).

    A separate lock file, because the vault file itself is replaced on each write and a lock
    on a replaced inode would guard nothing.
    """
    lock_path = vault_path.with_name(vault_path.name + ".lock")
    lock_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def write_file_atomically(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never a torn one, even after a crash."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:  # mkstemp creates it 0600
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


class Vault:
    """Read and change the encrypted store at ``path`` with a 32-byte data key."""

    def __init__(self, path: Path, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise VaultError(f"vault key must be {KEY_BYTES} bytes")
        self._path = Path(path)
        self._aead = AESGCM(key)

    @property
    def path(self) -> Path:
        return self._path

    def exists(self) -> bool:
        return self._path.exists()

    def get(self, name: str) -> SecretValue:
        check_secret_name(name)
        secrets = self._read()
        if name not in secrets:
            raise SecretNotFound(name)
        return SecretValue(name, secrets[name])

    def names(self) -> list[str]:
        return sorted(self._read())

    def snapshot(self) -> dict[str, SecretValue]:
        """Every secret at once, for a resolver that caches the store between file changes."""
        return {name: SecretValue(name, value) for name, value in self._read().items()}

    def contents(self, now: datetime | None = None) -> VaultContents:
        """Current and retired values in one read (the proxy scrubs for both)."""
        secrets, retired = self._read_document()
        moment = now or datetime.now(UTC)
        return VaultContents(
            {name: SecretValue(name, value) for name, value in secrets.items()},
            {name: kept for name, entries in retired.items()
             if (kept := tuple(RetiredValue(SecretValue(name, value), since, until)
                               for value, since, until in entries if until > moment))})

    def set(self, name: str, value: str, *, retire_for: timedelta = DEFAULT_RETIRE_FOR,
            now: datetime | None = None) -> bool:
        """Store ``value``; the value it replaces is kept retired for ``retire_for``.

        Returns whether a value was retired (none was stored, or it was the same value).
        """
        check_secret_name(name)
        _check_secret_value(value)
        # Read-modify-write under the lock: two concurrent `secret set` must both survive.
        with vault_lock(self._path):
            secrets, retired = self._read_document()
            replaced = secrets.get(name)
            secrets[name] = value
            if replaced is not None and replaced != value:
                _retire(retired, name, replaced, retire_for, now)
            # A value set again is current, not retired as well.
            if name in retired:
                retired[name] = [entry for entry in retired[name] if entry[0] != value]
            self._write(secrets, retired, now)
            return replaced is not None and replaced != value

    def remove(self, name: str, *, retire_for: timedelta = DEFAULT_RETIRE_FOR,
               now: datetime | None = None) -> bool:
        """Drop ``name``; its value stays retired (still scrubbed) for ``retire_for``."""
        check_secret_name(name)
        with vault_lock(self._path):
            secrets, retired = self._read_document()
            if name not in secrets:
                return False
            _retire(retired, name, secrets.pop(name), retire_for, now)
            self._write(secrets, retired, now)
            return True

    def forget_retired(self, name: str) -> int:
        """Drop every retired value of ``name`` (answers are no longer scrubbed for them)."""
        check_secret_name(name)
        with vault_lock(self._path):
            secrets, retired = self._read_document()
            dropped = len(retired.pop(name, []))
            if dropped:
                self._write(secrets, retired)
            return dropped

    def _read(self) -> dict[str, str]:
        return self._read_document()[0]

    def _read_document(self) -> tuple[dict[str, str], dict[str, list[_Retired]]]:
        try:
            blob = self._path.read_bytes()
        except FileNotFoundError:
            return {}, {}
        except OSError as exc:
            raise VaultError(f"cannot read vault {self._path}: {exc.strerror}") from None
        return self._decrypt(blob)

    def _decrypt(self, blob: bytes) -> tuple[dict[str, str], dict[str, list[_Retired]]]:
        # Every failure is the same error: an empty store here would let the next `set`
        # overwrite (and so destroy) every secret in a vault we merely failed to read.
        unreadable = VaultError(f"cannot decrypt vault {self._path}: wrong key or corrupted file")
        if len(blob) < len(MAGIC) + NONCE_BYTES + TAG_BYTES or not blob.startswith(MAGIC):
            raise unreadable
        nonce = blob[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
        ciphertext = blob[len(MAGIC) + NONCE_BYTES :]
        try:
            plaintext = self._aead.decrypt(nonce, ciphertext, AAD)
            document = json.loads(plaintext.decode("utf-8"))
        except (InvalidTag, UnicodeDecodeError, ValueError):
            raise unreadable from None
        if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
            raise unreadable
        secrets = document.get("secrets")
        if not isinstance(secrets, dict) or not all(
            isinstance(name, str) and isinstance(value, str) for name, value in secrets.items()
        ):
            raise unreadable
        try:
            retired = _parse_retired(document.get("retired", {}))
        except (TypeError, ValueError):
            raise unreadable from None
        return secrets, retired

    def _write(self, secrets: dict[str, str], retired: dict[str, list[_Retired]] | None = None,
               now: datetime | None = None) -> None:
        moment = now or datetime.now(UTC)
        kept = {name: [[value, _format_time(since), _format_time(until)]
                       for value, since, until in entries if until > moment]
                for name, entries in (retired or {}).items()}
        document: dict[str, object] = {"version": FORMAT_VERSION, "secrets": secrets}
        if any(kept.values()):
            document["retired"] = {name: entries for name, entries in kept.items() if entries}
        plaintext = json.dumps(
            document, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")
        nonce = os.urandom(NONCE_BYTES)
        blob = MAGIC + nonce + self._aead.encrypt(nonce, plaintext, AAD)
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_file_atomically(self._path, blob)


_Retired = tuple[str, datetime, datetime]  # value, since, until


def _retire(retired: dict[str, list[_Retired]], name: str, value: str, retire_for: timedelta,
            now: datetime | None) -> None:
    moment = now or datetime.now(UTC)
    entries = [entry for entry in retired.get(name, []) if entry[0] != value]
    entries.append((value, moment, moment + retire_for))
    retired[name] = entries[-MAX_RETIRED_PER_SECRET:]


def _parse_retired(raw: object) -> dict[str, list[_Retired]]:
    """The document's retired values; anything malformed raises (the vault is unreadable)."""
    if not isinstance(raw, dict):
        raise ValueError("retired is not an object")
    retired: dict[str, list[_Retired]] = {}
    for name, entries in raw.items():
        if not isinstance(name, str) or not isinstance(entries, list):
            raise ValueError("retired entry malformed")
        parsed = []
        for entry in entries:
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)):
                raise ValueError("retired entry malformed")
            parsed.append((entry[0], _parse_time(entry[1]), _parse_time(entry[2])))
        retired[name] = parsed
    return retired


def _format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse_time(text: str) -> datetime:
    if not isinstance(text, str):
        raise ValueError("not a time")
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("no time zone")
    return moment
