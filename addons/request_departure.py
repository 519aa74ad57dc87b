"""Knowing whether a request left: the mark that decides if its use may be given back.

mitmproxy writes the request to the upstream right after ``HttpStream.make_server_connection``
has a connection for it, with no hook in between. This wraps that step: once a connection was
obtained the flow's record says ``sent`` (from then on its use stays spent, whatever happens),
and a flow whose use was already given back (``returned``: its agent went away, or it was
recorded as not sent) is refused there instead of being dialled, so a use is never both given
back and spent. So is a request whose agent is gone by then: its connection closed, or (HTTP/2)
its stream reset while the request was being decided. mitmproxy queues the reset until the
`request` hook is done and would send the request anyway; nobody would read the answer.
"""

from __future__ import annotations

import inspect
from collections.abc import Generator
from typing import Any

from broker_proxy.addons.flow_record import flow_record
from broker_proxy.addons.mitmproxy_compat import require
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers.http import _http2
from mitmproxy.proxy.layers.http._events import ErrorCode, ResponseProtocolError

_MARK = "_broker_proxy_departure"
RETURNED_MESSAGE = "client_gone: the request's use was given back before it was sent"
GONE_MESSAGE = "client_gone: the agent went away before the request was sent"


def _agent_gone(stream: Any) -> bool:
    """The client connection closed, or the HTTP/2 stream of this request was reset."""
    client = stream.context.client
    if client.timestamp_end is not None:
        return True
    layers = stream.context.layers
    if stream not in layers or layers.index(stream) == 0:
        return False
    parent = layers[layers.index(stream) - 1]  # the HttpLayer, as HttpStream.mode reads it
    server = getattr(parent, "connections", {}).get(client)
    return isinstance(server, _http2.Http2Server) and server.is_closed(stream.stream_id)


def install() -> None:
    original = getattr(http_layers.HttpStream, "make_server_connection", None)
    require(original is not None and callable(getattr(
        http_layers.HttpStream, "handle_protocol_error", None)),
        "HttpStream.make_server_connection is missing")
    require(callable(getattr(_http2.Http2Server, "is_closed", None))
            and "connections" in inspect.getsource(http_layers.HttpLayer.__init__),
            "the HTTP layer no longer keeps its connections, or HTTP/2 streams their state")
    if getattr(original, _MARK, False):
        return

    def make_server_connection(self: Any) -> Generator[Any, Any, bool]:
        record = flow_record(self.flow)
        if record is not None and (record.returned or _agent_gone(self)):
            yield from self.handle_protocol_error(ResponseProtocolError(
                self.stream_id, RETURNED_MESSAGE if record.returned else GONE_MESSAGE,
                ErrorCode.CONNECT_FAILED))
            return False
        ok: bool = yield from original(self)
        if ok and record is not None:
            record.sent = True
        return ok

    setattr(make_server_connection, _MARK, True)
    http_layers.HttpStream.make_server_connection = make_server_connection  # type: ignore[method-assign]
