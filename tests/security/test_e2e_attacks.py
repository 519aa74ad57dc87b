"""Attack classes 1, 3, 4, 6, 7 and 8 through the real proxy process with real clients.

Every test checks what reached the upstream (``upstreams.X.requests``), not only the answer:
a defence that answers 403 but still forwards would fail here.
"""

from __future__ import annotations

import base64
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import API_HOST, EVIL_HOST, OTHER_HOST, Stack
from tests.e2e_clients import CLIENTS, via_curl, via_httpx
from tests.security.raw_proxy import (
    h2_exchange,
    open_tunnel,
    plain_exchange,
    proxy_authorization,
    read_answer,
    tunnel_exchange,
)

pytestmark = pytest.mark.e2e

PLACEHOLDER = "{{secret:api_key}}"
AUTH = {"Authorization": f"Bearer {PLACEHOLDER}"}


def _get(path: str, host: str, extra: str = "", method: str = "GET") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {PLACEHOLDER}\r\n"
            f"Content-Length: 0\r\n{extra}\r\n").encode()


def _error(answer) -> str:
    import json
    return json.loads(answer.body)["error"]


# --- class 1: authority confusion -------------------------------------------------------------

@pytest.mark.parametrize("host_header", [f"{EVIL_HOST}", "{api}:1", f"{OTHER_HOST}:{{port}}",
                                         "{api}@" + EVIL_HOST])
def test_host_header_naming_another_host_or_port_in_a_tunnel_is_refused(stack: Stack,
                                                                        host_header: str) -> None:
    grant = stack.issue("api_key")
    port = stack.upstreams.api.port
    host_header = host_header.format(api=API_HOST, port=port)
    answer = tunnel_exchange(stack, grant.token, API_HOST, port, _get("/v1/x", host_header))
    assert answer.status == 403 and _error(answer) == "authority_mismatch"
    assert stack.upstreams.api.requests == []


def test_absolute_form_request_in_a_tunnel_naming_another_host_is_refused(stack: Stack) -> None:
    grant = stack.issue("api_key")
    port = stack.upstreams.api.port
    raw = _get(f"https://{EVIL_HOST}:{stack.upstreams.evil.port}/v1/x", f"{API_HOST}:{port}")
    answer = tunnel_exchange(stack, grant.token, API_HOST, port, raw)
    assert answer.status in (400, 403), answer.raw[:200]
    assert stack.upstreams.api.requests == [] and stack.upstreams.evil.requests == []


def test_tls_sni_naming_another_host_than_connect_is_refused(stack: Stack) -> None:
    grant = stack.issue("api_key")
    port = stack.upstreams.api.port
    answer = tunnel_exchange(stack, grant.token, API_HOST, port,
                             _get("/v1/x", f"{API_HOST}:{port}"), sni=EVIL_HOST)
    assert answer.status == 403 and _error(answer) == "authority_mismatch"
    assert stack.upstreams.api.requests == []


def test_upstream_sni_is_pinned_to_the_checked_host(stack: Stack) -> None:
    grant = stack.issue("api_key")
    answer = via_curl(stack, grant.token, "GET", stack.url(stack.upstreams.api, API_HOST,
                                                           "/v1/x"), headers=AUTH)
    assert answer.status == 200
    (received,) = stack.upstreams.api.requests
    assert received.sni == API_HOST


# --- class 2: host spelling, end to end --------------------------------------------------------

def test_userinfo_in_the_url_goes_to_the_real_host_without_the_secret(stack: Stack) -> None:
    grant = stack.issue("api_key")
    api_port, evil_port = stack.upstreams.api.port, stack.upstreams.evil.port
    answer = via_curl(stack, grant.token, "GET",
                      f"https://{API_HOST}:{api_port}@{EVIL_HOST}:{evil_port}/v1/x",
                      headers=AUTH)
    assert answer.status == 403
    assert stack.upstreams.evil.requests == [] and stack.upstreams.api.requests == []


@pytest.mark.parametrize("target", ["2130706433", "0x7f000001", "127.1", "[::ffff:127.0.0.1]",
                                    "127.0.0.1"])
def test_ip_literal_spellings_of_the_upstream_never_get_the_secret(stack: Stack,
                                                                   target: str) -> None:
    grant = stack.issue("api_key")
    port = stack.upstreams.api.port
    try:
        answer = tunnel_exchange(stack, grant.token, target, port,
                                 _get("/v1/x", f"{target}:{port}"), sni=API_HOST)
        assert answer.status in (0, 400, 403, 502), answer.raw[:200]
    except (ConnectionError, ssl.SSLError, OSError):
        pass  # refused at CONNECT or TLS: nothing could be sent
    assert not stack.upstreams.api.received_any(stack.api_key)


# --- class 3: where the bytes really go --------------------------------------------------------

class _CountingListener:
    """A raw TCP port that counts connections: proof that nothing was dialled."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.accepted = 0
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            connection.close()

    def close(self) -> None:
        self.sock.close()


def test_connect_to_a_port_the_grant_does_not_cover_dials_nothing(stack: Stack) -> None:
    grant = stack.issue("api_key")
    listener = _CountingListener()
    try:
        # HTTP inside the tunnel: a readable 403, and the port is never dialled.
        answer = tunnel_exchange(stack, grant.token, EVIL_HOST, listener.port,
                                 _get("/v1/x", f"{EVIL_HOST}:{listener.port}"))
        assert answer.status == 403 and _error(answer) == "destination_not_allowed"
        plain = tunnel_exchange(stack, grant.token, API_HOST, listener.port,
                                b"GET / HTTP/1.1\r\nHost: " + f"{API_HOST}:{listener.port}"
                                .encode() + b"\r\n\r\n")
        assert plain.status == 403 and _error(plain) == "destination_not_granted"
        # Non-HTTP bytes inside a tunnel (no TLS): the flow is cut, nothing dialled.
        with socket.create_connection((stack.proxy.host, stack.proxy.port), timeout=10) as sock:
            sock.sendall((f"CONNECT {API_HOST}:{listener.port} HTTP/1.1\r\n"
                          f"Proxy-Authorization: {proxy_authorization(grant.token)}\r\n\r\n")
                         .encode())
            assert read_answer(sock).status == 200
            sock.sendall(b"SSH-2.0-OpenSSH_9.0\r\n" + b"\x00" * 64)
            sock.settimeout(10)
            try:
                leftover = sock.recv(4096)
            except (TimeoutError, ConnectionError):
                leftover = b""
            assert b"SSH" not in leftover
    finally:
        listener.close()
    assert listener.accepted == 0


@pytest.mark.parametrize("upgrade", ["h2c", "foo/1", "TLS/1.2", "websocket, h2c"])
def test_non_websocket_upgrades_are_refused(stack: Stack, upgrade: str) -> None:
    grant = stack.issue("api_key")
    port = stack.upstreams.api.port
    extra = f"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: {upgrade}\r\n"
    if upgrade == "h2c":
        extra += "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
    answer = tunnel_exchange(stack, grant.token, API_HOST, port,
                             _get("/v1/x", f"{API_HOST}:{port}", extra))
    assert answer.status == 403 and _error(answer) == "upgrade_not_allowed"
    assert stack.upstreams.api.requests == []


def test_h2c_upgrade_on_a_plain_proxy_request_is_refused(stack: Stack) -> None:
    grant = stack.issue("api_key")
    answer = plain_exchange(stack, (
        f"GET http://{API_HOST}:{stack.upstreams.plain.port}/ HTTP/1.1\r\n"
        f"Host: {API_HOST}:{stack.upstreams.plain.port}\r\n"
        f"Proxy-Authorization: {proxy_authorization(grant.token)}\r\n"
        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n").encode())
    assert answer.status == 403 and _error(answer) == "upgrade_not_allowed"
    assert stack.upstreams.plain.requests == []


def test_websocket_handshake_gets_the_secret_only_in_its_headers(stack: Stack) -> None:
    grant = stack.issue("api_key")
    port = stack.upstreams.api.port
    key = base64.b64encode(b"0123456789abcdef").decode()
    extra = (f"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
             f"Sec-WebSocket-Key: {key}\r\n")
    answer = tunnel_exchange(stack, grant.token, API_HOST, port,
                             _get("/v1/ws", f"{API_HOST}:{port}", extra))
    # The echo upstream does not speak WebSocket; what matters is what it received.
    assert answer.status != 101
    (received,) = stack.upstreams.api.requests
    assert received.header("Authorization") == f"Bearer {stack.api_key}"
    assert stack.api_key.encode() not in answer.raw


def test_the_proxy_never_follows_a_redirect(stack: Stack) -> None:
    grant = stack.issue("api_key")
    evil = stack.url(stack.upstreams.evil, EVIL_HOST, "/collect")
    server = stack.upstreams.api._server  # swap the echo reply for a redirect, then restore
    original = server.reply
    server.reply = lambda _request: (302, [("Location", evil), ("Content-Length", "0")], b"")
    try:
        answer = via_curl(stack, grant.token, "GET",
                          stack.url(stack.upstreams.api, API_HOST, "/v1/x"), headers=AUTH)
    finally:
        server.reply = original
    assert answer.status == 302
    assert answer.headers["location"] == evil
    assert stack.upstreams.evil.requests == []


# --- class 4: placeholders in the wrong place -------------------------------------------------

@pytest.mark.parametrize(("name", "value"), [
    ("Cookie", f"session={PLACEHOLDER}"),
    ("Referer", f"https://{API_HOST}/?k={PLACEHOLDER}"),
    ("Authorization", "Basic " + base64.b64encode(f"user:{PLACEHOLDER}".encode()).decode()),
    ("X-Api-Key", "%7B%7Bsecret%3Aapi_key%7D%7D"),
    ("X-Api-Key", base64.b64encode(PLACEHOLDER.encode()).decode()),
    ("Origin", f"https://{PLACEHOLDER}"),
])
def test_placeholder_in_a_wrong_header_on_the_granted_host_is_refused(stack: Stack, name: str,
                                                                      value: str) -> None:
    grant = stack.issue("api_key")
    answer = via_httpx(stack, grant.token, "GET",
                       stack.url(stack.upstreams.api, API_HOST, "/v1/x"), headers={name: value})
    assert answer.status == 403
    assert answer.json()["error"] == "placeholder_not_allowed_here"
    assert stack.upstreams.api.requests == []


def test_placeholder_split_over_two_headers_reaches_the_upstream_unswapped(stack: Stack) -> None:
    grant = stack.issue("api_key")
    answer = via_httpx(stack, grant.token, "GET",
                       stack.url(stack.upstreams.api, API_HOST, "/v1/x"),
                       headers={"X-A": "{{sec", "X-B": "ret:api_key}}"})
    assert answer.status == 200
    assert not stack.upstreams.api.received_any(stack.api_key)


def test_placeholder_split_across_chunks_is_seen_whole_and_refused(stack: Stack) -> None:
    grant = stack.issue("api_key")
    port = stack.upstreams.api.port
    chunks = [b"tok={{sec", b"ret:api", b"_key}}"]
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    raw = (f"POST /v1/x HTTP/1.1\r\nHost: {API_HOST}:{port}\r\n"
           "Transfer-Encoding: chunked\r\n\r\n").encode() + body
    answer = tunnel_exchange(stack, grant.token, API_HOST, port, raw)
    assert answer.status == 403 and _error(answer) == "placeholder_not_allowed_here"
    assert stack.upstreams.api.requests == []


# --- class 6: methods and paths ----------------------------------------------------------------

@pytest.mark.parametrize("method", ["TRACE", "TRACK"])
def test_trace_and_track_never_carry_a_secret(stack: Stack, method: str) -> None:
    grant = stack.issue("api_key")
    port = stack.upstreams.api.port
    answer = tunnel_exchange(stack, grant.token, API_HOST, port,
                             _get("/v1/x", f"{API_HOST}:{port}", method=method))
    assert answer.status == 403
    assert stack.upstreams.api.requests == []


@pytest.mark.parametrize(("path", "extra"), [
    ("/v1/x", "X-HTTP-Method-Override: DELETE\r\n"),
    ("/v1/x", "X-HTTP-Method: PUT\r\n"),
    ("/v1/x", "X-Method-Override: DELETE\r\n"),
    ("/v1/x?_method=DELETE", ""),
])
def test_method_override_cannot_widen_a_method_restricted_destination(stack: Stack, path: str,
                                                                      extra: str) -> None:
    grant = stack.issue("api_key")
    port = stack.upstreams.api.port
    answer = tunnel_exchange(stack, grant.token, API_HOST, port,
                             _get(path, f"{API_HOST}:{port}", extra, method="POST"))
    assert answer.status == 403 and _error(answer) == "method_override_refused"
    assert stack.upstreams.api.requests == []


@pytest.mark.parametrize("path", ["/v1/..;/admin", "/v1;x/../admin", "/v1/%252e%252e/admin",
                                  "/v1/%252fadmin", "/v1/x;jsessionid=1", "/v1//admin"])
def test_path_tricks_cannot_escape_the_path_pattern(stack: Stack, path: str) -> None:
    grant = stack.issue("api_key")
    port = stack.upstreams.api.port
    answer = tunnel_exchange(stack, grant.token, API_HOST, port,
                             _get(path, f"{API_HOST}:{port}"))
    assert answer.status == 403 and _error(answer) == "ambiguous_path"
    assert stack.upstreams.api.requests == []


def test_the_canonical_path_is_what_the_upstream_receives(stack: Stack) -> None:
    grant = stack.issue("api_key")
    port = stack.upstreams.api.port
    answer = tunnel_exchange(stack, grant.token, API_HOST, port,
                             _get("/v%31/repo%73?q=1", f"{API_HOST}:{port}"))
    assert answer.status == 200
    (received,) = stack.upstreams.api.requests
    assert received.path == "/v1/repos?q=1"


# --- class 7: HTTP/2 --------------------------------------------------------------------------

def test_http2_streams_are_decided_one_by_one(stack: Stack) -> None:
    grant = stack.issue("api_key")
    port = stack.upstreams.api.port

    def stream(path: str, authority: str = f"{API_HOST}:{port}",
               extra: tuple[tuple[str, str], ...] = (("authorization",
                                                       f"Bearer {PLACEHOLDER}"),)):
        return [(":method", "GET"), (":scheme", "https"), (":authority", authority),
                (":path", path), *extra]

    answers = h2_exchange(stack, grant.token, API_HOST, port, [
        stream("/v1/one"),
        stream("/admin"),
        stream("/v1/two", extra=(("cookie", f"k={PLACEHOLDER}"),)),
        stream("/v1/three", authority=f"{EVIL_HOST}:{port}"),
        stream("/v1/four"),
    ])
    statuses = [status for status, _ in answers]
    assert statuses == [200, 403, 403, 403, 200], answers
    assert b"destination_not_allowed" in answers[1][1]
    assert b"placeholder_not_allowed_here" in answers[2][1]
    assert b"authority_mismatch" in answers[3][1]
    assert sorted(r.path for r in stack.upstreams.api.requests) == ["/v1/four", "/v1/one"]
    assert all(stack.api_key.encode() not in body for _, body in answers)


# --- class 8: grant abuse ---------------------------------------------------------------------

def test_token_in_the_query_or_a_normal_header_does_not_authenticate(stack: Stack) -> None:
    grant = stack.issue("api_key")
    port = stack.upstreams.plain.port
    for extra, target in [
        ("", f"http://{API_HOST}:{port}/?proxy_token={grant.token}"),
        (f"X-Proxy-Token: {grant.token}\r\n", f"http://{API_HOST}:{port}/"),
        (f"Authorization: Basic {proxy_authorization(grant.token).split()[1]}\r\n",
         f"http://{API_HOST}:{port}/"),
    ]:
        answer = plain_exchange(stack, (f"GET {target} HTTP/1.1\r\nHost: {API_HOST}:{port}\r\n"
                                        f"{extra}\r\n").encode())
        assert answer.status == 407
    assert stack.upstreams.plain.requests == []


def test_duplicated_proxy_authorization_is_refused(stack: Stack) -> None:
    grant = stack.issue("api_key")
    port = stack.upstreams.plain.port
    credentials = proxy_authorization(grant.token)
    answer = plain_exchange(stack, (
        f"GET http://{API_HOST}:{port}/ HTTP/1.1\r\nHost: {API_HOST}:{port}\r\n"
        f"Proxy-Authorization: {credentials}\r\nProxy-Authorization: {credentials}\r\n\r\n"
    ).encode())
    assert answer.status == 407
    with socket.create_connection((stack.proxy.host, stack.proxy.port), timeout=10) as sock:
        sock.sendall((f"CONNECT {API_HOST}:{stack.upstreams.api.port} HTTP/1.1\r\n"
                      f"Proxy-Authorization: {credentials}\r\n"
                      f"Proxy-Authorization: {credentials}\r\n\r\n").encode())
        assert read_answer(sock).status == 407
    assert stack.upstreams.plain.requests == [] and stack.upstreams.api.requests == []


def test_proxy_authorization_sent_inside_a_tunnel_is_never_forwarded(stack: Stack) -> None:
    grant = stack.issue("api_key")
    other = stack.issue("api_key")
    port = stack.upstreams.api.port
    answer = tunnel_exchange(stack, grant.token, API_HOST, port, _get(
        "/v1/x", f"{API_HOST}:{port}", f"Proxy-Authorization: {proxy_authorization(other.token)}"
                                       "\r\n"))
    assert answer.status == 200
    assert not stack.upstreams.api.received_any(other.token)
    assert not stack.upstreams.api.received_any(grant.token)


def test_placeholder_of_grant_b_with_grant_a_token_is_not_granted(stack: Stack) -> None:
    grant_a = stack.issue("api_key")
    stack.issue("other_key")
    answer = via_curl(stack, grant_a.token, "GET",
                      stack.url(stack.upstreams.other, OTHER_HOST, "/x"),
                      headers={"X-Api-Key": "other-PLACEHOLDER-0000"})
    assert answer.status == 403 and answer.json()["error"] == "secret_not_granted"
    assert stack.upstreams.other.requests == []


def test_two_hundred_parallel_requests_racing_for_the_last_uses(stack: Stack) -> None:
    max_uses = 5
    grant = stack.issue("api_key", max_uses=max_uses)
    context = ssl.create_default_context(cafile=str(stack.proxy.ca_path))
    url = stack.url(stack.upstreams.api, API_HOST, "/v1/race")
    barrier = threading.Barrier(20)

    def worker(_: int) -> list[int]:
        with httpx.Client(proxy=stack.proxy.proxy_url(grant.token, "bot"), verify=context,
                          timeout=60) as client:
            client.get(stack.url(stack.upstreams.egress, "pypi.test.local", "/warm"))
            barrier.wait()
            return [client.get(url, headers=AUTH).status_code for _ in range(10)]

    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = [status for batch in pool.map(worker, range(20)) for status in batch]
    assert len(statuses) == 200
    assert statuses.count(200) == max_uses
    assert statuses.count(403) == 200 - max_uses
    assert len(stack.upstreams.api.requests) == max_uses


def test_every_client_is_refused_the_same_way_for_a_wrong_place(stack: Stack) -> None:
    grant = stack.issue("api_key")
    for client in CLIENTS.values():
        answer = client(stack, grant.token, "GET",
                        stack.url(stack.upstreams.api, API_HOST, "/v1/x"),
                        headers={"Cookie": f"k={PLACEHOLDER}"})
        assert answer.status == 403
    assert stack.upstreams.api.requests == []


def test_open_tunnel_helper_refuses_without_credentials(stack: Stack) -> None:
    with pytest.raises(ConnectionError):
        open_tunnel(stack, "not-a-token", API_HOST, stack.upstreams.api.port)
