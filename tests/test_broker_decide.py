"""Broker.decide end to end on real parts: SQLite grants, the audit log, env and vault secrets."""

import json
import secrets
import threading
from dataclasses import replace
from datetime import timedelta

import pytest

from broker_proxy.audit.verify import verify_chain
from broker_proxy.decision.active_policy import ActivePolicy
from broker_proxy.decision.broker import MAX_PLACEHOLDERS_PER_REQUEST
from broker_proxy.grants.model import Grant
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.policy.loader import load_policy_text
from broker_proxy.policy.model import SecretPolicy
from broker_proxy.request import codes
from broker_proxy.request.outbound import Allowed, Denied, OutboundRequest
from broker_proxy.secrets.backends import SecretResolver
from broker_proxy.secrets.value import SecretValue
from broker_proxy.time_source import utc_now
from tests.decision_setup import (
    API,
    EGRESS,
    EVIL,
    PLAIN_HOST,
    SHRUNK_POLICY,
    VAULT_HOST,
    VAULT_PLACEHOLDER,
    bearer,
    denied,
    request,
)

# --- authentication ----------------------------------------------------------------------------


def test_request_without_token_gets_407_with_proxy_authenticate(setup):
    verdict = denied(setup.broker.decide(None, request(headers=bearer())), 407,
                     codes.PROXY_AUTH_REQUIRED)
    assert verdict.grant_id is None
    assert verdict.headers()["Proxy-Authenticate"].startswith("Basic")


def test_request_with_unknown_token_gets_407(setup):
    issued = setup.issue()
    forged = issued.token[:-4] + ("AAAA" if not issued.token.endswith("AAAA") else "BBBB")
    for token in (forged, "not-a-token", ""):
        denied(setup.broker.decide(token, request(headers=bearer())), 407,
               codes.PROXY_AUTH_REQUIRED)
    assert setup.uses(issued) == 0


def test_tunnel_is_admitted_with_a_valid_token_and_refused_without(setup):
    issued = setup.issue()
    connect = request(method="CONNECT", path="")
    assert setup.broker.admit_tunnel(issued.token, connect) is None
    denied(setup.broker.admit_tunnel(None, connect), 407, codes.PROXY_AUTH_REQUIRED)
    denied(setup.broker.admit_tunnel("bpt_nonsense", connect), 407, codes.PROXY_AUTH_REQUIRED)


def test_grant_store_that_cannot_be_used_gives_503(setup):
    issued = setup.issue()
    setup.store.close()
    denied(setup.broker.decide(issued.token, request(headers=bearer())), 503,
           codes.GRANT_STORE_UNAVAILABLE)
    denied(setup.broker.admit_tunnel(issued.token, request(method="CONNECT")), 503,
           codes.GRANT_STORE_UNAVAILABLE)


# --- grant states ------------------------------------------------------------------------------


def test_expired_grant_gets_403_grant_expired(setup):
    issued = setup.issue(ttl=timedelta(minutes=5))
    setup.broker.clock = lambda: utc_now() + timedelta(minutes=6)
    verdict = denied(setup.broker.decide(issued.token, request(headers=bearer())), 403,
                     codes.GRANT_EXPIRED)
    assert verdict.grant_id == issued.grant.id
    assert setup.uses(issued) == 0


def test_revoked_grant_gets_403_grant_revoked(setup):
    issued = setup.issue()
    setup.store.revoke(issued.grant.id, utc_now())
    denied(setup.broker.decide(issued.token, request(headers=bearer())), 403, codes.GRANT_REVOKED)


def test_used_up_grant_gets_403_grant_used_up(setup):
    issued = setup.issue(max_uses=1)
    assert isinstance(setup.broker.decide(issued.token, request(headers=bearer())), Allowed)
    denied(setup.broker.decide(issued.token, request(headers=bearer())), 403,
           codes.GRANT_USED_UP)
    assert setup.uses(issued) == 1


def test_pending_grant_gets_403_grant_pending_approval(setup):
    issued = setup.issue(agent="careful")
    assert issued.grant.status == "pending"
    denied(setup.broker.decide(issued.token, request(headers=bearer())), 403, codes.GRANT_PENDING)


def test_denied_grant_gets_403_grant_denied(setup):
    issued = setup.issue(agent="careful")
    setup.store.deny(issued.grant.id, "ops", utc_now())
    denied(setup.broker.decide(issued.token, request(headers=bearer())), 403, codes.GRANT_DENIED)


def test_approved_grant_is_usable(setup):
    issued = setup.issue(agent="careful")
    setup.store.approve(issued.grant.id, "ops", utc_now())
    assert isinstance(setup.broker.decide(issued.token, request(headers=bearer())), Allowed)


def test_grant_the_policy_no_longer_allows_gets_403_grant_outside_policy(setup):
    issued = setup.issue("api_key")
    setup.broker.policy = ActivePolicy.build(load_policy_text(SHRUNK_POLICY))
    denied(setup.broker.decide(issued.token, request(headers=bearer())), 403,
           codes.GRANT_OUTSIDE_POLICY)
    # Also without a placeholder: the grant as a whole is out of bounds.
    denied(setup.broker.decide(issued.token, request()), 403, codes.GRANT_OUTSIDE_POLICY)
    assert setup.uses(issued) == 0


def test_use_spent_by_another_replica_between_check_and_reserve_is_refused(setup):
    issued = setup.issue(max_uses=1)
    other_replica = SqliteGrantStore(setup.home.grants_db)

    class RacingStore(SqliteGrantStore):
        """Authenticates a still-active grant, then another replica spends its last use."""

        def authenticate(self, token: str) -> Grant | None:
            grant = super().authenticate(token)
            assert other_replica.reserve_use(issued.grant.id, utc_now()) == "reserved"
            return grant

    racing = RacingStore(setup.home.grants_db)
    setup.broker.grants = racing
    try:
        denied(setup.broker.decide(issued.token, request(headers=bearer())), 403,
               codes.GRANT_USED_UP)
        assert setup.uses(issued) == 1
    finally:
        racing.close()
        other_replica.close()


# --- request shape -----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "value"), [
    ("X-Note", "a\r\nX-Injected: 1"),
    ("X-Note", "a\nb"),
    ("X-Note", "a\x00b"),
    ("X-Note", "a\x7fb"),
    ("X-No\tte", "a"),
])
def test_control_characters_in_a_header_give_400_malformed_request(setup, name, value):
    issued = setup.issue()
    denied(setup.broker.decide(issued.token, request(headers=((name, value), *bearer()))), 400,
           codes.MALFORMED_REQUEST)
    assert setup.uses(issued) == 0


def test_tab_in_a_header_value_is_well_formed(setup):
    issued = setup.issue()
    verdict = setup.broker.decide(issued.token, request(headers=(("X-Note", "a\tb"),)))
    assert isinstance(verdict, Allowed)


@pytest.mark.parametrize("names", [
    {"host_header": EVIL},
    {"host_header": f"{API}:8443"},
    {"sni": EVIL},
    {"authority": f"{EVIL}:443"},
    {"host_header": f"user@{API}"},
])
def test_names_that_disagree_with_the_target_give_403_authority_mismatch(setup, names):
    issued = setup.issue()
    denied(setup.broker.decide(issued.token, request(headers=bearer(), **names)), 403,
           codes.AUTHORITY_MISMATCH)
    assert setup.uses(issued) == 0


def test_names_that_agree_up_to_case_and_trailing_dot_are_allowed(setup):
    issued = setup.issue()
    verdict = setup.broker.decide(issued.token, request(
        headers=bearer(), host_header="API.Example.COM.", authority=f"{API}:443", sni=API + "."))
    assert isinstance(verdict, Allowed)


def test_more_placeholders_than_the_limit_give_403_too_many_placeholders(setup):
    issued = setup.issue()
    many = " ".join(["{{secret:api_key}}"] * (MAX_PLACEHOLDERS_PER_REQUEST + 1))
    denied(setup.broker.decide(issued.token, request(headers=(("X-Keys", many),))), 403,
           codes.TOO_MANY_PLACEHOLDERS)
    assert setup.uses(issued) == 0


def test_placeholders_up_to_the_limit_are_allowed(setup):
    issued = setup.issue()
    many = " ".join(["{{secret:api_key}}"] * MAX_PLACEHOLDERS_PER_REQUEST)
    verdict = setup.broker.decide(issued.token, request(headers=(("X-Keys", many),)))
    assert isinstance(verdict, Allowed)
    assert setup.uses(issued) == 1


# --- placement ---------------------------------------------------------------------------------


def test_placeholder_for_a_secret_not_in_the_grant_gets_the_same_body_as_an_unknown_one(setup):
    issued = setup.issue("api_key")
    ungranted = denied(
        setup.broker.decide(issued.token, request(headers=bearer("{{secret:spare}}"))),
        403, codes.SECRET_NOT_GRANTED)
    unknown = denied(
        setup.broker.decide(issued.token, request(headers=bearer("{{secret:no_such}}"))),
        403, codes.SECRET_NOT_GRANTED)
    malformed = denied(
        setup.broker.decide(issued.token, request(headers=bearer("{{secret:api_key"))),
        403, codes.SECRET_NOT_GRANTED)
    assert ungranted.body() == unknown.body() == malformed.body()
    assert setup.uses(issued) == 0


def test_custom_placeholder_of_an_ungranted_secret_is_not_granted(setup):
    issued = setup.issue("api_key")
    denied(setup.broker.decide(issued.token, request(
        host=VAULT_HOST, path="/", headers=bearer(VAULT_PLACEHOLDER))), 403,
        codes.SECRET_NOT_GRANTED)


@pytest.mark.parametrize("where", [
    {"query": "key={{secret:header_only}}"},
    {"body": b'{"key": "{{secret:header_only}}"}'},
    {"path": "/v1/{{secret:header_only}}"},
    {"headers": (("Cookie", "session={{secret:header_only}}"),)},
])
def test_placeholder_outside_the_secrets_inject_places_gets_403(setup, where):
    issued = setup.issue("header_only")
    denied(setup.broker.decide(issued.token, request(**where)), 403,
           codes.PLACEHOLDER_NOT_ALLOWED_HERE)
    assert setup.uses(issued) == 0


@pytest.mark.parametrize("header", ["Cookie", "Referer", "Host", "Origin", "X-Forwarded-Host"])
def test_placeholder_in_a_never_inject_header_gets_403_even_when_headers_are_allowed(
        setup, header):
    issued = setup.issue("api_key")
    denied(setup.broker.decide(issued.token, request(headers=((header, "{{secret:api_key}}"),))),
           403, codes.PLACEHOLDER_NOT_ALLOWED_HERE)


def test_placeholder_in_the_path_is_never_swapped(setup):
    issued = setup.issue("api_key")
    denied(setup.broker.decide(issued.token, request(path="/v1/%7B%7Bsecret:api_key%7D%7D")),
           403, codes.PLACEHOLDER_NOT_ALLOWED_HERE)


def test_placeholder_over_plain_http_gets_403_plaintext_http(setup):
    issued = setup.issue("api_key")
    denied(setup.broker.decide(issued.token, request(scheme="http", port=80, headers=bearer())),
           403, codes.PLAINTEXT_HTTP)
    assert setup.uses(issued) == 0


def test_placeholder_over_http_to_a_destination_that_says_http_is_allowed(setup):
    issued = setup.issue("api_key")
    verdict = setup.broker.decide(issued.token, request(
        scheme="http", host=PLAIN_HOST, port=80, path="/", headers=bearer()))
    assert isinstance(verdict, Allowed)
    assert verdict.headers == (("Authorization", f"Bearer {setup.values['api_key']}"),)


@pytest.mark.parametrize("target", [
    {"host": EVIL},
    {"port": 8443},
    {"path": "/v2/things"},
    {"method": "DELETE"},
    {"method": "TRACE"},
    {"host": VAULT_HOST},
])
def test_placeholder_to_a_destination_the_secret_may_not_reach_gets_403(setup, target):
    issued = setup.issue("api_key", "vault_key")
    denied(setup.broker.decide(issued.token, request(headers=bearer(), **target)), 403,
           codes.DESTINATION_NOT_ALLOWED)
    assert setup.uses(issued) == 0


def test_placeholder_to_ungranted_host_is_blocked(setup):
    issued = setup.issue("api_key")
    verdict = denied(setup.broker.decide(issued.token, request(host=EVIL, headers=bearer())), 403,
                     codes.DESTINATION_NOT_ALLOWED)
    assert EVIL in verdict.message


# --- requests without placeholders -------------------------------------------------------------


def test_request_without_placeholder_to_a_host_the_grant_does_not_cover_gets_403(setup):
    issued = setup.issue("api_key")
    denied(setup.broker.decide(issued.token, request(host=EVIL)), 403,
           codes.DESTINATION_NOT_GRANTED)
    # Covered only by a secret of the policy that this grant does not hold.
    denied(setup.broker.decide(issued.token, request(host=VAULT_HOST)), 403,
           codes.DESTINATION_NOT_GRANTED)


def test_request_without_placeholder_to_a_granted_or_egress_host_is_allowed_unchanged(setup):
    issued = setup.issue("api_key")
    for target in (request(path="/anything"), request(host=EGRESS, path="/simple/"),
                   request(host=EGRESS, scheme="http", port=80)):
        verdict = setup.broker.decide(issued.token, target)
        # Unchanged, and its answer scrubbed for the grant's secret all the same, and on the
        # API host for every secret the policy may send there.
        assert isinstance(verdict, Allowed) and set(verdict.scrub) == (
            {"api_key"} if target.host == EGRESS else {"api_key", "header_only", "spare"})
        assert replace(verdict, scrub={}, scrub_scope=None,
                       scrub_generation=0) == Allowed(grant_id=issued.grant.id)
    assert setup.uses(issued) == 0  # only secret-carrying requests spend uses
    assert setup.requests_total("allow", codes.ALLOWED) == 3


# --- secrets that cannot be used ---------------------------------------------------------------


def test_secret_whose_env_var_is_unset_gives_503_secret_unavailable(setup, monkeypatch):
    issued = setup.issue("api_key")
    monkeypatch.delenv("BP_TEST_API_KEY")
    verdict = denied(setup.broker.decide(issued.token, request(headers=bearer())), 503,
                     codes.SECRET_UNAVAILABLE)
    assert "BP_TEST_API_KEY" in verdict.message
    assert setup.uses(issued) == 0


def test_vault_secret_without_its_master_key_gives_503_secret_unavailable(setup, monkeypatch):
    issued = setup.issue("vault_key")
    monkeypatch.delenv("BROKER_PROXY_MASTER_KEY")
    denied(setup.broker.decide(issued.token, request(
        host=VAULT_HOST, path="/", headers=bearer(VAULT_PLACEHOLDER))), 503,
        codes.SECRET_UNAVAILABLE)


def test_secret_with_crlf_going_into_a_header_gives_503_secret_value_unsafe(setup, monkeypatch):
    issued = setup.issue("api_key")
    unsafe = secrets.token_urlsafe(12) + "\r\nX-Injected: " + secrets.token_urlsafe(12)
    setup.values["unsafe"] = unsafe
    monkeypatch.setenv("BP_TEST_API_KEY", unsafe)
    verdict = denied(setup.broker.decide(issued.token, request(headers=bearer())), 503,
                     codes.SECRET_VALUE_UNSAFE)
    setup.assert_no_secret_in(verdict.body())
    assert setup.uses(issued) == 0


def test_secret_with_crlf_may_still_go_into_the_body(setup, monkeypatch):
    issued = setup.issue("api_key", "header_only")
    unsafe = secrets.token_urlsafe(12) + "\r\n" + secrets.token_urlsafe(12)
    setup.values["unsafe"] = unsafe
    monkeypatch.setenv("BP_TEST_API_KEY", unsafe)
    verdict = setup.broker.decide(issued.token, request(
        method="POST", headers=bearer("{{secret:header_only}}"),
        body=b'{"key": "{{secret:api_key}}"}'))
    assert isinstance(verdict, Allowed)
    assert verdict.body == b'{"key": "' + unsafe.encode() + b'"}'
    assert verdict.headers == (("Authorization", f"Bearer {setup.values['header_only']}"),)


# --- audit and internal failures ---------------------------------------------------------------


def test_audit_log_that_cannot_be_written_gives_503_and_no_secret(setup):
    issued = setup.issue("api_key")
    setup.broker.audit.close()  # every later append raises AuditWriteError
    verdict = denied(setup.broker.decide(issued.token, request(headers=bearer())), 503,
                     codes.AUDIT_UNAVAILABLE)
    assert verdict.grant_id == issued.grant.id
    setup.assert_no_secret_in(verdict.body())
    setup.assert_no_secret_in(repr(verdict))
    # By design the use is reserved before the audit write: a lost use, never an unaudited send.
    assert setup.uses(issued) == 1
    assert setup.broker.metrics.registry.get_sample_value(
        "broker_audit_write_errors_total") >= 1
    assert setup.requests_total("deny", codes.AUDIT_UNAVAILABLE) == 1
    assert setup.broker.metrics.registry.get_sample_value(
        "broker_injections_total", {"secret": "api_key"}) is None


def test_audit_log_that_cannot_be_written_denies_requests_without_secrets_too(setup):
    issued = setup.issue("api_key")
    setup.broker.audit.close()
    denied(setup.broker.decide(issued.token, request()), 503, codes.AUDIT_UNAVAILABLE)


def test_audit_failure_while_denying_still_denies(setup):
    setup.broker.audit.close()
    denied(setup.broker.decide(None, request(headers=bearer())), 407, codes.PROXY_AUTH_REQUIRED)


class ExplodingResolver(SecretResolver):
    def resolve(self, secret: SecretPolicy) -> SecretValue:
        raise RuntimeError("backend bug")


def test_unexpected_exception_gives_503_internal_error(setup):
    issued = setup.issue("api_key")
    setup.broker.secrets = ExplodingResolver(setup.home)
    verdict = denied(setup.broker.decide(issued.token, request(headers=bearer())), 503,
                     codes.INTERNAL_ERROR)
    assert "backend bug" not in verdict.body().decode()
    assert setup.uses(issued) == 0
    assert setup.requests_total("deny", codes.INTERNAL_ERROR) == 1


# --- the allowed path --------------------------------------------------------------------------


def test_header_placeholder_is_swapped_and_the_use_counted(setup):
    issued = setup.issue("api_key")
    verdict = setup.broker.decide(issued.token, request(
        headers=(("Accept", "*/*"), *bearer()), host_header=API))
    assert isinstance(verdict, Allowed)
    assert verdict.grant_id == issued.grant.id
    assert verdict.injected == ("api_key",)
    assert verdict.reason == codes.INJECTED
    assert verdict.headers == (("Accept", "*/*"),
                               ("Authorization", f"Bearer {setup.values['api_key']}"))
    assert verdict.query is None and verdict.body is None
    # The grant's secret, and those the policy may send to this host (scrubbed, not injected).
    assert verdict.scrub == {name: (setup.values[name], "{{secret:" + name + "}}")
                             for name in ("api_key", "header_only", "spare")}
    assert setup.values["api_key"] not in repr(verdict)
    assert setup.uses(issued) == 1


def test_query_and_body_placeholders_are_swapped(setup):
    issued = setup.issue("api_key")
    verdict = setup.broker.decide(issued.token, request(
        method="POST", query="a=%2F&key=%7B%7Bsecret%3Aapi_key%7D%7D",
        body=b"token={{secret:api_key}}"))
    assert isinstance(verdict, Allowed)
    assert verdict.query == f"a=%2F&key={setup.values['api_key']}"
    assert verdict.body == f"token={setup.values['api_key']}".encode()
    assert verdict.headers is None
    assert setup.uses(issued) == 1  # one request, one use, however many placeholders


def test_vault_secret_with_custom_placeholder_is_swapped(setup):
    issued = setup.issue("vault_key")
    verdict = setup.broker.decide(issued.token, request(
        host=VAULT_HOST, path="/", headers=(("X-Api-Key", VAULT_PLACEHOLDER),)))
    assert isinstance(verdict, Allowed)
    assert verdict.headers == (("X-Api-Key", setup.values["vault_key"]),)
    assert verdict.scrub == {"vault_key": (setup.values["vault_key"], VAULT_PLACEHOLDER)}


def test_two_secrets_in_one_request_are_both_injected(setup):
    issued = setup.issue("api_key", "header_only")
    verdict = setup.broker.decide(issued.token, request(
        headers=(("A", "{{secret:header_only}}"), ("B", "{{secret:api_key}}"))))
    assert isinstance(verdict, Allowed)
    assert verdict.injected == ("api_key", "header_only")
    assert verdict.headers == (("A", setup.values["header_only"]), ("B", setup.values["api_key"]))


def test_audit_record_is_on_disk_before_decide_returns_and_holds_no_secret(setup):
    issued = setup.issue("api_key")
    verdict = setup.broker.decide(issued.token, request(
        method="POST", query="key={{secret:api_key}}", headers=bearer()))
    assert isinstance(verdict, Allowed)
    # Read from the file, not the handle: the record must already be written.
    raw = setup.home.audit_log.read_bytes()
    setup.assert_no_secret_in(raw)
    last = setup.records()[-1]
    assert last["event"] == "request"
    assert (last["decision"], last["reason"]) == ("allow", codes.INJECTED)
    assert last["grant"] == issued.grant.id
    assert last["agent"] == "bot" and last["task"] == "unit test"
    assert last["secrets"] == ["api_key"]
    assert (last["method"], last["scheme"], last["host"], last["port"], last["path"]) == (
        "POST", "https", API, 443, "/v1/things")
    assert verify_chain(setup.home.audit_log, setup.home.audit_key).ok


def test_every_denial_is_audited_with_its_reason(setup):
    issued = setup.issue("api_key")
    setup.broker.decide(issued.token, request(host=EVIL, headers=bearer()))
    setup.broker.decide("bpt_nonsense", request())
    setup.broker.decide(None, request())  # no credentials at all: the 407 is a challenge
    reasons = [(r["decision"], r["reason"], r["status"]) for r in setup.records()]
    assert reasons == [("deny", codes.DESTINATION_NOT_ALLOWED, 403),
                       ("deny", codes.PROXY_AUTH_REQUIRED, 407),
                       ("challenge", codes.PROXY_AUTH_REQUIRED, 407)]


def test_metrics_count_decisions_and_injections(setup):
    issued = setup.issue("api_key")
    setup.broker.decide(issued.token, request(headers=bearer()))
    setup.broker.decide(issued.token, request(headers=bearer()))
    setup.broker.decide(issued.token, request(host=EVIL, headers=bearer()))
    setup.broker.decide(None, request())
    registry = setup.broker.metrics.registry
    assert setup.requests_total("allow", codes.INJECTED) == 2
    assert setup.requests_total("deny", codes.DESTINATION_NOT_ALLOWED) == 1
    assert setup.requests_total("challenge", codes.PROXY_AUTH_REQUIRED) == 1
    assert setup.requests_total("deny", codes.PROXY_AUTH_REQUIRED) in (0, None)
    assert registry.get_sample_value("broker_injections_total", {"secret": "api_key"}) == 2
    assert registry.get_sample_value("broker_decision_seconds_count") == 4
    exposition = "\n".join(
        f"{s.name}{s.labels}{s.value}" for m in registry.collect() for s in m.samples)
    assert issued.grant.id not in exposition
    setup.assert_no_secret_in(exposition)


def test_record_response_audits_and_counts_redactions(setup):
    issued = setup.issue("api_key")
    outbound = request(headers=bearer())
    verdict = setup.broker.decide(issued.token, outbound)
    assert isinstance(verdict, Allowed)
    setup.broker.record_response(verdict, outbound, 200, 12.3456, {"api_key": 2})
    last = setup.records()[-1]
    assert (last["event"], last["status"], last["duration_ms"], last["redactions"]) == (
        "response", 200, 12.346, 2)
    assert setup.broker.metrics.registry.get_sample_value(
        "broker_redactions_total", {"secret": "api_key"}) == 2


def test_max_uses_is_never_exceeded_under_concurrent_requests(setup):
    issued = setup.issue("api_key", max_uses=5)
    verdicts: list[object] = []
    lock = threading.Lock()

    def one() -> None:
        verdict = setup.broker.decide(issued.token, request(headers=bearer()))
        with lock:
            verdicts.append(verdict)

    threads = [threading.Thread(target=one) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(isinstance(v, Allowed) for v in verdicts) == 5
    assert all(isinstance(v, Allowed) or v.error == codes.GRANT_USED_UP for v in verdicts)
    assert setup.uses(issued) == 5


# --- every denial's body -----------------------------------------------------------------------


def test_every_denial_body_is_json_with_error_grant_message_and_no_secret(setup, monkeypatch):
    issued = setup.issue("api_key")
    both = setup.issue("api_key", "header_only")
    cases = [
        (None, request(headers=bearer())),
        (issued.token, request(host=EVIL, headers=bearer())),
        (issued.token, request(headers=bearer("{{secret:spare}}"))),
        (issued.token, request(headers=(("Cookie", "{{secret:api_key}}"),))),
        (issued.token, request(scheme="http", port=80, headers=bearer())),
        (issued.token, request(host=EVIL)),
        (issued.token, request(host_header=EVIL, headers=bearer())),
        (both.token, request(query="k={{secret:header_only}}")),
    ]
    for token, outbound in cases:
        verdict = setup.broker.decide(token, outbound)
        assert isinstance(verdict, Denied)
        body = json.loads(verdict.body())
        assert set(body) == {"error", "grant", "message"}
        assert body["error"] == verdict.error
        assert body["grant"] == {None: None, issued.token: issued.grant.id,
                                 both.token: both.grant.id}[token]
        setup.assert_no_secret_in(verdict.body())
        assert verdict.headers()["Content-Type"] == "application/json"
    monkeypatch.delenv("BP_TEST_API_KEY")
    verdict = setup.broker.decide(issued.token, request(headers=bearer()))
    assert isinstance(verdict, Denied)
    setup.assert_no_secret_in(verdict.body())


def test_encoded_body_is_decoded_only_after_authentication_and_within_bounds(setup):
    import gzip
    import tracemalloc

    from tests.gzip_bomb import gzip_bomb

    bomb = gzip_bomb()
    encoded = (("Content-Encoding", "gzip"),)
    tracemalloc.start()
    try:
        unauthenticated = setup.broker.decide(None, replace_body(request(
            method="POST", headers=encoded), bomb, "gzip"))
        wrong_token = setup.broker.decide("bpt_nope_" + "x" * 43, replace_body(request(
            method="POST", headers=encoded), bomb, "gzip"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert unauthenticated.status == wrong_token.status == 407  # type: ignore[union-attr]
    assert peak < 8 * 1024 * 1024, "the body was inflated before the grant was checked"

    grant = setup.issue("api_key")
    denied(setup.broker.decide(grant.token, replace_body(request(method="POST", headers=encoded),
                                                         bomb, "gzip")),
           413, codes.BODY_TOO_LARGE)
    denied(setup.broker.decide(grant.token, replace_body(request(method="POST", headers=encoded),
                                                         b"\x1f\x8b not gzip", "gzip")),
           415, codes.BODY_NOT_DECODABLE)
    # A coding nobody decodes (aws-chunked, compress) is scanned as sent: still refused here.
    denied(setup.broker.decide(grant.token, replace_body(request(method="POST", headers=(
        ("Content-Encoding", "aws-chunked"),)), b'{"k": "{{secret:nope}}"}', "aws-chunked")),
           403, codes.SECRET_NOT_GRANTED)
    assert setup.uses(grant) == 0

    # A well-formed gzip body is still scanned: its placeholder is found and swapped.
    allowed = setup.broker.decide(grant.token, replace_body(request(
        method="POST", headers=encoded), gzip.compress(b'{"key": "{{secret:api_key}}"}'), "gzip"))
    assert isinstance(allowed, Allowed) and allowed.body == (
        b'{"key": "' + setup.values["api_key"].encode() + b'"}')


def replace_body(outbound: OutboundRequest, body: bytes, encoding: str) -> OutboundRequest:
    from dataclasses import replace

    return replace(outbound, body=body, body_encoding=encoding)
