"""Scrub what a WebSocket upstream says outside messages: close reasons and ping/pong payloads.

mitmproxy 12.3's ``WebsocketLayer`` relays Ping, Pong and CloseConnection events from one side
to the other itself (logging ping/pong payloads on the way); they never reach
``websocket_message``, so a close reason or a ping payload quoting a secret reached the agent
unscrubbed. This wraps the upstream side's event stream when the layer starts: every control
event from the upstream first goes through the callable the broker put in
``flow.metadata[SCRUB_KEY]`` (bytes in, scrubbed bytes out). A payload that no longer fits its
frame once scrubbed (125 bytes; 123 for a close reason) is cut, and if the callable fails the
payload is emptied: never passed on unscrubbed. ``install`` refuses to start on a mitmproxy whose
WebSocket layer looks different.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from typing import Any

import wsproto.events
from broker_proxy.addons.mitmproxy_compat import IncompatibleMitmproxy
from mitmproxy.proxy.layers import websocket

SCRUB_KEY = "broker_proxy.websocket_controls"
_MARK = "_broker_proxy_scrubs_controls"
MAX_CONTROL_PAYLOAD = 125  # RFC 6455 5.5
MAX_CLOSE_REASON = 123  # the close code takes 2 of the 125

Scrub = Callable[[bytes], bytes]



def _scrubbed(scrub: Scrub, payload: bytes, limit: int) -> bytes:
    try:
        return scrub(payload)[:limit]
    except Exception:  # fail closed: nothing rather than the upstream's bytes
        return b""


def scrub_control(event: wsproto.events.Event, scrub: Scrub) -> wsproto.events.Event:
    """The same control event with its payload or reason scrubbed; other events unchanged."""
    if isinstance(event, wsproto.events.CloseConnection) and event.reason:
        reason = _scrubbed(scrub, event.reason.encode("utf-8", "surrogateescape"),
                           MAX_CLOSE_REASON)
        return wsproto.events.CloseConnection(code=event.code,
                                              reason=reason.decode("utf-8", "ignore"))
    if isinstance(event, wsproto.events.Ping | wsproto.events.Pong) and event.payload:
        return type(event)(payload=_scrubbed(scrub, bytes(event.payload), MAX_CONTROL_PAYLOAD))
    return event


def _scrubbing_events(connection: Any, scrub: Scrub) -> Callable[[], Iterator[Any]]:
    events = connection.events

    def scrubbed_events() -> Iterator[Any]:
        for event in events():
            yield scrub_control(event, scrub)

    return scrubbed_events


def install() -> None:
    layer = websocket.WebsocketLayer
    start = getattr(layer, "start", None)
    if (start is None or getattr(layer, "_handle_event", None) is not start
            or not hasattr(websocket.WebsocketConnection, "events")):
        raise IncompatibleMitmproxy("mitmproxy's WebsocketLayer.start is not what broker-proxy "
                                    "wraps to scrub close reasons and pings: it needs "
                                    "mitmproxy 12.3")
    if getattr(start, _MARK, False):
        return
    assert start is not None  # checked above, but `or` does not narrow an Any | None
    starts: Callable[[Any, Any], Generator[Any, Any, None]] = start

    def start_scrubbing_controls(self: Any, event: Any) -> Generator[Any, Any, None]:
        yield from starts(self, event)
        scrub = self.flow.metadata.get(SCRUB_KEY)
        if scrub is not None:
            self.server_ws.events = _scrubbing_events(self.server_ws, scrub)

    setattr(start_scrubbing_controls, _MARK, True)
    layer.start = start_scrubbing_controls  # type: ignore[method-assign]  # the patch itself
    layer._handle_event = start_scrubbing_controls
