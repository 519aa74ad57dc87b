"""SecretValue: the only way to read a secret is reveal()."""

from __future__ import annotations

import copy
import logging
import pickle
import secrets

import pytest

from broker_proxy.secrets.value import SecretValue


@pytest.fixture
def value() -> str:
    return secrets.token_urlsafe(30)


def test_reveal_returns_the_value_and_name_is_kept(value: str) -> None:
    secret = SecretValue("github", value)
    assert secret.reveal() == value
    assert secret.name == "github"


def test_text_representations_never_show_value_or_length(value: str) -> None:
    secret = SecretValue("github", value)
    shown = [
        repr(secret),
        str(secret),
        f"{secret}",
        f"{secret!r}",
        f"{secret:s}",
        f"{secret:>200}",
        format(secret, ""),
        "%s %r" % (secret, secret),  # noqa: UP031 - the old formatting path is tested too
        "{}".format(secret),  # noqa: UP032
        repr([secret]),
        repr({"k": secret}),
    ]
    for text in shown:
        assert value not in text
        assert str(len(value)) not in text
    assert repr(secret) == "<SecretValue github>"


def test_logging_a_secret_value_does_not_log_it(
    value: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("using %s", SecretValue("github", value))
    assert value not in caplog.text
    assert "<SecretValue github>" in caplog.text


def test_exception_carrying_a_secret_value_does_not_show_it(value: str) -> None:
    error = RuntimeError(SecretValue("github", value))
    assert value not in str(error)
    assert value not in repr(error)


def test_equal_values_with_the_same_name_compare_equal(value: str) -> None:
    assert SecretValue("github", value) == SecretValue("github", value)
    assert SecretValue("github", value) != SecretValue("github", value + "x")
    assert SecretValue("github", value) != SecretValue("gitlab", value)


def test_secret_value_never_equals_a_plain_string(value: str) -> None:
    assert SecretValue("github", value) != value


def test_hash_depends_on_name_only(value: str) -> None:
    assert hash(SecretValue("github", value)) == hash(SecretValue("github", "other"))
    assert len({SecretValue("github", value), SecretValue("github", value)}) == 1


def test_secret_value_cannot_be_pickled(value: str) -> None:
    secret = SecretValue("github", value)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(secret, protocol=protocol)


def test_copies_are_the_same_immutable_object(value: str) -> None:
    secret = SecretValue("github", value)
    assert copy.copy(secret) is secret
    assert copy.deepcopy(secret) is secret


def test_secret_value_is_immutable(value: str) -> None:
    secret = SecretValue("github", value)
    with pytest.raises(AttributeError):
        secret._value = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        secret.name = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del secret._value
    with pytest.raises(AttributeError):
        secret.__dict__  # noqa: B018 - slots only, no dict to reach into
    assert secret.reveal() == value


def test_only_str_values_are_accepted() -> None:
    with pytest.raises(TypeError):
        SecretValue("github", b"bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["\r", "\n", "\x00", "\x01", "\x1b", "\t", "\x1f", "\x7f"])
def test_control_characters_make_a_value_header_unsafe(value: str, bad: str) -> None:
    assert SecretValue("github", value[:5] + bad + value[5:]).has_control_chars()


def test_printable_values_are_header_safe(value: str) -> None:
    assert not SecretValue("github", value).has_control_chars()
    assert not SecretValue("github", "sk-abc def/+=~!é€").has_control_chars()
