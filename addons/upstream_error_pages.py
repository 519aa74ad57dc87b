"""The proxy writes its own error pages: no upstream byte in an answer mitmproxy makes for us.

mitmproxy 12.3 answers an upstream failure (a status line or header line it cannot parse, a
connection closed before the head was complete, a TLS failure, a timeout, a refused connection)
with an HTML page quoting the failure's message, and those messages quote what the upstream
sent: ``Bad HTTP response line: b'HTTP/1.1 sk-live-... Nope'``. The page is written by the
client-facing HTTP layer from the ``ResponseProtocolError`` event, after the ``error`` hook ran,
so no addon can change it. This writes that page instead, on HTTP/1 (``Http1Server.send``) and
HTTP/2 (``Http2Server._handle_event``), as the broker's JSON error body with a code and a fixed
description chosen by the kind of error (``ErrorCode``), never by its message. What mitmproxy
does around the page (closing the HTTP/1 connection, ending the HTTP/2 stream, resetting it when
no page can be sent) is left as it is. HTTP/3 is not enabled by the broker.

For an allowed flow, the ``error`` hook of upstream_failures.py chooses a more precise page (the
grant and the kind of failure, still fixed texts); ``HttpStream.handle_protocol_error`` is
wrapped so that the page event it sends carries that choice to the server layers above.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Generator
from typing import Any

from broker_proxy.addons.mitmproxy_compat import IncompatibleMitmproxy
from broker_proxy.addons.upstream_failures import page_of
from mitmproxy import http
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers.http import _http1, _http2
from mitmproxy.proxy.layers.http._events import ErrorCode, ResponseProtocolError

from broker_proxy.request.outbound import Denied

_MARK = "_broker_proxy_error_pages"
UPSTREAM_ERROR = "upstream_error"

# (code, description) by mitmproxy's kind of error: fixed texts, nothing from the failure.
_PAGES: dict[ErrorCode, tuple[str, str]] = {
    ErrorCode.GENERIC_SERVER_ERROR: (UPSTREAM_ERROR, "the upstream closed the connection or "
                                     "sent an answer that is not valid HTTP"),
    ErrorCode.RESPONSE_VALIDATION_FAILED: (UPSTREAM_ERROR, "the upstream's answer has headers "
                                           "that could smuggle a second answer"),
    ErrorCode.RESPONSE_TOO_LARGE: (UPSTREAM_ERROR, "the upstream's answer is larger than the "
                                   "proxy buffers"),
    ErrorCode.CONNECT_FAILED: (UPSTREAM_ERROR, "the proxy could not connect to the upstream "
                               "(refused, unresolvable, not allowed, TLS failed or timed out)"),
    ErrorCode.GENERIC_CLIENT_ERROR: ("malformed_request", "the request is not valid HTTP"),
    ErrorCode.REQUEST_VALIDATION_FAILED: ("malformed_request", "the request has headers that "
                                          "could smuggle a second request"),
    ErrorCode.DESTINATION_UNKNOWN: ("malformed_request", "the request names no destination"),
    ErrorCode.REQUEST_TOO_LARGE: ("request_too_large", "the request body is larger than the "
                                  "proxy buffers"),
}



class ChosenPage(ResponseProtocolError):
    """A failure whose page the broker chose for its flow (upstream_failures.py): the grant
    and the kind of failure, which mitmproxy's event cannot carry."""

    def __init__(self, event: ResponseProtocolError, page: Denied) -> None:
        super().__init__(event.stream_id, event.message, event.code)
        self.page = page


def _page_for(event: ResponseProtocolError) -> tuple[int, bytes, dict[str, str]] | None:
    if isinstance(event, ChosenPage):
        return event.page.status, event.page.body(), event.page.headers()
    return error_page(event.code)


def error_page(code: ErrorCode) -> tuple[int, bytes, dict[str, str]] | None:
    """Status, JSON body and headers for this kind of error; None when mitmproxy sends none."""
    status = code.http_status_code()
    if status is None:
        return None
    error, description = _PAGES.get(code, (UPSTREAM_ERROR, "the upstream failed"))
    denied = Denied(status, error, description)
    return status, denied.body(), denied.headers()


def _http1_page(status: int, body: bytes, headers: dict[str, str]) -> bytes:
    response = http.Response.make(status, body, {**headers, "Connection": "close"})
    page: bytes = http1.assemble_response(response)
    return page


# One step of a mitmproxy layer's generator: the commands it yields, the replies it is sent.
Step = Generator[Any, Any, None]


def install() -> None:
    """Replace the HTTP/1 and HTTP/2 servers' error pages and hand them the flow's chosen page;
    refuses (IncompatibleMitmproxy) a mitmproxy whose layers are not the ones patched here."""
    send, handle = _server_layers()
    if getattr(send, _MARK, False):
        return
    protocol_error = _protocol_error_path()
    http1_send = _http1_send(send)
    setattr(http1_send, _MARK, True)
    # The patches themselves: mypy refuses assignments to methods, which is what they are.
    _http1.Http1Server.send = http1_send  # type: ignore[method-assign]
    _http2.Http2Server._handle_event = _http2_handle_event(handle)  # type: ignore[method-assign]
    http_layers.HttpStream.handle_protocol_error = (  # type: ignore[method-assign]
        _handle_protocol_error(protocol_error))


def _server_layers() -> tuple[Callable[..., Step], Callable[..., Step]]:
    """mitmproxy's ``Http1Server.send`` and ``Http2Server._handle_event``, as patched here."""
    send = getattr(_http1.Http1Server, "send", None)
    handle = getattr(_http2.Http2Server, "_handle_event", None)
    if (send is None or handle is None or not hasattr(_http2.Http2Connection, "is_open_for_us")
            or not hasattr(ErrorCode, "http_status_code")
            or not hasattr(ConnectionState, "CAN_WRITE")):
        raise IncompatibleMitmproxy("mitmproxy's HTTP/1 and HTTP/2 server layers are not the "
                                    "ones broker-proxy replaces error pages in: it needs "
                                    "mitmproxy 12.3")
    return send, handle


def _protocol_error_path() -> Callable[..., Step]:
    """mitmproxy's ``HttpStream.handle_protocol_error``, which must send the page itself."""
    protocol_error: Callable[..., Step] | None = getattr(
        http_layers.HttpStream, "handle_protocol_error", None)
    if protocol_error is None or "SendHttp(event, self.context.client)" not in inspect.getsource(
            protocol_error):
        raise IncompatibleMitmproxy("mitmproxy's HttpStream.handle_protocol_error is not the one "
                                    "broker-proxy hands its error pages to: it needs mitmproxy "
                                    "12.3")
    return protocol_error


def _http1_send(send: Callable[..., Step]) -> Callable[..., Step]:
    def http1_send(self: Any, event: Any) -> Step:
        if isinstance(event, ResponseProtocolError):
            if not (self.conn.state & ConnectionState.CAN_WRITE):
                return
            page = _page_for(event)
            if not self.response and page is not None:
                yield commands.SendData(self.conn, _http1_page(*page))
            yield commands.CloseConnection(self.conn)
            return
        yield from send(self, event)

    return http1_send


def _http2_handle_event(handle: Callable[..., Step]) -> Callable[..., Step]:
    def http2_handle_event(self: Any, event: Any) -> Step:
        if isinstance(event, ResponseProtocolError) and not self.is_closed(event.stream_id):
            stream = self.h2_conn.streams[event.stream_id]
            page = _page_for(event)
            if (page is not None and self.is_open_for_us(event.stream_id)
                    and not stream.state_machine.headers_sent):
                status, body, headers = page
                self.h2_conn.send_headers(event.stream_id, [
                    (b":status", b"%d" % status),
                    *((name.lower().encode(), value.encode()) for name, value in headers.items()),
                    (b"content-length", b"%d" % len(body)),
                ])
                self.h2_conn.send_data(event.stream_id, body, end_stream=True)
                yield commands.SendData(self.conn, self.h2_conn.data_to_send())
                return
        yield from handle(self, event)

    return http2_handle_event


def _handle_protocol_error(protocol_error: Callable[..., Step]) -> Callable[..., Step]:
    def handle_protocol_error(self: Any, event: Any) -> Step:
        # Run mitmproxy's own error path (error hook, kill check, page, drop), but hand the
        # page the flow's chosen answer: the error hook has run by the time the page is sent.
        steps = protocol_error(self, event)
        reply: Any = None
        while True:
            try:
                command = steps.send(reply)
            except StopIteration:
                return
            if (isinstance(command, http_layers.SendHttp)
                    and isinstance(command.event, ResponseProtocolError)
                    and command.connection is self.context.client
                    and (page := page_of(self.flow)) is not None):
                command = http_layers.SendHttp(ChosenPage(command.event, page), command.connection)
            reply = yield command

    return handle_protocol_error
