"""A local HTTP(S) upstream that records what reached it and echoes it back.

The demo uses it as "the API", and the end-to-end tests use it to prove two things: what the
proxy sent upstream (`requests`, `received_any`: did the real secret arrive, did a placeholder
leak?) and what the proxy let back to the agent (the default reply echoes the request, so an
upstream that reflects a secret is the default, and the response scrubber must catch it).
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

HANDLER_TIMEOUT = 10.0  # seconds an idle keep-alive connection is kept open
MAX_BODY = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    method: str
    path: str  # as sent on the request line, query string included
    headers: tuple[tuple[str, str], ...]  # in order, duplicates kept; latin-1 decoded
    body: bytes
    client_address: tuple[str, int]  # the same for requests on one kept-alive connection
    sni: str | None  # the TLS server name the client sent, None over plain HTTP or without SNI
    request_line: str

    def header(self, name: str) -> str | None:
        """The first value of a header, case-insensitively."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)

    def contains(self, needle: str) -> bool:
        """Whether the string occurs anywhere in the request line, the headers or the body."""
        if needle in self.request_line:
            return True
        if any(needle in key or needle in value for key, value in self.headers):
            return True
        return needle.encode("utf-8") in self.body


Reply = Callable[[ReceivedRequest], tuple[int, Iterable[tuple[str, str]] | dict[str, str], bytes]]


def echo_reply(request: ReceivedRequest) -> tuple[int, list[tuple[str, str]], bytes]:
    """200 with a JSON echo of the request (duplicate headers joined with ", ")."""
    headers: dict[str, str] = {}
    for name, value in request.headers:
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    body = json.dumps(
        {
            "method": request.method,
            "path": request.path,
            "headers": headers,
            "body": request.body.decode("utf-8", errors="replace"),
        }
    ).encode("utf-8")
    return 200, [("Content-Type", "application/json")], body


class _BadRequest(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries Content-Length
    timeout = HANDLER_TIMEOUT
    # Headers and body go out in two writes: with Nagle on, the body waits for the client's
    # delayed ACK (~40 ms) on every kept-alive request.
    disable_nagle_algorithm = True
    server: _Server

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError, ssl.SSLError):
            self.close_connection = True

    def __getattr__(self, name: str) -> Any:
        # Every method, including ones http.server has no do_X for (PATCH, PROPFIND, ...).
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def _serve(self) -> None:
        try:
            body = self._read_body()
        except _BadRequest as exc:
            self.close_connection = True
            self._respond(400, [("Content-Type", "text/plain")], str(exc).encode())
            return
        request = ReceivedRequest(
            method=self.command,
            path=self.path,
            headers=tuple((name, value) for name, value in self.headers.items()),
            body=body,
            client_address=(str(self.client_address[0]), int(self.client_address[1])),
            sni=getattr(self.connection, "broker_sni", None),
            request_line=self.requestline,
        )
        self.server.record(request)
        try:
            status, headers, payload = self.server.reply(request)
        except Exception as exc:  # a test's reply callable failing must not hang the client
            status, headers, payload = 500, [("Content-Type", "text/plain")], repr(exc).encode()
        self._respond(status, headers, payload)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            return b""
        try:
            length = int(raw_length)
        except ValueError:
            raise _BadRequest("bad Content-Length") from None
        if length < 0 or length > MAX_BODY:
            raise _BadRequest("bad Content-Length")
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            size_line = self.rfile.readline(1024)
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadRequest("bad chunk size") from None
            if size == 0:
                while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(body)
            if len(body) + size > MAX_BODY:
                raise _BadRequest("body too large")
            body += self.rfile.read(size)
            self.rfile.readline(8)  # the CRLF after each chunk

    def _respond(
        self,
        status: int,
        headers: Iterable[tuple[str, str]] | dict[str, str],
        payload: bytes,
    ) -> None:
        pairs = headers.items() if isinstance(headers, dict) else headers
        self.send_response(status)
        for name, value in pairs:
            if name.lower() not in ("content-length", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD" and status not in (204, 304) and status >= 200:
            self.wfile.write(payload)
        self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read `requests`, not stderr


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # kept-alive client connections must not stall shutdown

    def __init__(self, tls: ssl.SSLContext | None, reply: Reply) -> None:
        self.tls = tls
        self.reply = reply
        self._lock = threading.Lock()
        self._requests: list[ReceivedRequest] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, in the connection's own thread, so a client that never
        # finishes it cannot block the accept loop.
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(HANDLER_TIMEOUT)
        try:
            tls_request = self.tls.wrap_socket(request, server_side=True,
                                               do_handshake_on_connect=False)
        except OSError:
            return
        try:
            tls_request.do_handshake()
        except OSError:
            # A refused client certificate (mTLS) must hang up, not leave the client waiting.
            tls_request.close()
            return
        try:
            super().finish_request(tls_request, client_address)
        finally:
            # wrap_socket detached the plain socket, so socketserver's own close misses this one.
            self.shutdown_request(tls_request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up mid-request is normal in proxy tests

    def record(self, request: ReceivedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def snapshot(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()


def _remember_sni(sock: ssl.SSLSocket, server_name: str | None, _ctx: ssl.SSLContext) -> None:
    sock.broker_sni = server_name  # type: ignore[attr-defined]


class EchoServer:
    """`with EchoServer(cert, key) as server: ... server.url ... server.requests`.

    Without a certificate it serves plain HTTP. Listens on 127.0.0.1 on an ephemeral port.
    """

    def __init__(
        self,
        cert_path: Path | None = None,
        key_path: Path | None = None,
        *,
        reply: Reply | None = None,
        client_ca: Path | None = None,
    ) -> None:
        if (cert_path is None) != (key_path is None):
            raise ValueError("EchoServer needs both cert_path and key_path, or neither")
        tls: ssl.SSLContext | None = None
        if cert_path is not None and key_path is not None:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.minimum_version = ssl.TLSVersion.TLSv1_2
            tls.load_cert_chain(cert_path, key_path)
            tls.set_alpn_protocols(["http/1.1"])
            tls.sni_callback = _remember_sni  # type: ignore[assignment]  # typeshed: SSLObject
            if client_ca is not None:  # mTLS: refuse clients without a certificate from it
                tls.verify_mode = ssl.CERT_REQUIRED
                tls.load_verify_locations(client_ca)
        self._server = _Server(tls, reply or echo_reply)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def scheme(self) -> str:
        return "https" if self._server.tls is not None else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[ReceivedRequest]:
        """A copy of the requests received so far, oldest first."""
        return self._server.snapshot()

    def clear(self) -> None:
        self._server.clear()

    def received_any(self, substring: str) -> bool:
        """Whether any request so far carried the string (request line, headers or body)."""
        return any(request.contains(substring) for request in self._server.snapshot())

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"echo-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


__all__ = ["EchoServer", "ReceivedRequest", "Reply", "echo_reply"]
