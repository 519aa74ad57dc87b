"""The OIDC callback against crafted provider answers: only a token signed by the provider's key,
for this client, this login and this time signs anyone in.

The provider here is a stand-in (its discovery, JWKS and token endpoint answer from this test),
so each ID token can be made exactly as wrong as the case needs; the real provider's flow is in
test_console_oidc_browser.py.
"""

from __future__ import annotations

import dataclasses
import time
import urllib.request
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from broker_proxy.console import oidc_routes
from broker_proxy.console.routes import Console
from broker_proxy.console.sessions import ConsoleSessions
from broker_proxy.identity.roles import Role
from broker_proxy.policy.sign_in_fields import OidcSettings, SignInPolicy
from broker_proxy.sign_in.oidc import (
    MAX_PENDING,
    MAX_PENDING_PER_SOURCE,
    OidcRefused,
    pkce_challenge,
)

ISSUER = "https://idp.example.com"
CLIENT = "broker-console"


class StandIn:
    """Discovery, JWKS and a token endpoint that answers the ID token the test made."""

    def __init__(self) -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": "good"})
        self.id_token = ""
        self.token_requests: list[dict[str, list[str]]] = []

    def __call__(self, request: urllib.request.Request) -> dict[str, Any]:
        url = request.full_url
        if url.endswith("/.well-known/openid-configuration"):
            return {"issuer": ISSUER, "authorization_endpoint": ISSUER + "/auth",
                    "token_endpoint": ISSUER + "/token", "jwks_uri": ISSUER + "/jwks"}
        if url.endswith("/jwks"):
            return KeySet([self.key]).as_dict(private=False)
        assert url.endswith("/token")
        self.token_requests.append(parse_qs(request.data.decode()))  # type: ignore[union-attr]
        return {"id_token": self.id_token, "token_type": "Bearer"}

    def sign(self, claims: dict[str, Any], key: RSAKey | None = None) -> str:
        signer = key or self.key
        return jwt.encode({"alg": "RS256", "kid": signer.kid}, claims, signer)


@pytest.fixture
def door() -> tuple[oidc_routes.OidcDoor, StandIn, Console]:
    stand_in = StandIn()
    policy = SignInPolicy(OidcSettings(ISSUER, CLIENT, "oidc_client", frozenset({"example.com"}),
                                       frozenset()),
                          (("approvers", Role.APPROVER),))
    console = Console(ConsoleSessions(), None, None)  # type: ignore[arg-type]
    door = oidc_routes.OidcDoor(sign_in=lambda: policy, client_secret=lambda name: "s3cret",
                                base_url=lambda: "http://127.0.0.1:1", fetch=stand_in)
    return door, stand_in, console


def _login(door: oidc_routes.OidcDoor, console: Console,
           source: str = "") -> tuple[str, str, dict[str, str]]:
    """Start a login: (state, binding cookie, the authorization request's parameters)."""
    begun = oidc_routes.route(door, console, "GET", "/ui/oidc/login", "", {}, source)
    assert begun.status == 302
    binding = begun.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    query = {k: v[0] for k, v in parse_qs(urlsplit(begun.headers["Location"]).query).items()}
    return query["state"], binding, query


def _claims(query: dict[str, str], **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": CLIENT, "sub": "u1", "email": "al@example.com",
              "email_verified": True, "groups": ["approvers"], "iat": now, "exp": now + 300,
              "nonce": query["nonce"]}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _callback(door: oidc_routes.OidcDoor, console: Console, state: str,
              binding: str) -> oidc_routes.UiAnswer:
    return oidc_routes.route(door, console, "GET", "/ui/oidc/callback",
                             f"state={state}&code=c1", {"Cookie": f"bp_oidc={binding}"})


def test_a_valid_token_signs_in_with_pkce_and_the_mapped_role(door: Any) -> None:
    door_, stand_in, console = door
    state, binding, query = _login(door_, console)
    assert query["code_challenge_method"] == "S256" and query["client_id"] == CLIENT
    stand_in.id_token = stand_in.sign(_claims(query))
    answer = _callback(door_, console, state, binding)
    assert answer.status == 302 and answer.headers["Location"] == "/ui/"
    [sent] = stand_in.token_requests
    assert pkce_challenge(sent["code_verifier"][0]) == query["code_challenge"]
    cookie = answer.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    session = console.sessions.get(cookie)
    assert session is not None
    assert session.principal.identity == "oidc:al@example.com"
    assert session.principal.role == Role.APPROVER


@pytest.mark.parametrize(("case", "changes", "message"), [
    ("expired", {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, "expired"),
    ("wrong audience", {"aud": "someone-else"}, "aud"),
    ("wrong issuer", {"iss": "https://evil.example"}, "iss"),
    ("wrong nonce", {"nonce": "another-login"}, "nonce"),
    ("no nonce", {"nonce": None}, "nonce"),
    ("issued in the future", {"iat": int(time.time()) + 3600}, ""),
])
def test_a_token_that_is_not_for_this_login_is_refused(door: Any, case: str,
                                                        changes: dict[str, Any],
                                                        message: str) -> None:
    door_, stand_in, console = door
    state, binding, query = _login(door_, console)
    stand_in.id_token = stand_in.sign(_claims(query, **changes))
    answer = _callback(door_, console, state, binding)
    assert answer.status == 401, case
    assert b'data-code="oidc_token_invalid"' in answer.body
    assert message.encode() in answer.body.lower()
    assert "bp_console" not in answer.headers.get("Set-Cookie", "")


def test_a_forged_token_is_refused(door: Any) -> None:
    door_, stand_in, console = door
    state, binding, query = _login(door_, console)
    # Signed by a key the provider never published, under the provider's key id.
    forger = RSAKey.generate_key(2048, parameters={"kid": "good"})
    stand_in.id_token = stand_in.sign(_claims(query), forger)
    answer = _callback(door_, console, state, binding)
    assert answer.status == 401 and b"signature does not verify" in answer.body
    # Unsigned ("alg": "none") is no better.
    state, binding, query = _login(door_, console)
    _header, payload, _sig = stand_in.sign(_claims(query)).split(".")
    stand_in.id_token = "eyJhbGciOiJub25lIn0." + payload + "."
    assert _callback(door_, console, state, binding).status == 401


def test_a_state_works_once_and_only_in_the_browser_that_began(door: Any) -> None:
    door_, stand_in, console = door
    state, binding, query = _login(door_, console)
    stand_in.id_token = stand_in.sign(_claims(query))
    assert _callback(door_, console, state, "another-browser").status == 401
    # The state was taken by that attempt: the right browser cannot use it either now.
    assert _callback(door_, console, state, binding).status == 401
    state, binding, query = _login(door_, console)
    stand_in.id_token = stand_in.sign(_claims(query))
    assert _callback(door_, console, state, binding).status == 302
    replayed = _callback(door_, console, state, binding)
    assert replayed.status == 401 and b"used, expired or unknown" in replayed.body


def test_unverified_email_and_other_domains_are_not_let_in(door: Any) -> None:
    door_, stand_in, console = door
    for changes in ({"email_verified": False}, {"email": "al@example.org"}):
        state, binding, query = _login(door_, console)
        stand_in.id_token = stand_in.sign(_claims(query, **changes))
        answer = _callback(door_, console, state, binding)
        assert answer.status == 403 and b"oidc_not_allowed" in answer.body


def test_one_source_calling_login_in_a_loop_does_not_push_out_other_logins(door: Any) -> None:
    door_, stand_in, console = door
    state, binding, query = _login(door_, console, "192.0.2.7")
    # Far more logins than the store holds, all from one address that never finishes them.
    for _ in range(MAX_PENDING + 50):
        _login(door_, console, "198.51.100.66")
    stand_in.id_token = stand_in.sign(_claims(query))
    assert _callback(door_, console, state, binding).status == 302
    # The looping address keeps only its newest few: the others were its own to lose.
    flood = [_login(door_, console, "198.51.100.66") for _ in range(MAX_PENDING_PER_SOURCE + 1)]
    first, last = flood[0], flood[-1]
    assert _callback(door_, console, first[0], first[1]).status == 401
    stand_in.id_token = stand_in.sign(_claims(last[2]))
    assert _callback(door_, console, last[0], last[1]).status == 302


def test_the_policy_redirect_uri_is_the_one_sent_and_exchanged(door: Any) -> None:
    door_, stand_in, console = door
    _state, _binding, query = _login(door_, console)
    assert query["redirect_uri"] == "http://127.0.0.1:1/ui/oidc/callback"
    behind = "https://broker.example.com/ui/oidc/callback"
    policy = door_.sign_in()
    door_.sign_in = lambda: dataclasses.replace(
        policy, oidc=dataclasses.replace(policy.oidc, redirect_uri=behind))
    state, binding, query = _login(door_, console)
    assert query["redirect_uri"] == behind
    stand_in.id_token = stand_in.sign(_claims(query))
    assert _callback(door_, console, state, binding).status == 302
    assert stand_in.token_requests[-1]["redirect_uri"] == [behind]


def test_a_provider_that_cannot_be_reached_is_asked_once_per_retry_window(door: Any) -> None:
    door_, _stand_in, console = door
    asked: list[str] = []

    def down(request: urllib.request.Request) -> dict[str, Any]:
        asked.append(request.full_url)
        raise OidcRefused("oidc_provider_unreachable", "the identity provider cannot be reached")

    door_.fetch = down
    for _ in range(20):
        answer = oidc_routes.route(door_, console, "GET", "/ui/oidc/login", "", {}, "192.0.2.7")
        assert answer.status == 502 and b"oidc_provider_unreachable" in answer.body
    assert len(asked) == 1  # the other logins were answered from the failure it gave
    assert door_.pending._pending == {}  # and none of them is left waiting
