"""SecretResolver: every source for real (files, env, subprocesses, keyring, the vault)."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import keyring
import keyring.backend
import keyring.backends.null
import pytest

from broker_proxy.home import Home
from broker_proxy.policy.model import SecretPolicy
from broker_proxy.secrets import backends
from broker_proxy.secrets.backends import SecretResolver, SecretUnavailable
from broker_proxy.secrets.master_key import (
    ENV_VAR,
    encode_master_key,
    load_or_create_master_key,
)
from broker_proxy.secrets.vault import Vault


class MemoryKeyring(keyring.backend.KeyringBackend):
    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.entries.pop((service, username), None)


# The null keyring and no master key from the environment, for every test here (conftest.py).
pytestmark = pytest.mark.usefixtures("no_real_keyring")


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path / "home").ensure()


@pytest.fixture
def value() -> str:
    return secrets.token_urlsafe(32)


def policy(name: str, source: str, command: tuple[str, ...] | None = None) -> SecretPolicy:
    return SecretPolicy(
        name=name,
        source=source,
        command=command,
        placeholder="{{secret:" + name + "}}",
        destinations=(),
        inject=frozenset({"header"}),
        env=None,
    )


def python_command(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


def assert_unavailable(
    resolver: SecretResolver, secret: SecretPolicy, reason: str, value: str
) -> SecretUnavailable:
    with pytest.raises(SecretUnavailable) as caught:
        resolver.resolve(secret)
    error = caught.value
    assert error.name == secret.name
    assert reason in error.reason
    assert str(error) == f'secret "{secret.name}" is unavailable: {error.reason}'
    for text in (str(error), repr(error), error.reason, repr(error.args)):
        assert value not in text
    ok, why = resolver.check(secret)
    assert (ok, why) == (False, error.reason)
    return error


def write_vault(home: Home, name: str, value: str) -> None:
    key = load_or_create_master_key(home, create=True)
    Vault(home.vault, key).set(name, value)


# --- vault --------------------------------------------------------------------------------


def test_vault_secret_resolves_by_its_policy_name(home: Home, value: str) -> None:
    write_vault(home, "github", value)
    resolved = SecretResolver(home).resolve(policy("github", "vault"))
    assert resolved.reveal() == value
    assert resolved.name == "github"
    assert value not in repr(resolved)


def test_secret_set_while_running_takes_effect_on_next_resolve(home: Home, value: str) -> None:
    write_vault(home, "github", value)
    resolver = SecretResolver(home)
    secret = policy("github", "vault")
    assert resolver.resolve(secret).reveal() == value
    newer = secrets.token_urlsafe(32)  # same length: the size alone does not change
    write_vault(home, "github", newer)
    assert resolver.resolve(secret).reveal() == newer
    write_vault(home, "added-later", value)
    assert resolver.resolve(policy("added-later", "vault")).reveal() == value


def test_rapid_same_size_rewrites_are_all_seen(home: Home) -> None:
    # Two writes inside one timestamp tick, with equal sizes and a recycled inode, look the
    # same to stat(); the resolver must still see each new value.
    resolver = SecretResolver(home)
    for _ in range(30):
        value = secrets.token_urlsafe(32)
        write_vault(home, "github", value)
        assert resolver.resolve(policy("github", "vault")).reveal() == value


def test_removed_vault_secret_becomes_unavailable(home: Home, value: str) -> None:
    write_vault(home, "github", value)
    resolver = SecretResolver(home)
    assert resolver.resolve(policy("github", "vault")).reveal() == value
    Vault(home.vault, load_or_create_master_key(home, create=False)).remove("github")
    assert_unavailable(resolver, policy("github", "vault"), "not in the vault", value)


def test_vault_secret_without_a_vault_is_unavailable(home: Home, value: str) -> None:
    assert_unavailable(SecretResolver(home), policy("github", "vault"), "no vault at", value)
    assert not home.vault_key.exists()  # resolving never creates a key


def test_vault_without_its_key_is_unavailable(home: Home, value: str) -> None:
    write_vault(home, "github", value)
    home.vault_key.unlink()
    assert_unavailable(
        SecretResolver(home), policy("github", "vault"), "vault key not found", value
    )


def test_corrupted_vault_is_unavailable(home: Home, value: str) -> None:
    write_vault(home, "github", value)
    home.vault.write_bytes(home.vault.read_bytes()[:-3])
    assert_unavailable(
        SecretResolver(home), policy("github", "vault"), "wrong key or corrupted file", value
    )


def test_vault_rebuilt_with_a_new_key_is_read_without_restarting(
    home: Home, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_vault(home, "github", value)
    resolver = SecretResolver(home)
    assert resolver.resolve(policy("github", "vault")).reveal() == value
    # The operator moves to an env key and rebuilds the vault with it.
    home.vault.unlink()
    home.vault_key.unlink()
    new_key = os.urandom(32)
    monkeypatch.setenv(ENV_VAR, encode_master_key(new_key))
    newer = secrets.token_urlsafe(32)
    Vault(home.vault, new_key).set("github", newer)
    assert resolver.resolve(policy("github", "vault")).reveal() == newer


# --- env ----------------------------------------------------------------------------------


def test_env_secret_resolves_and_is_reread(
    home: Home, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolver = SecretResolver(home)
    monkeypatch.setenv("BP_TEST_TOKEN", value)
    assert resolver.resolve(policy("github", "env:BP_TEST_TOKEN")).reveal() == value
    newer = secrets.token_urlsafe(32)
    monkeypatch.setenv("BP_TEST_TOKEN", newer)
    assert resolver.resolve(policy("github", "env:BP_TEST_TOKEN")).reveal() == newer


def test_missing_or_empty_env_secret_is_unavailable(
    home: Home, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolver = SecretResolver(home)
    monkeypatch.delenv("BP_TEST_TOKEN", raising=False)
    assert_unavailable(resolver, policy("github", "env:BP_TEST_TOKEN"), "is not set", value)
    monkeypatch.setenv("BP_TEST_TOKEN", "")
    assert_unavailable(resolver, policy("github", "env:BP_TEST_TOKEN"), "is empty", value)


# --- file ---------------------------------------------------------------------------------


def test_file_secret_drops_exactly_one_trailing_newline(tmp_path: Path, home: Home) -> None:
    resolver = SecretResolver(home)
    value = secrets.token_urlsafe(32)
    cases = {
        value: value,
        value + "\n": value,
        value + "\r\n": value,
        value + "\n\n": value + "\n",
        " " + value + " \n": " " + value + " ",
    }
    for content, expected in cases.items():
        path = tmp_path / "token"
        path.write_text(content, newline="")
        assert resolver.resolve(policy("github", f"file:{path}")).reveal() == expected


def test_relative_file_path_is_relative_to_base_dir_else_home(
    tmp_path: Path, home: Home, value: str
) -> None:
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    (policy_dir / "token").write_text(value + "\n")
    secret = policy("github", "file:token")
    assert SecretResolver(home, base_dir=policy_dir).resolve(secret).reveal() == value
    assert_unavailable(SecretResolver(home), secret, f"file {home.root / 'token'}", value)
    (home.root / "token").write_text(value)
    assert SecretResolver(home).resolve(secret).reveal() == value


def test_unreadable_file_secrets_are_unavailable_without_showing_content(
    tmp_path: Path, home: Home, value: str
) -> None:
    resolver = SecretResolver(home)
    missing = tmp_path / "missing"
    assert_unavailable(resolver, policy("github", f"file:{missing}"), "does not exist", value)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert_unavailable(resolver, policy("github", f"file:{empty}"), "is empty", value)
    binary = tmp_path / "binary"
    binary.write_bytes(value.encode() + b"\xff\xfe")
    assert_unavailable(resolver, policy("github", f"file:{binary}"), "not UTF-8", value)
    huge = tmp_path / "huge"
    huge.write_text(value * 3000)
    assert_unavailable(resolver, policy("github", f"file:{huge}"), "larger than", value)
    directory = tmp_path / "dir"
    directory.mkdir()
    assert_unavailable(resolver, policy("github", f"file:{directory}"), "cannot read", value)


# --- keyring ------------------------------------------------------------------------------


def test_keyring_secret_resolves_from_service_and_user(home: Home, value: str) -> None:
    backend = MemoryKeyring()
    backend.set_password("github.com/acme", "bot", value)
    keyring.set_keyring(backend)
    secret = policy("github", "keyring:github.com/acme/bot")
    assert SecretResolver(home).resolve(secret).reveal() == value


def test_keyring_secret_without_entry_or_backend_is_unavailable(home: Home, value: str) -> None:
    resolver = SecretResolver(home)
    secret = policy("github", "keyring:svc/user")
    assert_unavailable(resolver, secret, "no usable OS keyring backend", value)
    keyring.set_keyring(MemoryKeyring())
    assert_unavailable(resolver, secret, "no entry svc/user in the OS keyring", value)
    assert_unavailable(resolver, policy("github", "keyring:nouser"), "keyring:SERVICE/USER", value)


# --- command ------------------------------------------------------------------------------


def test_command_secret_is_stdout_without_one_newline(
    home: Home, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The value travels through the environment, never argv (argv is visible in `ps`).
    monkeypatch.setenv("BP_TEST_TOKEN", value)
    command = python_command("import os; print(os.environ['BP_TEST_TOKEN'])")
    resolved = SecretResolver(home).resolve(policy("github", "command", command))
    assert resolved.reveal() == value


def test_failing_command_reports_status_but_never_stdout(
    home: Home, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BP_TEST_TOKEN", value)
    command = python_command(
        "import os, sys; print(os.environ['BP_TEST_TOKEN']);"
        " print(os.environ['BP_TEST_TOKEN'], file=sys.stderr); sys.exit(3)"
    )
    assert_unavailable(
        SecretResolver(home), policy("github", "command", command), "exited with status 3", value
    )


def test_slow_command_times_out_without_leaking_partial_output(
    home: Home, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BP_TEST_TOKEN", value)
    monkeypatch.setattr(backends, "COMMAND_TIMEOUT_SECONDS", 0.5)
    command = python_command(
        "import os, sys, time; sys.stdout.write(os.environ['BP_TEST_TOKEN']);"
        " sys.stdout.flush(); time.sleep(30)"
    )
    assert_unavailable(
        SecretResolver(home), policy("github", "command", command), "timed out after 0.5 s", value
    )


def test_command_that_cannot_run_or_prints_nothing_is_unavailable(
    home: Home, value: str, tmp_path: Path
) -> None:
    resolver = SecretResolver(home)
    missing = (str(tmp_path / "no-such-program"),)
    assert_unavailable(resolver, policy("github", "command", missing), "not found", value)
    silent = python_command("pass")
    assert_unavailable(resolver, policy("github", "command", silent), "printed nothing", value)
    killed = python_command("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert_unavailable(resolver, policy("github", "command", killed), "killed by signal 9", value)
    assert_unavailable(resolver, policy("github", "command", None), "no argv", value)


def test_command_runs_without_a_shell(home: Home, value: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    command = ("echo", "x;", "touch", str(marker))
    resolved = SecretResolver(home).resolve(policy("github", "command", command))
    assert resolved.reveal() == f"x; touch {marker}"
    assert not marker.exists()


# --- check and messages -------------------------------------------------------------------


def test_check_reports_success_without_the_value(
    home: Home, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BP_TEST_TOKEN", value)
    assert SecretResolver(home).check(policy("github", "env:BP_TEST_TOKEN")) == (
        True,
        "resolves from env:BP_TEST_TOKEN",
    )


def test_unknown_source_is_unavailable(home: Home, value: str) -> None:
    assert_unavailable(SecretResolver(home), policy("github", "s3:bucket"), "unknown source", value)


def test_no_failure_message_ever_contains_a_random_value(
    home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every failure path, each with fresh random values planted where a leak could come from."""
    for _ in range(5):
        value = secrets.token_urlsafe(secrets.choice([8, 24, 48]))
        monkeypatch.setenv("BP_TEST_TOKEN", value)
        planted = tmp_path / "planted"
        planted.write_bytes(value.encode() + b"\x80")
        too_big = tmp_path / "too-big"
        too_big.write_text(value * (70000 // len(value) + 1))
        failures = [
            policy("github", "vault"),
            policy("github", f"file:{planted}"),
            policy("github", f"file:{too_big}"),
            policy("github", "command", python_command(_echo_then("exit(1)"))),
            policy("github", "command", python_command(_echo_then("import os; os.abort()"))),
            policy("github", "command", python_command(_echo_bytes_then_bad_utf8())),
        ]
        resolver = SecretResolver(home)
        for secret in failures:
            assert_unavailable(resolver, secret, "", value)


def _echo_then(tail: str) -> str:
    return f"import os; print(os.environ['BP_TEST_TOKEN'], flush=True); {tail}"


def _echo_bytes_then_bad_utf8() -> str:
    return (
        "import os, sys; sys.stdout.buffer.write(os.environ['BP_TEST_TOKEN'].encode() + b'\\xff')"
    )
