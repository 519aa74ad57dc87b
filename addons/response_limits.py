"""Let a response whose Content-Length exceeds ``body_size_limit`` reach ``responseheaders``.

``body_size_limit`` bounds what mitmproxy buffers, for requests (which the broker must see
whole to decide) and responses alike. mitmproxy checks a response's Content-Length against it
*before* ``responseheaders`` runs, so a long download was refused although the broker streams
every response (scrubbed or untouched) from that hook on. This drops only that early check for
responses: a response that ends up buffered anyway (no stream set) is still held to the limit
chunk by chunk by mitmproxy's later check, so memory stays bounded either way. Requests are
untouched. Read from mitmproxy 12.3's ``proxy/layers/http/__init__.py``; ``install`` refuses to
run on a version without that method rather than silently doing nothing.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from broker_proxy.addons.mitmproxy_compat import IncompatibleMitmproxy
from mitmproxy.proxy.layers.http import HttpStream

__all__ = ["IncompatibleMitmproxy", "install"]

_MARK = "_broker_proxy_streams_large_responses"


def install() -> None:
    original = getattr(HttpStream, "check_body_size", None)
    if original is None:
        raise IncompatibleMitmproxy("mitmproxy HttpStream.check_body_size is missing: "
                                    "broker-proxy needs mitmproxy 12.3")
    if getattr(original, _MARK, False):
        return

    def check_body_size(self: Any, request: bool) -> Generator[Any, Any, bool]:
        if not request and not self.response_body_buf:
            return False  # the early check: responseheaders decides to stream or buffer
        ok: bool = yield from original(self, request)
        return ok

    setattr(check_body_size, _MARK, True)
    HttpStream.check_body_size = check_body_size  # type: ignore[method-assign]  # the patch
