"""A local HTTPS upstream that keeps what it is sent and hands it back later, also on streams.

Raw sockets, so each answer is exactly the bytes under test:

- ``/store`` keeps the ``X-Reflect`` header's value (the injected secret), as an API keeps a
  key in a session, a profile field or an object; ``/read`` hands every kept value back
  (``keys=a,b``) to any request, with or without a placeholder;
- ``/sse`` (server-sent events, chunked), ``/poll`` (a long poll: the answer waits for an
  item) and ``/ws`` (a WebSocket) send what the test puts in ``feed``, when it puts it: so a
  test can open the stream, rotate a secret, and only then have the upstream push the value.
  On ``/sse`` and ``/ws`` each item is one chunk or message, ``None`` ends the stream.

Every request is recorded, so a test can show the granted request was still injected.
"""

from __future__ import annotations

import queue
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import wsproto
import wsproto.events


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names


def _whole(status: str, body: bytes, headers: list[tuple[str, str]] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{n}: {v}" for n, v in headers or []),
             f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class ExposureUpstream:
    cert: Path
    key: Path
    stored: list[str] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    feed: queue.Queue[str | None] = field(default_factory=queue.Queue)
    # Set once a stream's first event or message was sent (the stream is open end to end).
    opened: threading.Event = field(default_factory=threading.Event)
    close_reason: str = "done"  # the WebSocket's close reason

    scheme = "https"

    def start(self) -> ExposureUpstream:
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
        self.opened.clear()
        self.close_reason = "done"
        while not self.feed.empty():
            self.feed.get_nowait()

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
                tls.settimeout(30)
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
                    path = urlsplit(request.path).path
                    if path == "/ws":
                        self._websocket(tls, head + b"\r\n\r\n")
                        return
                    if path == "/sse":
                        self._events(tls)
                        return
                    tls.sendall(self._answer(request, path))
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

    def _answer(self, request: Received, path: str) -> bytes:
        value = request.headers.get("x-reflect", "")
        if path == "/store":
            self.stored.append(value)
            return _whole("200 OK", b"stored", [("Set-Cookie", "sid=1")])
        if path == "/read":
            return _whole("200 OK", ("keys=" + ",".join(self.stored)).encode())
        if path == "/poll":
            self.opened.set()
            item = self.feed.get(timeout=30)
            return _whole("200 OK", ("keys=" + (item or "")).encode())
        return _whole("404 Not Found", b"")

    def _events(self, tls: ssl.SSLSocket) -> None:
        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
        first = b"data: open\n\n"
        tls.sendall(b"%x\r\n%s\r\n" % (len(first), first))
        self.opened.set()
        while (item := self.feed.get(timeout=30)) is not None:
            chunk = item.encode()
            tls.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        tls.sendall(b"0\r\n\r\n")

    def _websocket(self, tls: ssl.SSLSocket, head: bytes) -> None:
        connection = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        connection.receive_data(head)
        for event in connection.events():
            if isinstance(event, wsproto.events.Request):
                tls.sendall(connection.send(wsproto.events.AcceptConnection()))
        tls.sendall(connection.send(wsproto.events.TextMessage("open")))
        self.opened.set()
        while (item := self.feed.get(timeout=30)) is not None:
            tls.sendall(connection.send(wsproto.events.TextMessage(item)))
        tls.sendall(connection.send(wsproto.events.CloseConnection(code=1000,
                                                                    reason=self.close_reason)))
        while True:
            data = tls.recv(65536)
            if not data:
                return
            connection.receive_data(data)
            for event in connection.events():
                if isinstance(event, wsproto.events.CloseConnection):
                    return
