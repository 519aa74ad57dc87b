"""Upstream TLS is verified before a secret goes out; metrics and audit tell what happened."""

from __future__ import annotations

import json
import urllib.request

import pytest

from broker_proxy.audit.verify import verify_chain
from tests.conftest import API_HOST, EVIL_HOST, UNTRUSTED_HOST, Stack
from tests.e2e_clients import CLIENTS

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": "Bearer {{secret:api_key}}"}


@pytest.mark.parametrize("client_name", ["curl", "httpx"])
def test_secret_is_never_sent_to_an_upstream_with_an_untrusted_certificate(
        stack: Stack, client_name: str) -> None:
    grant = stack.issue("api_key")
    answer = CLIENTS[client_name](stack, grant.token, "GET",
                                  stack.url(stack.upstreams.untrusted, UNTRUSTED_HOST, "/v1/x"),
                                  headers=AUTH)
    assert answer.status == 502
    assert stack.upstreams.untrusted.requests == []
    assert stack.api_key.encode() not in answer.body


def test_metrics_count_decisions_by_reason_without_grant_ids(stack: Stack) -> None:
    grant = stack.issue("api_key")
    client = CLIENTS["requests"]
    client(stack, grant.token, "GET", stack.url(stack.upstreams.api, API_HOST, "/v1/m"),
           headers=AUTH)
    client(stack, grant.token, "GET", stack.url(stack.upstreams.evil, EVIL_HOST, "/v1/m"),
           headers=AUTH)
    with urllib.request.urlopen(stack.proxy.metrics_url, timeout=10) as response:
        text = response.read().decode()
    assert 'broker_requests_total{decision="allow",reason="injected"}' in text
    assert 'broker_requests_total{decision="deny",reason="destination_not_allowed"}' in text
    assert 'broker_injections_total{secret="api_key"}' in text
    assert "broker_decision_seconds_bucket" in text
    assert grant.grant.id not in text and grant.token not in text
    assert stack.api_key not in text


def test_audit_log_records_each_decision_and_verifies(stack: Stack) -> None:
    grant = stack.issue("api_key")
    client = CLIENTS["curl"]
    client(stack, grant.token, "GET",
           stack.url(stack.upstreams.api, API_HOST, "/v1/audited?token=secretish"), headers=AUTH)
    client(stack, grant.token, "GET", stack.url(stack.upstreams.evil, EVIL_HOST, "/v1/x"),
           headers=AUTH)
    records = [json.loads(line) for line in stack.home.audit_log.read_text().splitlines()]
    mine = [r for r in records if r.get("grant") == grant.grant.id]
    events = [(r["event"], r["decision"], r["reason"]) for r in mine]
    assert events == [("request", "allow", "injected"), ("response", "allow", "injected"),
                      ("request", "deny", "destination_not_allowed")]
    assert mine[0]["path"] == "/v1/audited"  # the query string is never recorded
    assert mine[0]["secrets"] == ["api_key"] and mine[0]["agent"] == "bot"
    assert mine[1]["status"] == 200
    result = verify_chain(stack.home.audit_log, stack.home.audit_key)
    assert result.ok, result.message
