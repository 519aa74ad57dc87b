"""Bad input that must not hurt the proxy: bounded work before authentication, and limits.

Each test runs the real `broker-proxy run` process and sends the bytes an attacker would.
"""

from __future__ import annotations

import pytest

from benchmarks.proc_stats import memory_kib
from tests.conftest import API_HOST, Stack
from tests.gzip_bomb import gzip_bomb
from tests.security.raw_proxy import plain_exchange, proxy_authorization

pytestmark = pytest.mark.e2e


def _post(stack: Stack, body: bytes, *, token: str | None) -> bytes:
    auth = (b"Proxy-Authorization: %s\r\n" % proxy_authorization(token).encode()
            if token else b"")
    url = f"http://{API_HOST}:{stack.upstreams.plain.port}/upload".encode()
    return (b"POST %s HTTP/1.1\r\nHost: %s:%d\r\n%sContent-Encoding: gzip\r\n"
            b"Content-Length: %d\r\n\r\n" % (url, API_HOST.encode(), stack.upstreams.plain.port,
                                             auth, len(body))) + body


def test_gzip_bomb_without_credentials_is_refused_without_inflating_it(stack: Stack) -> None:
    pid = stack.proxy.process.pid  # type: ignore[union-attr]
    before = memory_kib(pid, "VmHWM")
    answer = plain_exchange(stack, _post(stack, gzip_bomb(), token=None))
    assert answer.status == 407
    assert memory_kib(pid, "VmHWM") - before < 100 * 1024, "the bomb was inflated"
    assert stack.upstreams.plain.requests == []


def test_gzip_bomb_with_a_grant_is_refused_413_within_bounds(stack: Stack) -> None:
    pid = stack.proxy.process.pid  # type: ignore[union-attr]
    grant = stack.issue("api_key")
    before = memory_kib(pid, "VmHWM")
    answer = plain_exchange(stack, _post(stack, gzip_bomb(), token=grant.token))
    assert answer.status == 413 and b'"body_too_large"' in answer.body
    assert memory_kib(pid, "VmHWM") - before < 200 * 1024
    assert stack.upstreams.plain.requests == []


@pytest.mark.parametrize("client", ["curl", "requests", "httpx"])
def test_trailing_dot_host_is_the_canonical_host_for_matching_dialling_and_tls(
        stack: Stack, client: str) -> None:
    from tests.e2e_clients import via_curl, via_httpx, via_requests

    send = {"curl": via_curl, "requests": via_requests, "httpx": via_httpx}[client]
    grant = stack.issue("api_key")
    answer = send(stack, grant.token, "GET",
                  stack.url(stack.upstreams.api, API_HOST + ".", "/v1/dotted"),
                  headers={"Authorization": "Bearer {{secret:api_key}}"})
    assert answer.status == 200, answer.body
    (received,) = stack.upstreams.api.requests
    assert received.header("Authorization") == f"Bearer {stack.api_key}"
    assert stack.api_key.encode() not in answer.body


def test_connect_request_head_over_the_header_caps_is_431(stack: Stack) -> None:
    import socket

    from tests.security.raw_proxy import read_answer

    grant = stack.issue("api_key")
    target = f"{API_HOST}:{stack.upstreams.api.port}"
    with socket.create_connection((stack.proxy.host, stack.proxy.port), timeout=10) as sock:
        sock.sendall((f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
                      f"Proxy-Authorization: {proxy_authorization(grant.token)}\r\n"
                      f"X-Pad: {'a' * 1_000_000}\r\n\r\n").encode())
        answer = read_answer(sock)
    assert answer.status == 431 and b'"headers_too_large"' in answer.body
