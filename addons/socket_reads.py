"""Read what a connection's socket already holds, up to 256 KiB, not 64 KiB at a time.

mitmproxy's connection loop asks each TCP connection's ``StreamReader`` for at most 65,535
bytes per read, while asyncio receives up to 256 KiB per ``recv``: a download reached the HTTP
layer in 64 KiB pieces, and every piece pays the same fixed path (TLS, the HTTP layers, one
call of the scrubbing callable with its partial-match check at the piece's end, the chunked
framing, one write to the client). Reading up to 256 KiB hands on in one piece what arrived
together, so that path runs about four times less often on a long download (measured in
``docs/benchmarks.md``, "Scrubbed downloads").

``StreamReader.read(n)`` never waits for ``n`` bytes: it returns whatever is buffered as soon
as anything is. So a server-sent event or a WebSocket message still leaves the moment it
arrives, and memory stays bounded by the reader's own limit (asyncio stops reading the socket
past it) plus one read. Only the size of a read changes; nothing about what is read.

The patch wraps ``ConnectionHandler.handle_connection`` (mitmproxy 12.3's
``proxy/server.py``): before the loop starts, a plain ``asyncio.StreamReader`` becomes a
``_WideReader``, the same object with a wider ``read``. UDP and QUIC readers are not
``StreamReader`` and stay as they are. ``install`` refuses to run on a mitmproxy whose loop
does not read from that reader.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from broker_proxy.addons.mitmproxy_compat import require
from mitmproxy.proxy.server import ConnectionHandler, ConnectionIO

__all__ = ["READ_SIZE", "install"]

# asyncio's selector transport receives at most this much per recv (``max_size``).
READ_SIZE = 256 * 1024
_MARK = "_broker_proxy_reads_wide"


class _WideReader(asyncio.StreamReader):
    """A ``StreamReader`` whose bounded reads take up to ``READ_SIZE`` of what is buffered."""

    async def read(self, n: int = -1) -> bytes:
        return await super().read(READ_SIZE if 0 < n < READ_SIZE else n)


def widen(reader: object) -> None:
    """Make a plain ``StreamReader`` read wide; anything else (UDP, QUIC) stays as it is."""
    if type(reader) is asyncio.StreamReader:
        # Same layout, one method more: the reader keeps its buffer, transport and waiters.
        reader.__class__ = _WideReader


def install() -> None:
    original: Any = getattr(ConnectionHandler, "handle_connection", None)
    require(inspect.iscoroutinefunction(original),
            "ConnectionHandler.handle_connection is missing")
    if getattr(original, _MARK, False):
        return
    require("reader" in getattr(ConnectionIO, "__dataclass_fields__", {}),
            "ConnectionIO.reader is missing")
    try:
        source = inspect.getsource(original)
    except OSError:  # installed without sources: the checks above are what can be checked
        source = "reader.read("
    require("reader.read(" in source,
            "ConnectionHandler.handle_connection no longer reads from the connection's reader")

    async def handle_connection(self: ConnectionHandler, connection: Any) -> None:
        transport = self.transports.get(connection)
        if transport is not None:
            widen(transport.reader)
        await original(self, connection)

    setattr(handle_connection, _MARK, True)
    ConnectionHandler.handle_connection = handle_connection  # type: ignore[method-assign]
