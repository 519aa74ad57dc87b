"""Every upstream failure is answered 502 upstream_error with its kind, and a request whose
secret never left is recorded as not sent and does not count as a use.

The upstreams are real sockets: a closed port (refused), a listener whose backlog is full (the
kernel drops the SYN: the dial hangs), one that accepts and never speaks TLS, one that completes
TLS, reads the request and never answers, a name pinned to a private address, and a name that
does not resolve.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker_proxy.audit.record_schema import first_schema_problem
from broker_proxy.audit.verify import verify_chain
from broker_proxy.devtools.local_pki import LocalPki
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from tests.conftest import API_HOST, OTHER_HOST, UNTRUSTED_HOST, Stack, Upstreams, start_stack
from tests.e2e_clients import CLIENTS

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": "Bearer {{secret:api_key}}"}
NX_HOST = "nx-broker-proxy-test.invalid"


class Socketry:
    """The misbehaving upstreams, each on its own loopback port."""

    def __init__(self, pki: LocalPki) -> None:
        self.stopping = threading.Event()
        self.sockets: list[socket.socket] = []
        # Refused: a port bound and closed again.
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        self.refused_port = closed.getsockname()[1]
        closed.close()
        # Never accepts: backlog 0, filled by one connection nobody accepts.
        self.blackhole = self._listen(backlog=0)
        filler = socket.create_connection(("127.0.0.1", self.blackhole.getsockname()[1]))
        self.sockets.append(filler)
        # Accepts TCP, never answers the TLS ClientHello.
        self.silent_tls = self._listen()
        self.silent_tls_bytes = bytearray()
        # Completes TLS, reads the request, never answers.
        self.silent_http = self._listen()
        self.silent_http_requests: list[bytes] = []
        self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._tls.load_cert_chain(pki.cert_path, pki.key_path)
        for target in (self._serve_silent_tls, self._serve_silent_http):
            threading.Thread(target=target, daemon=True).start()

    def _listen(self, backlog: int = 16) -> socket.socket:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(backlog)
        self.sockets.append(server)
        return server

    def _serve_silent_tls(self) -> None:
        self.silent_tls.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                conn, _ = self.silent_tls.accept()
            except OSError:
                continue
            self.sockets.append(conn)
            conn.settimeout(0.2)
            threading.Thread(target=self._drain, args=(conn, self.silent_tls_bytes),
                             daemon=True).start()

    def _drain(self, conn: socket.socket, into: bytearray) -> None:
        while not self.stopping.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            into.extend(data)

    def _serve_silent_http(self) -> None:
        self.silent_http.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                raw, _ = self.silent_http.accept()
            except OSError:
                continue
            threading.Thread(target=self._read_request, args=(raw,), daemon=True).start()

    def _read_request(self, raw: socket.socket) -> None:
        try:
            raw.settimeout(10)
            conn = self._tls.wrap_socket(raw, server_side=True)
            self.sockets.append(conn)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            self.silent_http_requests.append(data)
            self.stopping.wait(30)  # never answer
        except OSError:
            return

    def port(self, server: socket.socket) -> int:
        return int(server.getsockname()[1])

    def close(self) -> None:
        self.stopping.set()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


POLICY = """\
version: 1
secrets:
  api_key:
    from: vault
    destinations:
      - {{host: {api}, port: {refused}}}
      - {{host: {api}, port: {blackhole}}}
      - {{host: {api}, port: {silent_tls}}}
      - {{host: {api}, port: {silent_http}}}
      - {{host: {api}, port: {api_port}}}
      - {{host: {other}, port: {api_port}}}
      - {{host: {nx}, port: 443}}
      - {{host: {untrusted}, port: {untrusted_port}}}
    inject: [header]
agents:
  bot:
    secrets: [api_key]
    max_ttl: 1h
network:
  allow_addresses: [127.0.0.0/8]
"""


@pytest.fixture(scope="module")
def socketry(pki: LocalPki) -> Iterator[Socketry]:
    made = Socketry(pki)
    yield made
    made.close()


@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory, pki: LocalPki, upstreams: Upstreams,
            socketry: Socketry) -> Iterator[Stack]:
    policy = POLICY.format(
        api=API_HOST, other=OTHER_HOST, nx=NX_HOST, api_port=upstreams.api.port,
        untrusted=UNTRUSTED_HOST, untrusted_port=upstreams.untrusted.port,
        refused=socketry.refused_port, blackhole=socketry.port(socketry.blackhole),
        silent_tls=socketry.port(socketry.silent_tls),
        silent_http=socketry.port(socketry.silent_http))
    # OTHER_HOST is pinned to a private address the policy does not allow (a --resolve pin).
    running = start_stack(tmp_path_factory.mktemp("upstream-failures"), pki, upstreams,
                          extra_args=("--upstream-connect-timeout", "2s",
                                      "--upstream-read-timeout", "3s",
                                      "--resolve", f"{OTHER_HOST}=10.255.0.1"),
                          policy=policy.replace("{", "{{").replace("}", "}}"),
                          resolve_hosts=(API_HOST, UNTRUSTED_HOST))
    yield running
    running.proxy.stop()
    written = (running.root / "proxy.log").read_text(errors="replace")
    written += running.home.audit_log.read_text(errors="replace")
    assert running.api_key not in written


def _records(stack: Stack, grant_id: str) -> list[dict]:
    lines = stack.home.audit_log.read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("grant") == grant_id]


def _uses(stack: Stack, grant_id: str) -> int:
    store = SqliteGrantStore(stack.home.grants_db)
    try:
        grant = store.get(grant_id)
        assert grant is not None
        return grant.uses
    finally:
        store.close()


def _log(stack: Stack) -> str:
    return Path(stack.root / "proxy.log").read_text(errors="replace")


NOT_SENT_CASES = [
    ("connect_refused", lambda s: s.refused_port, API_HOST),
    ("connect_timeout", lambda s: s.port(s.blackhole), API_HOST),
    ("tls_timeout", lambda s: s.port(s.silent_tls), API_HOST),
    ("address_not_allowed", None, OTHER_HOST),
    ("resolve_failed", None, NX_HOST),
    ("tls_verify_failed", None, UNTRUSTED_HOST),
]


@pytest.mark.parametrize(("kind", "port_of", "host"), NOT_SENT_CASES,
                         ids=[case[0] for case in NOT_SENT_CASES])
@pytest.mark.parametrize("client_name", ["curl", "httpx"])
def test_an_upstream_that_is_never_reached_is_answered_and_costs_no_use(
        failing: Stack, socketry: Socketry, upstreams: Upstreams, kind: str, port_of,
        host: str, client_name: str) -> None:
    upstreams.clear()  # the servers are the worker's: another file's requests may be there
    grant = failing.issue("api_key", max_uses=1)
    port = (port_of(socketry) if port_of else 443 if host == NX_HOST
            else upstreams.untrusted.port if host == UNTRUSTED_HOST else upstreams.api.port)
    started = time.monotonic()
    answer = CLIENTS[client_name](failing, grant.token, "GET", f"https://{host}:{port}/v1/x",
                                  headers=AUTH)
    elapsed = time.monotonic() - started
    # What the agent received: the proxy's JSON, naming the grant and the kind.
    assert answer.status == 502, answer
    body = answer.json()
    assert body["error"] == "upstream_error"
    assert body["grant"] == grant.grant.id
    assert body["kind"] == kind
    assert failing.api_key.encode() not in answer.body
    assert elapsed < 10  # bounded by the 2 s deadlines, not the 10-minute idle timeout
    # What went upstream: nothing the secret could be in.
    assert failing.api_key.encode() not in bytes(socketry.silent_tls_bytes)
    assert upstreams.other.requests == [] and upstreams.untrusted.requests == []
    # What the audit says: allowed, then not sent, its use given back.
    events = [(r["event"], r.get("upstream_error"), r.get("use_returned"))
              for r in _records(failing, grant.grant.id)]
    assert events == [("request", None, None), ("request_not_sent", kind, True)]
    assert _uses(failing, grant.grant.id) == 0
    # One proxy log line says why.
    assert sum(f"({kind})" in line and grant.grant.id in line
               for line in _log(failing).splitlines()) == 1


def test_a_use_given_back_can_be_spent_again(failing: Stack, socketry: Socketry,
                                             upstreams: Upstreams) -> None:
    grant = failing.issue("api_key", max_uses=1)
    client = CLIENTS["requests"]
    before = len(upstreams.api.requests)  # the upstream is shared with other tests
    for _ in range(3):
        refused = client(failing, grant.token, "GET",
                         f"https://{API_HOST}:{socketry.refused_port}/v1/x", headers=AUTH)
        assert refused.status == 502
    ok = client(failing, grant.token, "GET", f"https://{API_HOST}:{upstreams.api.port}/v1/x",
                headers=AUTH)
    assert ok.status == 200
    assert len(upstreams.api.requests) == before + 1
    spent = client(failing, grant.token, "GET",
                   f"https://{API_HOST}:{upstreams.api.port}/v1/x", headers=AUTH)
    assert spent.status == 403 and spent.json()["error"] == "grant_used_up"
    assert _uses(failing, grant.grant.id) == 1


def test_an_upstream_that_never_answers_gets_a_read_timeout(
        failing: Stack, socketry: Socketry) -> None:
    grant = failing.issue("api_key", max_uses=2)
    before = len(socketry.silent_http_requests)
    started = time.monotonic()
    answer = CLIENTS["curl"](failing, grant.token, "GET",
                             f"https://{API_HOST}:{socketry.port(socketry.silent_http)}/v1/x",
                             headers=AUTH)
    assert answer.status == 502
    assert answer.json() == {"error": "upstream_error", "grant": grant.grant.id,
                             "kind": "read_timeout",
                             "message": "the upstream did not answer in time"}
    assert 2.5 < time.monotonic() - started < 10
    # The request did leave (with the secret): its use stays spent.
    assert len(socketry.silent_http_requests) == before + 1
    assert failing.api_key.encode() in socketry.silent_http_requests[-1]
    records = _records(failing, grant.grant.id)
    assert [(r["event"], r.get("outcome"), r.get("upstream_error"), r["status"])
            for r in records] == [("request", None, None, None),
                                  ("response", "sent", "read_timeout", 502)]
    assert _uses(failing, grant.grant.id) == 1


def test_the_log_with_failures_verifies(failing: Stack) -> None:
    result = verify_chain(failing.home.audit_log, failing.home.audit_key)
    assert result.ok, result.message
    records = map(json.loads, failing.home.audit_log.read_text().splitlines())
    assert first_schema_problem(records) is None


@pytest.mark.parametrize("ending", ["last_stream", "connection_dropped"])
def test_h2_streams_reset_by_the_agent_spend_only_the_uses_that_left(
        failing: Stack, upstreams: Upstreams, ending: str) -> None:
    import h2.config
    import h2.connection
    import h2.errors
    import h2.events

    from tests.security.raw_proxy import open_tunnel

    grant = failing.issue("api_key", max_uses=1000)
    port = upstreams.api.port
    upstreams.api.clear()

    def headers(path: str) -> list[tuple[str, str]]:
        return [(":method", "GET"), (":scheme", "https"), (":authority", f"{API_HOST}:{port}"),
                (":path", path), ("authorization", "Bearer {{secret:api_key}}")]

    with open_tunnel(failing, grant.token, API_HOST, port, alpn=["h2"]) as tls:
        connection = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        connection.initiate_connection()
        for _ in range(40):  # each stream reset as soon as it was sent
            stream_id = connection.get_next_available_stream_id()
            connection.send_headers(stream_id, headers("/v1/reset"), end_stream=True)
            connection.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        last = connection.get_next_available_stream_id()
        connection.send_headers(last, headers("/v1/last"), end_stream=True)
        tls.sendall(connection.data_to_send())
        done = ending == "connection_dropped"  # then: gone before any answer
        while not done:
            data = tls.recv(65536)
            assert data, "the proxy closed the connection"
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.StreamEnded) and event.stream_id == last:
                    done = True
            tls.sendall(connection.data_to_send())
    # The flows of reset streams end one by one: wait until the counts stop moving.
    deadline = time.monotonic() + 30
    seen = None
    while True:
        time.sleep(1.0)
        sent = len(upstreams.api.requests)
        records = _records(failing, grant.grant.id)
        allowed = sum(r["event"] == "request" and r["decision"] == "allow" for r in records)
        returned = sum(r["event"] == "request_not_sent" and r["use_returned"] for r in records)
        ended = sum(r["event"] in ("request_not_sent", "response") for r in records)
        if (sent, allowed, returned, ended) == seen and ended == allowed:
            break
        seen = (sent, allowed, returned, ended)
        assert time.monotonic() < deadline, seen
    # Exactly the requests that reached the upstream count as uses: the store, the audit
    # (allowed minus given back) and the upstream agree.
    assert _uses(failing, grant.grant.id) == sent
    assert allowed - returned == sent
    # A stream reset while its request was decided is not sent at all (nobody reads the
    # answer), so its use comes back: nearly all of them, as they were reset at once.
    assert sum(r.path == "/v1/reset" for r in upstreams.api.requests) <= 5
    assert returned >= 35
    if ending == "last_stream":
        assert any(r.path == "/v1/last" for r in upstreams.api.requests)
    print(f"h2 resets: {allowed} allowed, {returned} given back, {sent} reached the upstream")


def test_max_uses_stays_exact_when_failed_requests_give_their_uses_back(
        failing: Stack, socketry: Socketry, upstreams: Upstreams) -> None:
    from concurrent.futures import ThreadPoolExecutor

    grant = failing.issue("api_key", max_uses=5)
    upstreams.api.clear()
    good = f"https://{API_HOST}:{upstreams.api.port}/v1/exact"
    refused = f"https://{API_HOST}:{socketry.refused_port}/v1/exact"
    client = CLIENTS["curl"]
    urls = [good if i % 2 else refused for i in range(30)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(
            lambda url: client(failing, grant.token, "GET", url, headers=AUTH), urls))
    # Then spend what is left, one by one, until the grant says it is used up.
    for _ in range(10):
        if client(failing, grant.token, "GET", good, headers=AUTH).status == 403:
            break
    carried = [r for r in upstreams.api.requests
               if r.header("Authorization") == f"Bearer {failing.api_key}"]
    assert len(carried) == 5  # exactly max_uses reached the upstream, no more, no fewer
    assert _uses(failing, grant.grant.id) == 5
    assert {a.status for a, url in zip(answers, urls, strict=True) if url == refused} <= {
        502, 403}
