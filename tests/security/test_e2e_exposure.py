"""End to end: a secret's exposure outlives one grant and one value.

The real proxy process, real clients (httpx, a wsproto WebSocket client in a raw tunnel), the
real `broker-proxy secret set` command, and a local HTTPS upstream that keeps what it is sent
and hands it back later (``tests/exposure_upstream.py``). One host, two secrets (``a_key`` and
``b_key``, both in the vault and both allowed to that host), two agents and an egress-only
agent. Each case is one way a real value came back raw before; each test also shows, as a
control, that the legitimate request still carries the real value upstream.
"""

from __future__ import annotations

import os
import secrets
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
import wsproto
import wsproto.events

from broker_proxy.devtools import prefork
from broker_proxy.grants.issuer import IssuedGrant, issue_grant
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.policy.loader import load_policy
from broker_proxy.time_source import utc_now
from tests.conftest import API_HOST, Stack, Upstreams, start_stack
from tests.exposure_upstream import ExposureUpstream
from tests.security.raw_proxy import open_tunnel

pytestmark = pytest.mark.e2e

A = "{{secret:a_key}}"
B = "{{secret:b_key}}"

POLICY = """\
version: 1
secrets:
  a_key:
    from: vault
    destinations:
      - host: {api}
        port: {api_port}
  b_key:
    from: vault
    destinations:
      - host: {api}
        port: {api_port}
  api_key:
    from: vault
    destinations:
      - host: {other}
        port: {other_port}
agents:
  alpha:
    secrets: [a_key, b_key]
    max_ttl: 1h
  beta:
    secrets: [b_key]
    max_ttl: 1h
  gamma:
    secrets: [api_key]
    max_ttl: 1h
egress:
  allow: [{api}]
network:
  allow_addresses: [127.0.0.0/8]
"""


class Exposure:
    """The running stack, and every value this module ever stored (for the log checks)."""

    def __init__(self, stack: Stack, upstream: ExposureUpstream) -> None:
        self.stack = stack
        self.upstream = upstream
        self.values: list[str] = []
        self.current: dict[str, str] = {}

    def secret_set(self, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
        """`broker-proxy secret set NAME` with a new random value, as an operator runs it."""
        value = f"{name[0]}k-live-" + secrets.token_urlsafe(24)
        self.values.append(value)
        done = prefork.run(
            [sys.executable, "-m", "broker_proxy.cli", "--home", str(self.stack.home.root),
             "secret", "set", name, *extra], input=value, capture_output=True, text=True,
            timeout=60, env=self.stack.env)
        assert done.returncode == 0, done.stderr
        for output in (done.stdout, done.stderr):
            assert value not in output
        self.current[name] = value
        return done

    def issue(self, agent: str, *names: str) -> IssuedGrant:
        store = SqliteGrantStore(self.stack.home.grants_db)
        try:
            return issue_grant(load_policy(self.stack.policy_file), store, agent=agent,
                               task="exposure test", secrets=list(names), ttl=timedelta(
                                   minutes=30), max_uses=None, now=utc_now(),
                               proxy_url_base=self.stack.proxy.info["listen"])
        finally:
            store.close()

    def client(self, grant: IssuedGrant) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.stack.proxy.ca_path))
        return httpx.Client(proxy=self.stack.proxy.proxy_url(grant.token, grant.grant.agent),
                            verify=context, timeout=30)

    def url(self, path: str) -> str:
        return f"https://{API_HOST}:{self.upstream.port}{path}"

    def received(self, path: str) -> list[str]:
        """What the upstream got in X-Reflect on ``path``: the control."""
        return [r.headers.get("x-reflect", "") for r in self.upstream.received
                if r.path.startswith(path)]


@pytest.fixture(scope="module")
def exposure(tmp_path_factory: pytest.TempPathFactory, pki, upstreams: Upstreams
             ) -> Iterator[Exposure]:
    upstream = ExposureUpstream(pki.cert_path, pki.key_path).start()
    mixed = Upstreams(api=upstream, other=upstreams.other, evil=upstreams.evil,  # type: ignore[arg-type]
                      egress=upstreams.egress, plain=upstreams.plain,
                      untrusted=upstreams.untrusted)
    root = tmp_path_factory.mktemp("exposure-stack")
    running = start_stack(root, pki, mixed, policy=POLICY)
    state = Exposure(running, upstream)
    state.secret_set("a_key")
    state.secret_set("b_key")
    yield state
    running.proxy.stop()
    upstream.stop()
    # Invariant 1 (docs/ARCHITECTURE.md): no value, old or new, in anything the proxy wrote.
    written = (root / "proxy.log").read_text(errors="replace")
    written += running.home.audit_log.read_text(errors="replace")
    for value in state.values:
        assert value not in written, "a secret value reached the proxy's log or audit log"
    assert not list((running.home.root / "scrub-acks").iterdir())  # removed at stop


@pytest.fixture
def fresh(exposure: Exposure) -> Exposure:
    exposure.upstream.clear()
    return exposure


def store_a(fresh: Exposure) -> str:
    """Grant A (agent alpha, a_key only) stores a_key's value upstream; returns that value."""
    grant_a = fresh.issue("alpha", "a_key")
    with fresh.client(grant_a) as agent:
        assert agent.get(fresh.url("/store"), headers={"X-Reflect": A}).status_code == 200
    value = fresh.current["a_key"]
    assert fresh.received("/store") == [value]  # the control: A's request carried it
    return value


# 1. Another grant's secret, stored at a shared destination.


def test_a_secret_stored_by_one_grant_is_scrubbed_from_another_grant_of_the_same_agent(
        fresh: Exposure) -> None:
    value = store_a(fresh)
    grant_b = fresh.issue("alpha", "b_key")
    with fresh.client(grant_b) as agent:
        read = agent.get(fresh.url("/read"))  # no placeholder, only the session
        control = agent.get(fresh.url("/store"), headers={"X-Reflect": B})
    assert read.status_code == 200 and read.content == f"keys={A}".encode()
    assert value.encode() not in read.content
    assert control.status_code == 200 and fresh.received("/store")[-1] == fresh.current["b_key"]


def test_a_secret_stored_by_one_agent_is_scrubbed_from_another_agents_answers(
        fresh: Exposure) -> None:
    store_a(fresh)
    grant_beta = fresh.issue("beta", "b_key")  # beta may never hold a_key
    with fresh.client(grant_beta) as agent:
        read = agent.get(fresh.url("/read"))
        control = agent.get(fresh.url("/store"), headers={"X-Reflect": B})
    assert read.content == f"keys={A}".encode()
    assert control.status_code == 200 and fresh.received("/store")[-1] == fresh.current["b_key"]


def test_a_secret_stored_at_a_host_is_scrubbed_from_an_egress_only_grants_answers(
        fresh: Exposure) -> None:
    store_a(fresh)
    grant_b = fresh.issue("alpha", "b_key")
    with fresh.client(grant_b) as agent:  # b_key stored too: the answer holds both
        agent.get(fresh.url("/store"), headers={"X-Reflect": B})
    egress_only = fresh.issue("gamma", "api_key")  # its secret goes elsewhere: egress here
    with fresh.client(egress_only) as agent:
        read = agent.get(fresh.url("/read"))
    assert read.status_code == 200 and read.content == f"keys={A},{B}".encode()
    assert fresh.received("/store") == [fresh.current["a_key"], fresh.current["b_key"]]


# 2. The previous value after rotation; 3. the new value before it is first used.


def test_the_previous_value_read_back_after_a_rotation_is_scrubbed(fresh: Exposure) -> None:
    old = store_a(fresh)
    done = fresh.secret_set("a_key")
    assert "stays retired" in done.stdout and "running proxy confirmed" in done.stdout
    grant_b = fresh.issue("beta", "b_key")
    with fresh.client(grant_b) as agent:
        read = agent.get(fresh.url("/read"))
    assert read.content == f"keys={A}".encode() and old.encode() not in read.content
    # The control: a legitimate request now carries the new value, never the retired one.
    grant_a = fresh.issue("alpha", "a_key")
    with fresh.client(grant_a) as agent:
        agent.get(fresh.url("/store"), headers={"X-Reflect": A})
        both = agent.get(fresh.url("/read"))
    assert fresh.received("/store")[-1] == fresh.current["a_key"] != old
    assert both.content == f"keys={A},{A}".encode()


def test_the_new_value_is_scrubbed_as_soon_as_secret_set_returns(fresh: Exposure) -> None:
    grant_b = fresh.issue("beta", "b_key")
    with fresh.client(grant_b) as agent:
        agent.get(fresh.url("/read"))  # the set for this answer is composed and cached
        fresh.secret_set("a_key")
        fresh.upstream.stored.append(fresh.current["a_key"])  # a page that shows the new key
        read = agent.get(fresh.url("/read"))
    assert read.content == f"keys={A}".encode()
    grant_a = fresh.issue("alpha", "a_key")
    with fresh.client(grant_a) as agent:  # the control
        agent.get(fresh.url("/store"), headers={"X-Reflect": A})
    assert fresh.received("/store") == [fresh.current["a_key"]]


def test_secret_list_shows_when_a_value_was_retired_and_forget_retired_drops_it(
        fresh: Exposure) -> None:
    fresh.secret_set("b_key")
    cli = [sys.executable, "-m", "broker_proxy.cli", "--home", str(fresh.stack.home.root),
           "secret"]
    env = dict(fresh.stack.env)
    listed = prefork.run([*cli, "list", "--policy", str(fresh.stack.policy_file)],
                            capture_output=True, text=True, timeout=60, env=env)
    assert listed.returncode == 0, listed.stderr
    assert "retired since" in listed.stdout and "scrubbed until" in listed.stdout
    for value in fresh.values:
        assert value not in listed.stdout
    forgot = prefork.run([*cli, "forget-retired", "b_key"], capture_output=True, text=True,
                            timeout=60, env=env)
    assert forgot.returncode == 0 and "forgot" in forgot.stdout, forgot.stderr
    again = prefork.run([*cli, "list", "--policy", str(fresh.stack.policy_file)],
                           capture_output=True, text=True, timeout=60, env=env)
    assert not any(line.strip().startswith("retired since") and "b_key" in line
                   for line in again.stdout.splitlines())
    assert again.stdout.count("retired since") < listed.stdout.count("retired since")


# 4. Streams opened before the rotation: SSE, long poll, WebSocket.


def _split(value: str) -> tuple[str, str]:
    return value[:12], value[12:]


def test_a_server_sent_event_stream_switches_to_the_rotated_set_at_its_next_chunk(
        fresh: Exposure) -> None:
    grant = fresh.issue("alpha", "a_key")
    old = fresh.current["a_key"]
    head, tail = _split(old)
    received: list[bytes] = []
    with fresh.client(grant) as agent, agent.stream(
            "GET", fresh.url("/sse"), headers={"X-Reflect": A}) as events:
        assert events.status_code == 200
        chunks = events.iter_raw()
        received.append(next(chunks))  # "data: open": the stream is open end to end
        # The old value's first part, held by the proxy as a partial match ...
        fresh.upstream.feed.put("data: " + head)
        new = fresh.secret_set("a_key") and fresh.current["a_key"]
        # ... completed after the switch, then the new value pushed down the same stream.
        fresh.upstream.feed.put(tail + "\n\ndata: " + new + "\n\n")
        fresh.upstream.feed.put(None)
        received.extend(chunks)
    body = b"".join(received)
    assert body == f"data: open\n\ndata: {A}\n\ndata: {A}\n\n".encode()
    assert fresh.received("/sse") == [old]  # the control: the stream's request was injected


def test_a_long_poll_decided_before_a_rotation_is_scrubbed_for_the_new_value(
        fresh: Exposure) -> None:
    grant = fresh.issue("alpha", "a_key")
    old = fresh.current["a_key"]
    answer: list[httpx.Response] = []

    def poll() -> None:
        with fresh.client(grant) as agent:
            answer.append(agent.get(fresh.url("/poll"), headers={"X-Reflect": A}))

    waiting = threading.Thread(target=poll)
    waiting.start()
    assert fresh.upstream.opened.wait(15)  # decided and sent: the upstream holds the poll
    fresh.secret_set("a_key")
    fresh.upstream.feed.put(fresh.current["a_key"] + "," + old)
    waiting.join(30)
    assert answer and answer[0].status_code == 200
    assert answer[0].content == f"keys={A},{A}".encode()
    assert fresh.received("/poll") == [old]


def test_a_websocket_switches_to_the_rotated_set_at_its_next_message(fresh: Exposure) -> None:
    grant = fresh.issue("alpha", "a_key")
    old = fresh.current["a_key"]
    head, tail = _split(old)
    port = fresh.upstream.port
    messages: list[str] = []
    closed = False
    reason = None
    with open_tunnel(fresh.stack, grant.token, API_HOST, port) as tls:
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        tls.sendall(ws.send(wsproto.events.Request(
            host=f"{API_HOST}:{port}", target="/ws",
            extra_headers=[(b"x-reflect", A.encode())])))
        rotated = False
        while not closed:
            data = tls.recv(65536)
            assert data, "the proxy closed the WebSocket before the upstream's close frame"
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, wsproto.events.TextMessage):
                    messages.append(event.data)
                elif isinstance(event, wsproto.events.CloseConnection):
                    closed, reason = True, event.reason
                    tls.sendall(ws.send(event.response()))
            if messages and not rotated:
                rotated = True
                fresh.upstream.feed.put(head)  # held back: a partial match of the old value
                fresh.secret_set("a_key")
                fresh.upstream.close_reason = "bye " + fresh.current["a_key"]
                fresh.upstream.feed.put(tail + " new=" + fresh.current["a_key"])
                fresh.upstream.feed.put(None)
    assert fresh.received("/ws") == [old]
    joined = "".join(messages)
    assert joined == f"open{A} new={A}"
    assert reason == f"bye {A}"  # the close reason too
    for value in (old, fresh.current["a_key"]):
        assert value not in joined and value[4:] not in joined


def test_every_proxy_process_of_the_home_confirms_a_rotation(fresh: Exposure) -> None:
    acks = list((fresh.stack.home.root / "scrub-acks").iterdir())
    assert fresh.stack.proxy.process is not None
    assert [ack.name for ack in acks] == [str(fresh.stack.proxy.process.pid)]
    done = fresh.secret_set("b_key", "--wait", "5s")
    assert "running proxy confirmed" in done.stdout and not done.stderr
    assert os.path.exists(acks[0])
