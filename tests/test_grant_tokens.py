"""Grant tokens: their format, their hash, and a parser that never trusts its input."""

from __future__ import annotations

import hashlib

import pytest

from broker_proxy.grants.model import new_grant_id
from broker_proxy.grants.tokens import (
    MAX_TOKEN_LENGTH,
    new_token,
    parse_token,
    token_hash,
    token_matches,
)


def test_new_token_carries_grant_id_and_256_bit_secret():
    grant_id = new_grant_id()
    token = new_token(grant_id)
    assert token.startswith(f"bpt_{grant_id}_")
    parsed = parse_token(token)
    assert parsed is not None
    assert parsed[0] == grant_id
    # token_urlsafe(32): 32 random bytes, 43 base64url characters.
    assert len(parsed[1]) == 43


def test_new_tokens_for_the_same_grant_differ():
    grant_id = new_grant_id()
    assert new_token(grant_id) != new_token(grant_id)


def test_grant_ids_are_g_and_16_hex():
    grant_id = new_grant_id()
    assert grant_id.startswith("g_")
    assert len(grant_id) == 18
    int(grant_id[2:], 16)


def test_new_token_refuses_a_grant_id_it_could_not_parse_back():
    with pytest.raises(ValueError, match="cannot be put in a token"):
        new_token("g_not-hex")


def test_token_hash_is_sha256_of_the_whole_token():
    token = new_token(new_grant_id())
    assert token_hash(token) == hashlib.sha256(token.encode()).digest()
    assert len(token_hash(token)) == 32


def test_token_matches_its_own_hash_only():
    token = new_token(new_grant_id())
    other = new_token(new_grant_id())
    assert token_matches(token, token_hash(token))
    assert not token_matches(other, token_hash(token))
    assert not token_matches(token[:-1] + ("A" if token[-1] != "A" else "B"), token_hash(token))


def test_token_matches_refuses_overlong_input_without_hashing_it():
    token = "x" * (MAX_TOKEN_LENGTH + 1)
    assert not token_matches(token, token_hash(token))


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: "",
        lambda t: "bpt_",
        lambda t: t.replace("bpt_", "bpx_", 1),
        lambda t: t.replace("bpt_", "BPT_", 1),
        lambda t: t[:-1],  # secret one character short
        lambda t: t + "A",  # secret one character long
        lambda t: t + "\n",  # fullmatch, not a `$` that tolerates a newline
        lambda t: " " + t,
        lambda t: t.replace("_g_", "_G_", 1),
        lambda t: t[:6] + "ABCDEF0123456789" + t[22:],  # grant ids are lower-case hex
        lambda t: t[:10] + t[11:],  # grant id one hex digit short
        lambda t: t[:-2] + "!=",  # outside the base64url alphabet
        lambda t: t[:-1] + "\u0410",  # a Cyrillic look-alike letter
        lambda t: t + "A" * 500,
    ],
)
def test_parse_token_returns_none_for_malformed_tokens(mangle):
    token = new_token(new_grant_id())
    assert parse_token(mangle(token)) is None


@pytest.mark.parametrize("value", [None, 42, b"bpt_g_0123456789abcdef_" + b"A" * 43, ["bpt_"]])
def test_parse_token_returns_none_for_non_strings(value):
    assert parse_token(value) is None


def test_parse_token_bounds_the_length_it_looks_at():
    assert parse_token("bpt_" + "a" * 100_000) is None
