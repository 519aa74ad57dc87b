"""No mitmproxy error page reaches a client: a request the proxy cannot parse is answered with
the broker's JSON ``400 malformed_request``, from no ``Server: mitmproxy``, echoing nothing."""

from __future__ import annotations

import json

import pytest

from tests.conftest import API_HOST, Stack
from tests.security.raw_proxy import RawAnswer, open_tunnel, plain_exchange, read_answer

pytestmark = pytest.mark.e2e

MARKER = b"ECHOME"
CASES = {
    "70kb_connect_line": b"CONNECT " + MARKER + b"a" * 70_000 + b".example:443 HTTP/1.1\r\n"
                         b"Host: x\r\n\r\n",
    "content_length_abc": b"POST http://api.test.local/v1/x HTTP/1.1\r\nHost: api.test.local\r\n"
                          b"Content-Length: abc" + MARKER + b"\r\n\r\n",
    "bad_request_line": b"GARBAGE\x01 /<script>" + MARKER + b" HTTP/9\r\n\r\n",
    "bad_header_line": b"GET http://api.test.local/ HTTP/1.1\r\nHost: api.test.local\r\n"
                       b"no colon here " + MARKER + b"\r\n\r\n",
    "two_content_lengths": b"POST http://api.test.local/ HTTP/1.1\r\nHost: api.test.local\r\n"
                           b"Content-Length: 1\r\nContent-Length: 2" + MARKER + b"\r\n\r\nab",
}


def _assert_json_400(answer: RawAnswer) -> None:
    head, _, body = answer.raw.partition(b"\r\n\r\n")
    assert answer.status == 400, answer.raw[:300]
    assert b"mitmproxy" not in head.lower()
    assert b"content-type: application/json" in head.lower()
    assert MARKER not in answer.raw  # nothing of the input comes back
    assert len(answer.raw) < 1000
    parsed = json.loads(body)
    assert parsed["error"] == "malformed_request"
    assert parsed["grant"] is None


@pytest.mark.parametrize("name", list(CASES))
def test_a_request_that_is_not_http_gets_json_400_without_echo(stack: Stack, name: str) -> None:
    _assert_json_400(plain_exchange(stack, CASES[name]))
    assert stack.upstreams.api.requests == []


def test_inside_a_tunnel_too(stack: Stack) -> None:
    grant = stack.issue("api_key")
    with open_tunnel(stack, grant.token, API_HOST, stack.upstreams.api.port) as tls:
        tls.sendall(b"POST /v1/x HTTP/1.1\r\nHost: api.test.local\r\nContent-Length: abc"
                    + MARKER + b"\r\n\r\n")
        _assert_json_400(read_answer(tls))
    assert stack.upstreams.api.requests == []


def test_a_header_flood_gets_json_too(stack: Stack) -> None:
    grant = stack.issue("api_key")
    flood = b"".join(b"X-Flood-%d: %s\r\n" % (i, MARKER + b"v" * 90) for i in range(3000))
    with open_tunnel(stack, grant.token, API_HOST, stack.upstreams.api.port) as tls:
        tls.sendall(b"GET /v1/x HTTP/1.1\r\nHost: api.test.local\r\n" + flood + b"\r\n")
        answer = read_answer(tls)
    head, _, body = answer.raw.partition(b"\r\n\r\n")
    assert answer.status == 431
    assert b"mitmproxy" not in head.lower() and MARKER not in answer.raw
    assert json.loads(body)["error"] == "headers_too_large"
    assert stack.upstreams.api.requests == []
