"""One request, one answer: an HTTP/1 upstream's 1xx is never taken as the final response.

mitmproxy 12.3's ``Http1Client`` reads a ``103 Early Hints`` (or any 1xx but 101) as the
complete response: it has no body, so the exchange is marked done and the connection goes back
to the pool with the real final response still unread. That answer, possibly quoting a secret,
then became the answer to the next request on the connection, one whose flow injected nothing
(docs/ARCHITECTURE.md, invariant 8). mitmproxy's HTTP/2 client already swallows informational
responses; this does the same on HTTP/1: each complete 1xx head (but 101, which switches
protocols) is dropped from the buffer and reading goes on to the final response. Nothing of a
1xx reaches any hook or the client. ``install`` refuses to start on a mitmproxy whose HTTP/1
client looks different.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from broker_proxy.addons.mitmproxy_compat import IncompatibleMitmproxy
from h11._receivebuffer import ReceiveBuffer
from mitmproxy.proxy import events
from mitmproxy.proxy.layers.http import _http1

_MARK = "_broker_proxy_drops_informational"



def _starts_informational(data: bytearray) -> bool:
    """Whether ``data`` starts with the status line of a 1xx other than 101."""
    space = data.find(b" ", 0, 16)
    code = bytes(data[space + 1:space + 4]) if space > 0 else b""
    return len(code) == 3 and code.isdigit() and code[:1] == b"1" and code != b"101"


def drop_informational_heads(buf: ReceiveBuffer) -> None:
    """Take the complete 1xx heads off the start of ``buf``; the final head stays unread.

    Looks at the status line first (``ReceiveBuffer._data``, checked at install), so the
    common answer costs a few byte comparisons.
    """
    while _starts_informational(buf._data):
        if buf.maybe_extract_lines() is None:
            return  # the 1xx head is not complete yet


def install() -> None:
    read_headers = getattr(_http1.Http1Client, "read_headers", None)
    if (read_headers is None or not hasattr(ReceiveBuffer, "maybe_extract_lines")
            or not isinstance(getattr(ReceiveBuffer(), "_data", None), bytearray)
            or "buf" not in getattr(_http1.Http1Connection, "__annotations__", {})):
        raise IncompatibleMitmproxy("mitmproxy's Http1Client.read_headers is missing: "
                                    "broker-proxy needs mitmproxy 12.3")
    if getattr(read_headers, _MARK, False):
        return

    def read_headers_after_1xx(self: Any, event: Any) -> Generator[Any, Any, None]:
        if isinstance(event, events.DataReceived) and self.request:
            drop_informational_heads(self.buf)
            if not self.buf or _starts_informational(self.buf._data):
                return  # only 1xx so far: wait for the final response
        yield from read_headers(self, event)

    setattr(read_headers_after_1xx, _MARK, True)
    _http1.Http1Client.read_headers = read_headers_after_1xx  # type: ignore[method-assign]
