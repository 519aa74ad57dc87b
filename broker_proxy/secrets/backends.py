"""Turn a policy's secret into its value, from whichever backend the policy names.

Sources (the policy's ``from:``):

- ``vault``: the encrypted local store, entry named like the secret. Opened lazily (never
  creating a key), and cached until the vault file is rewritten, so a `secret set` while the
  proxy runs takes effect on the next request without decrypting the store on every request.
- ``env:VAR``: the proxy's environment variable ``VAR``, read on every call.
- ``file:PATH``: the file's text without one trailing newline, read on every call. A relative
  ``PATH`` is relative to ``base_dir`` (the CLI passes the policy file's directory), else to
  the home directory.
- ``keyring:SERVICE/USER``: the OS keyring entry; split at the last ``/``.
- ``command``: run the policy's argv (no shell; ``timeout``, default 10 s); its stdout without
  one trailing newline. On failure only the exit status is reported: stdout may hold a partial
  secret.

With ``cache_ttl`` (command, keyring) a value is reused that long; fetched lazily either way.

Every failure is a ``SecretUnavailable`` whose message never contains the value or any output
that might hold it, because these messages reach logs, audit reasons and `secret list`.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from broker_proxy.home import Home
from broker_proxy.policy.model import SecretPolicy
from broker_proxy.secrets.master_key import (
    MasterKeyError,
    load_or_create_master_key,
    usable_keyring,
)
from broker_proxy.secrets.value import SecretValue
from broker_proxy.secrets.vault import (
    MAGIC,
    MAX_VALUE_BYTES,
    NONCE_BYTES,
    Vault,
    VaultContents,
    VaultError,
)

COMMAND_TIMEOUT_SECONDS = 10.0
_VAULT_HEADER_BYTES = len(MAGIC) + NONCE_BYTES


class SecretUnavailable(Exception):
    """The secret's backend cannot give a value now; the proxy fails closed (503)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f'secret "{name}" is unavailable: {reason}')
        self.name = name
        self.reason = reason


class _Unavailable(Exception):
    """A backend's reason, before the resolver attaches the secret's name."""


def _strip_one_newline(text: str) -> str:
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def _text_value(data: bytes, *, not_text: str, empty: str) -> str:
    """The value in `data` (UTF-8, one trailing newline dropped); errors never quote it."""
    try:
        value = _strip_one_newline(data.decode("utf-8"))
    except UnicodeDecodeError:
        # Not the exception's text: it quotes bytes of the value.
        raise _Unavailable(not_text) from None
    if not value:
        raise _Unavailable(empty)
    return value


class SecretResolver:
    """Resolve ``SecretPolicy`` objects of one home to ``SecretValue`` objects."""

    def __init__(self, home: Home, base_dir: Path | None = None) -> None:
        self._home = home
        self._base_dir = base_dir if base_dir is not None else home.root
        self._lock = threading.Lock()
        self._vault_key: bytes | None = None
        self._vault_header: bytes | None = None
        self._vault: VaultContents = VaultContents({}, {})
        self._cache_lock = threading.Lock()
        self._cache: dict[tuple[str, str, tuple[str, ...] | None],
                          tuple[float, SecretValue]] = {}

    def resolve(self, secret: SecretPolicy) -> SecretValue:
        # cache_ttl (command, keyring): `op read` and friends can take seconds; a value is
        # reused for at most the TTL. Failures are never cached: each request asks again.
        cache_key = (secret.name, secret.source, secret.command)
        if secret.cache_ttl is not None:
            with self._cache_lock:
                cached = self._cache.get(cache_key)
            if cached is not None and time.monotonic() < cached[0]:
                return cached[1]
        try:
            value = self._fetch(secret)
        except _Unavailable as exc:
            raise SecretUnavailable(secret.name, str(exc)) from None
        if isinstance(value, SecretValue):
            return value
        if not value:
            raise SecretUnavailable(secret.name, f"{secret.source} gave an empty value")
        resolved = SecretValue(secret.name, value)
        if secret.cache_ttl is not None:
            with self._cache_lock:
                self._cache[cache_key] = (
                    time.monotonic() + secret.cache_ttl.total_seconds(), resolved)
        return resolved

    def stored_value(self, secret: SecretPolicy) -> SecretValue:
        """The backends hold no derived values: what is stored is what a request carries."""
        return self.resolve(secret)

    def minted_token(self, secret: SecretPolicy) -> SecretValue | None:
        return None  # no OAuth2 here: see CredentialResolver

    def retired_values(self, secret: SecretPolicy) -> tuple[SecretValue, ...]:
        """The values `secret set` replaced, still within their window (vault secrets only:
        other backends keep no history; the proxy remembers what it saw change, see
        grant_scrub). Never raises: an unreadable vault is the current value's failure."""
        if secret.source != "vault":
            return ()
        try:
            with self._lock:
                self._vault_contents()
                retired = self._vault.retired.get(secret.name, ())
        except _Unavailable:
            return ()
        now = datetime.now(UTC)
        return tuple(entry.value for entry in retired if entry.until > now)

    def upstream_answered(self, status: int, scrub: Mapping[str, tuple[str, str]]) -> None:
        return None  # nothing minted, nothing to drop

    def check(self, secret: SecretPolicy) -> tuple[bool, str]:
        """Does it resolve, and a one-line reason; for `secret list`, never showing the value."""
        try:
            self.resolve(secret)
        except SecretUnavailable as exc:
            return False, exc.reason
        return True, f"resolves from {secret.source}"

    def vault_problem(self) -> str | None:
        """Why the vault cannot be opened now (missing, unreadable, wrong master key), or None.

        As cheap as a resolve: the vault is decrypted again only when its file changed, and a
        failure is never cached, so a fixed key shows at once.
        """
        try:
            with self._lock:
                self._vault_contents()
        except _Unavailable as exc:
            return str(exc)
        return None

    def _fetch(self, secret: SecretPolicy) -> str | SecretValue:
        kind, _, argument = secret.source.partition(":")
        fetchers: dict[str, Callable[[SecretPolicy, str], str | SecretValue]] = {
            "vault": self._from_vault,
            "env": self._from_env,
            "file": self._from_file,
            "keyring": self._from_keyring,
            "command": self._from_command,
        }
        fetch = fetchers.get(kind)
        if fetch is None:
            raise _Unavailable(f"unknown source {secret.source!r}")
        return fetch(secret, argument)

    def _from_env(self, secret: SecretPolicy, variable: str) -> str:
        if not variable:
            raise _Unavailable("env: names no variable")
        value = os.environ.get(variable)
        if value is None:
            raise _Unavailable(f"environment variable {variable} is not set")
        if not value:
            raise _Unavailable(f"environment variable {variable} is empty")
        return value

    def _from_file(self, secret: SecretPolicy, raw_path: str) -> str:
        if not raw_path:
            raise _Unavailable("file: names no path")
        path = Path(raw_path).expanduser()
        if not path.is_absolute():
            path = self._base_dir / path
        try:
            with open(path, "rb") as secret_file:
                data = secret_file.read(MAX_VALUE_BYTES + 3)
        except FileNotFoundError:
            raise _Unavailable(f"file {path} does not exist") from None
        except OSError as exc:
            # strerror only: the path is ours and the OS text never holds file contents.
            raise _Unavailable(f"cannot read file {path}: {exc.strerror}") from None
        if len(data) > MAX_VALUE_BYTES + 2:
            raise _Unavailable(f"file {path} is larger than {MAX_VALUE_BYTES} bytes")
        return _text_value(data, not_text=f"file {path} is not UTF-8 text",
                           empty=f"file {path} is empty")

    def _from_keyring(self, secret: SecretPolicy, entry: str) -> str:
        service, _, username = entry.rpartition("/")
        if not service or not username:
            raise _Unavailable(f"keyring source must be keyring:SERVICE/USER, not {entry!r}")
        backend = usable_keyring()
        if backend is None:
            raise _Unavailable("no usable OS keyring backend")
        try:
            value = backend.get_password(service, username)
        except Exception as exc:  # backends raise their own types; only the type name is safe
            raise _Unavailable(f"OS keyring error ({type(exc).__name__})") from None
        if value is None:
            raise _Unavailable(f"no entry {service}/{username} in the OS keyring")
        return value

    def _from_command(self, secret: SecretPolicy, _argument: str) -> str:
        argv = secret.command
        if not argv:
            raise _Unavailable("command source has no argv")
        program = argv[0]
        timeout = (secret.timeout.total_seconds() if secret.timeout is not None
                   else COMMAND_TIMEOUT_SECONDS)
        try:
            completed = subprocess.run(
                list(argv),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            # Not str(exc): TimeoutExpired carries whatever stdout was captured so far.
            raise _Unavailable(
                f"command {program} timed out after {timeout:g} s"
            ) from None
        except FileNotFoundError:
            raise _Unavailable(f"command {program} not found") from None
        except OSError as exc:
            raise _Unavailable(f"cannot run command {program}: {exc.strerror}") from None
        if completed.returncode < 0:
            raise _Unavailable(f"command {program} was killed by signal {-completed.returncode}")
        if completed.returncode != 0:
            raise _Unavailable(f"command {program} exited with status {completed.returncode}")
        return _text_value(completed.stdout,
                           not_text=f"command {program} printed something that is not UTF-8",
                           empty=f"command {program} printed nothing")

    def _from_vault(self, secret: SecretPolicy, _argument: str) -> SecretValue:
        with self._lock:
            secrets = self._vault_contents().secrets
        value = secrets.get(secret.name)
        if value is None:
            raise _Unavailable(f"not in the vault {self._home.vault}")
        return value

    def _vault_contents(self) -> VaultContents:
        """The decrypted store, decrypted again only when the file was rewritten.

        Every write draws a fresh random nonce, so the file's first bytes (magic + nonce)
        identify its contents exactly; mtime/size could miss two same-size writes within one
        timestamp tick. Reading 16 bytes per resolve is far cheaper than decrypting.
        """
        path = self._home.vault
        try:
            with open(path, "rb") as vault_file:
                header = vault_file.read(_VAULT_HEADER_BYTES)
        except FileNotFoundError:
            self._vault_header, self._vault = None, VaultContents({}, {})
            raise _Unavailable(f"not in the vault (no vault at {path})") from None
        except OSError as exc:
            raise _Unavailable(f"cannot read vault {path}: {exc.strerror}") from None
        if header == self._vault_header:
            return self._vault
        try:
            # Header first, contents second: if a write lands in between, newer contents are
            # cached under the older header and the next call simply decrypts once more.
            secrets = self._read_vault(path)
        except (MasterKeyError, VaultError) as exc:
            raise _Unavailable(str(exc)) from None
        self._vault_header, self._vault = header, secrets
        return secrets

    def _read_vault(self, path: Path) -> VaultContents:
        if self._vault_key is not None:
            try:
                return Vault(path, self._vault_key).contents()
            except VaultError:
                # The key may have been rotated or restored since; look it up again once.
                self._vault_key = None
        key = load_or_create_master_key(self._home, create=False)
        secrets = Vault(path, key).contents()
        self._vault_key = key
        return secrets
