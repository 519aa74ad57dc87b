"""Refuse an HTTP/1 head with obsolete line folding (obs-fold), on requests and answers alike.

mitmproxy 12.3's HTTP/1 parser (``net/http/http1/read.py`` ``_read_headers``) accepts a header
line that starts with a space or a tab as the continuation of the previous one and keeps the
fold in the value (``value + b"\\r\\n " + continuation``); the value is then forwarded with the
fold in it. An upstream that splits an injected secret across a fold hands it back in two
halves, and no form the scrubber knows matches either half. RFC 9112 section 5.2 lets a proxy
either replace each obs-fold with spaces or refuse the message. Unfolding is not enough here:
the two halves would still reach the agent, one space apart. So the message is refused: an
answer with a folded header is a parse error (502 ``upstream_error``, written by
``upstream_error_pages`` with a fixed text), a request with one is a 400 ``malformed_request``,
and nothing folded is ever forwarded. The error's message is fixed: it quotes no byte of the
head (mitmproxy's own message for a bad line quotes it).

HTTP/2 and HTTP/3 have no folding (h2 refuses CR and LF in a field value).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from broker_proxy.addons.mitmproxy_compat import require
from mitmproxy.net.http.http1 import read

_MARK = "_broker_proxy_refuses_obs_fold"
MESSAGE = "obsolete line folding in a header (RFC 9112 section 5.2)"


def _is_folded(line: bytes) -> bool:
    return bool(line) and line[0] in b" \t"


def install() -> None:
    original: Callable[[Iterable[bytes]], Any] | None = getattr(read, "_read_headers", None)
    require(original is not None and hasattr(read, "read_request_head")
            and hasattr(read, "read_response_head"),
            "mitmproxy.net.http.http1.read._read_headers is missing")
    assert original is not None
    if getattr(original, _MARK, False):
        return
    # The patch must reach both heads: they look the parser up in the module at each call.
    require("_read_headers" in read.read_request_head.__code__.co_names
            and "_read_headers" in read.read_response_head.__code__.co_names,
            "the HTTP/1 head parsers no longer call _read_headers")

    def read_headers(lines: Iterable[bytes]) -> Any:
        lines = list(lines)
        if any(_is_folded(line) for line in lines):
            raise ValueError(MESSAGE)
        return original(lines)

    setattr(read_headers, _MARK, True)
    read._read_headers = read_headers
