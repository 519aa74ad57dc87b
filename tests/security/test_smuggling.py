"""Attack class 7 (protocol abuse): request smuggling gets 400, plain and inside a tunnel.

Each raw request would carry the secret to an allowed destination if it were well formed, so a
pass through the proxy would show up as a request at the upstream.
"""

from __future__ import annotations

import pytest

from tests.conftest import API_HOST, Stack
from tests.security.raw_proxy import plain_exchange, proxy_authorization, tunnel_exchange

pytestmark = pytest.mark.e2e

PLACEHOLDER = "{{secret:api_key}}"

# name -> header lines between the request line and the blank line, and the body.
SMUGGLING = {
    "cl_and_te": ("Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
                  b"0\r\n\r\nGET /v1/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    "te_and_cl": ("Transfer-Encoding: chunked\r\nContent-Length: 6\r\n",
                  b"0\r\n\r\nGET /v1/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    "duplicate_content_length": ("Content-Length: 4\r\nContent-Length: 40\r\n", b"abcd"),
    "content_length_list": ("Content-Length: 4, 40\r\n", b"abcd"),
    "te_not_chunked_last": ("Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"),
    "te_obfuscated": ("Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"),
    "te_space_before_colon": ("Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"),
    "obs_fold": ("X-Folded: a\r\n b\r\n", b""),
    "bare_cr_in_value": ("X-Cr: a\rX-Injected: yes\r\n", b""),
    "negative_content_length": ("Content-Length: -1\r\n", b""),
    "plus_content_length": ("Content-Length: +4\r\n", b"abcd"),
}


def _request(target: str, host: str, extra: str, body: bytes, auth: str | None,
             newline: str = "\r\n") -> bytes:
    head = (f"POST {target} HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {PLACEHOLDER}\r\n"
            + (f"Proxy-Authorization: {auth}\r\n" if auth else "") + extra + "\r\n")
    return head.replace("\r\n", newline).encode() + body


@pytest.mark.parametrize("vector", sorted(SMUGGLING))
def test_smuggling_inside_a_tunnel_gets_400(stack: Stack, vector: str) -> None:
    grant = stack.issue("api_key")
    port = stack.upstreams.api.port
    extra, body = SMUGGLING[vector]
    answer = tunnel_exchange(stack, grant.token, API_HOST, port,
                             _request("/v1/x", f"{API_HOST}:{port}", extra, body, None))
    assert answer.status == 400, answer.raw[:300]
    assert stack.upstreams.api.requests == []


@pytest.mark.parametrize("vector", sorted(SMUGGLING))
def test_smuggling_in_a_plain_proxy_request_gets_400(stack: Stack, vector: str) -> None:
    grant = stack.issue("api_key")
    port = stack.upstreams.plain.port
    extra, body = SMUGGLING[vector]
    answer = plain_exchange(stack, _request(f"http://{API_HOST}:{port}/v1/x",
                                            f"{API_HOST}:{port}", extra, body,
                                            proxy_authorization(grant.token)))
    assert answer.status == 400, answer.raw[:300]
    assert stack.upstreams.plain.requests == []


def _assert_forwarded_as_parsed(stack: Stack) -> None:
    # mitmproxy 12.3.1 accepts bare LF (h11's lenient line splitting) and writes every line
    # upstream again with CRLF: the upstream sees the headers the broker decided on, never a
    # line break inside a value. Recorded in tests/security/README.md.
    for received in stack.upstreams.api.requests:
        for name, value in received.headers:
            assert "\n" not in name + value and "\r" not in name + value


def test_bare_lf_line_endings_are_rewritten_as_crlf_never_passed_through(stack: Stack) -> None:
    grant = stack.issue("api_key")
    port = stack.upstreams.api.port
    answer = tunnel_exchange(stack, grant.token, API_HOST, port,
                             _request("/v1/x", f"{API_HOST}:{port}", "", b"", None, "\n"))
    assert answer.status in (200, 400), answer.raw[:300]
    _assert_forwarded_as_parsed(stack)


def test_bare_lf_inside_one_header_line_is_two_headers_for_broker_and_upstream(
        stack: Stack) -> None:
    grant = stack.issue("api_key")
    port = stack.upstreams.api.port
    answer = tunnel_exchange(stack, grant.token, API_HOST, port,
                             _request("/v1/x", f"{API_HOST}:{port}",
                                      "X-A: a\nX-Injected: yes\r\n", b"", None))
    assert answer.status in (200, 400), answer.raw[:300]
    _assert_forwarded_as_parsed(stack)
    for received in stack.upstreams.api.requests:
        assert received.header("X-A") == "a" and received.header("X-Injected") == "yes"
