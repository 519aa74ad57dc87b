"""The encrypted vault file and the master key that opens it (real files, real AES-GCM)."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import secrets
import stat
from pathlib import Path

import keyring
import keyring.backend
import keyring.backends.chainer
import keyring.backends.fail
import keyring.backends.null
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker_proxy.home import Home
from broker_proxy.secrets.master_key import (
    ENV_VAR,
    KEYRING_SERVICE,
    MasterKeyError,
    describe_key_location,
    encode_master_key,
    keyring_username,
    load_or_create_master_key,
    usable_keyring,
)
from broker_proxy.secrets.vault import (
    AAD,
    MAGIC,
    InvalidSecretName,
    InvalidSecretValue,
    SecretNotFound,
    Vault,
    VaultError,
)


class MemoryKeyring(keyring.backend.KeyringBackend):
    """A keyring that lives in this process only, to exercise the keyring path for real."""

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


class BrokenKeyring(MemoryKeyring):
    """A keyring whose daemon is gone: every call raises."""

    def get_password(self, service: str, username: str) -> str | None:
        raise keyring.errors.KeyringLocked("locked")

    def set_password(self, service: str, username: str, password: str) -> None:
        raise keyring.errors.PasswordSetError("locked")


class EmptyChainer(keyring.backends.chainer.ChainerBackend):
    backends = []  # type: ignore[assignment]  # noqa: RUF012


# The null keyring and no master key from the environment, for every test here (conftest.py).
pytestmark = pytest.mark.usefixtures("no_real_keyring")


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path / "home").ensure()


@pytest.fixture
def memory_keyring() -> MemoryKeyring:
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    return backend


@pytest.fixture
def vault(tmp_path: Path) -> Vault:
    return Vault(tmp_path / "vault.bin", AESGCM.generate_key(bit_length=256))


def random_value() -> str:
    return secrets.token_urlsafe(32)


# --- the vault file -----------------------------------------------------------------------


def test_set_then_get_returns_the_value(vault: Vault) -> None:
    value = random_value()
    vault.set("github", value)
    secret = vault.get("github")
    assert secret.reveal() == value
    assert secret.name == "github"
    assert value not in repr(secret)


def test_names_are_sorted_and_remove_deletes(vault: Vault) -> None:
    for name in ("zeta", "alpha", "mid.dle-name_2"):
        vault.set(name, random_value())
    assert vault.names() == ["alpha", "mid.dle-name_2", "zeta"]
    assert vault.remove("alpha") is True
    assert vault.remove("alpha") is False
    assert vault.names() == ["mid.dle-name_2", "zeta"]
    with pytest.raises(SecretNotFound):
        vault.get("alpha")


def test_set_replaces_an_existing_value(vault: Vault) -> None:
    vault.set("github", random_value())
    newer = random_value()
    vault.set("github", newer)
    assert vault.get("github").reveal() == newer
    assert vault.names() == ["github"]


def test_missing_vault_file_is_an_empty_store_for_reads(vault: Vault) -> None:
    assert not vault.exists()
    assert vault.names() == []
    assert vault.remove("github") is False
    with pytest.raises(SecretNotFound) as caught:
        vault.get("github")
    assert isinstance(caught.value, KeyError)
    assert str(caught.value) == "secret 'github' is not in the vault"
    assert not vault.exists()


def test_file_is_magic_nonce_and_aes_gcm_of_canonical_json(tmp_path: Path) -> None:
    key = AESGCM.generate_key(bit_length=256)
    vault = Vault(tmp_path / "vault.bin", key)
    value = random_value()
    vault.set("github", value)
    blob = vault.path.read_bytes()
    assert blob[:4] == MAGIC == b"BPV1"
    plaintext = AESGCM(key).decrypt(blob[4:16], blob[16:], AAD)
    assert (
        plaintext
        == json.dumps(
            {"secrets": {"github": value}, "version": 1}, sort_keys=True, separators=(",", ":")
        ).encode()
    )
    assert value.encode() not in blob
    assert b"github" not in blob


def test_every_write_uses_a_fresh_nonce(vault: Vault) -> None:
    nonces = set()
    value = random_value()
    for _ in range(5):
        vault.set("github", value)
        nonces.add(vault.path.read_bytes()[4:16])
    assert len(nonces) == 5


def test_vault_file_is_owner_only_and_no_temp_files_remain(vault: Vault) -> None:
    vault.set("github", random_value())
    vault.set("gitlab", random_value())
    assert stat.S_IMODE(vault.path.stat().st_mode) == 0o600
    leftovers = {p.name for p in vault.path.parent.iterdir()} - {"vault.bin", "vault.bin.lock"}
    assert leftovers == set()


def test_wrong_key_is_a_clear_error_and_never_an_empty_store(tmp_path: Path) -> None:
    path = tmp_path / "vault.bin"
    Vault(path, AESGCM.generate_key(bit_length=256)).set("github", random_value())
    before = path.read_bytes()
    wrong = Vault(path, AESGCM.generate_key(bit_length=256))
    message = f"cannot decrypt vault {path}: wrong key or corrupted file"
    with pytest.raises(VaultError) as caught:
        wrong.names()
    assert str(caught.value) == message
    with pytest.raises(VaultError, match="wrong key or corrupted file"):
        wrong.get("github")
    # A write with the wrong key must not replace the store with a one-secret vault.
    with pytest.raises(VaultError, match="wrong key or corrupted file"):
        wrong.set("other", random_value())
    with pytest.raises(VaultError, match="wrong key or corrupted file"):
        wrong.remove("github")
    assert path.read_bytes() == before


def _encrypt(key: bytes, plaintext: bytes) -> bytes:
    nonce = os.urandom(12)
    return MAGIC + nonce + AESGCM(key).encrypt(nonce, plaintext, AAD)


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda blob, key: b"XXXX" + blob[4:], id="bad-magic"),
        pytest.param(lambda blob, key: blob[:20], id="truncated"),
        pytest.param(lambda blob, key: blob[:4], id="magic-only"),
        pytest.param(lambda blob, key: b"", id="empty-file"),
        pytest.param(lambda blob, key: blob[:-1] + bytes([blob[-1] ^ 1]), id="tag-flipped"),
        pytest.param(lambda blob, key: blob[:30] + bytes([blob[30] ^ 1]) + blob[31:], id="ct-bit"),
        pytest.param(lambda blob, key: _encrypt(key, b"{not json"), id="bad-json"),
        pytest.param(lambda blob, key: _encrypt(key, b"\xff\xfe"), id="not-utf8"),
        pytest.param(lambda blob, key: _encrypt(key, b"[]"), id="not-an-object"),
        pytest.param(
            lambda blob, key: _encrypt(key, b'{"version":2,"secrets":{}}'), id="unknown-version"
        ),
        pytest.param(
            lambda blob, key: _encrypt(key, b'{"version":1,"secrets":{"a":1}}'), id="bad-value"
        ),
        pytest.param(
            lambda blob, key: MAGIC + blob[4:16] + AESGCM(key).encrypt(blob[4:16], b"{}", b"x"),
            id="wrong-aad",
        ),
    ],
)
def test_any_corruption_is_a_vault_error(tmp_path: Path, corrupt) -> None:
    key = AESGCM.generate_key(bit_length=256)
    path = tmp_path / "vault.bin"
    value = random_value()
    Vault(path, key).set("github", value)
    path.write_bytes(corrupt(path.read_bytes(), key))
    with pytest.raises(VaultError) as caught:
        Vault(path, key).names()
    assert str(caught.value) == f"cannot decrypt vault {path}: wrong key or corrupted file"
    assert value not in str(caught.value)


def test_key_must_be_32_bytes(tmp_path: Path) -> None:
    with pytest.raises(VaultError, match="vault key must be 32 bytes"):
        Vault(tmp_path / "vault.bin", b"short")


@pytest.mark.parametrize(
    "name", ["", "1github", "_x", "-x", ".x", "git hub", "git/hub", "a" * 65, "é", "gh\n"]
)
def test_invalid_secret_names_are_refused(vault: Vault, name: str) -> None:
    with pytest.raises(InvalidSecretName, match="invalid secret name"):
        vault.set(name, random_value())
    with pytest.raises(InvalidSecretName):
        vault.get(name)
    assert not vault.exists()


@pytest.mark.parametrize("name", ["a", "GitHub", "a" * 64, "prod.github-token_2"])
def test_valid_secret_names_are_accepted(vault: Vault, name: str) -> None:
    vault.set(name, random_value())
    assert vault.names() == [name]


def test_empty_and_oversized_values_are_refused_without_echoing_them(vault: Vault) -> None:
    with pytest.raises(InvalidSecretValue, match="must not be empty"):
        vault.set("github", "")
    huge = secrets.token_urlsafe(49152)  # 65536 characters
    vault.set("github", huge[:65536])
    too_big = huge + "x"
    with pytest.raises(InvalidSecretValue) as caught:
        vault.set("github", too_big)
    assert str(caught.value) == "secret value must be at most 65536 bytes"
    assert vault.get("github").reveal() == huge[:65536]


def test_value_size_counts_utf8_bytes(vault: Vault) -> None:
    with pytest.raises(InvalidSecretValue):
        vault.set("github", "é" * 32769)


def _set_many(path: str, key: bytes, worker: int) -> None:
    vault = Vault(Path(path), key)
    for index in range(10):
        vault.set(f"w{worker}-s{index}", f"value-{worker}-{index}")


def test_concurrent_writers_do_not_lose_each_others_secrets(tmp_path: Path) -> None:
    key = AESGCM.generate_key(bit_length=256)
    path = tmp_path / "vault.bin"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_set_many, args=(str(path), key, n)) for n in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    vault = Vault(path, key)
    assert len(vault.names()) == 60
    assert vault.get("w3-s7").reveal() == "value-3-7"


# --- the master key -----------------------------------------------------------------------


def test_env_key_is_used_first(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    key = os.urandom(32)
    monkeypatch.setenv(ENV_VAR, encode_master_key(key))
    assert load_or_create_master_key(home, create=True) == key
    assert not home.vault_key.exists()
    assert describe_key_location(home) == "env BROKER_PROXY_MASTER_KEY"


def test_env_key_without_padding_is_accepted(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    key = os.urandom(32)
    monkeypatch.setenv(ENV_VAR, encode_master_key(key).rstrip("="))
    assert load_or_create_master_key(home, create=False) == key


@pytest.mark.parametrize(
    "raw",
    [
        "not base64!",
        base64.urlsafe_b64encode(os.urandom(16)).decode(),
        base64.urlsafe_b64encode(os.urandom(33)).decode(),
        base64.b64encode(b"\xfb" * 32).decode(),  # standard alphabet: '+' and '/'
    ],
    # Fixed ids: parallel workers must collect the same test names (the keys are random).
    ids=["not-base64", "16-bytes", "33-bytes", "standard-alphabet"],
)
def test_malformed_env_key_is_refused(
    home: Home, monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv(ENV_VAR, raw)
    with pytest.raises(MasterKeyError) as caught:
        load_or_create_master_key(home, create=True)
    assert str(caught.value) == "BROKER_PROXY_MASTER_KEY must be 32 url-safe base64-encoded bytes"
    assert not home.vault_key.exists()


def test_without_keyring_a_new_key_goes_to_an_owner_only_file(home: Home) -> None:
    assert usable_keyring() is None
    key = load_or_create_master_key(home, create=True)
    assert len(key) == 32
    assert stat.S_IMODE(home.vault_key.stat().st_mode) == 0o600
    assert base64.urlsafe_b64decode(home.vault_key.read_text().strip()) == key
    assert load_or_create_master_key(home, create=False) == key
    assert load_or_create_master_key(home, create=True) == key
    assert describe_key_location(home) == f"file {home.vault_key}"
    assert [p.name for p in home.root.iterdir() if p.name.endswith(".tmp")] == []


def test_without_create_and_without_vault_no_key_is_made(home: Home) -> None:
    with pytest.raises(MasterKeyError, match="no vault at"):
        load_or_create_master_key(home, create=False)
    assert not home.vault_key.exists()
    assert describe_key_location(home) == "none"


def test_existing_vault_without_its_key_is_an_error_not_a_new_key(home: Home) -> None:
    key = load_or_create_master_key(home, create=True)
    Vault(home.vault, key).set("github", random_value())
    home.vault_key.unlink()
    expected = (
        "vault key not found: set BROKER_PROXY_MASTER_KEY, "
        f"restore {home.vault_key}, or check the OS keyring"
    )
    for create in (False, True):
        with pytest.raises(MasterKeyError) as caught:
            load_or_create_master_key(home, create=create)
        assert str(caught.value) == expected
    assert not home.vault_key.exists()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_group_or_world_readable_key_file_is_refused(home: Home, mode: int) -> None:
    load_or_create_master_key(home, create=True)
    home.vault_key.chmod(mode)
    with pytest.raises(MasterKeyError) as caught:
        load_or_create_master_key(home, create=False)
    assert str(home.vault_key) in str(caught.value)
    assert "chmod 600" in str(caught.value)


def test_garbage_key_file_is_refused(home: Home) -> None:
    fd = os.open(home.vault_key, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"\xff\xfe not a key")
    os.close(fd)
    with pytest.raises(MasterKeyError, match="must hold 32 url-safe base64-encoded bytes"):
        load_or_create_master_key(home, create=True)


def _first_key(root: str, queue) -> None:
    queue.put(load_or_create_master_key(Home(Path(root)), create=True))


def test_concurrent_first_runs_agree_on_one_key(home: Home) -> None:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_first_key, args=(str(home.root), queue)) for _ in range(6)]
    for worker in workers:
        worker.start()
    keys = {queue.get(timeout=30) for _ in workers}
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    assert len(keys) == 1
    assert load_or_create_master_key(home, create=False) in keys


def test_usable_keyring_stores_the_new_key_instead_of_a_file(
    home: Home, memory_keyring: MemoryKeyring
) -> None:
    key = load_or_create_master_key(home, create=True)
    stored = memory_keyring.entries[(KEYRING_SERVICE, "vault:" + str(home.root))]
    assert base64.urlsafe_b64decode(stored) == key
    assert keyring_username(home) == "vault:" + str(home.root)
    assert not home.vault_key.exists()
    assert load_or_create_master_key(home, create=False) == key
    assert describe_key_location(home) == "keyring"


def test_keyring_entries_are_per_home(tmp_path: Path, memory_keyring: MemoryKeyring) -> None:
    first = load_or_create_master_key(Home(tmp_path / "a").ensure(), create=True)
    second = load_or_create_master_key(Home(tmp_path / "b").ensure(), create=True)
    assert first != second
    assert len(memory_keyring.entries) == 2


def test_env_key_wins_over_keyring(
    home: Home, memory_keyring: MemoryKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_or_create_master_key(home, create=True)
    env_key = os.urandom(32)
    monkeypatch.setenv(ENV_VAR, encode_master_key(env_key))
    assert load_or_create_master_key(home, create=False) == env_key


def test_broken_keyring_falls_back_to_the_key_file(home: Home) -> None:
    keyring.set_keyring(BrokenKeyring())
    key = load_or_create_master_key(home, create=True)
    assert home.vault_key.exists()
    assert load_or_create_master_key(home, create=False) == key


def test_broken_keyring_and_no_key_file_for_existing_vault_is_an_error(home: Home) -> None:
    memory = MemoryKeyring()
    keyring.set_keyring(memory)
    key = load_or_create_master_key(home, create=True)
    Vault(home.vault, key).set("github", random_value())
    keyring.set_keyring(BrokenKeyring())
    with pytest.raises(MasterKeyError, match="vault key not found"):
        load_or_create_master_key(home, create=True)
    assert not home.vault_key.exists()


@pytest.mark.parametrize(
    "backend",
    [keyring.backends.null.Keyring(), keyring.backends.fail.Keyring(), EmptyChainer()],
    ids=["null", "fail", "empty-chainer"],
)
def test_keyrings_that_store_nothing_are_not_used(
    home: Home, backend: keyring.backend.KeyringBackend
) -> None:
    keyring.set_keyring(backend)
    assert usable_keyring() is None
    load_or_create_master_key(home, create=True)
    assert home.vault_key.exists()
