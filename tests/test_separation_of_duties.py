"""Separation of duties without a proxy: who issued a grant is stored with it (SQLite and Redis,
old stores migrated), found from the audit log only for grants stored before, and compared with
the decider across identity kinds the policy maps to one person. The end-to-end checks are in
tests/test_e2e_chat_approvals.py and tests/test_console_oidc_browser.py."""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker_proxy.audit.log import AuditLog
from broker_proxy.console.audit_index import AuditIndex
from broker_proxy.console.separation import grant_issuer, refuse_own_grant
from broker_proxy.grants.actions import change_grant, issue_audited
from broker_proxy.grants.redis_keys import grant_key
from broker_proxy.grants.redis_store import RedisGrantStore
from broker_proxy.grants.sqlite_store import SCHEMA_VERSION, SqliteGrantStore
from broker_proxy.grants.store import GrantStore
from broker_proxy.http_routes import ApiError
from broker_proxy.identity.roles import Principal, Role
from broker_proxy.policy.diff import diff_policies
from broker_proxy.policy.lint import policy_warnings
from broker_proxy.policy.loader import PolicyError, load_policy_text
from broker_proxy.policy.model import Policy
from broker_proxy.runtime import policy_worker
from broker_proxy.sign_in.access import SeparationRefused, check_separation, person_key

NOW = datetime(2030, 5, 17, 12, 0, tzinfo=UTC)
POLICY = """\
version: 1
secrets:
  api_key:
    from: env:API_KEY
    destinations: [{host: api.example.com}]
agents:
  bot:
    secrets: [api_key]
    approval: [api_key]
chat:
  slack:
    bot_token: slack-bot-token
    signing_secret: slack-signing-secret
    channel: C0APPROVE
    team_id: T0ACME001
    users:
      U0ALICE01: {role: approver, person: Alice@Example.com}
      U0BOB0001: approver
  webhooks:
    bridge:
      secret: bridge-hmac
      users:
        carol: approver
        dave: {role: approver, person: "oidc:dave-sub-17"}
"""


@pytest.fixture
def policy() -> Policy:
    return load_policy_text(POLICY, "p.yaml")


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GrantStore]:
    if request.param == "sqlite":
        with SqliteGrantStore(tmp_path / "grants.sqlite3") as opened:
            yield opened
        return
    server = request.getfixturevalue("redis_server")
    with RedisGrantStore(server.url) as opened:
        opened._client.flushdb()
        yield opened


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    with AuditLog.open(tmp_path / "audit.log", tmp_path / "audit.key") as log:
        yield log


def _issue(policy: Policy, store: GrantStore, audit: AuditLog, by: str) -> str:
    issued = issue_audited(policy, store, audit, agent="bot", task="refunds",
                           secrets=["api_key"], ttl=None, max_uses=None, now=NOW,
                           proxy_url_base=None, by=by)
    return issued.grant.id


def test_the_issuer_is_stored_with_the_grant_and_survives_its_decision(
        policy: Policy, store: GrantStore, audit: AuditLog) -> None:
    grant_id = _issue(policy, store, audit, "oidc:alice@example.com")
    stored = store.get(grant_id)
    assert stored is not None and stored.issued_by == "oidc:alice@example.com"
    approved = change_grant(store, audit, grant_id, "approve", by="oidc:bob@example.com",
                            now=NOW)
    assert approved.issued_by == "oidc:alice@example.com"
    # Not in the public answer: the HTTP contract is unchanged.
    assert "issued_by" not in approved.to_public_dict(NOW)


def test_the_stored_issuer_is_used_without_any_audit_record(
        policy: Policy, store: GrantStore, tmp_path: Path) -> None:
    # Issued on another replica, or before the last rotation: this log never saw it.
    with AuditLog.open(tmp_path / "other.log", tmp_path / "other.key") as elsewhere:
        grant_id = _issue(policy, store, elsewhere, "alice@example.com")
    with AuditLog.open(tmp_path / "audit.log", tmp_path / "audit.key"):
        pass
    index = AuditIndex(tmp_path / "audit.log")
    assert grant_issuer(store, index, grant_id) == "alice@example.com"
    with pytest.raises(ApiError) as refused:
        refuse_own_grant(Principal("slack:U0ALICE01", Role.APPROVER), grant_id, grants=store,
                         audit=index, sign_in=None, chat=policy.chat)
    assert (refused.value.status, refused.value.code) == (403, "separation_of_duties")
    refuse_own_grant(Principal("slack:U0BOB0001", Role.APPROVER), grant_id, grants=store,
                     audit=index, sign_in=None, chat=policy.chat)


def test_a_version_3_sqlite_store_gains_the_issuer_column_and_old_grants_fall_back_to_the_audit(
        policy: Policy, tmp_path: Path, audit: AuditLog) -> None:
    path = tmp_path / "grants.sqlite3"
    with SqliteGrantStore(path) as store:
        old_id = _issue(policy, store, audit, "oidc:alice@example.com")
    with sqlite3.connect(path) as raw:  # what the previous version wrote: no issued_by column
        raw.execute("ALTER TABLE grants DROP COLUMN issued_by")
        raw.execute("PRAGMA user_version = 3")
    with SqliteGrantStore(path) as store:
        old = store.get(old_id)
        assert old is not None and old.issued_by is None
        index = AuditIndex(tmp_path / "audit.log")
        assert grant_issuer(store, index, old_id) == "oidc:alice@example.com"
        assert grant_issuer(store, None, old_id) is None
        new_id = _issue(policy, store, audit, "oidc:bob@example.com")
        new = store.get(new_id)
        assert new is not None and new.issued_by == "oidc:bob@example.com"
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4


def test_an_old_redis_record_without_the_issuer_reads_as_unknown(
        policy: Policy, redis_server, audit: AuditLog, tmp_path: Path) -> None:
    with RedisGrantStore(redis_server.url) as store:
        store._client.flushdb()
        grant_id = _issue(policy, store, audit, "oidc:alice@example.com")
        store._client.hdel(grant_key(grant_id), "issued_by")  # as an older version stored it
        old = store.get(grant_id)
        assert old is not None and old.issued_by is None
        assert grant_issuer(store, AuditIndex(tmp_path / "audit.log"), grant_id) \
            == "oidc:alice@example.com"


def test_one_person_is_recognised_through_every_door(policy: Policy) -> None:
    chat = policy.chat
    assert person_key("oidc:Alice@Example.com") == "alice@example.com"
    assert person_key("slack:U0ALICE01", chat) == "alice@example.com"
    assert person_key("slack:U0BOB0001", chat) == "slack:U0BOB0001"  # no person: only itself
    assert person_key("webhook:bridge:carol", chat) == "carol"
    assert person_key("webhook:bridge:dave", chat) == "dave-sub-17"
    assert person_key("oidc:dave-sub-17") == "dave-sub-17"
    assert person_key("cli:carol") == person_key("carol") == "carol"
    for other in ("admin-api:carol", "console:carol", "token:break-glass", "webhook:bridge"):
        assert person_key(other, chat) == other


@pytest.mark.parametrize(("decider", "issuer"), [
    ("slack:U0ALICE01", "oidc:alice@example.com"),
    ("oidc:alice@example.com", "alice@example.com"),
    ("webhook:bridge:carol", "carol"),
    ("webhook:bridge:dave", "oidc:dave-sub-17"),
    ("slack:U0BOB0001", "slack:U0BOB0001"),
])
def test_a_person_may_not_approve_their_own_grant_from_another_door(
        policy: Policy, decider: str, issuer: str) -> None:
    with pytest.raises(SeparationRefused):
        check_separation(Principal(decider, Role.APPROVER), issuer, "g_1", None, policy.chat)


@pytest.mark.parametrize(("decider", "issuer"), [
    ("slack:U0BOB0001", "oidc:alice@example.com"),
    ("oidc:alice@example.com", "admin-api:alice@example.com"),  # a token holder's label
    ("admin-api:alice", "alice"),  # the admin token is outside the roles
    ("webhook:bridge:carol", "console:carol"),
])
def test_different_people_or_unchecked_doors_are_not_refused(
        policy: Policy, decider: str, issuer: str) -> None:
    check_separation(Principal(decider, Role.APPROVER), issuer, "g_1", None, policy.chat)


def test_switching_separation_off_in_sign_in_lets_everyone_decide(policy: Policy) -> None:
    relaxed = load_policy_text(POLICY + "sign_in:\n  separation_of_duties: false\n").sign_in
    check_separation(Principal("slack:U0ALICE01", Role.APPROVER), "oidc:alice@example.com",
                     "g_1", relaxed, policy.chat)


def test_the_slack_workspace_and_people_are_read_from_the_policy(policy: Policy) -> None:
    assert policy.chat is not None and policy.chat.slack is not None
    assert policy.chat.slack.team_id == "T0ACME001"
    assert policy.chat.slack.users == {"U0ALICE01": "approver", "U0BOB0001": "approver"}
    assert policy.chat.slack.people == {"U0ALICE01": "Alice@Example.com"}
    assert policy.chat.webhooks["bridge"].people == {"dave": "oidc:dave-sub-17"}
    assert policy_warnings(policy, POLICY, "p.yaml") == []


def test_a_slack_section_without_team_id_loads_with_a_warning() -> None:
    text = POLICY.replace("    team_id: T0ACME001\n", "")
    policy = load_policy_text(text, "p.yaml")
    [warning] = policy_warnings(policy, text, "p.yaml")
    assert (warning.field_path, warning.line) == ("chat.slack", 12)
    assert "no team_id" in warning.message


@pytest.mark.parametrize(("change", "message"), [
    (("T0ACME001", "acme"), "chat.slack.team_id: must be a workspace id"),
    (("{role: approver, person: Alice@Example.com}", "{person: a@example.com}"),
     'missing required field "role"'),
    (("{role: approver, person: Alice@Example.com}", "{role: approver, who: x}"),
     'unknown field "who"'),
    (("person: Alice@Example.com}", "person: 'Alice Smith'}"),
     "1-200 printable characters without spaces"),
])
def test_a_bad_team_id_or_user_entry_is_an_error(change: tuple[str, str], message: str) -> None:
    with pytest.raises(PolicyError) as refused:
        load_policy_text(POLICY.replace(*change), "p.yaml")
    assert message in str(refused.value)


def test_the_workspace_and_people_come_back_from_the_loader_child_equal(policy: Policy) -> None:
    out = io.BytesIO()
    policy_worker.write_answer(POLICY.encode(), "p.yaml", out)
    assert policy_worker.read_answer(out.getvalue(), "p.yaml", 0, b"") == policy


def test_policy_diff_flags_a_dropped_workspace_or_person_as_widening(policy: Policy) -> None:
    new = load_policy_text(POLICY.replace("    team_id: T0ACME001\n", "")
                           .replace("{role: approver, person: Alice@Example.com}", "approver")
                           .replace("        carol: approver", "        carol: "
                                    "{role: approver, person: carol@example.com}"), "new.yaml")
    changes = [(c.kind, c.detail, c.widening) for c in diff_policies(policy, new)
               if c.subject == "chat"]
    assert changes == [
        ("chat_team_changed", "chat.slack.team_id: T0ACME001 -> none", True),
        ("chat_person_changed", "slack:U0ALICE01: person Alice@Example.com -> none", True),
        ("chat_person_changed", "webhook:bridge:carol: person none -> carol@example.com",
         False)]
    back = [(c.kind, c.widening) for c in diff_policies(new, policy) if c.subject == "chat"]
    assert back == [("chat_team_changed", False), ("chat_person_changed", False),
                    ("chat_person_changed", True)]
