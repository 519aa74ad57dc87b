"""A local HTTPS upstream that tries to hand the injected secret back in ways HTTP allows.

Raw sockets, so each answer is exactly the bytes under test: a status line or a header line
holding the value, a head cut off before its blank line, a 1xx before the final answer, a
``Transfer-Encoding: gzip, chunked`` body, an empty 206, a header folded (obs-fold) in the middle
of the value, a stored value read back by a later
request that carries no placeholder, and a WebSocket that drips the value a few characters per
message, pings with it and closes with it as the reason. The value is what the proxy injected in
``X-Reflect`` (``Authorization: Bearer`` for the WebSocket). Every request is recorded, so a
test can show the granted request was still injected.
"""

from __future__ import annotations

import gzip
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import wsproto
import wsproto.events


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names


@dataclass
class _Answer:
    data: bytes
    close: bool = False


def _head(status: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _whole(status: str, body: bytes, headers: list[tuple[str, str]] | None = None) -> bytes:
    return _head(status, [*(headers or []), ("Content-Length", str(len(body)))]) + body


def _chunked(body: bytes, size: int) -> bytes:
    chunks = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


@dataclass
class HostileUpstream:
    cert: Path
    key: Path
    stored: list[str] = field(default_factory=list)  # values the upstream "holds" for /v1/read
    received: list[Received] = field(default_factory=list)
    pongs: list[bytes] = field(default_factory=list)  # pong payloads the WebSocket client sent

    scheme = "https"

    def start(self) -> HostileUpstream:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        context.set_alpn_protocols(["http/1.1"])
        self._context = context
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._stopping = False
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def stop(self) -> None:
        self._stopping = True
        self._listener.close()

    def clear(self) -> None:
        self.received.clear()
        self.stored.clear()
        self.pongs.clear()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            with self._context.wrap_socket(raw, server_side=True) as tls:
                tls.settimeout(20)
                buffer = b""
                while True:
                    while b"\r\n\r\n" not in buffer:
                        data = tls.recv(65536)
                        if not data:
                            return
                        buffer += data
                    head, _, buffer = buffer.partition(b"\r\n\r\n")
                    request = self._parse(head)
                    length = int(request.headers.get("content-length", "0") or 0)
                    while len(buffer) < length:
                        buffer += tls.recv(65536)
                    buffer = buffer[length:]
                    self.received.append(request)
                    if urlsplit(request.path).path == "/v1/ws":
                        self._websocket(tls, head + b"\r\n\r\n", request)
                        return
                    answer = self._answer(request)
                    tls.sendall(answer.data)
                    if answer.close:
                        return
        except (OSError, ssl.SSLError):
            return

    @staticmethod
    def _parse(head: bytes) -> Received:
        first, *lines = head.decode("utf-8", "surrogateescape").split("\r\n")
        method, path, _ = first.split(" ", 2)
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return Received(method, path, headers)

    def _answer(self, request: Received) -> _Answer:
        url = urlsplit(request.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        value = request.headers.get("x-reflect", "")
        raw = value.encode()
        match url.path:
            case "/v1/store":  # write: the injected value is kept, as an API keeps a key
                self.stored.append(value)
                return _Answer(_whole("200 OK", b"stored", [("Set-Cookie", "sid=1")]))
            case "/v1/read":  # read back, by a request that may carry no placeholder
                body = ("keys=" + ",".join(self.stored)).encode()
                if query.get("enc") == "gzip":
                    body = gzip.compress(body)
                    return _Answer(_whole("200 OK", body, [("Content-Encoding", "gzip")]))
                if query.get("drip") == "1":
                    return _Answer(_head("200 OK", [("Transfer-Encoding", "chunked")])
                                   + _chunked(body, 1))
                return _Answer(_whole("200 OK", body))
            case "/v1/status-line":
                return _Answer(f"HTTP/1.1 {value} Nope\r\n\r\n".encode(), close=True)
            case "/v1/bad-header":
                return _Answer(b"HTTP/1.1 200 OK\r\nX-Echo " + raw + b"\r\n"
                               b"Content-Length: 0\r\n\r\n", close=True)
            case "/v1/cut":
                return _Answer(b"HTTP/1.1 200 OK\r\nAuthorization: Bearer " + raw + b"\r\n",
                               close=True)
            case "/v1/early-hints":
                return _Answer(_head("103 Early Hints", [("Link", "</a.css>; rel=preload")])
                               + _whole("401 Unauthorized", b"invalid api key " + raw))
            case "/v1/folded":  # obs-fold: the value split across a folded header line
                half = len(raw) // 2
                return _Answer(b"HTTP/1.1 200 OK\r\nX-Echo: " + raw[:half] + b"\r\n "
                               + raw[half:] + b"\r\nContent-Length: 2\r\n\r\nok")
            case "/v1/plain":
                return _Answer(_whole("200 OK", b"hello"))
            case "/v1/te":
                codings = query.get("codings", "gzip")
                body = b"key=" + raw
                if codings == "gzip":
                    body = gzip.compress(body)
                return _Answer(_head("200 OK", [("Transfer-Encoding", f"{codings}, chunked")])
                               + _chunked(body, 7))
            case "/v1/empty-206":
                return _Answer(_whole("206 Partial Content", b""))
        return _Answer(_whole("404 Not Found", b""))

    def _websocket(self, tls: ssl.SSLSocket, head: bytes, request: Received) -> None:
        value = request.headers.get("authorization", "").removeprefix("Bearer ")
        connection = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        connection.receive_data(head)
        for event in connection.events():
            if isinstance(event, wsproto.events.Request):
                tls.sendall(connection.send(wsproto.events.AcceptConnection()))
        out = b""
        at, size = 0, 1
        while at < len(value):  # one to three characters per message
            out += connection.send(wsproto.events.TextMessage(value[at:at + size]))
            at, size = at + size, size % 3 + 1
        out += connection.send(wsproto.events.TextMessage(":end"))
        out += connection.send(wsproto.events.Ping(value.encode()))
        tls.sendall(out)
        closing = False
        while True:
            data = tls.recv(65536)
            if not data:
                return
            connection.receive_data(data)
            for event in connection.events():
                if isinstance(event, wsproto.events.Pong):
                    self.pongs.append(bytes(event.payload))
                    if not closing:
                        closing = True
                        tls.sendall(connection.send(wsproto.events.CloseConnection(
                            code=4000, reason="bad key " + value)))
                elif isinstance(event, wsproto.events.CloseConnection):
                    return
