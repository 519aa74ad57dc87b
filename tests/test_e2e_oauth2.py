"""OAuth2 through the real proxy: the proxy mints access tokens from a client secret it holds.

A local HTTPS token server (our EchoServer with its own reply) checks the client's credentials
and hands out random tokens; a local HTTPS API accepts only tokens the token server issued and
not revoked. The agent only ever holds the secret's placeholder.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote

import pytest
import requests

from broker_proxy.devtools.echo_server import EchoServer, ReceivedRequest, echo_reply
from broker_proxy.devtools.local_pki import write_pki
from broker_proxy.devtools.proxy_process import ProxyProcess
from broker_proxy.grants.issuer import issue_grant
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.home import Home
from broker_proxy.policy.loader import load_policy
from broker_proxy.time_source import utc_now
from tests.conftest import random_master_key

AUTH_HOST = "auth.oauth.test.local"
API_HOST = "api.oauth.test.local"
CLIENT_IDS = {"svc": "svc-client", "short": "short-client", "broken": "broken-client",
              "refresher": "refresher-client"}


@dataclass
class TokenServer:
    """The token endpoint's state: which secrets it accepts, which tokens it issued."""

    client_secrets: dict[str, str]  # client_id -> client secret
    refresh_token: str
    lifetimes: dict[str, int] = field(default_factory=dict)
    issued: dict[str, str] = field(default_factory=dict)  # access token -> client_id
    revoked: set[str] = field(default_factory=set)
    mints: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reply(self, request: ReceivedRequest) -> tuple[int, list[tuple[str, str]], bytes]:
        form = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        basic = request.header("Authorization") or ""
        if basic.startswith("Basic "):
            pair = base64.b64decode(basic[6:]).decode()
            client_id, _, client_secret = (unquote(part) for part in pair.partition(":"))
        grant_type = form.get("grant_type")
        if grant_type == "refresh_token":
            if form.get("refresh_token") != self.refresh_token:
                return _json(400, {"error": "invalid_grant"})
        elif grant_type != "client_credentials":
            return _json(400, {"error": "unsupported_grant_type"})
        if client_id not in self.client_secrets or self.client_secrets[client_id] != client_secret:
            return _json(401, {"error": "invalid_client"})
        token = "at-" + secrets.token_urlsafe(24)
        answer = {"access_token": token, "token_type": "bearer",
                  "expires_in": self.lifetimes.get(client_id, 3600)}
        with self.lock:
            self.issued[token] = client_id
            self.mints[client_id] = self.mints.get(client_id, 0) + 1
            if grant_type == "refresh_token":
                self.refresh_token = "rt-" + secrets.token_urlsafe(16)  # rotation
                answer["refresh_token"] = self.refresh_token
        return _json(200, answer)

    def api_reply(self, request: ReceivedRequest) -> tuple[int, list[tuple[str, str]], bytes]:
        token = (request.header("Authorization") or "").removeprefix("Bearer ")
        with self.lock:
            valid = token in self.issued and token not in self.revoked
        if not valid:
            return _json(401, {"error": "invalid_token"})
        return echo_reply(request)  # echoes the token back: the proxy must scrub it


def _json(status: int, body: dict) -> tuple[int, list[tuple[str, str]], bytes]:
    return status, [("Content-Type", "application/json")], json.dumps(body).encode()


@dataclass
class OAuthStack:
    proxy: ProxyProcess
    home: Home
    policy_file: Path
    tokens: TokenServer
    auth: EchoServer
    api: EchoServer
    client_secret_values: list[str]

    def token(self, *names: str) -> str:
        store = SqliteGrantStore(self.home.grants_db)
        try:
            return issue_grant(load_policy(self.policy_file), store, agent="bot", task="oauth2",
                               secrets=list(names), ttl=None, max_uses=None, now=utc_now(),
                               proxy_url_base=self.proxy.info["listen"]).token
        finally:
            store.close()

    def get(self, token: str, url: str, headers: dict[str, str] | None = None,
            method: str = "GET", data: bytes | None = None) -> requests.Response:
        proxy = self.proxy.proxy_url(token, "bot")
        return requests.request(method, url, headers=headers, data=data, timeout=20,
                                proxies={"http": proxy, "https": proxy},
                                verify=str(self.proxy.ca_path))

    def api_url(self, path: str = "/v1/things") -> str:
        return f"https://{API_HOST}:{self.api.port}{path}"


POLICY = """\
version: 1
secrets:
  svc:
    from: env:OAUTH_SVC_SECRET
    oauth2:
      token_url: https://{auth}:{auth_port}/oauth/token
      grant_type: client_credentials
      client_id: svc-client
      scope: "read write"
    destinations:
      - host: {api}
        port: {api_port}
  short:
    from: env:OAUTH_SHORT_SECRET
    oauth2:
      token_url: https://{auth}:{auth_port}/oauth/token
      grant_type: client_credentials
      client_id: short-client
      auth: body
    destinations:
      - host: {api}
        port: {api_port}
  broken:
    from: env:OAUTH_BROKEN_SECRET
    oauth2:
      token_url: https://{auth}:{auth_port}/oauth/token
      grant_type: client_credentials
      client_id: broken-client
    destinations:
      - host: {api}
        port: {api_port}
  refresher:
    from: env:OAUTH_REFRESH_VALUE
    oauth2:
      token_url: https://{auth}:{auth_port}/oauth/token
      grant_type: refresh_token
      client_id: refresher-client
    destinations:
      - host: {api}
        port: {api_port}
agents:
  bot:
    secrets: [svc, short, broken, refresher]
egress:
  allow: [{auth}]
network:
  allow_addresses: [127.0.0.0/8]
"""


@pytest.fixture(scope="module")
def oauth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthStack]:
    root = tmp_path_factory.mktemp("oauth2")
    pki = write_pki(root / "pki", [AUTH_HOST, API_HOST])
    values = {name: f"cs-{name}-" + secrets.token_urlsafe(20) for name in CLIENT_IDS}
    refresh_token = "rt-" + secrets.token_urlsafe(16)
    accepted = {CLIENT_IDS[name]: values[name] for name in ("svc", "short", "refresher")}
    accepted["broken-client"] = "not-" + values["broken"]  # the proxy holds a wrong one
    tokens = TokenServer(client_secrets=accepted, refresh_token=refresh_token,
                         lifetimes={"short-client": 4})
    auth = EchoServer(pki.cert_path, pki.key_path, reply=tokens.reply).start()
    api = EchoServer(pki.cert_path, pki.key_path, reply=tokens.api_reply).start()
    home = Home(root / "home").ensure()
    policy_file = root / "policy.yaml"
    policy_file.write_text(POLICY.format(auth=AUTH_HOST, auth_port=auth.port, api=API_HOST,
                                         api_port=api.port))
    env = dict(os.environ, BROKER_PROXY_MASTER_KEY=random_master_key(),
               OAUTH_SVC_SECRET=values["svc"], OAUTH_SHORT_SECRET=values["short"],
               OAUTH_BROKEN_SECRET=values["broken"],
               OAUTH_REFRESH_VALUE=json.dumps({"refresh_token": refresh_token,
                                               "client_secret": values["refresher"]}))
    proxy = ProxyProcess(home.root, policy_file, upstream_ca=pki.ca_cert_path,
                         resolve={AUTH_HOST: "127.0.0.1", API_HOST: "127.0.0.1"}, env=env,
                         log_path=root / "proxy.log").start()
    stack = OAuthStack(proxy, home, policy_file, tokens, auth, api,
                       [*values.values(), refresh_token])
    yield stack
    proxy.stop()
    auth.stop()
    api.stop()
    written = (root / "proxy.log").read_text(errors="replace")
    written += home.audit_log.read_text(errors="replace")
    for value in [*stack.client_secret_values, *tokens.issued]:
        assert value not in written, "a client secret or access token reached a log"


def _assert_nothing_real(stack: OAuthStack, response: requests.Response) -> None:
    seen = response.content.decode(errors="replace") + json.dumps(dict(response.headers))
    for value in [*stack.client_secret_values, *stack.tokens.issued]:
        assert value not in seen


def test_access_token_is_minted_once_and_cached_across_requests(oauth: OAuthStack) -> None:
    token = oauth.token("svc")
    for _ in range(3):
        answer = oauth.get(token, oauth.api_url(), {"Authorization": "Bearer {{secret:svc}}"})
        assert answer.status_code == 200
        # The echo carried the access token back: the agent sees the placeholder instead.
        assert answer.json()["headers"]["Authorization"] == "Bearer {{secret:svc}}"
        _assert_nothing_real(oauth, answer)
    assert oauth.tokens.mints["svc-client"] == 1
    sent = [r.header("Authorization") for r in oauth.api.requests]
    minted = [t for t, c in oauth.tokens.issued.items() if c == "svc-client"]
    assert sent[-3:] == [f"Bearer {minted[0]}"] * 3
    # The client secret went to the token endpoint only, never to the API.
    assert not any(oauth.api.received_any(value) for value in oauth.client_secret_values)


def test_token_endpoint_gets_the_scope_and_client_secret_basic(oauth: OAuthStack) -> None:
    token = oauth.token("svc")
    oauth.get(token, oauth.api_url(), {"Authorization": "Bearer {{secret:svc}}"})
    mint = next(r for r in oauth.auth.requests
                if (r.header("Authorization") or "").startswith("Basic "))
    assert mint.method == "POST" and mint.path == "/oauth/token"
    assert parse_qs(mint.body.decode())["scope"] == ["read write"]


def test_token_is_minted_again_shortly_before_it_expires(oauth: OAuthStack) -> None:
    token = oauth.token("short")
    headers = {"Authorization": "Bearer {{secret:short}}"}
    assert oauth.get(token, oauth.api_url(), headers).status_code == 200
    assert oauth.get(token, oauth.api_url(), headers).status_code == 200
    assert oauth.tokens.mints["short-client"] == 1
    time.sleep(2.2)  # lifetime 4 s, margin half of it (2 s for two requests on a loaded machine)
    assert oauth.get(token, oauth.api_url(), headers).status_code == 200
    assert oauth.tokens.mints["short-client"] == 2
    # client_secret_post: the secret rode in the body, never in a Basic header.
    mint = next(r for r in oauth.auth.requests if b"short-client" in r.body)
    assert mint.header("Authorization") is None


def test_a_401_from_the_upstream_makes_the_next_request_mint_a_new_token(
        oauth: OAuthStack) -> None:
    token = oauth.token("svc")
    headers = {"Authorization": "Bearer {{secret:svc}}"}
    assert oauth.get(token, oauth.api_url(), headers).status_code == 200
    before = oauth.tokens.mints["svc-client"]
    time.sleep(1.1)  # tokens younger than a second are not dropped (no mint storms)
    with oauth.tokens.lock:
        oauth.tokens.revoked.update(oauth.tokens.issued)
    refused = oauth.get(token, oauth.api_url(), headers)
    assert refused.status_code == 401
    _assert_nothing_real(oauth, refused)
    again = oauth.get(token, oauth.api_url(), headers)
    assert again.status_code == 200
    assert oauth.tokens.mints["svc-client"] == before + 1


def test_refresh_token_grant_mints_and_follows_rotation(oauth: OAuthStack) -> None:
    token = oauth.token("refresher")
    headers = {"Authorization": "Bearer {{secret:refresher}}"}
    assert oauth.get(token, oauth.api_url(), headers).status_code == 200
    assert oauth.tokens.mints["refresher-client"] == 1
    time.sleep(1.1)
    with oauth.tokens.lock:
        oauth.tokens.revoked.update(oauth.tokens.issued)
    assert oauth.get(token, oauth.api_url(), headers).status_code == 401
    # The server rotated the refresh token at the first mint; the proxy uses the new one.
    answer = oauth.get(token, oauth.api_url(), headers)
    assert answer.status_code == 200
    assert oauth.tokens.mints["refresher-client"] == 2
    _assert_nothing_real(oauth, answer)


def test_minting_failure_is_503_secret_unavailable_without_the_client_secret(
        oauth: OAuthStack) -> None:
    token = oauth.token("broken")
    answer = oauth.get(token, oauth.api_url(), {"Authorization": "Bearer {{secret:broken}}"})
    assert answer.status_code == 503
    assert answer.json()["error"] == "secret_unavailable"
    assert "401" in answer.json()["message"]
    _assert_nothing_real(oauth, answer)
    assert not any(r.header("Authorization") == "Bearer {{secret:broken}}"
                   for r in oauth.api.requests)
    records = [json.loads(line) for line in oauth.home.audit_log.read_text().splitlines()]
    assert any(r.get("reason") == "secret_unavailable" and r.get("host") == API_HOST
               for r in records)


def test_agent_cannot_reach_the_token_endpoint_with_the_client_secret(oauth: OAuthStack) -> None:
    token = oauth.token("svc")
    url = f"https://{AUTH_HOST}:{oauth.auth.port}/oauth/token"
    answer = oauth.get(token, url, {"Authorization": "Basic {{secret:svc}}"}, method="POST",
                       data=b"grant_type=client_credentials&client_secret={{secret:svc}}")
    assert answer.status_code == 403
    assert answer.json()["error"] == "destination_not_allowed"
    _assert_nothing_real(oauth, answer)
    # Without a placeholder the endpoint is reachable (egress), but the agent has no secret.
    bare = oauth.get(token, url, method="POST", data=b"grant_type=client_credentials")
    assert bare.status_code == 401
