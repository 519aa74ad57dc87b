"""Approval per request at the decision: a held request costs nothing and reveals nothing, and
an approval opens exactly the request it was shown."""

from __future__ import annotations

import json

import pytest

from broker_proxy.approvals.verdict import Held
from broker_proxy.decision.active_policy import ActivePolicy
from broker_proxy.policy.loader import load_policy_text
from broker_proxy.request.outbound import Allowed
from tests.decision_setup import POLICY, Setup, bearer, denied, request

HELD_POLICY = POLICY.replace("    inject: [header, query, body]\n",
                             "    inject: [header, query, body]\n    approval: per_request\n", 1)


@pytest.fixture
def held(setup: Setup) -> Setup:
    setup.broker.policy = ActivePolicy.build(load_policy_text(HELD_POLICY))
    setup.broker.approvals.accepting = True
    return setup


def test_a_held_request_resolves_nothing_spends_nothing_and_records_no_fingerprint(
        held: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    grant = held.issue(max_uses=1)
    resolved: list[str] = []
    original = held.broker.secrets.resolve
    monkeypatch.setattr(held.broker.secrets, "resolve",
                        lambda secret: resolved.append(secret.name) or original(secret))
    verdict = held.broker.decide(grant.token, request(headers=bearer(), method="POST",
                                                      body=b'{"a": 1}'))
    assert isinstance(verdict, Held)
    assert resolved == [] and held.uses(grant) == 0
    [record] = [r for r in held.records() if r.get("hold") == verdict.hold_id]
    assert (record["decision"], record["reason"], record["secrets"]) == (
        "held", "approval_required", ["api_key"])
    assert "fingerprints" not in record or not record["fingerprints"]
    assert held.requests_total("held", "approval_required") == 1
    # A caller that does not know holding refuses, with the usual three-field body.
    denied(verdict, 403, "approval_required")


def test_without_an_approver_in_this_process_it_is_refused_at_once(held: Setup) -> None:
    held.broker.approvals.accepting = False
    grant = held.issue()
    verdict = held.broker.decide(grant.token, request(headers=bearer()))
    denied(verdict, 403, "approval_unavailable")
    assert held.broker.approvals.pending() == []


def test_an_approval_opens_only_the_request_it_was_shown(held: Setup) -> None:
    grant = held.issue()
    shown = request(headers=bearer(), method="POST", body=b'{"amount": 1}')
    first = held.broker.decide(grant.token, shown)
    assert isinstance(first, Held)
    held.broker.approvals.decide(first.hold_id, True, by="alice")
    swapped = request(headers=bearer(), method="POST", body=b'{"amount": 1000}')
    again = held.broker.decide(grant.token, swapped, approved_hold=first.hold_id)
    assert isinstance(again, Held) and again.hold_id != first.hold_id
    other_query = request(headers=bearer(), method="POST", body=b'{"amount": 1}', query="x=1")
    assert isinstance(held.broker.decide(grant.token, other_query,
                                         approved_hold=first.hold_id), Held)
    assert held.uses(grant) == 0
    allowed = held.broker.decide(grant.token, shown, approved_hold=first.hold_id)
    assert isinstance(allowed, Allowed) and allowed.injected == ("api_key",)
    assert held.uses(grant) == 1
    # Spent: the same ticket does not open the same request twice.
    assert isinstance(held.broker.decide(grant.token, shown, approved_hold=first.hold_id), Held)
    held.assert_no_secret_in(json.dumps([i.to_public_dict()
                                         for i in held.broker.approvals.pending()]))


def test_another_grant_cannot_use_an_approval(held: Setup) -> None:
    mine, theirs = held.issue(), held.issue()
    shown = request(headers=bearer())
    first = held.broker.decide(mine.token, shown)
    held.broker.approvals.decide(first.hold_id, True, by="alice", minutes=10)
    assert isinstance(held.broker.decide(theirs.token, shown, approved_hold=first.hold_id),
                      Held)
    assert isinstance(held.broker.decide(mine.token, shown, approved_hold=first.hold_id),
                      Allowed)
    assert isinstance(held.broker.decide(mine.token, shown), Allowed)  # within the 10 minutes
