"""`policy replay`: a log recorded by the real Broker and AuditLog, decided again under NEW."""

import json
from datetime import timedelta

import pytest

from broker_proxy.cli import main
from broker_proxy.grants.actions import issue_audited
from broker_proxy.policy.loader import load_policy_text
from broker_proxy.policy_tools.replay import replay_log
from broker_proxy.request import codes
from broker_proxy.request.outbound import Allowed, Denied
from broker_proxy.time_source import utc_now
from tests.decision_setup import (
    API,
    EGRESS,
    EVIL,
    POLICY,
    VAULT_HOST,
    VAULT_PLACEHOLDER,
    bearer,
    request,
)

# The vault key's only destination moves elsewhere: every request that went to VAULT_HOST
# (with the key, or without a secret on the strength of it) is refused under this policy.
DROPPED = POLICY.replace(f"      - host: {VAULT_HOST}\n", "      - host: moved.example.com\n")
WIDER = POLICY.replace(f"      - host: {VAULT_HOST}\n",
                       f"      - host: {VAULT_HOST}\n      - host: {EVIL}\n")


@pytest.fixture
def recorded(setup):
    """A real log: a grant issued and audited, then requests decided by the real Broker."""
    issued = issue_audited(setup.broker.policy.policy, setup.store, setup.broker.audit,
                           agent="bot", task="replay", secrets=["api_key", "vault_key"],
                           ttl=timedelta(minutes=5), max_uses=None, now=utc_now(),
                           proxy_url_base=None, by="test")
    decide = setup.broker.decide
    plan = [
        (7, request(host=API, headers=bearer()), Allowed),
        (5, request(host=VAULT_HOST, path="/k", headers=bearer(VAULT_PLACEHOLDER)), Allowed),
        (2, request(host=VAULT_HOST, path="/open"), Allowed),
        (3, request(host=EGRESS, path="/simple/"), Allowed),
        (4, request(host=EVIL, path="/x", headers=bearer(VAULT_PLACEHOLDER)), Denied),
    ]
    for count, outbound, kind in plan:
        for _ in range(count):
            assert isinstance(decide(issued.token, outbound), kind)
    # Not a policy decision: kept as recorded.
    assert isinstance(decide("bpt_nonsense", request()), Denied)
    setup.broker.audit.close()
    return setup.home.audit_log


def test_dropping_a_destination_counts_exactly_the_requests_that_went_there(recorded):
    report = replay_log(load_policy_text(DROPPED), recorded)
    assert report.records == 7 + 5 + 2 + 3 + 4 + 1
    assert dict(report.now_refused) == {codes.DESTINATION_NOT_ALLOWED: 5,
                                        codes.DESTINATION_NOT_GRANTED: 2}
    assert dict(report.now_allowed) == {}
    assert report.unchanged == 7 + 3 + 4 + 1
    assert report.kept == 1
    assert report.assumed_grants == 0  # the grant_issued record names the grant's secrets
    example = report.examples[f"refused:{codes.DESTINATION_NOT_ALLOWED}"][0]
    assert example.startswith(f"GET https://{VAULT_HOST}:443/k (agent bot")


def test_the_same_policy_changes_nothing(recorded):
    report = replay_log(load_policy_text(POLICY), recorded)
    assert report.unchanged == report.records == 22
    assert not report.now_refused and not report.now_allowed


def test_a_wider_policy_shows_what_it_would_now_allow(recorded):
    report = replay_log(load_policy_text(WIDER), recorded)
    assert dict(report.now_allowed) == {"injects vault_key": 4}
    assert report.examples["allowed:injects vault_key"][0].startswith(
        f"GET https://{EVIL}:443/x")


def test_an_agent_removed_refuses_all_its_requests(recorded):
    gone = POLICY.replace("secrets: [api_key, vault_key, header_only, spare]",
                          "secrets: [header_only, spare]")
    report = replay_log(load_policy_text(gone), recorded)
    assert dict(report.now_refused) == {codes.GRANT_OUTSIDE_POLICY: 7 + 5 + 2 + 3}


def test_cli_prints_counts_and_speed(recorded, tmp_path, capsys):
    new = tmp_path / "new.yaml"
    new.write_text(DROPPED)
    assert main(["policy", "replay", "--audit", str(recorded), str(new)]) == 0
    out = capsys.readouterr().out
    assert "22 requests replayed in" in out and "records/s" in out
    assert "now refused: 7" in out and "destination_not_allowed: 5" in out
    assert main(["policy", "replay", "--audit", str(recorded), "--json", str(new)]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["now_refused"] == {"destination_not_allowed": 5, "destination_not_granted": 2}


def test_a_torn_line_is_counted_not_fatal(recorded):
    with open(recorded, "ab") as log:
        log.write(b'{"event":"request","agent":"bot","reason":"inj')
    report = replay_log(load_policy_text(POLICY), recorded)
    assert report.unreadable == 1 and report.records == 22


def test_grouping_paths_gives_the_answers_of_deciding_each_path(tmp_path):
    """The speed-up keys a path on the index's answers; it must not change a single count."""
    from benchmarks.replay_bench import policy_text, write_log

    log = tmp_path / "audit.log"
    write_log(log, 3000)
    new = load_policy_text(policy_text(drop=True))
    grouped, each = replay_log(new, log), replay_log(new, log, group_paths=False)
    assert grouped.as_dict() == each.as_dict()
    assert sum(grouped.now_refused.values()) > 0 and grouped.unchanged > 0
