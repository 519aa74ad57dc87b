"""A request mitmproxy cannot parse is answered with the broker's JSON, never its HTML page.

mitmproxy 12.3's HTTP/1 server layer answers a request head it cannot parse (a 70 KB CONNECT
line, ``Content-Length: abc``, a bad request line) with ``make_error_response(400, str(error))``
before any hook runs: an HTML page from ``Server: mitmproxy`` that quotes the input back (a
1 MB line, a 1 MB page). The contract is the broker's JSON error body. This replaces that
function in the HTTP/1 layer with one that writes ``{"error": "malformed_request", ...}`` with
a fixed description chosen by the status, never the message: nothing the client sent is echoed.
The answers to upstream failures have their own page (upstream_error_pages.py).
"""

from __future__ import annotations

import inspect

from broker_proxy.addons.mitmproxy_compat import require
from mitmproxy import http
from mitmproxy.net.http import http1
from mitmproxy.proxy.layers.http import _http1

from broker_proxy.request.outbound import Denied

_MARK = "_broker_proxy_json"

# status -> (code, fixed description); the status mitmproxy chose is kept.
_ANSWERS: dict[int, tuple[str, str]] = {
    400: ("malformed_request", "the request is not valid HTTP"),
    413: ("request_too_large", "the request body is larger than the proxy buffers"),
    414: ("malformed_request", "the request line is too long"),
    431: ("headers_too_large", "the request headers are too large"),
    502: ("upstream_error", "the upstream failed"),
}


def json_error_response(status_code: int, message: str = "") -> bytes:
    """mitmproxy's `make_error_response`, as the broker's JSON; `message` is never used."""
    del message  # it quotes the client's (or upstream's) bytes
    code, description = _ANSWERS.get(
        status_code, ("malformed_request" if 400 <= status_code < 500 else "proxy_error",
                      "the proxy could not handle this request"))
    denied = Denied(status_code, code, description)
    response = http.Response.make(status_code, denied.body(),
                                  {**denied.headers(), "Connection": "close"})
    page: bytes = http1.assemble_response(response)
    return page


def install() -> None:
    current = getattr(_http1, "make_error_response", None)
    if getattr(current, _MARK, False):
        return
    require(current is not None and "make_error_response(400" in inspect.getsource(
        _http1.Http1Server), "the HTTP/1 layer no longer answers a bad request head with "
        "make_error_response")
    setattr(json_error_response, _MARK, True)
    _http1.make_error_response = json_error_response
