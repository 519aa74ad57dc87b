"""mTLS through the real proxy: the proxy presents a client certificate it holds, to its
destination only, for grants that hold the secret."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from broker_proxy.devtools.echo_server import EchoServer
from broker_proxy.devtools.local_pki import make_ca, make_client_cert, make_server_cert
from broker_proxy.devtools.proxy_process import ProxyProcess
from broker_proxy.grants.issuer import issue_grant
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.home import Home
from broker_proxy.policy.loader import load_policy
from broker_proxy.time_source import utc_now
from tests.conftest import random_master_key

PARTNER = "partner.mtls.test.local"
ELSEWHERE = "elsewhere.mtls.test.local"

POLICY = """\
version: 1
secrets:
  partner_cert:
    {key_from}
    client_cert: file:client.pem
    destinations:
      - host: {partner}
        port: {partner_port}
  plain_key:
    from: env:PLAIN_KEY
    destinations:
      - host: {partner}
        port: {partner_port}
agents:
  bot:
    secrets: [partner_cert, plain_key]
egress:
  allow: [{elsewhere}]
network:
  allow_addresses: [127.0.0.0/8]
"""


@dataclass
class MtlsStack:
    proxy: ProxyProcess
    home: Home
    policy_file: Path
    partner: EchoServer
    elsewhere: EchoServer
    key_pem: str

    def token(self, *names: str) -> str:
        store = SqliteGrantStore(self.home.grants_db)
        try:
            return issue_grant(load_policy(self.policy_file), store, agent="bot", task="mtls",
                               secrets=list(names), ttl=None, max_uses=None, now=utc_now(),
                               proxy_url_base=self.proxy.info["listen"]).token
        finally:
            store.close()

    def get(self, token: str, url: str, headers: dict[str, str] | None = None,
            timeout: float = 20) -> requests.Response:
        proxy = self.proxy.proxy_url(token, "bot")
        return requests.get(url, headers=headers, timeout=timeout,
                            proxies={"http": proxy, "https": proxy},
                            verify=str(self.proxy.ca_path))


def _start(root: Path, key_from: str) -> Iterator[MtlsStack]:
    ca_cert, ca_key = make_ca("mtls test CA")
    server_cert, server_key = make_server_cert(ca_cert, ca_key, [PARTNER, ELSEWHERE])
    client_cert, client_key = make_client_cert(ca_cert, ca_key, "broker-proxy client")
    for name, data in (("ca.pem", ca_cert), ("server.pem", server_cert),
                       ("server-key.pem", server_key), ("client.pem", client_cert)):
        (root / name).write_bytes(data)
    # Both servers demand a client certificate from our CA.
    partner = EchoServer(root / "server.pem", root / "server-key.pem",
                         client_ca=root / "ca.pem").start()
    elsewhere = EchoServer(root / "server.pem", root / "server-key.pem",
                           client_ca=root / "ca.pem").start()
    home = Home(root / "home").ensure()
    policy_file = root / "policy.yaml"
    policy_file.write_text(POLICY.format(partner=PARTNER, partner_port=partner.port,
                                         elsewhere=ELSEWHERE, key_from=key_from))
    env = dict(os.environ, BROKER_PROXY_MASTER_KEY=random_master_key(),
               PARTNER_KEY_PEM=client_key.decode(), PLAIN_KEY="pk-unused")
    proxy = ProxyProcess(home.root, policy_file, upstream_ca=root / "ca.pem",
                         resolve={PARTNER: "127.0.0.1", ELSEWHERE: "127.0.0.1"}, env=env,
                         log_path=root / "proxy.log").start()
    yield MtlsStack(proxy, home, policy_file, partner, elsewhere, client_key.decode())
    proxy.stop()
    partner.stop()
    elsewhere.stop()
    written = (root / "proxy.log").read_text(errors="replace")
    written += home.audit_log.read_text(errors="replace")
    assert "PRIVATE KEY" not in written


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MtlsStack]:
    yield from _start(tmp_path_factory.mktemp("mtls"), "from: env:PARTNER_KEY_PEM")


def test_client_certificate_is_presented_to_its_destination(mtls: MtlsStack) -> None:
    token = mtls.token("partner_cert")
    answer = mtls.get(token, f"https://{PARTNER}:{mtls.partner.port}/v1/orders")
    assert answer.status_code == 200
    assert mtls.partner.requests[-1].path == "/v1/orders"
    records = [json.loads(line) for line in mtls.home.audit_log.read_text().splitlines()]
    assert any(r["event"] == "client_cert" and r["secrets"] == ["partner_cert"]
               for r in records)


def test_client_certificate_is_not_presented_to_another_destination(mtls: MtlsStack) -> None:
    token = mtls.token("partner_cert")
    _refused(mtls, token, f"https://{ELSEWHERE}:{mtls.elsewhere.port}/")
    assert mtls.elsewhere.requests == []


def test_grant_without_the_secret_gets_no_client_certificate(mtls: MtlsStack) -> None:
    token = mtls.token("plain_key")
    before = len(mtls.partner.requests)
    _refused(mtls, token, f"https://{PARTNER}:{mtls.partner.port}/v1/orders")
    assert len(mtls.partner.requests) == before


def _refused(mtls: MtlsStack, token: str, url: str) -> None:
    """The server refused the handshake for want of a certificate.

    With TLS 1.3 the server's "certificate required" alert comes after the client's side of the
    handshake is done, and mitmproxy 12.3 then sometimes never answers the agent: a 502 or a
    timeout are both a refusal; what matters is that no request reached the server.
    """
    try:
        answer = mtls.get(token, url, timeout=5)
    except requests.exceptions.ReadTimeout:
        return
    assert answer.status_code == 502
    assert mtls.key_pem not in answer.text


def test_client_key_placeholder_is_never_swapped_in(mtls: MtlsStack) -> None:
    token = mtls.token("partner_cert")
    answer = mtls.get(token, f"https://{PARTNER}:{mtls.partner.port}/v1/orders",
                      {"X-Key": "{{secret:partner_cert}}"})
    assert answer.status_code == 403
    assert answer.json()["error"] == "placeholder_not_allowed_here"
    assert not mtls.partner.received_any("PRIVATE KEY")


SLOW = 3.0  # seconds the key's command takes


@pytest.fixture(scope="module")
def slow_key_mtls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MtlsStack]:
    key_from = ("from: command\n    timeout: 20s\n    command: [sh, -c, "
                f"'sleep {SLOW:g}; printf %s \"$PARTNER_KEY_PEM\"']")
    yield from _start(tmp_path_factory.mktemp("slow-mtls"), key_from)


def test_slow_client_certificate_stalls_no_other_connection(slow_key_mtls: MtlsStack) -> None:
    import socket
    import threading
    import time

    token = slow_key_mtls.token("partner_cert")
    answers: list[requests.Response] = []
    slow = threading.Thread(target=lambda: answers.append(slow_key_mtls.get(
        token, f"https://{PARTNER}:{slow_key_mtls.partner.port}/v1/slow")))
    slow.start()
    time.sleep(1.0)  # the handshake now waits for the key's command
    started = time.monotonic()
    proxy = slow_key_mtls.proxy
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
        sock.sendall(f"GET http://{ELSEWHERE}/ HTTP/1.1\r\nHost: {ELSEWHERE}\r\n\r\n".encode())
        first = sock.recv(100)
    took = time.monotonic() - started
    still_waiting = slow.is_alive()
    slow.join(timeout=30)
    assert first.startswith(b"HTTP/1.1 407")
    assert took < SLOW / 2, f"another connection waited {took:.1f} s behind the key's command"
    assert still_waiting
    assert answers and answers[0].status_code == 200  # and the certificate was presented
