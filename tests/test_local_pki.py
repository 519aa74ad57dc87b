"""The local PKI makes certificates real TLS clients accept, and the echo server records and
echoes what reached it, over TLS and HTTP/1.1 keep-alive."""

from __future__ import annotations

import http.client
import json
import secrets
import socket
import ssl
import stat
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from broker_proxy.devtools.echo_server import EchoServer, ReceivedRequest
from broker_proxy.devtools.local_pki import (
    LocalPki,
    LocalPkiError,
    make_ca,
    make_server_cert,
    write_pki,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPki:
    return write_pki(
        tmp_path_factory.mktemp("pki"), ["localhost", "api.example.test"], ["127.0.0.1"]
    )


def client_context(pki: LocalPki) -> ssl.SSLContext:
    # create_default_context: hostname checks and, on 3.13, VERIFY_X509_STRICT.
    return ssl.create_default_context(cafile=str(pki.ca_cert_path))


def urlopen(
    url: str | urllib.request.Request, context: ssl.SSLContext | None = None
) -> http.client.HTTPResponse:
    """urlopen that ignores HTTPS_PROXY from the environment: these tests talk to the echo
    server directly."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers).open(url, timeout=10)


def test_ca_is_a_ca_and_leaf_is_a_server_cert() -> None:
    ca_pem, ca_key = make_ca("test CA")
    cert_pem, _ = make_server_cert(ca_pem, ca_key, ["api.example.test"], ["127.0.0.1"])
    ca = x509.load_pem_x509_certificate(ca_pem)
    leaf = x509.load_pem_x509_certificate(cert_pem)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["api.example.test"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    leaf.verify_directly_issued_by(ca)
    now = datetime.now(UTC)
    assert leaf.not_valid_before_utc < now - timedelta(minutes=59)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(days=1)


def test_server_cert_without_names_is_refused() -> None:
    ca_pem, ca_key = make_ca("test CA")
    with pytest.raises(LocalPkiError, match="at least one hostname"):
        make_server_cert(ca_pem, ca_key, [])
    with pytest.raises(LocalPkiError):
        make_server_cert(ca_pem, ca_key, ["a.test"], ["not-an-ip"])


def test_private_key_file_is_owner_only(pki: LocalPki) -> None:
    assert stat.S_IMODE(pki.key_path.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" not in pki.ca_cert_path.read_bytes()
    assert not list(pki.ca_cert_path.parent.glob("ca-key*"))  # the CA key is never written


def test_https_echo_with_local_ca(pki: LocalPki) -> None:
    marker = secrets.token_urlsafe(16)
    with EchoServer(pki.cert_path, pki.key_path) as server:
        assert server.url.startswith("https://127.0.0.1:")
        req = urllib.request.Request(
            f"{server.url}/v1/items?q={marker}",
            data=json.dumps({"value": marker}).encode(),
            headers={"X-Test": "yes", "Content-Type": "application/json"},
            method="POST",
        )
        with urlopen(req, client_context(pki)) as resp:
            assert resp.status == 200
            echoed = json.loads(resp.read())
        assert echoed["method"] == "POST"
        assert echoed["path"] == f"/v1/items?q={marker}"
        assert echoed["headers"]["X-Test"] == "yes"
        assert json.loads(echoed["body"]) == {"value": marker}
        [received] = server.requests
        assert isinstance(received, ReceivedRequest)
        assert received.method == "POST"
        assert received.path == f"/v1/items?q={marker}"
        assert received.header("x-test") == "yes"
        assert ("X-Test", "yes") in received.headers
        assert received.body == json.dumps({"value": marker}).encode()
        assert server.received_any(marker)
        assert not server.received_any(secrets.token_urlsafe(16))


def test_received_any_searches_headers_and_body(pki: LocalPki) -> None:
    in_header, in_body = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    with EchoServer(pki.cert_path, pki.key_path) as server:
        conn = http.client.HTTPSConnection(
            "localhost", server.port, context=client_context(pki), timeout=10
        )
        conn.request("PATCH", "/x", body=in_body.encode(), headers={"Authorization": in_header})
        assert conn.getresponse().read()
        conn.close()
        assert server.received_any(in_header)
        assert server.received_any(in_body)
        assert server.requests[0].sni == "localhost"


def test_keep_alive_serves_three_requests_on_one_connection(pki: LocalPki) -> None:
    with EchoServer(pki.cert_path, pki.key_path) as server:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", server.port, context=client_context(pki), timeout=10
        )
        for index in range(3):
            conn.request("GET", f"/n/{index}")
            resp = conn.getresponse()
            assert resp.status == 200
            assert resp.getheader("Content-Length") is not None
            assert json.loads(resp.read())["path"] == f"/n/{index}"
        conn.close()
        received = server.requests
        assert [request.path for request in received] == ["/n/0", "/n/1", "/n/2"]
        assert len({request.client_address for request in received}) == 1


def test_chunked_request_body_is_decoded(pki: LocalPki) -> None:
    with EchoServer(pki.cert_path, pki.key_path) as server:
        conn = http.client.HTTPSConnection(
            "localhost", server.port, context=client_context(pki), timeout=10
        )
        conn.request("POST", "/chunks", body=iter([b"hello ", b"world"]), encode_chunked=True)
        assert json.loads(conn.getresponse().read())["body"] == "hello world"
        conn.close()


def test_reply_callable_overrides_the_echo(pki: LocalPki) -> None:
    def reply(request: ReceivedRequest) -> tuple[int, list[tuple[str, str]], bytes]:
        return 418, [("X-Reply", request.method), ("Content-Length", "999")], b"teapot"

    with EchoServer(pki.cert_path, pki.key_path, reply=reply) as server:
        conn = http.client.HTTPSConnection(
            "localhost", server.port, context=client_context(pki), timeout=10
        )
        for _ in range(2):  # a wrong Content-Length from the callable would break keep-alive
            conn.request("DELETE", "/thing")
            resp = conn.getresponse()
            assert (resp.status, resp.getheader("X-Reply"), resp.read()) == (
                418,
                "DELETE",
                b"teapot",
            )
        conn.close()


def test_untrusted_client_is_refused_and_server_keeps_serving(pki: LocalPki) -> None:
    with EchoServer(pki.cert_path, pki.key_path) as server:
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urlopen(f"{server.url}/", ssl.create_default_context())  # system CAs only
        with urlopen(f"{server.url}/ok", client_context(pki)) as resp:
            assert resp.status == 200


def test_stalled_tls_handshake_does_not_block_other_clients(pki: LocalPki) -> None:
    with EchoServer(pki.cert_path, pki.key_path) as server:
        stalled = socket.create_connection(("127.0.0.1", server.port))
        try:
            with urlopen(f"{server.url}/", client_context(pki)) as resp:
                assert resp.status == 200
        finally:
            stalled.close()


def test_plain_http_mode() -> None:
    with EchoServer() as server:
        assert server.url.startswith("http://127.0.0.1:")
        with urlopen(f"{server.url}/plain") as resp:
            assert json.loads(resp.read())["path"] == "/plain"
        assert server.requests[0].sni is None


def test_pki_files_are_reusable_by_a_fresh_process_context(tmp_path: Path) -> None:
    pki = write_pki(tmp_path / "certs", ["api.example.test"])
    context = ssl.create_default_context(cafile=str(pki.ca_cert_path))
    with EchoServer(pki.cert_path, pki.key_path) as server:
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        with context.wrap_socket(raw, server_hostname="api.example.test") as tls:
            tls.sendall(
                b"GET /named HTTP/1.1\r\nHost: api.example.test\r\nConnection: close\r\n\r\n"
            )
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200")
        assert server.requests[0].sni == "api.example.test"
