import secrets
from urllib.parse import quote

import pytest

from broker_proxy.decision.placeholders import PlaceholderScanner, default_placeholder
from broker_proxy.decision.request_scan import PlacedHit, RequestRewriter, find_placeholders
from broker_proxy.request.outbound import OutboundRequest

SCANNER = PlaceholderScanner({
    "api_key": default_placeholder("api_key"),
    "openai": "sk-PLACEHOLDER-openai",
})
ENCODED_PLACEHOLDER = "%7B%7Bsecret%3Aapi_key%7D%7D"


def make_request(*, path: str = "/v1/things", query: str = "",
                 headers: tuple[tuple[str, str], ...] = (), body: bytes = b"") -> OutboundRequest:
    return OutboundRequest(method="POST", scheme="https", host="api.example.com", port=443,
                           path=path, query=query, headers=headers, body=body)


# --- find_placeholders --------------------------------------------------------------------------


def test_plain_request_has_no_hits():
    request = make_request(query="a=1&b=two", headers=(("Accept", "application/json"),),
                           body=b'{"x": 1}')
    assert find_placeholders(SCANNER, request) == []


def test_placeholder_in_an_ordinary_header_is_a_header_hit():
    request = make_request(headers=(("Authorization", "Bearer {{secret:api_key}}"),
                                    ("X-Key", "sk-PLACEHOLDER-openai")))
    assert find_placeholders(SCANNER, request) == [PlacedHit("header", "api_key"),
                                                   PlacedHit("header", "openai")]


@pytest.mark.parametrize("header", ["Cookie", "Referer", "Host", "Origin", "X-Forwarded-For",
                                    "Forwarded", "Via", "Proxy-Authorization"])
def test_placeholder_in_a_forbidden_header_is_named_by_that_header(header):
    request = make_request(headers=((header, "x={{secret:api_key}}"),))
    assert find_placeholders(SCANNER, request) == [PlacedHit(header.lower(), "api_key")]


def test_placeholder_in_a_header_name_is_a_hit_named_by_the_header_name():
    request = make_request(headers=(("X-{{secret:api_key}}", "1"),))
    hits = find_placeholders(SCANNER, request)
    assert hits == [PlacedHit("x-{{secret:api_key}}", "api_key")]


def test_placeholder_in_the_query_is_found_raw():
    request = make_request(query="key={{secret:api_key}}&x=1")
    assert find_placeholders(SCANNER, request) == [PlacedHit("query", "api_key")]


def test_percent_encoded_placeholder_in_the_query_is_found():
    request = make_request(query=f"x=1&key={ENCODED_PLACEHOLDER}")
    assert find_placeholders(SCANNER, request) == [PlacedHit("query", "api_key")]


def test_placeholder_in_a_query_name_is_found():
    request = make_request(query=f"{ENCODED_PLACEHOLDER}=1")
    assert find_placeholders(SCANNER, request) == [PlacedHit("query", "api_key")]


def test_placeholder_in_the_path_is_found_raw():
    request = make_request(path="/v1/{{secret:api_key}}/x")
    assert PlacedHit("path", "api_key") in find_placeholders(SCANNER, request)


def test_percent_encoded_placeholder_in_the_path_is_found():
    request = make_request(path=f"/v1/{ENCODED_PLACEHOLDER}/x")
    assert find_placeholders(SCANNER, request) == [PlacedHit("path", "api_key")]


def test_placeholder_in_the_body_is_found():
    request = make_request(body=b'{"key": "{{secret:api_key}}", "k2": "sk-PLACEHOLDER-openai"}')
    assert find_placeholders(SCANNER, request) == [PlacedHit("body", "api_key"),
                                                   PlacedHit("body", "openai")]


def test_placeholder_in_a_binary_body_is_found():
    request = make_request(body=b"\xff\xfe\x00{{secret:api_key}}\x80")
    assert find_placeholders(SCANNER, request) == [PlacedHit("body", "api_key")]


def test_malformed_placeholder_anywhere_is_a_nameless_hit():
    request = make_request(headers=(("X-A", "{{secret:api_key"),), query="q=%7B%7Bsecret:",
                           body=b"{{secret:")
    hits = find_placeholders(SCANNER, request)
    assert {hit.place for hit in hits} == {"header", "query", "body"}
    assert {hit.secret for hit in hits} == {None}


# --- RequestRewriter ----------------------------------------------------------------------------


def test_header_placeholder_is_swapped_and_other_headers_are_kept():
    value = secrets.token_urlsafe(24)
    rewriter = RequestRewriter(SCANNER, {"api_key": value})
    headers = (("Accept", "*/*"), ("Authorization", "Bearer {{secret:api_key}}"))
    assert rewriter.headers(headers) == (("Accept", "*/*"), ("Authorization", f"Bearer {value}"))


def test_headers_without_placeholder_are_reported_unchanged():
    rewriter = RequestRewriter(SCANNER, {"api_key": secrets.token_urlsafe(24)})
    assert rewriter.headers((("Accept", "*/*"),)) is None


def test_query_keeps_untouched_components_byte_identical():
    value = secrets.token_urlsafe(24)
    rewriter = RequestRewriter(SCANNER, {"api_key": value})
    query = "a=%2f%2F+x&key={{secret:api_key}}&flag&b=%E2%82%AC"
    assert rewriter.query(query) == f"a=%2f%2F+x&key={value}&flag&b=%E2%82%AC"


def test_query_swapped_component_is_percent_encoded():
    value = "v&l=u/e " + secrets.token_urlsafe(12)
    rewriter = RequestRewriter(SCANNER, {"api_key": value})
    assert rewriter.query(f"x=1&key={ENCODED_PLACEHOLDER}") == f"x=1&key={quote(value, safe='')}"


def test_query_without_placeholder_is_reported_unchanged():
    rewriter = RequestRewriter(SCANNER, {"api_key": secrets.token_urlsafe(24)})
    assert rewriter.query("") is None
    assert rewriter.query("a=1&b=%20") is None


def test_body_placeholder_is_swapped_with_the_utf8_bytes_of_the_value():
    value = "pässwörd-€-" + secrets.token_urlsafe(12)
    rewriter = RequestRewriter(SCANNER, {"api_key": value})
    body = '{"name": "Zoë", "key": "{{secret:api_key}}"}'.encode()
    rewritten = rewriter.body(body)
    assert rewritten == ('{"name": "Zoë", "key": "' + value + '"}').encode()


def test_body_with_non_utf8_bytes_keeps_them_byte_for_byte():
    value = secrets.token_urlsafe(24)
    rewriter = RequestRewriter(SCANNER, {"api_key": value})
    body = b"\xff\x00{{secret:api_key}}\xfe"
    assert rewriter.body(body) == b"\xff\x00" + value.encode() + b"\xfe"


def test_body_without_placeholder_is_reported_unchanged():
    rewriter = RequestRewriter(SCANNER, {"api_key": secrets.token_urlsafe(24)})
    assert rewriter.body(b"") is None
    assert rewriter.body(b"nothing here") is None


def test_rewriter_does_not_expand_a_placeholder_inside_a_value():
    value = secrets.token_urlsafe(8) + "sk-PLACEHOLDER-openai"
    other = secrets.token_urlsafe(24)
    rewriter = RequestRewriter(SCANNER, {"api_key": value, "openai": other})
    out = rewriter.headers((("Authorization", "{{secret:api_key}}"),))
    assert out == (("Authorization", value),)
    assert rewriter.body(b"{{secret:api_key}}") == value.encode()
