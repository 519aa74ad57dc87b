"""The policy's sign_in section, the route -> action table and separation of duties, without a
proxy: what the checker says about a wrong section, and who may do what."""

from __future__ import annotations

from typing import Any, cast

import pytest

from broker_proxy.admin_api import AdminContext, AdminHandler
from broker_proxy.http_routes import find_route
from broker_proxy.identity.roles import Action, Principal, Role
from broker_proxy.policy.loader import PolicyError, load_policy_text
from broker_proxy.sign_in.access import (
    BREAK_GLASS,
    SeparationRefused,
    bearer_identity,
    check_separation,
)
from broker_proxy.sign_in.oidc import OidcRefused
from broker_proxy.sign_in.role_mapping import principal_of

GOOD = """\
version: 1
sign_in:
  oidc:
    issuer: https://sso.example.com/realms/acme
    client_id: broker-console
    client_secret: oidc_client_secret
    allowed_domains: [Example.com]
  roles:
    staff: viewer
    refund-approvers: approver
    broker-admins: admin
"""


def _errors(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, "p.yaml")
    return [f"{i.field_path}: {i.message}" for i in caught.value.issues]


def test_a_sign_in_section_is_read_with_its_defaults() -> None:
    sign_in = load_policy_text(GOOD).sign_in
    assert sign_in is not None and sign_in.oidc is not None
    assert sign_in.oidc.allowed_domains == frozenset({"example.com"})
    assert sign_in.oidc.role_claim == "groups"
    assert sign_in.separation_of_duties is True
    assert dict(sign_in.roles) == {"staff": Role.VIEWER, "refund-approvers": Role.APPROVER,
                                   "broker-admins": Role.ADMIN}
    assert load_policy_text("version: 1\n").sign_in is None
    assert sign_in.oidc.redirect_uri is None  # the admin listener's own callback


@pytest.mark.parametrize("uri", ["https://broker.example.com/ui/oidc/callback",
                                 "https://broker.example.com:8443/ui/oidc/callback",
                                 "http://localhost:9000/ui/oidc/callback"])
def test_a_redirect_uri_for_a_console_behind_a_reverse_proxy_is_read(uri: str) -> None:
    text = GOOD.replace("    allowed_domains:", f"    redirect_uri: {uri}\n    allowed_domains:")
    sign_in = load_policy_text(text).sign_in
    assert sign_in is not None and sign_in.oidc is not None
    assert sign_in.oidc.redirect_uri == uri


@pytest.mark.parametrize(("change", "expected"), [
    (("https://sso.example.com/realms/acme", "http://sso.example.com"),
     "sign_in.oidc.issuer: must be an https:// URL (http:// only for a provider on this "
     "machine)"),
    (("client_secret: oidc_client_secret", "client_secret: 'hunter2 is my secret'"),
     "sign_in.oidc.client_secret: the name of a vault entry (`broker-proxy secret set NAME`), "
     "not the secret itself"),
    (("    broker-admins: admin\n", "    broker-admins: root\n"),
     "sign_in.roles.broker-admins: unknown role 'root': expected one of viewer, approver, "
     "admin"),
    (("    allowed_domains: [Example.com]\n", ""),
     "sign_in.oidc: name allowed_domains or allowed_subjects: who of the provider's users "
     "may sign in"),
    (("    client_id: broker-console\n", ""),
     'sign_in.oidc: missing required field "client_id"'),
    (("  roles:\n", "  rolez:\n"), 'sign_in.rolez: unknown field "rolez"; did you mean '
                                  '"roles"?'),
    *[(("    allowed_domains:", f"    redirect_uri: {uri}\n    allowed_domains:"),
       "sign_in.oidc.redirect_uri: must be https://<host>/ui/oidc/callback, where the browser "
       "reaches the console's callback (http:// only for localhost)")
      for uri in ("http://broker.example.com/ui/oidc/callback",  # plain http elsewhere
                  "https://broker.example.com/callback",  # not the console's callback
                  "https://broker.example.com/ui/oidc/callback?x=1",
                  "https://broker.example.com:port/ui/oidc/callback", "/ui/oidc/callback")],
])
def test_a_wrong_sign_in_section_is_named_field_by_field(change: tuple[str, str],
                                                         expected: str) -> None:
    assert expected in _errors(GOOD.replace(*change))


def test_each_route_asks_for_the_role_its_action_needs() -> None:
    # The admin listener's real route table (grants, held requests, console), built without a
    # server: each route declares its action, and that is what the router checks.
    handler = object.__new__(AdminHandler)
    unused = cast(Any, object())
    handler.context = AdminContext(token="t", policy=lambda: unused, grants=unused, audit=unused,
                                   approvals=unused, console=unused)
    table = handler._routes()

    def action(method: str, path: str) -> Action:
        return find_route(table, method, path)[0].action

    assert action("GET", "/v1/grants") == Action.READ
    assert action("GET", "/v1/requests") == Action.READ
    assert action("POST", "/v1/audit/verify") == Action.READ
    assert action("POST", "/v1/grants/g_1/approve") == Action.DECIDE
    assert action("POST", "/v1/grants/g_1/deny") == Action.DECIDE
    assert action("POST", "/v1/requests/h_1/approve") == Action.DECIDE
    assert action("POST", "/v1/requests/h_1/deny") == Action.DECIDE
    assert action("POST", "/v1/grants/g_1/revoke") == Action.ADMINISTER
    assert action("POST", "/v1/grants") == Action.ADMINISTER
    assert action("POST", "/v1/console/login-links") == Action.ADMINISTER
    assert {route.action for route in table if route.method == "GET"} == {Action.READ}


def test_the_admin_token_is_break_glass_only_once_a_provider_is_configured() -> None:
    sign_in = load_policy_text(GOOD).sign_in
    assert bearer_identity("ci", None) == "admin-api:ci"
    assert bearer_identity("ci", sign_in) == BREAK_GLASS


def test_claims_map_to_the_highest_role_and_outsiders_are_refused() -> None:
    sign_in = load_policy_text(GOOD).sign_in
    assert sign_in is not None
    both = {"sub": "u1", "email": "Al@example.com", "groups": ["staff", "refund-approvers"]}
    assert principal_of(both, sign_in) == Principal("oidc:al@example.com", Role.APPROVER)
    for claims, code in (({"sub": "u2", "email": "x@evil.test", "groups": ["staff"]},
                          "oidc_not_allowed"),
                         ({"sub": "u3", "email": "y@example.com", "groups": ["other"]},
                          "oidc_no_role"),
                         ({"email": "z@example.com", "groups": ["staff"]}, "oidc_not_allowed")):
        with pytest.raises(OidcRefused) as refused:
            principal_of(claims, sign_in)
        assert refused.value.code == code


def test_separation_of_duties_matches_on_identity() -> None:
    sign_in = load_policy_text(GOOD).sign_in
    alice = Principal("oidc:alice@example.com", Role.APPROVER)
    with pytest.raises(SeparationRefused):
        check_separation(alice, "oidc:alice@example.com", "g_1", sign_in)
    check_separation(alice, "oidc:bob@example.com", "g_1", sign_in)
    check_separation(alice, None, "g_1", sign_in)
    check_separation(Principal(BREAK_GLASS, Role.ADMIN), BREAK_GLASS, "g_1", sign_in)
    relaxed = load_policy_text(GOOD + "  separation_of_duties: false\n").sign_in
    check_separation(alice, "oidc:alice@example.com", "g_1", relaxed)
