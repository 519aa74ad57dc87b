"""Grants are checked on every request: revocation, expiry and max_uses, also on kept-alive
connections and under concurrency."""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import requests

from broker_proxy.time_source import utc_now
from tests.conftest import API_HOST, Stack
from tests.e2e_clients import CLIENTS

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": "Bearer {{secret:api_key}}"}


class Tunnel:
    """One CONNECT tunnel, reused for every request: a kept-alive agent connection."""

    def __init__(self, stack: Stack, token: str) -> None:
        context = ssl.create_default_context(cafile=str(stack.proxy.ca_path))
        self.connection = http.client.HTTPSConnection(stack.proxy.host, stack.proxy.port,
                                                      context=context, timeout=15)
        credentials = base64.b64encode(f"bot:{token}".encode()).decode()
        self.connection.set_tunnel(API_HOST, stack.upstreams.api.port,
                                   headers={"Proxy-Authorization": f"Basic {credentials}"})

    def get(self, path: str) -> tuple[int, dict]:
        self.connection.request("GET", path, headers=AUTH)
        response = self.connection.getresponse()
        return response.status, json.loads(response.read())

    def close(self) -> None:
        self.connection.close()


def test_revocation_applies_to_the_next_request_on_an_open_connection(stack: Stack) -> None:
    grant = stack.issue("api_key")
    tunnel = Tunnel(stack, grant.token)
    try:
        assert tunnel.get("/v1/one")[0] == 200
        socket_before = tunnel.connection.sock
        stack.revoke(grant.grant.id)
        status, body = tunnel.get("/v1/two")
        assert tunnel.connection.sock is socket_before, "the test must reuse the tunnel"
    finally:
        tunnel.close()
    assert status == 403
    assert body["error"] == "grant_revoked"
    assert body["grant"] == grant.grant.id
    assert [r.path for r in stack.upstreams.api.requests] == ["/v1/one"]


EXPIRY_TTL_SECONDS = 6


def test_expiry_applies_to_the_next_request_on_an_open_connection(stack: Stack) -> None:
    # Long enough for the tunnel's TLS handshake and first request on a loaded machine; the
    # wait is for the grant's own expiry, not for a fixed time.
    grant = stack.issue("api_key", ttl=timedelta(seconds=EXPIRY_TTL_SECONDS))
    tunnel = Tunnel(stack, grant.token)
    try:
        assert tunnel.get("/v1/one")[0] == 200, "the first request did not finish before expiry"
        time.sleep(max(0.0, (grant.grant.expires_at - utc_now()).total_seconds()) + 0.2)
        status, body = tunnel.get("/v1/two")
    finally:
        tunnel.close()
    assert (status, body["error"]) == (403, "grant_expired")
    assert len(stack.upstreams.api.requests) == 1


def test_revocation_applies_within_a_requests_session(stack: Stack) -> None:
    grant = stack.issue("api_key")
    proxy = stack.proxy.proxy_url(grant.token, "bot")
    url = stack.url(stack.upstreams.api, API_HOST, "/v1/session")
    with requests.Session() as session:
        session.trust_env = False  # the machine's CA bundle variables would win over verify
        session.proxies = {"https": proxy}
        session.verify = str(stack.proxy.ca_path)
        assert session.get(url, headers=AUTH, timeout=15).status_code == 200
        stack.revoke(grant.grant.id)
        after = session.get(url, headers=AUTH, timeout=15)
    assert after.status_code == 403
    assert after.json()["error"] == "grant_revoked"


def test_max_uses_holds_exactly_under_concurrent_requests(stack: Stack) -> None:
    grant = stack.issue("api_key", max_uses=5)
    client = CLIENTS["requests"]
    url = stack.url(stack.upstreams.api, API_HOST, "/v1/count")
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: client(stack, grant.token, "GET", url, headers=AUTH),
                                range(16)))
    statuses = sorted(a.status for a in answers)
    assert statuses == [200] * 5 + [403] * 11
    assert {a.json()["error"] for a in answers if a.status == 403} == {"grant_used_up"}
    carried = [r for r in stack.upstreams.api.requests
               if r.header("Authorization") == f"Bearer {stack.api_key}"]
    assert len(carried) == 5


def test_requests_without_a_secret_do_not_spend_uses(stack: Stack) -> None:
    grant = stack.issue("api_key", max_uses=1)
    client = CLIENTS["httpx"]
    for _ in range(3):
        plain = client(stack, grant.token, "GET", stack.url(stack.upstreams.api, API_HOST, "/"))
        assert plain.status == 200
    url = stack.url(stack.upstreams.api, API_HOST, "/v1/once")
    assert client(stack, grant.token, "GET", url, headers=AUTH).status == 200
    second = client(stack, grant.token, "GET", url, headers=AUTH)
    assert (second.status, second.json()["error"]) == (403, "grant_used_up")


def test_pending_grant_is_refused_until_approved_and_denied_stays_refused(stack: Stack) -> None:
    from broker_proxy.grants.sqlite_store import SqliteGrantStore
    from broker_proxy.time_source import utc_now

    url = stack.url(stack.upstreams.api, API_HOST, "/v1/x")
    curl = CLIENTS["curl"]
    waiting = stack.issue("api_key", agent="careful-bot")
    refused = stack.issue("api_key", agent="careful-bot")
    pending = curl(stack, waiting.token, "GET", url, headers=AUTH)
    assert (pending.status, pending.json()["error"]) == (403, "grant_pending_approval")
    store = SqliteGrantStore(stack.home.grants_db)
    try:
        store.approve(waiting.grant.id, "security-lead", utc_now())
        store.deny(refused.grant.id, "security-lead", utc_now())
    finally:
        store.close()
    assert curl(stack, waiting.token, "GET", url, headers=AUTH).status == 200
    denied = curl(stack, refused.token, "GET", url, headers=AUTH)
    assert (denied.status, denied.json()["error"]) == (403, "grant_denied")
    assert len(stack.upstreams.api.requests) == 1
