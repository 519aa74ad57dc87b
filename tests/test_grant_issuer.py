"""Issuing grants against the policy, into a real SQLite store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from broker_proxy.grants.issuer import (
    GrantPolicyError,
    format_duration,
    issue_grant,
    proxy_url,
)
from broker_proxy.grants.model import GrantStatus
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.grants.store import ReserveResult
from broker_proxy.grants.tokens import parse_token
from broker_proxy.policy.model import (
    DEFAULT_METHODS,
    AgentPolicy,
    Destination,
    Policy,
    SecretPolicy,
)

NOW = datetime(2030, 5, 17, 12, 0, tzinfo=UTC)


def secret_policy(name: str, placeholder: str | None = None) -> SecretPolicy:
    return SecretPolicy(
        name=name,
        source="vault",
        command=None,
        placeholder=placeholder or f"{{{{secret:{name}}}}}",
        destinations=(
            Destination(
                scheme="https", host="api.example.com", port=443, methods=DEFAULT_METHODS,
                paths=(),
            ),
        ),
        inject=frozenset({"header"}),
        env=None,
    )


@pytest.fixture
def policy() -> Policy:
    return Policy(
        secrets={
            "github": secret_policy("github", placeholder="ghp_placeholder000000000000000000"),
            "slack": secret_policy("slack"),
            "prod-db": secret_policy("prod-db"),
        },
        agents={
            "research-bot": AgentPolicy(
                name="research-bot",
                secrets=frozenset({"github", "slack"}),
                max_ttl=timedelta(hours=1),
                approval=frozenset({"slack"}),
            ),
            "quick-bot": AgentPolicy(
                name="quick-bot",
                secrets=frozenset({"github"}),
                max_ttl=timedelta(minutes=5),
                approval=frozenset(),
            ),
        },
        egress_allow=(),
        allow_addresses=(),
    )


@pytest.fixture
def store(tmp_path: Path):
    with SqliteGrantStore(tmp_path / "grants.sqlite3") as opened:
        yield opened


def issue(policy, store, **overrides):
    request = {
        "agent": "research-bot",
        "task": "triage issue 42",
        "secrets": ["github"],
        "ttl": None,
        "max_uses": None,
        "now": NOW,
        "proxy_url_base": None,
    }
    request.update(overrides)
    return issue_grant(policy, store, **request)


def refused(policy, store, **overrides) -> str:
    with pytest.raises(GrantPolicyError) as excinfo:
        issue(policy, store, **overrides)
    assert store.list() == []  # a refused grant leaves nothing behind
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# -- what an issued grant holds ------------------------------------------------------------


def test_issued_grant_is_stored_and_its_token_authenticates(policy, store):
    issued = issue(policy, store, max_uses=3)
    grant = issued.grant
    assert grant.status is GrantStatus.ACTIVE
    assert grant.agent == "research-bot"
    assert grant.task == "triage issue 42"
    assert grant.secrets == ("github",)
    assert (grant.uses, grant.max_uses) == (0, 3)
    assert grant.created_at == NOW
    assert store.get(grant.id) == grant
    assert store.authenticate(issued.token) == grant
    assert parse_token(issued.token)[0] == grant.id


def test_the_token_itself_is_not_stored(policy, store, tmp_path: Path):
    issued = issue(policy, store)
    secret_part = parse_token(issued.token)[1].encode()  # the random part may hold "_"
    for path in tmp_path.iterdir():
        assert secret_part not in path.read_bytes(), path.name


def test_issued_grant_repr_hides_the_token(policy, store):
    issued = issue(policy, store, proxy_url_base="127.0.0.1:8080")
    assert issued.token not in repr(issued)
    assert issued.grant.token_hash.hex() not in repr(issued)


def test_placeholders_come_from_the_policy(policy, store):
    issued = issue(policy, store, secrets=["slack", "github"])
    assert issued.placeholders == {
        "github": "ghp_placeholder000000000000000000",
        "slack": "{{secret:slack}}",
    }


def test_secrets_are_sorted_and_deduplicated(policy, store):
    issued = issue(policy, store, secrets=["slack", "github", "slack"])
    assert issued.grant.secrets == ("github", "slack")


def test_default_ttl_is_fifteen_minutes(policy, store):
    assert issue(policy, store).grant.expires_at == NOW + timedelta(minutes=15)


def test_default_ttl_never_exceeds_the_agents_max_ttl(policy, store):
    grant = issue(policy, store, agent="quick-bot").grant
    assert grant.expires_at == NOW + timedelta(minutes=5)


def test_ttl_equal_to_max_ttl_is_allowed(policy, store):
    grant = issue(policy, store, ttl=timedelta(hours=1)).grant
    assert grant.expires_at == NOW + timedelta(hours=1)


def test_issue_time_is_stored_in_utc(policy, store):
    local = NOW.astimezone(timezone(timedelta(hours=-7)))
    grant = issue(policy, store, now=local).grant
    assert grant.created_at.utcoffset() == timedelta(0)
    assert grant.created_at == NOW


def test_a_secret_that_needs_approval_makes_the_grant_pending(policy, store):
    issued = issue(policy, store, secrets=["github", "slack"])
    assert issued.grant.status is GrantStatus.PENDING
    assert store.reserve_use(issued.grant.id, NOW) is ReserveResult.PENDING
    store.approve(issued.grant.id, "alice", NOW)
    assert store.reserve_use(issued.grant.id, NOW) is ReserveResult.RESERVED


def test_issue_refuses_a_naive_now(policy, store):
    with pytest.raises(ValueError, match="timezone-aware"):
        issue(policy, store, now=datetime(2030, 1, 1))


# -- refusals ------------------------------------------------------------------------------


def test_unknown_agent_is_refused(policy, store):
    assert refused(policy, store, agent="x") == 'agent "x" is not in the policy'


def test_agent_name_with_control_characters_stays_on_one_line(policy, store):
    assert refused(policy, store, agent="x\ny") == 'agent "x\\ny" is not in the policy'


def test_secret_not_allowed_for_the_agent_is_refused(policy, store):
    message = refused(policy, store, agent="quick-bot", secrets=["slack"])
    assert message == 'agent "quick-bot" may not be granted secret "slack"'


def test_refusal_reads_the_same_whether_or_not_the_secret_exists(policy, store):
    exists = refused(policy, store, secrets=["prod-db"])
    missing = refused(policy, store, secrets=["no-such"])
    assert exists == 'agent "research-bot" may not be granted secret "prod-db"'
    assert missing == exists.replace("prod-db", "no-such")


def test_one_disallowed_secret_refuses_the_whole_grant(policy, store):
    refused(policy, store, secrets=["github", "prod-db"])


def test_a_grant_without_secrets_is_refused(policy, store):
    assert refused(policy, store, secrets=[]) == "a grant needs at least one secret"


@pytest.mark.parametrize("ttl", [timedelta(0), timedelta(seconds=-30)])
def test_non_positive_ttl_is_refused(policy, store, ttl):
    assert refused(policy, store, ttl=ttl).startswith("ttl must be positive")


def test_ttl_over_max_ttl_is_refused(policy, store):
    message = refused(policy, store, ttl=timedelta(hours=2))
    assert message == 'ttl 2h exceeds max_ttl 1h for agent "research-bot"'


def test_ttl_a_second_over_max_ttl_is_refused(policy, store):
    message = refused(policy, store, agent="quick-bot", ttl=timedelta(minutes=5, seconds=1))
    assert message == 'ttl 5m1s exceeds max_ttl 5m for agent "quick-bot"'


@pytest.mark.parametrize("max_uses", [0, -1])
def test_max_uses_below_one_is_refused(policy, store, max_uses):
    message = refused(policy, store, max_uses=max_uses)
    assert message == f"max_uses must be at least 1, got {max_uses}"


def test_max_uses_of_one_allows_exactly_one_use(policy, store):
    grant = issue(policy, store, max_uses=1).grant
    assert store.reserve_use(grant.id, NOW) is ReserveResult.RESERVED
    assert store.reserve_use(grant.id, NOW) is ReserveResult.USED_UP


@pytest.mark.parametrize("task", ["", "   ", "\t"])
def test_empty_task_is_refused(policy, store, task):
    assert refused(policy, store, task=task) == "task must not be empty"


def test_task_longer_than_500_characters_is_refused(policy, store):
    assert issue(policy, store, task="t" * 500).grant.task == "t" * 500
    store_count = len(store.list())
    with pytest.raises(GrantPolicyError, match="at most 500"):
        issue(policy, store, task="t" * 501)
    assert len(store.list()) == store_count


@pytest.mark.parametrize(
    "task",
    [
        "line one\nline two",
        "carriage\rreturn",
        "escape \x1b[31mred",
        "nul\x00byte",
        "del\x7f",
        "bidi \u202eoverride",
        "zero\u200bwidth",
        "line\u2028separator",
    ],
)
def test_task_with_control_characters_is_refused(policy, store, task):
    assert refused(policy, store, task=task) == "task must not contain control characters"


def test_task_may_hold_ordinary_unicode(policy, store):
    task = "résumé l'issue #42 — 修复"
    assert issue(policy, store, task=task).grant.task == task


# -- proxy URLs ----------------------------------------------------------------------------


def test_proxy_url_puts_agent_and_token_in_userinfo(policy, store):
    issued = issue(policy, store)
    assert proxy_url("research-bot", issued.token, "127.0.0.1", 8080) == (
        f"http://research-bot:{issued.token}@127.0.0.1:8080"
    )


def test_proxy_url_percent_quotes_the_agent_name():
    url = proxy_url("bot a/b@c:d", "bpt_token", "127.0.0.1", 8080)
    assert url == "http://bot%20a%2Fb%40c%3Ad:bpt_token@127.0.0.1:8080"


def test_proxy_url_brackets_ipv6_hosts():
    assert proxy_url("a", "t", "::1", 8080) == "http://a:t@[::1]:8080"


@pytest.mark.parametrize("base", ["127.0.0.1:8080", "http://127.0.0.1:8080"])
def test_issue_builds_the_proxy_url_from_the_proxy_address(policy, store, base):
    issued = issue(policy, store, proxy_url_base=base)
    assert issued.proxy_url == f"http://research-bot:{issued.token}@127.0.0.1:8080"


def test_issue_without_a_proxy_address_has_no_proxy_url(policy, store):
    assert issue(policy, store).proxy_url is None


@pytest.mark.parametrize("base", ["127.0.0.1", "https://127.0.0.1:8080", "http://u:p@h:1"])
def test_issue_refuses_a_proxy_address_without_echoing_it(policy, store, base):
    with pytest.raises(ValueError, match="host:port") as excinfo:
        issue(policy, store, proxy_url_base=base)
    assert base not in str(excinfo.value)


@pytest.mark.parametrize(
    ("span", "text"),
    [
        (timedelta(hours=2), "2h"),
        (timedelta(minutes=90), "1h30m"),
        (timedelta(minutes=15), "15m"),
        (timedelta(seconds=45), "45s"),
        (timedelta(days=1, seconds=1), "24h1s"),
        (timedelta(milliseconds=500), "500ms"),
        (timedelta(0), "0s"),
        (timedelta(seconds=-30), "-30s"),
    ],
)
def test_format_duration_writes_durations_like_policies_do(span, text):
    assert format_duration(span) == text
