"""Time bounds on connections, so idle or slow peers cannot hold the proxy's resources.

mitmproxy bounds only inactivity (``tcp_timeout``: no byte either way), so a client that drips
a request head one byte at a time (slowloris) keeps its connection for ever, an upstream that
never accepts is waited for as long, and after a 413 for an over-long upload mitmproxy stops
reading but keeps the connection open. This addon adds:

- a **request-head deadline**: from the moment a client connects, opens a tunnel, or has had
  its last answer, it must complete the next request head within ``request_head`` seconds,
  else its connection is closed (this is also the idle limit of a kept-alive connection);
  while a request is in flight, or after a WebSocket upgrade, no deadline runs;
- an **upstream connect deadline**: a dial that has not connected within ``upstream_connect``
  seconds is cancelled, and the request is answered ``502 upstream_error`` (kind
  ``connect_timeout``, see upstream_failures.py); the upstream TLS handshake and the wait
  for an answer have their own deadlines there;
- **close after 413**: the connection of a request refused for its body size is closed once the
  answer is out, so the client does not hang sending a body nobody reads.

The idle limit while a request is in flight (an upstream that goes silent) is mitmproxy's own
``tcp_timeout``, which ``broker-proxy run`` sets from ``--idle-timeout``. Closing a connection
uses mitmproxy's own inactivity path (``ConnectionHandler.on_timeout``); ``check`` verifies it
is there.
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass
from weakref import WeakKeyDictionary

from broker_proxy.addons.mitmproxy_compat import require
from mitmproxy import connection, ctx, http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy import server_hooks
from mitmproxy.proxy.layers.http import HttpStream
from mitmproxy.proxy.server import ConnectionHandler, ConnectionIO

_BODY_TOO_LARGE = "body exceeds mitmproxy's body_size_limit"
_CLOSE_AFTER_ANSWER = 0.2  # seconds: the refusal is written before the connection closes
_closing: set[asyncio.Future[None]] = set()


@dataclass(frozen=True, slots=True)
class Deadlines:
    request_head: float = 30.0
    upstream_connect: float = 10.0  # the TCP connect, and again the TLS handshake
    upstream_read: float = 300.0  # from the request's decision to the answer's headers
    idle: float = 600.0  # mitmproxy's tcp_timeout: LLM answers may be silent for minutes


class ConnectionLimits:
    def __init__(self, deadlines: Deadlines | None = None) -> None:
        self.deadlines = deadlines or Deadlines()
        self._head_timers: WeakKeyDictionary[connection.Client, asyncio.TimerHandle] = (
            WeakKeyDictionary())
        self._in_flight: WeakKeyDictionary[connection.Client, int] = WeakKeyDictionary()
        self._connect_timers: WeakKeyDictionary[connection.Server, asyncio.TimerHandle] = (
            WeakKeyDictionary())

    # The request-head deadline.
    def client_connected(self, client: connection.Client) -> None:
        self._arm(client)

    def client_disconnected(self, client: connection.Client) -> None:
        self._disarm(client)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        # A new deadline, not none: a refused CONNECT (407) leaves the connection open for
        # another request head, which must come in time too.
        self._arm(flow.client_conn)

    def http_connected(self, flow: http.HTTPFlow) -> None:
        self._arm(flow.client_conn)  # the tunnel is open: the first request is due

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        client = flow.client_conn
        self._in_flight[client] = self._in_flight.get(client, 0) + 1
        self._disarm(client)

    def response(self, flow: http.HTTPFlow) -> None:
        self._answered(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        # mitmproxy sends the 413, stops reading and lets go of the connection without closing
        # its socket: close it ourselves once the answer is out.
        if (flow.error is not None and flow.error.msg.startswith("Request " + _BODY_TOO_LARGE)
                and (io := _client_io(flow.client_conn)) is not None and io.writer is not None):
            asyncio.get_running_loop().call_later(_CLOSE_AFTER_ANSWER, io.writer.close)
        self._answered(flow)

    def _answered(self, flow: http.HTTPFlow) -> None:
        client = flow.client_conn
        left = max(0, self._in_flight.get(client, 1) - 1)
        self._in_flight[client] = left
        if left == 0 and flow.websocket is None:
            self._arm(client)

    def _arm(self, client: connection.Client) -> None:
        self._disarm(client)
        self._head_timers[client] = asyncio.get_running_loop().call_later(
            self.deadlines.request_head, close_client, client)

    def _disarm(self, client: connection.Client) -> None:
        if (timer := self._head_timers.pop(client, None)) is not None:
            timer.cancel()

    # The upstream connect deadline.
    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._connect_timers[data.server] = asyncio.get_running_loop().call_later(
            self.deadlines.upstream_connect, _connect_expired, data.client, data.server)

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._connected(data)

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._connected(data)

    def _connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        if (timer := self._connect_timers.pop(data.server, None)) is not None:
            timer.cancel()


def _handler(client: connection.Client) -> ConnectionHandler | None:
    proxyserver = ctx.master.addons.get("proxyserver")
    return proxyserver.connections.get(client.id) if proxyserver is not None else None


def _client_io(client: connection.Client) -> ConnectionIO | None:
    handler = _handler(client)
    return handler.transports.get(client) if handler is not None else None


def _connect_expired(client: connection.Client, server: connection.Server) -> None:
    """Fail the dial, so that mitmproxy answers the request (502 connect_timeout).

    Cancelling mitmproxy's dialling task is its own "connection cancelled" failure path: the
    request gets its error page. A dial still queued behind mitmproxy's per-address limit is
    not cancellable that way (the task would end without an answer): its client is closed.
    """
    handler = _handler(client)
    io = handler.transports.get(server) if handler is not None else None
    if (io is not None and io.handler is not None and io.writer is None
            and server.timestamp_start is not None):
        io.handler.cancel()
    else:
        close_client(client)


def close_server(client: connection.Client, server: connection.Server) -> None:
    """Close one upstream connection; mitmproxy then fails the flows waiting on it."""
    handler = _handler(client)
    io = handler.transports.get(server) if handler is not None else None
    if io is not None and io.writer is not None:
        io.writer.close()


def close_client(client: connection.Client) -> None:
    """Close a client's connection (and its upstream ones) as mitmproxy does when idle."""
    if (handler := _handler(client)) is not None:
        closing = asyncio.ensure_future(handler.on_timeout())
        _closing.add(closing)  # held until done: the loop keeps only weak references
        closing.add_done_callback(_closing.discard)


def check() -> None:
    require(inspect.iscoroutinefunction(getattr(ConnectionHandler, "on_timeout", None)),
            "ConnectionHandler.on_timeout is missing")
    require(callable(getattr(Proxyserver, "register_connection", None))
            and "self.connections[connection_id]" in inspect.getsource(Proxyserver),
            "Proxyserver no longer keeps its connections by id")
    require("writer" in getattr(ConnectionIO, "__dataclass_fields__", {}),
            "ConnectionIO.writer is missing")
    require(_BODY_TOO_LARGE in inspect.getsource(HttpStream),
            "the HTTP layer's body size error changed")
