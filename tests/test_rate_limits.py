"""Request rates per grant: the policy fields, the arithmetic, and both stores holding a bucket
exactly under concurrent spenders (threads, processes, Redis clients)."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import jsonschema
import pytest
import yaml

from broker_proxy.devtools.redis_server import RedisServer
from broker_proxy.grants.issuer import GrantPolicyError, issue_grant
from broker_proxy.grants.rate_limits import gcra_step
from broker_proxy.grants.redis_store import RedisGrantStore
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.grants.store import GrantStore
from broker_proxy.policy.limit_fields import parse_rate_text
from broker_proxy.policy.loader import PolicyError, load_policy_text
from broker_proxy.policy.model import RateLimit
from broker_proxy.policy.schema import policy_json_schema
from tests.test_grant_store import NOW, make_grant

POLICY = """\
version: 1
secrets:
  openai:
    from: vault
    destinations: [{host: api.openai.com}]
    rate: 60/minute
    burst: 10
  github:
    from: vault
    destinations: [{host: api.github.com}]
agents:
  bot:
    secrets: [openai, github]
"""


# -- the policy fields ----------------------------------------------------------------------


def test_rate_and_burst_are_read_into_the_secret() -> None:
    policy = load_policy_text(POLICY)
    assert policy.secrets["openai"].rate == RateLimit(60, 60, 10)
    assert policy.secrets["openai"].rate.interval_us == 1_000_000
    assert policy.secrets["github"].rate is None


def test_burst_defaults_to_the_count() -> None:
    assert parse_rate_text("5/second") == RateLimit(5, 1, 5)
    assert parse_rate_text("100/day").interval_us == 864_000_000


@pytest.mark.parametrize(("rate", "burst", "message"), [
    ('"60/fortnight"', None, "6:11: secrets.openai.rate: invalid rate"),
    ('"0/minute"', None, "6:11: secrets.openai.rate: invalid rate"),
    ("60", None, '6:11: secrets.openai.rate: expected a rate such as "60/minute"'),
    ('"60/minute"', "0", "7:12: secrets.openai.burst: must be from 1 to 1000000"),
    ('"60/minute"', '"ten"', "7:12: secrets.openai.burst: expected an integer"),
])
def test_a_wrong_rate_is_reported_at_its_line_and_column(rate: str, burst: str | None,
                                                         message: str) -> None:
    text = POLICY.replace("rate: 60/minute", f"rate: {rate}")
    text = text.replace("burst: 10", f"burst: {burst}") if burst else text.replace(
        "    burst: 10\n", "")
    with pytest.raises(PolicyError) as raised:
        load_policy_text(text, "p.yaml")
    assert f"p.yaml:{message}" in str(raised.value)
    # The schema an editor uses refuses the same file.
    document = yaml.safe_load(text)
    assert list(jsonschema.Draft202012Validator(policy_json_schema()).iter_errors(document))


def test_burst_without_a_rate_is_refused() -> None:
    text = POLICY.replace("    rate: 60/minute\n", "")
    with pytest.raises(PolicyError) as raised:
        load_policy_text(text, "p.yaml")
    assert 'p.yaml:6:5: secrets.openai.burst: only used with "rate"' in str(raised.value)


def test_the_schema_accepts_a_rated_secret() -> None:
    jsonschema.validate(yaml.safe_load(POLICY), policy_json_schema())


# -- the arithmetic -------------------------------------------------------------------------


def test_gcra_admits_the_burst_then_one_per_interval() -> None:
    tat, admitted = 0, 0
    for _ in range(20):
        new, wait = gcra_step(tat, 1_000, 100, 5)
        if not wait:
            tat, admitted = new, admitted + 1
    assert admitted == 5
    _, wait = gcra_step(tat, 1_000, 100, 5)
    assert wait == 100  # the next one is earned one interval on
    assert gcra_step(tat, 1_100, 100, 5)[1] == 0


# -- the stores -----------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        with SqliteGrantStore(tmp_path / "grants.db") as opened:
            yield opened
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        with RedisGrantStore(server.url) as opened:
            opened._client.flushdb()
            yield opened


def test_a_bucket_admits_its_burst_and_says_how_long_to_wait(store: GrantStore) -> None:
    grant, _ = make_grant()
    store.create(grant)
    rate = RateLimit(60, 60, 3)
    waits = [store.take_rate(grant, "openai", rate, NOW) for _ in range(5)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] == pytest.approx(1.0)
    assert store.take_rate(grant, "openai", rate, NOW + timedelta(seconds=1)) == 0.0
    # Each grant and each secret has its own bucket.
    other, _ = make_grant()
    store.create(other)
    assert store.take_rate(other, "openai", rate, NOW) == 0.0
    assert store.take_rate(grant, "github", rate, NOW) == 0.0


def test_a_grant_keeps_the_stricter_rate_it_asked_for(store: GrantStore) -> None:
    grant, _ = make_grant()
    store.create(grant)
    store.limit_rate(grant, "openai", RateLimit(1, 60, 1))
    assert store.own_rates(grant.id) == {"openai": (60_000_000, 1)}
    policy_rate = RateLimit(60, 60, 10)
    assert store.take_rate(grant, "openai", policy_rate, NOW) == 0.0
    assert store.take_rate(grant, "openai", policy_rate, NOW) == pytest.approx(60.0)


def test_threads_never_take_more_than_the_burst(store: GrantStore) -> None:
    grant, _ = make_grant()
    store.create(grant)
    rate = RateLimit(25, 3600, 25)  # nothing refills within the test
    with ThreadPoolExecutor(max_workers=8) as pool:
        waits = list(pool.map(lambda _: store.take_rate(grant, "openai", rate, NOW), range(200)))
    assert waits.count(0.0) == 25


def _spend(args: tuple[str, str, int]) -> int:
    """In another process: its own connection to the same SQLite file."""
    path, grant_id, count = args
    with SqliteGrantStore(path) as store:
        grant = store.get(grant_id)
        assert grant is not None
        rate = RateLimit(30, 3600, 30)
        return sum(store.take_rate(grant, "openai", rate, NOW) == 0.0 for _ in range(count))


def test_processes_sharing_a_sqlite_file_never_take_more_than_the_burst(tmp_path: Path) -> None:
    path = tmp_path / "grants.db"
    grant, _ = make_grant()
    with SqliteGrantStore(path) as store:
        store.create(grant)
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        admitted = pool.map(_spend, [(str(path), grant.id, 50)] * 4)
    assert sum(admitted) == 30


def test_issue_may_ask_for_less_never_more(tmp_path: Path) -> None:
    policy = load_policy_text(POLICY)
    with SqliteGrantStore(tmp_path / "grants.db") as store:
        issued = issue_grant(policy, store, agent="bot", task="t", secrets=["openai"], ttl=None,
                             max_uses=None, now=NOW, rates=["30/minute"])
        # A burst above the policy's is cut to it: asking for less never asks for more.
        assert store.own_rates(issued.grant.id) == {"openai": (2_000_000, 10)}
        with pytest.raises(GrantPolicyError, match=r"rate 120/minute for secret \"openai\" is "
                                                   r"more than the policy allows"):
            issue_grant(policy, store, agent="bot", task="t", secrets=["openai"], ttl=None,
                        max_uses=None, now=NOW, rates=["openai=120/minute"])
        with pytest.raises(GrantPolicyError, match="has no rate in the policy"):
            issue_grant(policy, store, agent="bot", task="t", secrets=["openai", "github"],
                        ttl=None, max_uses=None, now=NOW, rates=["github=1/minute"])
        with pytest.raises(GrantPolicyError, match="invalid rate"):
            issue_grant(policy, store, agent="bot", task="t", secrets=["openai"], ttl=None,
                        max_uses=None, now=NOW, rates=["lots"])


# -- LLM budgets in the stores --------------------------------------------------------------


def test_a_budget_holds_reservations_and_settles_usage(store: GrantStore) -> None:
    grant, _ = make_grant()
    store.create(grant)
    caps = (None, 100, 5_000_000, None)
    assert store.reserve_budget(grant, "openai", caps, (50, 60, 1000, 0)) is None
    assert store.reserve_budget(grant, "openai", caps, (50, 60, 1000, 0)) == "output_tokens"
    store.settle_budget(grant.id, "openai", (50, 60, 1000, 0), (11, 7, 10, 0))
    use = store.budget_use(grant.id)["openai"]
    assert (use.used, use.held) == ((11, 7, 10, 0), (0, 0, 0, 0))
    assert store.reserve_budget(grant, "openai", caps, (50, 93, 1000, 0)) is None
    assert store.reserve_budget(grant, "openai", caps, (1, 1, 1, 0)) == "output_tokens"
    assert store.reserve_budget(grant, "openai", (None, None, 2000, None), (1, 0, 1991, 0)) \
        == "micro_usd"


def test_concurrency_holds_slots_until_they_are_given_back(store: GrantStore) -> None:
    grant, _ = make_grant()
    store.create(grant)
    caps = (None, None, None, 2)
    assert [store.reserve_budget(grant, "gh", caps, (0, 0, 0, 1)) for _ in range(3)] == [
        None, None, "requests"]
    store.settle_budget(grant.id, "gh", (0, 0, 0, 1), (0, 0, 0, 0))
    assert store.reserve_budget(grant, "gh", caps, (0, 0, 0, 1)) is None
    assert store.budget_use(grant.id)["gh"].held == (0, 0, 0, 2)


def test_threads_never_hold_more_than_the_budget(store: GrantStore) -> None:
    grant, _ = make_grant()
    store.create(grant)
    with ThreadPoolExecutor(max_workers=8) as pool:
        held = list(pool.map(lambda _: store.reserve_budget(
            grant, "openai", (None, 95, None, None), (3, 10, 0, 0)), range(100)))
    assert held.count(None) == 9
    assert store.budget_use(grant.id)["openai"].held == (27, 90, 0, 0)


# -- policy diff --------------------------------------------------------------------------------


def test_policy_diff_flags_a_raised_limit_as_widening() -> None:
    from broker_proxy.policy.diff import diff_policies

    old = load_policy_text(POLICY.replace("    burst: 10\n", "    burst: 10\n    concurrency: 4\n"
                                          "    models: [gpt-4o-mini]\n"))
    raised = load_policy_text(POLICY.replace("rate: 60/minute", "rate: 120/minute").replace(
        "    burst: 10\n", "    burst: 10\n    concurrency: 2\n"
        '    models: [gpt-4o-mini, "gpt-5*"]\n    hosted_tools: [web_search]\n'))
    changes = {(c.detail, c.widening) for c in diff_policies(old, raised)}
    assert ("rate 60/minute (burst 10) -> 120/minute (burst 10)", True) in changes
    assert ("concurrency now 2", False) in changes
    assert ("models: gpt-5* added", True) in changes
    assert ("hosted tools now allowed: web_search", True) in changes
    dropped = {(c.detail, c.widening) for c in diff_policies(raised, load_policy_text(POLICY))}
    assert ("rate 120/minute (burst 10) removed", True) not in dropped  # still rated: lower
    assert ("concurrency 2 removed", True) in dropped


def test_a_grant_s_own_caps_tighten_the_policy_s(store: GrantStore) -> None:
    grant, _ = make_grant()
    store.create(grant)
    store.limit_budget(grant, "gh", (None, None, None, 1))
    caps = (None, None, None, 3)
    assert [store.reserve_budget(grant, "gh", caps, (0, 0, 0, 1)) for _ in range(2)] == [
        None, "requests"]
    assert store.budget_use(grant.id)["gh"].own == (None, None, None, 1)
