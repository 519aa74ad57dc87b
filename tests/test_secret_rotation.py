"""Value history and which values an answer is scrubbed for, in the core (no proxy).

The end-to-end cases are in ``tests/security/test_e2e_exposure.py``; these pin the pieces:
the vault's retired values, the destination index, the composed set and its generation, and
a stream or message sequence switching sets without losing a held partial match.
"""

from __future__ import annotations

import json
import os
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker_proxy.home import Home
from broker_proxy.policy.destinations import DestinationIndex
from broker_proxy.policy.loader import PolicyError, load_policy_text
from broker_proxy.request.scrub_scope import ScrubScope
from broker_proxy.runtime.vault_watch import acks_dir, vault_mark, wait_for_proxies
from broker_proxy.scrubbing.grant_scrub import GrantScrubValues, base_secret
from broker_proxy.scrubbing.scrubber import MessageScrubber, Scrubber
from broker_proxy.secrets.backends import SecretResolver
from broker_proxy.secrets.master_key import load_or_create_master_key
from broker_proxy.secrets.vault import Vault, VaultError
from tests.master_keys import random_master_key

KEY = bytes(range(32))

POLICY = """\
version: 1
secrets:
  a_key:
    from: vault
    destinations:
      - host: api.example.com
  b_key:
    from: vault
    destinations:
      - host: "*.example.com"
        port: 8443
  c_key:
    from: vault
    destinations:
      - host: other.example.org
agents:
  alpha:
    secrets: [a_key, c_key]
    max_ttl: 1h
"""


def value(tag: str) -> str:
    return f"{tag}-" + secrets.token_urlsafe(24)


def test_set_keeps_the_replaced_value_retired_for_its_window_and_forget_drops_it(
        tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault.bin", KEY)
    first, second, third = value("one"), value("two"), value("three")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert vault.set("a_key", first, now=now) is False  # nothing replaced
    assert vault.set("a_key", second, retire_for=timedelta(days=2), now=now) is True
    assert vault.set("a_key", second, now=now) is False  # the same value: nothing retired
    contents = vault.contents(now + timedelta(days=1))
    assert contents.secrets["a_key"].reveal() == second
    [retired] = contents.retired["a_key"]
    assert retired.value.reveal() == first and retired.since == now
    assert retired.until == now + timedelta(days=2)
    assert vault.contents(now + timedelta(days=3)).retired == {}  # the window ended
    vault.set("a_key", third, now=now)
    assert [r.value.reveal() for r in vault.contents(now).retired["a_key"]] == [first, second]
    vault.set("a_key", first, now=now)  # set back: current, no longer retired as well
    assert [r.value.reveal() for r in vault.contents(now).retired["a_key"]] == [second, third]
    assert vault.forget_retired("a_key") == 2 and vault.contents(now).retired == {}
    assert vault.remove("a_key", now=now)
    assert [r.value.reveal() for r in vault.contents(now).retired["a_key"]] == [first]
    assert vault.names() == []
    for secret_value in (first, second, third):
        assert secret_value.encode() not in (tmp_path / "vault.bin").read_bytes()


def test_a_malformed_retired_entry_makes_the_vault_unreadable_not_empty(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault.bin", KEY)
    vault._write({"a_key": value("x")})
    broken = {"version": 1, "secrets": {"a_key": "v" * 20}, "retired": {"a_key": [["v", 1, 2]]}}
    nonce = os.urandom(12)
    blob = b"BPV1" + nonce + vault._aead.encrypt(nonce, json.dumps(broken).encode(),
                                                  b"broker-proxy vault v1")
    (tmp_path / "vault.bin").write_bytes(blob)
    with pytest.raises(VaultError, match="wrong key or corrupted"):
        vault.contents()


def test_the_destination_index_names_every_secret_that_may_go_to_a_host() -> None:
    index = DestinationIndex(load_policy_text(POLICY))
    assert index.secrets_sent_to_host("api.example.com") == {"a_key", "b_key"}
    assert index.secrets_sent_to_host("x.api.example.com") == {"b_key"}
    assert index.secrets_sent_to_host("other.example.org") == {"c_key"}
    assert index.secrets_sent_to_host("example.com") == frozenset()


def _resolver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Home, Vault]:
    home = Home(tmp_path / "home").ensure()
    monkeypatch.setenv("BROKER_PROXY_MASTER_KEY", random_master_key())
    return home, Vault(home.vault, load_or_create_master_key(home, create=True))


def test_an_answer_scope_holds_the_hosts_secrets_and_retired_values_and_follows_rotation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, vault = _resolver(tmp_path, monkeypatch)
    a1, b1, c1, a2 = value("a1"), value("b1"), value("c1"), value("a2")
    for name, secret_value in (("a_key", a1), ("b_key", b1), ("c_key", c1)):
        vault.set(name, secret_value)
    policy = load_policy_text(POLICY)
    index = DestinationIndex(policy)
    values = GrantScrubValues(SecretResolver(home))
    scope = ScrubScope("g_1", (("a_key", "own-a"), ("c_key", None)), "api.example.com")
    first = values.for_scope(scope, policy, index)
    assert {label: v for label, (v, _) in first.values.items()} == {
        "a_key": a1, "c_key": c1, "b_key": b1}
    assert first.values["a_key"][1] == "own-a"  # the grant's own placeholder
    assert first.values["b_key"][1] == "{{secret:b_key}}"  # another grant's: the policy's
    assert values.for_scope(scope, policy, index) is first  # composed once, reused
    vault.set("a_key", a2)
    values.refresh(policy)
    second = values.for_scope(scope, policy, index)
    assert second.generation > first.generation
    by_value = {v: label for label, (v, _) in second.values.items()}
    assert by_value[a2] == "a_key" and base_secret(by_value[a1]) == "a_key"
    assert by_value[a1] != "a_key" and a1 not in by_value[a1]  # a label never shows a value
    vault.forget_retired("a_key")
    values.refresh(policy)
    assert a1 not in {v for v, _ in values.for_scope(scope, policy, index).values.values()}


def test_values_a_backend_without_history_changed_away_from_stay_scrubbed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    policy = load_policy_text(POLICY.replace("from: vault", "from: env:ROT_KEY", 1))
    old, new = value("old"), value("new")
    monkeypatch.setenv("ROT_KEY", old)
    clock = [0.0]
    values = GrantScrubValues(SecretResolver(Home(Path("/nonexistent"))), clock=lambda: clock[0])
    grant_scope = ScrubScope("g_1", (("a_key", None),), None)
    index = DestinationIndex(policy)
    assert values.for_scope(grant_scope, policy, index).values["a_key"][0] == old
    monkeypatch.setenv("ROT_KEY", new)
    clock[0] = 60.0  # the cache expired: resolved again, the change seen
    seen = {v for v, _ in values.for_scope(grant_scope, policy, index).values.values()}
    assert seen == {old, new}


def test_a_stream_switched_mid_value_still_finds_the_value_held_across_the_switch() -> None:
    old, new = value("old"), value("new")
    before = Scrubber({"a_key": (old, "{{a}}")})
    after = Scrubber({"a_key": (new, "{{a}}"), "a_key#1": (old, "{{a}}")})
    stream = before.stream()
    out = stream.feed(b"data: " + old[:10].encode())
    stream = stream.rebind(after)
    out += stream.feed(old[10:].encode() + b" then " + new.encode()) + stream.finish()
    assert out == b"data: {{a}} then {{a}}"
    assert stream.counts == {"a_key#1": 1, "a_key": 1}
    messages = MessageScrubber(before)
    sent = [messages.message(old[:10].encode())]
    messages = messages.rebind(after)
    sent.append(messages.message(old[10:].encode() + b"|" + new.encode()))
    joined = b"".join(sent)
    assert old.encode() not in joined and new.encode() not in joined
    assert joined.endswith(b"{{a}}|{{a}}")


def test_wait_for_proxies_counts_live_processes_that_acked_the_vault_as_written(
        tmp_path: Path) -> None:
    home = Home(tmp_path).ensure()
    Vault(home.vault, KEY).set("a_key", value("a"))
    acks_dir(home).mkdir()
    (acks_dir(home) / str(os.getpid())).write_text(vault_mark(home.vault))
    (acks_dir(home) / "999999999").write_text("stale")  # a process that no longer exists
    answers = wait_for_proxies(home, 0.2)
    assert answers.confirmed == [os.getpid()] and answers.silent == []
    Vault(home.vault, KEY).set("a_key", value("b"))  # a new write nobody acked yet
    answers = wait_for_proxies(home, 0.2)
    assert answers.confirmed == [] and answers.silent == [os.getpid()]
    assert wait_for_proxies(Home(tmp_path / "none"), 0.2).confirmed == []


def test_another_grants_secret_that_cannot_be_had_withholds_nothing_and_slow_ones_are_not_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    policy = load_policy_text(POLICY.replace("from: vault", "from: env:ROT_A", 1).replace(
        "from: vault", "from: env:ROT_B", 1).replace(
        "from: vault", 'from: command\n    command: ["false"]', 1).replace(
        "host: other.example.org", "host: api.example.com"))
    a_value, b_value = value("a"), value("b")
    monkeypatch.setenv("ROT_A", a_value)
    monkeypatch.setenv("ROT_B", b_value)
    calls: list[str] = []
    resolver = SecretResolver(Home(Path("/nonexistent")))
    original = resolver.resolve

    def counting(secret):  # type: ignore[no-untyped-def]
        calls.append(secret.name)
        return original(secret)

    resolver.resolve = counting  # type: ignore[method-assign]
    clock = [0.0]
    values = GrantScrubValues(resolver, clock=lambda: clock[0])
    index = DestinationIndex(policy)
    scope = ScrubScope("g_1", (("a_key", None),), "api.example.com")
    first = values.for_scope(scope, policy, index)
    assert first.complete and {v for v, _ in first.values.values()} == {a_value, b_value}
    assert "c_key" not in calls  # a command is run only for the grants that hold it
    monkeypatch.delenv("ROT_B")
    clock[0] = 60.0  # the cache expired: b_key is asked again, and fails
    second = values.for_scope(scope, policy, index)
    assert calls[-1] == "b_key"
    assert second.complete  # b_key is another grant's: nothing is withheld for it
    assert b_value in {v for v, _ in second.values.values()}  # scrubbed with its last value


def test_the_policy_sets_how_long_a_replaced_vault_value_stays_retired(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_cli import run_cli

    policy = POLICY.replace("      - host: api.example.com\n",
                            "      - host: api.example.com\n    retire_for: 2d\n", 1)
    (tmp_path / "policy.yaml").write_text(policy)
    monkeypatch.setenv("BROKER_PROXY_MASTER_KEY", random_master_key())
    for secret_value in (value("one"), value("two")):
        done = run_cli(tmp_path, "secret", "set", "a_key", "--wait", "1s",
                       "--policy", str(tmp_path / "policy.yaml"), stdin=secret_value)
        assert done.returncode == 0, done.stderr
    key = load_or_create_master_key(Home(tmp_path), create=False)
    [entry] = Vault(tmp_path / "vault.bin", key).contents().retired["a_key"]
    assert entry.until - entry.since == timedelta(days=2)
    # Only the vault keeps history: elsewhere the field is refused.
    with pytest.raises(PolicyError, match=r"retire_for.*only used with"):
        load_policy_text(policy.replace("from: vault", "from: env:X", 1))
