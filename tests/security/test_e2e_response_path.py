"""End to end: nothing the agent reads holds a secret, however the upstream hands it back.

The real proxy process, real clients (httpx, raw HTTP/1.1 and HTTP/2 in a tunnel, a wsproto
WebSocket client) and a hostile local HTTPS upstream (``tests/hostile_upstream.py``). Each case
is one way an upstream got the injected value back to the agent; each test also shows, as a
control, that the upstream did receive the real value: the proxy still injects.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import wsproto
import wsproto.events

from tests.conftest import API_HOST, E2E_POLICY, Stack, Upstreams, start_stack
from tests.hostile_upstream import HostileUpstream
from tests.security.raw_proxy import h2_exchange, open_tunnel, read_answer
from tests.test_e2e_scrubbing import client

pytestmark = pytest.mark.e2e

PLACEHOLDER = "{{secret:api_key}}"
OTHER_PLACEHOLDER = "other-PLACEHOLDER-0000"  # other_key's placeholder in the e2e policy


@pytest.fixture(scope="module")
def hostile_stack(tmp_path_factory: pytest.TempPathFactory, pki, upstreams: Upstreams
                  ) -> Iterator[Stack]:
    hostile = HostileUpstream(pki.cert_path, pki.key_path).start()
    mixed = Upstreams(api=hostile, other=upstreams.other, evil=upstreams.evil,  # type: ignore[arg-type]
                      egress=upstreams.egress, plain=upstreams.plain,
                      untrusted=upstreams.untrusted)
    running = start_stack(tmp_path_factory.mktemp("hostile-stack"), pki, mixed)
    yield running
    running.proxy.stop()
    hostile.stop()
    written = (running.root / "proxy.log").read_text(errors="replace")
    written += running.home.audit_log.read_text(errors="replace")
    for value in running.secret_values():
        assert value not in written, "a secret value reached the proxy's log or audit log"


@pytest.fixture
def hostile(hostile_stack: Stack) -> HostileUpstream:
    upstream = hostile_stack.upstreams.api
    assert isinstance(upstream, HostileUpstream)
    upstream.clear()
    return upstream


def url(stack: Stack, path: str) -> str:
    return f"https://{API_HOST}:{stack.upstreams.api.port}{path}"


def h2_get(stack: Stack, token: str, path: str, *, placeholder: bool = True
           ) -> tuple[int, bytes]:
    headers = [(":method", "GET"), (":scheme", "https"),
               (":authority", f"{API_HOST}:{stack.upstreams.api.port}"), (":path", path)]
    if placeholder:
        headers.append(("x-reflect", PLACEHOLDER))
    [answer] = h2_exchange(stack, token, API_HOST, stack.upstreams.api.port, [headers])
    return answer


def assert_injected(stack: Stack, hostile: HostileUpstream, path: str) -> None:
    """The control: the granted request reached the upstream with the real value in it."""
    seen = [r for r in hostile.received if r.path.startswith(path)]
    assert seen and seen[-1].headers.get("x-reflect") == stack.api_key


def assert_error_body(body: bytes, error: str, stack: Stack) -> None:
    assert json.loads(body)["error"] == error
    for value in stack.secret_values():
        assert value.encode() not in body


# 1. Answers to flows that injected nothing.


@pytest.mark.parametrize("variant", ["", "?enc=gzip", "?drip=1"],
                         ids=["plain", "gzip", "one-byte-drip"])
def test_a_stored_secret_read_back_without_a_placeholder_is_scrubbed(
        hostile_stack: Stack, hostile: HostileUpstream, variant: str) -> None:
    grant = hostile_stack.issue("api_key")
    with client(hostile_stack, grant.token) as agent:
        stored = agent.get(url(hostile_stack, "/v1/store"), headers={"X-Reflect": PLACEHOLDER})
        read = agent.get(url(hostile_stack, "/v1/read" + variant))  # no placeholder
    assert stored.status_code == 200
    assert_injected(hostile_stack, hostile, "/v1/store")
    assert read.status_code == 200
    assert read.content == b"keys=" + PLACEHOLDER.encode()


def test_a_stored_secret_read_back_over_http2_is_scrubbed(
        hostile_stack: Stack, hostile: HostileUpstream) -> None:
    grant = hostile_stack.issue("api_key")
    with client(hostile_stack, grant.token) as agent:
        agent.get(url(hostile_stack, "/v1/store"), headers={"X-Reflect": PLACEHOLDER})
    assert_injected(hostile_stack, hostile, "/v1/store")
    assert h2_get(hostile_stack, grant.token, "/v1/read", placeholder=False) == (
        200, b"keys=" + PLACEHOLDER.encode())


# 2. Every secret of the grant, not only the injected one.


def test_an_answer_holding_another_secret_of_the_grant_is_scrubbed(
        hostile_stack: Stack, hostile: HostileUpstream) -> None:
    grant = hostile_stack.issue("api_key", "other_key")
    hostile.stored.append(hostile_stack.other_key)  # the upstream holds the grant's other key
    with client(hostile_stack, grant.token) as agent:
        read = agent.get(url(hostile_stack, "/v1/read"), headers={"X-Reflect": PLACEHOLDER})
    assert_injected(hostile_stack, hostile, "/v1/read")
    assert read.content == b"keys=" + OTHER_PLACEHOLDER.encode()


# 3 and 4. WebSocket: a drip of short messages, a ping and a close reason holding the value.


def test_websocket_drip_ping_and_close_reason_never_carry_the_secret(
        hostile_stack: Stack, hostile: HostileUpstream) -> None:
    grant = hostile_stack.issue("api_key")
    port = hostile_stack.upstreams.api.port
    messages: list[str] = []
    pings: list[bytes] = []
    reason = None
    with open_tunnel(hostile_stack, grant.token, API_HOST, port) as tls:
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        tls.sendall(ws.send(wsproto.events.Request(
            host=f"{API_HOST}:{port}", target="/v1/ws",
            extra_headers=[(b"authorization", b"Bearer " + PLACEHOLDER.encode())])))
        while reason is None:
            data = tls.recv(65536)
            assert data, "the proxy closed the WebSocket before the upstream's close frame"
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, wsproto.events.TextMessage):
                    messages.append(event.data)
                elif isinstance(event, wsproto.events.Ping):
                    pings.append(bytes(event.payload))
                    tls.sendall(ws.send(event.response()))
                elif isinstance(event, wsproto.events.CloseConnection):
                    reason = event.reason
                    tls.sendall(ws.send(event.response()))
    assert hostile.received[-1].headers["authorization"] == "Bearer " + hostile_stack.api_key
    value = hostile_stack.api_key
    # At most the first three characters (the key's public prefix here) reach the agent.
    assert "".join(messages) == value[:3] + PLACEHOLDER + ":end"
    assert len(messages) > len(value) // 3  # the boundaries were kept, one answer per message
    assert pings == [PLACEHOLDER.encode()] and hostile.pongs == [PLACEHOLDER.encode()]
    assert reason == "bad key " + PLACEHOLDER


# 5. The proxy writes its own error pages.


@pytest.mark.parametrize("path", ["/v1/status-line", "/v1/bad-header", "/v1/cut"])
@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_error_pages_never_quote_what_the_upstream_sent(
        hostile_stack: Stack, hostile: HostileUpstream, path: str, http2: bool) -> None:
    grant = hostile_stack.issue("api_key")
    if http2:
        status, body = h2_get(hostile_stack, grant.token, path)
        head = b""
    else:
        with client(hostile_stack, grant.token) as agent:
            answer = agent.get(url(hostile_stack, path), headers={"X-Reflect": PLACEHOLDER})
        status, body = answer.status_code, answer.content
        head = str(answer.headers).encode() + answer.reason_phrase.encode()
        assert answer.headers["content-type"] == "application/json"
    assert_injected(hostile_stack, hostile, path)
    assert status == 502
    assert_error_body(body, "upstream_error", hostile_stack)
    assert hostile_stack.api_key.encode() not in head


# 6. One request, one answer: a 1xx is neither the final answer nor the next request's.


def test_an_informational_answer_never_answers_this_request_or_the_next(
        hostile_stack: Stack, hostile: HostileUpstream) -> None:
    grant = hostile_stack.issue("api_key")
    authority = f"{API_HOST}:{hostile_stack.upstreams.api.port}"
    with open_tunnel(hostile_stack, grant.token, API_HOST,
                     hostile_stack.upstreams.api.port) as tls:
        tls.sendall(f"GET /v1/early-hints HTTP/1.1\r\nHost: {authority}\r\n"
                    f"X-Reflect: {PLACEHOLDER}\r\n\r\n".encode())
        first = read_answer(tls)
        tls.sendall(f"GET /v1/plain HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        second = read_answer(tls)
    assert_injected(hostile_stack, hostile, "/v1/early-hints")
    assert first.status == 401 and first.body == b"invalid api key " + PLACEHOLDER.encode()
    assert second.status == 200 and second.body == b"hello"
    assert [r.path for r in hostile.received] == ["/v1/early-hints", "/v1/plain"]


def test_an_informational_answer_over_http2_is_not_the_final_one(
        hostile_stack: Stack, hostile: HostileUpstream) -> None:
    grant = hostile_stack.issue("api_key")
    assert h2_get(hostile_stack, grant.token, "/v1/early-hints") == (
        401, b"invalid api key " + PLACEHOLDER.encode())
    assert_injected(hostile_stack, hostile, "/v1/early-hints")


# 7. Transfer codings other than chunked.


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_a_gzip_transfer_coding_is_undone_and_scrubbed_never_relabelled(
        hostile_stack: Stack, hostile: HostileUpstream, http2: bool) -> None:
    grant = hostile_stack.issue("api_key")
    if http2:
        assert h2_get(hostile_stack, grant.token, "/v1/te?codings=gzip") == (
            200, b"key=" + PLACEHOLDER.encode())
    else:
        with client(hostile_stack, grant.token) as agent:
            answer = agent.get(url(hostile_stack, "/v1/te?codings=gzip"),
                               headers={"X-Reflect": PLACEHOLDER})
        assert answer.status_code == 200
        assert answer.headers.get("transfer-encoding") == "chunked"
        assert answer.content == b"key=" + PLACEHOLDER.encode()
    assert_injected(hostile_stack, hostile, "/v1/te")


def test_a_transfer_coding_the_proxy_cannot_undo_is_withheld(
        hostile_stack: Stack, hostile: HostileUpstream) -> None:
    grant = hostile_stack.issue("api_key")
    with client(hostile_stack, grant.token) as agent:
        answer = agent.get(url(hostile_stack, "/v1/te?codings=compress"),
                           headers={"X-Reflect": PLACEHOLDER})
    assert_injected(hostile_stack, hostile, "/v1/te")
    assert answer.status_code == 502
    assert_error_body(answer.content, "response_withheld", hostile_stack)


# 8. A withheld answer is complete, also when the upstream's had no body.


def test_a_withheld_answer_without_a_body_is_complete(
        hostile_stack: Stack, hostile: HostileUpstream) -> None:
    grant = hostile_stack.issue("api_key")
    authority = f"{API_HOST}:{hostile_stack.upstreams.api.port}"
    with open_tunnel(hostile_stack, grant.token, API_HOST,
                     hostile_stack.upstreams.api.port) as tls:
        tls.sendall(f"GET /v1/empty-206 HTTP/1.1\r\nHost: {authority}\r\n"
                    f"X-Reflect: {PLACEHOLDER}\r\n\r\n".encode())
        answer = read_answer(tls)  # reads Content-Length bytes: short means a hang
    assert_injected(hostile_stack, hostile, "/v1/empty-206")
    assert answer.status == 502
    assert_error_body(answer.body, "response_withheld", hostile_stack)
    status, body = h2_get(hostile_stack, grant.token, "/v1/empty-206")
    assert status == 502
    assert_error_body(body, "response_withheld", hostile_stack)


# Per-grant placeholders come back as that grant's own.

# The e2e policy plus a secret whose placeholder each grant draws (other_key's value).
SHAPED_POLICY = E2E_POLICY.replace("""agents:
""", """  shaped_key:
    from: env:E2E_OTHER_KEY
    placeholder_format: {{prefix: "sk-bp-", length: 32}}
    destinations:
      - host: {api}
        port: {api_port}
agents:
""").replace("secrets: [api_key, other_key]", "secrets: [api_key, other_key, shaped_key]")


@pytest.fixture(scope="module")
def shaped_stack(tmp_path_factory: pytest.TempPathFactory, pki, upstreams: Upstreams
                 ) -> Iterator[Stack]:
    hostile = HostileUpstream(pki.cert_path, pki.key_path).start()
    mixed = Upstreams(api=hostile, other=upstreams.other, evil=upstreams.evil,  # type: ignore[arg-type]
                      egress=upstreams.egress, plain=upstreams.plain,
                      untrusted=upstreams.untrusted)
    running = start_stack(tmp_path_factory.mktemp("shaped-stack"), pki, mixed,
                          policy=SHAPED_POLICY)
    yield running
    running.proxy.stop()
    hostile.stop()
    written = (running.root / "proxy.log").read_text(errors="replace")
    written += running.home.audit_log.read_text(errors="replace")
    assert running.other_key not in written, "a secret value reached the proxy's log or audit"


def test_per_grant_placeholders_come_back_as_each_grants_own(shaped_stack: Stack) -> None:
    hostile = shaped_stack.upstreams.api
    assert isinstance(hostile, HostileUpstream)
    first = shaped_stack.issue("shaped_key")
    second = shaped_stack.issue("shaped_key")
    mine, theirs = first.placeholders["shaped_key"], second.placeholders["shaped_key"]
    assert mine != theirs and mine.startswith("sk-bp-")
    with client(shaped_stack, first.token) as agent:
        agent.get(url(shaped_stack, "/v1/store"), headers={"X-Reflect": mine})
    assert hostile.received[-1].headers["x-reflect"] == shaped_stack.other_key  # injected
    answers = {}
    for grant in (first, second):
        with client(shaped_stack, grant.token) as agent:
            answers[grant.placeholders["shaped_key"]] = agent.get(
                url(shaped_stack, "/v1/read")).content  # no placeholder
    assert answers == {mine: b"keys=" + mine.encode(), theirs: b"keys=" + theirs.encode()}
