"""OAuth2 policy fields and the token minter, against a real local HTTPS token endpoint."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from broker_proxy.devtools.echo_server import EchoServer, ReceivedRequest
from broker_proxy.devtools.local_pki import LocalPki, write_pki
from broker_proxy.policy.loader import PolicyError, load_policy_text
from broker_proxy.policy.model import SecretPolicy
from broker_proxy.policy.resolve_pins import ResolvePins
from broker_proxy.secrets.backends import SecretUnavailable
from broker_proxy.secrets.oauth2 import TokenMinter, UpstreamTrust
from broker_proxy.secrets.value import SecretValue

HOST = "auth.unit.test.local"
PINS = ResolvePins.of_hosts({HOST: "127.0.0.1"})


def _policy(oauth2: str, destination: str = "{host: api.example.com}") -> str:
    return (f"version: 1\nsecrets:\n  svc:\n    from: env:X\n    oauth2: {oauth2}\n"
            f"    destinations: [{destination}]\n")


def test_oauth2_secret_loads_with_basic_auth_by_default() -> None:
    policy = load_policy_text(_policy(
        "{token_url: 'https://auth.example.com/token', grant_type: client_credentials, "
        "client_id: abc, scope: read}"))
    oauth2 = policy.secrets["svc"].oauth2
    assert oauth2 is not None and oauth2.auth == "basic" and oauth2.scope == "read"


@pytest.mark.parametrize(("oauth2", "destination", "message"), [
    ("{token_url: 'http://auth.example.com/token', grant_type: client_credentials, "
     "client_id: a}", "{host: api.example.com}", "must be an https:// URL"),
    ("{token_url: 'https://u:p@auth.example.com/t', grant_type: client_credentials, "
     "client_id: a}", "{host: api.example.com}", "must not hold a user or password"),
    ("{token_url: 'https://auth.example.com/t', grant_type: password, client_id: a}",
     "{host: api.example.com}", "unknown grant_type"),
    ("{token_url: 'https://auth.example.com/oauth/token', grant_type: client_credentials, "
     "client_id: a}", "{host: '*.example.com'}", "covers its token endpoint"),
    ("{token_url: 'https://auth.example.com/oauth/token', grant_type: client_credentials, "
     "client_id: a}", "{host: auth.example.com, paths: ['/oauth/**']}",
     "covers its token endpoint"),
    ("{token_url: 'https://auth.example.com/t', client_id: a}", "{host: api.example.com}",
     'missing required field "grant_type"'),
])
def test_bad_oauth2_settings_are_policy_errors(oauth2: str, destination: str,
                                               message: str) -> None:
    with pytest.raises(PolicyError) as raised:
        load_policy_text(_policy(oauth2, destination))
    assert message in str(raised.value)


def test_destination_on_the_same_host_but_other_paths_is_fine() -> None:
    load_policy_text(_policy(
        "{token_url: 'https://auth.example.com/oauth/token', grant_type: client_credentials, "
        "client_id: a}", "{host: auth.example.com, paths: ['/api/**']}"))


class _Endpoint:
    def __init__(self) -> None:
        self.status = 200
        self.answer: dict = {}
        self.seen: list[ReceivedRequest] = []

    def reply(self, request: ReceivedRequest) -> tuple[int, list[tuple[str, str]], bytes]:
        self.seen.append(request)
        return self.status, [("Content-Type", "application/json")], json.dumps(
            self.answer).encode()


@pytest.fixture(scope="module")
def unit_pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPki:
    return write_pki(tmp_path_factory.mktemp("oauth-pki"), [HOST])


@pytest.fixture
def endpoint(unit_pki: LocalPki) -> Iterator[tuple[_Endpoint, EchoServer]]:
    state = _Endpoint()
    with EchoServer(unit_pki.cert_path, unit_pki.key_path, reply=state.reply) as server:
        yield state, server


def _secret(port: int, grant_type: str = "client_credentials", auth: str = "basic") -> SecretPolicy:
    policy = load_policy_text(_policy(
        f"{{token_url: 'https://{HOST}:{port}/token', grant_type: {grant_type}, "
        f"client_id: 'id:1', auth: {auth}}}"))
    return policy.secrets["svc"]


def _minter(pki: LocalPki, clock: list[float]) -> TokenMinter:
    return TokenMinter(UpstreamTrust(Path(pki.ca_cert_path), PINS),
                       clock=lambda: clock[0])


def test_token_is_cached_until_shortly_before_expiry(endpoint, unit_pki: LocalPki) -> None:
    state, server = endpoint
    client_secret = "cs-" + secrets.token_urlsafe(16)
    state.answer = {"access_token": "at-" + secrets.token_urlsafe(8), "token_type": "Bearer",
                    "expires_in": 120}
    clock = [1000.0]
    minter = _minter(unit_pki, clock)
    secret = _secret(server.port)
    first = minter.access_token(secret, SecretValue("svc", client_secret))
    assert first.reveal() == state.answer["access_token"]
    clock[0] += 89  # 120 s minus the 30 s margin
    assert minter.access_token(secret, SecretValue("svc", client_secret)) is first
    assert len(state.seen) == 1
    clock[0] += 2
    minter.access_token(secret, SecretValue("svc", client_secret))
    assert len(state.seen) == 2
    # client_secret_basic with both parts form-urlencoded (RFC 6749 2.3.1).
    basic = state.seen[0].header("Authorization")
    assert basic == "Basic " + base64.b64encode(f"id%3A1:{client_secret}".encode()).decode()


def test_rejected_token_is_dropped_once_it_is_a_second_old(endpoint, unit_pki) -> None:
    state, server = endpoint
    state.answer = {"access_token": "at-" + secrets.token_urlsafe(8), "expires_in": 3600}
    clock = [0.0]
    minter = _minter(unit_pki, clock)
    secret = _secret(server.port)
    token = minter.access_token(secret, SecretValue("svc", "cs")).reveal()
    assert not minter.token_rejected("svc", token)  # too young: no mint storm
    clock[0] += 2
    assert not minter.token_rejected("svc", "some-other-token")
    assert minter.token_rejected("svc", token)
    minter.access_token(secret, SecretValue("svc", "cs"))
    assert len(state.seen) == 2


def test_body_auth_and_refresh_token_from_json_value(endpoint, unit_pki) -> None:
    state, server = endpoint
    state.answer = {"access_token": "at-1", "expires_in": 60, "refresh_token": "rt-rotated"}
    minter = _minter(unit_pki, [0.0])
    secret = _secret(server.port, grant_type="refresh_token", auth="body")
    stored = SecretValue("svc", json.dumps({"refresh_token": "rt-0", "client_secret": "cs"}))
    minter.access_token(secret, stored)
    form = parse_qs(state.seen[0].body.decode())
    assert form["grant_type"] == ["refresh_token"] and form["refresh_token"] == ["rt-0"]
    assert form["client_id"] == ["id:1"] and form["client_secret"] == ["cs"]
    assert minter.token_rejected("svc", "at-1") is False  # young
    minter._cache.clear()
    minter.access_token(secret, stored)
    assert parse_qs(state.seen[1].body.decode())["refresh_token"] == ["rt-rotated"]


@pytest.mark.parametrize(("status", "answer", "reason"), [
    (401, {"error": "invalid_client"}, "answered 401"),
    (200, {"token_type": "Bearer"}, "no usable access_token"),
    (200, {"access_token": "x", "token_type": "mac"}, "not a Bearer token"),
    (200, {"access_token": "x", "expires_in": -1}, "expires_in"),
])
def test_bad_answers_are_unavailable_without_the_body(endpoint, unit_pki, status, answer,
                                                      reason) -> None:
    state, server = endpoint
    client_secret = "cs-" + secrets.token_urlsafe(16)
    state.status, state.answer = status, {**answer, "echo": client_secret}
    with pytest.raises(SecretUnavailable) as raised:
        _minter(unit_pki, [0.0]).access_token(_secret(server.port),
                                              SecretValue("svc", client_secret))
    assert reason in str(raised.value) and client_secret not in str(raised.value)


def test_untrusted_token_endpoint_is_unavailable(endpoint, tmp_path: Path) -> None:
    _, server = endpoint
    other = write_pki(tmp_path, [HOST])  # a CA the minter is not told about
    minter = TokenMinter(UpstreamTrust(other.ca_cert_path, PINS))
    with pytest.raises(SecretUnavailable, match="not trusted"):
        minter.access_token(_secret(server.port), SecretValue("svc", "cs"))
