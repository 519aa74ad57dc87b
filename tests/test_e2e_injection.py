"""End to end: the real proxy process, real clients, real local HTTPS upstreams."""

from __future__ import annotations

import pytest

from tests.conftest import API_HOST, EGRESS_HOST, EVIL_HOST, OTHER_HOST, Stack
from tests.e2e_clients import CLIENTS

pytestmark = pytest.mark.e2e

PLACEHOLDER = "{{secret:api_key}}"


@pytest.fixture(params=sorted(CLIENTS))
def client(request: pytest.FixtureRequest):
    return CLIENTS[request.param]


def test_placeholder_is_swapped_for_an_allowed_destination(stack: Stack, client) -> None:
    grant = stack.issue("api_key")
    answer = client(stack, grant.token, "GET", stack.url(stack.upstreams.api, API_HOST,
                                                         "/v1/repos"),
                    headers={"Authorization": f"Bearer {PLACEHOLDER}"})
    assert answer.status == 200
    received = stack.upstreams.api.requests
    assert len(received) == 1
    assert received[0].header("Authorization") == f"Bearer {stack.api_key}"
    # The upstream echoes the header back: the agent sees its placeholder, never the value.
    assert stack.api_key.encode() not in answer.body
    echoed = {k.lower(): v for k, v in answer.json()["headers"].items()}
    assert echoed["authorization"] == f"Bearer {PLACEHOLDER}"


def test_proxy_authorization_never_reaches_the_upstream(stack: Stack, client) -> None:
    grant = stack.issue("api_key")
    client(stack, grant.token, "GET", stack.url(stack.upstreams.api, API_HOST, "/v1/x"))
    (received,) = stack.upstreams.api.requests
    assert received.header("Proxy-Authorization") is None
    assert not stack.upstreams.api.received_any(grant.token)


def test_same_placeholder_to_another_host_is_blocked(stack: Stack, client) -> None:
    grant = stack.issue("api_key")
    answer = client(stack, grant.token, "POST", stack.url(stack.upstreams.evil, EVIL_HOST,
                                                          "/v1/collect"),
                    headers={"Authorization": f"Bearer {PLACEHOLDER}"}, body=b"data")
    assert answer.status == 403
    assert answer.json() == {"error": "destination_not_allowed", "grant": grant.grant.id,
                             "message": answer.json()["message"]}
    assert stack.upstreams.evil.requests == []


def test_secret_outside_the_grant_is_blocked_like_an_unknown_one(stack: Stack, client) -> None:
    grant = stack.issue("api_key")
    url = stack.url(stack.upstreams.other, OTHER_HOST, "/anything")
    not_granted = client(stack, grant.token, "GET", url,
                         headers={"X-Key": "other-PLACEHOLDER-0000"})
    unknown = client(stack, grant.token, "GET", url, headers={"X-Key": "{{secret:nope}}"})
    assert not_granted.status == unknown.status == 403
    assert not_granted.json()["error"] == "secret_not_granted"
    # The same body whether the secret exists or not: no probing the policy's names.
    assert not_granted.body == unknown.body
    assert stack.upstreams.other.requests == []


@pytest.mark.parametrize(("method", "path"), [("GET", "/admin/users"), ("DELETE", "/v1/repos"),
                                              ("GET", "/v2/repos")])
def test_path_or_method_outside_the_destination_is_blocked(stack: Stack, client, method: str,
                                                          path: str) -> None:
    grant = stack.issue("api_key")
    answer = client(stack, grant.token, method, stack.url(stack.upstreams.api, API_HOST, path),
                    headers={"Authorization": f"Bearer {PLACEHOLDER}"})
    assert answer.status == 403
    assert answer.json()["error"] == "destination_not_allowed"
    assert stack.upstreams.api.requests == []


def test_plain_http_with_a_placeholder_is_refused(stack: Stack, client) -> None:
    grant = stack.issue("api_key")
    answer = client(stack, grant.token, "GET", stack.url(stack.upstreams.plain, API_HOST,
                                                         "/v1/repos"),
                    headers={"Authorization": f"Bearer {PLACEHOLDER}"})
    assert answer.status == 403
    assert answer.json()["error"] == "plaintext_http"
    assert stack.upstreams.plain.requests == []


def test_placeholder_in_the_query_is_swapped_when_the_policy_allows(stack: Stack,
                                                                   client) -> None:
    grant = stack.issue("api_key")
    answer = client(stack, grant.token, "GET",
                    stack.url(stack.upstreams.api, API_HOST,
                              "/v1/search?q=x&key=%7B%7Bsecret:api_key%7D%7D"))
    assert answer.status == 200
    (received,) = stack.upstreams.api.requests
    assert received.path == f"/v1/search?q=x&key={stack.api_key}"
    assert stack.api_key.encode() not in answer.body


def test_placeholder_in_the_path_is_refused(stack: Stack, client) -> None:
    grant = stack.issue("api_key")
    answer = client(stack, grant.token, "GET",
                    stack.url(stack.upstreams.api, API_HOST, "/v1/%7B%7Bsecret:api_key%7D%7D"))
    assert answer.status == 403
    assert answer.json()["error"] == "placeholder_not_allowed_here"
    assert stack.upstreams.api.requests == []


def test_placeholder_in_a_body_is_refused_when_only_headers_are_allowed(stack: Stack,
                                                                       client) -> None:
    grant = stack.issue("api_key")
    answer = client(stack, grant.token, "POST",
                    stack.url(stack.upstreams.api, API_HOST, "/v1/repos"),
                    headers={"Content-Type": "application/json"},
                    body=b'{"token": "{{secret:api_key}}"}')
    assert answer.status == 403
    assert answer.json()["error"] == "placeholder_not_allowed_here"
    assert stack.upstreams.api.requests == []


def test_custom_placeholder_and_env_backend(stack: Stack, client) -> None:
    grant = stack.issue("other_key")
    answer = client(stack, grant.token, "GET", stack.url(stack.upstreams.other, OTHER_HOST, "/x"),
                    headers={"X-Api-Key": "other-PLACEHOLDER-0000"})
    assert answer.status == 200
    (received,) = stack.upstreams.other.requests
    assert received.header("X-Api-Key") == stack.other_key
    assert stack.other_key.encode() not in answer.body


def test_request_without_placeholder_only_reaches_covered_hosts(stack: Stack, client) -> None:
    grant = stack.issue("api_key")
    covered = client(stack, grant.token, "GET", stack.url(stack.upstreams.api, API_HOST, "/"))
    egress = client(stack, grant.token, "GET",
                    stack.url(stack.upstreams.egress, EGRESS_HOST, "/simple/"))
    elsewhere = client(stack, grant.token, "GET", stack.url(stack.upstreams.evil, EVIL_HOST, "/"))
    assert covered.status == 200
    assert egress.status == 200
    assert elsewhere.status == 403
    assert elsewhere.json()["error"] == "destination_not_granted"
    assert stack.upstreams.evil.requests == []


def test_missing_or_wrong_proxy_credentials_get_407(stack: Stack, client) -> None:
    for token in ("", "bpt_g_0000000000000000_" + "A" * 43, "not-a-token"):
        answer = client(stack, token, "GET", stack.url(stack.upstreams.api, API_HOST, "/v1/x"),
                        headers={"Authorization": f"Bearer {PLACEHOLDER}"})
        # curl and requests report a refused CONNECT as a client error; the status is 407.
        assert answer.status == 407 or b"407" in answer.body, answer
    assert stack.upstreams.api.requests == []


def test_plain_http_without_credentials_gets_407_with_proxy_authenticate(stack: Stack) -> None:
    from tests.e2e_clients import via_curl

    answer = via_curl(stack, "", "GET", stack.url(stack.upstreams.plain, API_HOST, "/"))
    assert answer.status == 407
    assert answer.headers["proxy-authenticate"].startswith("Basic")
    assert answer.json()["error"] == "proxy_auth_required"
    assert stack.upstreams.plain.requests == []


@pytest.mark.parametrize("path", ["/v1/../admin/users", "/v1/%2e%2e/admin", "/v1%2f..%2fadmin",
                                  "/v1/x%5c..%5cadmin"])
def test_ambiguous_path_cannot_carry_a_secret(stack: Stack, path: str) -> None:
    import http.client
    import ssl
    from base64 import b64encode

    grant = stack.issue("api_key")
    context = ssl.create_default_context(cafile=str(stack.proxy.ca_path))
    connection = http.client.HTTPSConnection(stack.proxy.host, stack.proxy.port,
                                             context=context, timeout=15)
    credentials = b64encode(f"bot:{grant.token}".encode()).decode()
    connection.set_tunnel(API_HOST, stack.upstreams.api.port,
                          headers={"Proxy-Authorization": f"Basic {credentials}"})
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {PLACEHOLDER}"})
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 403, body
    assert b'"ambiguous_path"' in body
    assert stack.upstreams.api.requests == []
