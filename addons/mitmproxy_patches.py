"""Every patch of mitmproxy's internals the broker relies on, installed before the proxy starts.

Each lives in its own module with the reason it exists, and each refuses to start (with one
clear line) on a mitmproxy that lacks what it patches, rather than silently doing nothing.
"""

from __future__ import annotations

from broker_proxy.addons import (
    header_folding,
    informational_responses,
    malformed_requests,
    request_departure,
    response_limits,
    socket_reads,
    upstream_error_pages,
    websocket_controls,
)


def install() -> None:
    response_limits.install()  # long downloads reach responseheaders, which streams them
    upstream_error_pages.install()  # no upstream bytes in the error pages mitmproxy writes
    malformed_requests.install()  # a request head mitmproxy cannot parse gets our JSON 400
    request_departure.install()  # whether a request left decides whether its use is spent
    informational_responses.install()  # a 1xx never answers a request, nor the next one
    websocket_controls.install()  # close reasons and ping/pong payloads are scrubbed
    header_folding.install()  # a folded header (obs-fold) is refused, never forwarded
    socket_reads.install()  # a download is handed on in pieces of what arrived, up to 256 KiB
