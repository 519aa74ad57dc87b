"""Time bounds: slow or idle peers are cut off; a refused upload does not leave the client hanging.

A proxy of its own with short deadlines (`run --request-head-timeout 2s --upstream-connect-timeout
2s --idle-timeout 3s`); the bounds are generous on the test side, the machine may be loaded.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from broker_proxy.devtools.local_pki import LocalPki
from tests.conftest import EGRESS_HOST, Stack, Upstreams, start_stack
from tests.security.raw_proxy import proxy_authorization, read_answer

pytestmark = pytest.mark.e2e

HEAD, IDLE = 2.0, 3.0


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory, pki: LocalPki,
          upstreams: Upstreams) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("deadlines"), pki, upstreams, extra_args=(
        "--request-head-timeout", "2s", "--upstream-connect-timeout", "2s",
        "--idle-timeout", "3s"))
    yield running
    running.proxy.stop()


def _closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the proxy closed the connection, or None if it stayed open."""
    started = time.monotonic()
    sock.settimeout(0.5)
    while time.monotonic() - started < seconds:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except ConnectionError:
            return time.monotonic() - started
    return None


def test_slowloris_request_heads_are_cut_off(quick: Stack) -> None:
    socks = [socket.create_connection((quick.proxy.host, quick.proxy.port), timeout=5)
             for _ in range(50)]
    try:
        for sock in socks:
            sock.sendall(b"CONNECT api.test.local:443 HTTP/1.1\r\nX-Slow: ")
        stop = time.monotonic() + HEAD * 4
        while time.monotonic() < stop:  # one more byte every half second keeps mitmproxy busy
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.sendall(b"a")
            time.sleep(0.5)
        assert all(_closed_within(sock, 5) is not None for sock in socks)
    finally:
        for sock in socks:
            sock.close()


def test_idle_kept_alive_connection_is_closed(quick: Stack) -> None:
    with socket.create_connection((quick.proxy.host, quick.proxy.port), timeout=5) as sock:
        assert _closed_within(sock, HEAD * 5) is not None


def test_silent_upstream_is_cut_off_after_the_idle_timeout(quick: Stack) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        accepted: list[socket.socket] = []
        threading.Thread(target=lambda: accepted.append(silent.accept()[0]), daemon=True).start()
        grant = quick.issue("api_key")
        with socket.create_connection((quick.proxy.host, quick.proxy.port), timeout=5) as sock:
            sock.sendall((f"GET http://{EGRESS_HOST}:{port}/stall HTTP/1.1\r\n"
                          f"Host: {EGRESS_HOST}:{port}\r\n"
                          f"Proxy-Authorization: {proxy_authorization(grant.token)}\r\n\r\n"
                          ).encode())
            started = time.monotonic()
            sock.settimeout(IDLE * 6)
            try:
                while sock.recv(65536):
                    pass
            except (TimeoutError, ConnectionError):
                pass
            took = time.monotonic() - started
        for conn in accepted:
            conn.close()
    assert accepted, "the request never reached the silent upstream"
    assert took < IDLE * 5, f"the stalled request was held {took:.1f} s"


def test_connection_is_closed_after_413_for_an_oversized_upload(quick: Stack) -> None:
    grant = quick.issue("api_key")
    with socket.create_connection((quick.proxy.host, quick.proxy.port), timeout=10) as sock:
        sock.sendall((f"POST http://{EGRESS_HOST}:9/upload HTTP/1.1\r\nHost: {EGRESS_HOST}:9\r\n"
                      f"Proxy-Authorization: {proxy_authorization(grant.token)}\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n").encode())
        chunk = b"%x\r\n%s\r\n" % (1024 * 1024, b"x" * 1024 * 1024)
        refused = threading.Event()

        def upload() -> None:
            try:
                for _ in range(64):
                    if refused.is_set():
                        return
                    sock.sendall(chunk)
            except OSError:
                pass

        sender = threading.Thread(target=upload, daemon=True)
        sender.start()
        answer = read_answer(sock)
        refused.set()
        assert answer.status == 413
        assert _closed_within(sock, 10) is not None, "the proxy left the connection open"


def test_connection_refused_at_connect_cannot_then_drip_a_head(quick: Stack) -> None:
    with socket.create_connection((quick.proxy.host, quick.proxy.port), timeout=5) as sock:
        sock.sendall(b"CONNECT api.test.local:443 HTTP/1.1\r\nHost: api.test.local:443\r\n\r\n")
        assert read_answer(sock).status == 407
        sock.sendall(b"GET http://api.test.local/ HTTP/1.1\r\nX-Slow: ")
        assert _closed_within(sock, HEAD * 5) is not None
