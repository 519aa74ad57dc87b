"""Attack classes 2, 4, 5, 6 and 9 against ``Broker.decide`` itself: real grants, real audit.

The end-to-end files prove the same defences through the proxy; here many spellings are tried
quickly, each with its exact error code.
"""

from __future__ import annotations

import base64

import pytest

from broker_proxy.decision.request_checks import MAX_HEADER_BYTES, MAX_HEADER_FIELD_BYTES
from broker_proxy.request import codes
from broker_proxy.request.outbound import Allowed
from broker_proxy.secrets.backends import SecretResolver
from tests.decision_setup import bearer, denied, request

PLACEHOLDER = "{{secret:api_key}}"


# --- class 2: host spelling -------------------------------------------------------------------

@pytest.mark.parametrize("host", [
    "api.example.com@evil.example.com", "evil.example.com\\@api.example.com",
    "api.example.com%2eevil.example.com", "xn--pple-43d.com", "\u0430pi.example.com",
    "2130706433", "0x7f000001", "0177.0.0.1", "127.1", "[::ffff:127.0.0.1]", "[::1]",
    "api.example.com.evil.example.com", "api.example.com:443", "API.EXAMPLE.COM..",
])
def test_host_spellings_that_are_not_the_granted_host_never_get_the_secret(setup, host):
    issued = setup.issue()
    verdict = setup.broker.decide(issued.token, request(host=host, headers=bearer()))
    assert not isinstance(verdict, Allowed)
    assert verdict.status in (403, 400)


@pytest.mark.parametrize("host", ["API.Example.COM", "api.example.com."])
def test_case_and_trailing_dot_spell_the_same_granted_host(setup, host):
    issued = setup.issue()
    verdict = setup.broker.decide(issued.token, request(host=host, headers=bearer()))
    assert isinstance(verdict, Allowed)


@pytest.mark.parametrize("host_header", ["evil.example.com", "api.example.com:8443",
                                         "api.example.com@evil.example.com",
                                         "api.example.com\\evil", "%61pi.example.com"])
def test_host_header_spellings_that_disagree_are_authority_mismatch(setup, host_header):
    issued = setup.issue()
    denied(setup.broker.decide(issued.token, request(headers=bearer(), host_header=host_header)),
           403, codes.AUTHORITY_MISMATCH)


# --- class 4: placeholders in the wrong place -------------------------------------------------

def _basic(user_password: str) -> str:
    return "Basic " + base64.b64encode(user_password.encode()).decode()


@pytest.mark.parametrize(("name", "value"), [
    ("Authorization", _basic(f"user:{PLACEHOLDER}")),
    ("Authorization", _basic(f"{PLACEHOLDER}:x")),
    ("X-Api-Key", base64.b64encode(PLACEHOLDER.encode()).decode()),
    ("X-Api-Key", base64.urlsafe_b64encode(f"k={PLACEHOLDER}".encode()).decode()),
    ("X-Api-Key", "%7B%7Bsecret:api_key%7D%7D"),
    ("X-Api-Key", "%257B%257Bsecret%253Aapi_key%257D%257D"),
    ("Authorization", "Bearer %7b%7bsecret%3aapi_key%7d%7d"),
])
def test_encoded_placeholder_in_a_header_is_refused(setup, name, value):
    issued = setup.issue()
    denied(setup.broker.decide(issued.token, request(headers=((name, value),))), 403,
           codes.PLACEHOLDER_NOT_ALLOWED_HERE)


@pytest.mark.parametrize("header", ["Cookie", "Referer", "Origin", "Forwarded", "Via",
                                    "X-Forwarded-For", "X-Forwarded-Host"])
def test_placeholder_in_a_never_inject_header_on_the_granted_host_is_refused(setup, header):
    issued = setup.issue()
    denied(setup.broker.decide(issued.token, request(headers=((header, f"a={PLACEHOLDER}"),))),
           403, codes.PLACEHOLDER_NOT_ALLOWED_HERE)


def test_placeholder_split_over_two_headers_is_never_swapped(setup):
    issued = setup.issue()
    verdict = setup.broker.decide(issued.token, request(headers=(
        ("X-A", "{{sec"), ("X-B", "ret:api_key}}"))))
    # Nothing to swap: the request may go as it is, and carries no secret.
    assert isinstance(verdict, Allowed)
    assert verdict.headers is None and not verdict.injected


def test_placeholder_start_without_its_end_is_refused(setup):
    issued = setup.issue()
    verdict = setup.broker.decide(issued.token, request(headers=(
        ("X-A", "{{secret:api_"), ("X-B", "key}}"))))
    denied(verdict, 403, codes.SECRET_NOT_GRANTED)


# --- class 5: grammar, values and caps --------------------------------------------------------

@pytest.mark.parametrize("placeholder", [
    "{{secret:{{secret:api_key}}}}", "{{secret:api_key|base64}}", "{{secret:api_key:upper}}",
    "{{ secret:api_key }}", "{{secret:api_key}", "{{secret:}}",
])
def test_transforms_nesting_and_malformed_placeholders_are_refused(setup, placeholder):
    issued = setup.issue()
    verdict = setup.broker.decide(issued.token, request(headers=bearer(placeholder)))
    if isinstance(verdict, Allowed):  # "{{ secret:" is no placeholder: nothing was swapped
        assert not verdict.injected and verdict.headers is None
    else:
        assert verdict.status == 403


def test_secret_value_holding_a_placeholder_is_not_expanded_again(setup, monkeypatch):
    monkeypatch.setenv("BP_TEST_API_KEY", "sk-{{secret:header_only}}")
    issued = setup.issue("api_key", "header_only")
    verdict = setup.broker.decide(issued.token, request(headers=bearer()))
    assert isinstance(verdict, Allowed)
    assert verdict.headers == (("Authorization", "Bearer sk-{{secret:header_only}}"),)
    assert verdict.injected == ("api_key",)


@pytest.mark.parametrize("value", ["a\rb", "a\nb", "a\r\nX-Evil: 1"])
def test_secret_value_with_cr_or_lf_never_goes_in_a_header(setup, monkeypatch, value):
    monkeypatch.setenv("BP_TEST_API_KEY", value)
    issued = setup.issue()
    denied(setup.broker.decide(issued.token, request(headers=bearer())), 503,
           codes.SECRET_VALUE_UNSAFE)


class _CountingResolver(SecretResolver):
    """The real resolver, counting lookups: the caps must refuse before any lookup."""

    lookups = 0

    def resolve(self, secret):  # type: ignore[override]
        type(self).lookups += 1
        return super().resolve(secret)


@pytest.mark.parametrize("headers", [
    (("Authorization", f"Bearer {PLACEHOLDER}"), ("X-Big", "a" * MAX_HEADER_FIELD_BYTES)),
    (("Authorization", f"Bearer {PLACEHOLDER}"),
     *((f"X-{i}", "a" * 8000) for i in range(MAX_HEADER_BYTES // 8000 + 1))),
    tuple((f"X-{i}", PLACEHOLDER) for i in range(17)),
])
def test_header_and_placeholder_caps_refuse_before_any_secret_lookup(setup, headers):
    setup.broker.secrets = _CountingResolver(setup.home)
    _CountingResolver.lookups = 0
    issued = setup.issue()
    verdict = setup.broker.decide(issued.token, request(headers=headers))
    assert not isinstance(verdict, Allowed)
    assert verdict.error in (codes.HEADERS_TOO_LARGE, codes.TOO_MANY_PLACEHOLDERS)
    assert _CountingResolver.lookups == 0
    assert setup.uses(issued) == 0


# --- class 6: methods and paths ---------------------------------------------------------------

@pytest.mark.parametrize("method", ["TRACE", "TRACK", "CONNECT", "trace"])
def test_trace_and_track_never_carry_a_secret(setup, method):
    issued = setup.issue()
    denied(setup.broker.decide(issued.token, request(method=method, headers=bearer())), 403,
           codes.DESTINATION_NOT_ALLOWED)


@pytest.mark.parametrize(("headers", "query", "body"), [
    ((("X-HTTP-Method-Override", "DELETE"),), "", b""),
    ((("X-HTTP-Method", "DELETE"),), "", b""),
    ((("X-Method-Override", "GET"),), "", b""),
    ((), "_method=DELETE", b""),
    ((), "%5Fmethod=DELETE", b""),
    ((), "", b"_method=DELETE&a=1"),
    ((), "", b'{"_method": "PUT"}'),
    ((), "", b"a=1&%5Fmethod=DELETE"),
])
def test_method_override_cannot_travel_with_a_secret(setup, headers, query, body):
    issued = setup.issue()
    verdict = setup.broker.decide(issued.token, request(
        method="POST", headers=(*bearer(), *headers), query=query, body=body))
    denied(verdict, 403, codes.METHOD_OVERRIDE_REFUSED)
    assert setup.uses(issued) == 0


def test_method_override_without_a_secret_is_left_alone(setup):
    issued = setup.issue()
    verdict = setup.broker.decide(issued.token, request(
        method="POST", headers=(("X-HTTP-Method-Override", "DELETE"),)))
    assert isinstance(verdict, Allowed) and not verdict.injected


@pytest.mark.parametrize("path", [
    "/v1/..;/admin", "/v1;/../admin", "/v1/x;jsessionid=1", "/v1/%252e%252e/admin",
    "/v1/%252F..%252Fadmin", "/v1/%2e%2e/admin", "/v1/.%2e/admin", "/v1/%2E/x", "/v1//x",
    "/v1/x%00", "/v1/x%3b/../admin", "/v1\\..\\admin", "/v1/x%5cadmin", "/v1/%zz",
    "/v1/\uff0e\uff0e/admin", "v1/x", "*",
])
def test_paths_that_could_escape_the_pattern_cannot_carry_a_secret(setup, path):
    issued = setup.issue()
    denied(setup.broker.decide(issued.token, request(path=path, headers=bearer())), 403,
           codes.AMBIGUOUS_PATH)


@pytest.mark.parametrize(("path", "canonical"), [
    ("/v%31/things", "/v1/things"), ("/%76%31/x%7e", "/v1/x~"), ("/v1/a%2a", "/v1/a%2A"),
])
def test_the_canonical_path_is_matched_and_sent(setup, path, canonical):
    issued = setup.issue()
    verdict = setup.broker.decide(issued.token, request(path=path, headers=bearer()))
    assert isinstance(verdict, Allowed)
    assert verdict.path == canonical


def test_escaped_path_outside_the_pattern_is_refused_after_canonicalising(setup):
    issued = setup.issue()
    denied(setup.broker.decide(issued.token, request(path="/%76%32/x", headers=bearer())), 403,
           codes.DESTINATION_NOT_ALLOWED)


# --- class 9: fail closed ---------------------------------------------------------------------

@pytest.mark.parametrize("where", ["header", "query", "cookie"])
def test_denial_body_is_the_same_whether_the_secret_exists_or_not(setup, where):
    issued = setup.issue("header_only")

    def attempt(name: str) -> bytes:
        placeholder = "{{secret:" + name + "}}"
        if where == "query":
            parts = {"query": f"k={placeholder}"}
        elif where == "cookie":
            parts = {"headers": (("Cookie", f"k={placeholder}"),)}
        else:
            parts = {"headers": bearer(placeholder)}
        verdict = setup.broker.decide(issued.token, request(**parts))
        assert not isinstance(verdict, Allowed)
        return verdict.body()

    assert attempt("vault_key") == attempt("no_such_secret_anywhere")
