"""mitmproxy options the broker refuses, because each would undo one of its guarantees.

The broker injects real secrets into requests as they leave. Under ``mitmdump -s`` (and in any
mitmproxy UI) the request as modified is what mitmproxy shows and stores: the dumper prints its
headers from ``flow_detail`` 2 and its body from 3, ``save_stream_file`` and ``hardump`` write
whole flows to disk, ``proxy_debug`` logs the bytes sent upstream, and mitmweb and the console
UI display every flow. Each is refused with an ``OptionsError`` that says why; what remains
(``flow_detail`` 0 or 1, which prints the URL) is shown with the agent's own placeholders, see
``addons/broker.py``.
"""

from __future__ import annotations

from typing import Any

from mitmproxy import ctx
from mitmproxy.exceptions import OptionsError

MAX_FLOW_DETAIL = 1


def unsafe_option(options: Any) -> str | None:
    """Why these options cannot run with the broker, or None when they can."""
    if getattr(options, "ssl_insecure", False):
        return "broker-proxy never sends secrets to unverified upstreams: unset ssl_insecure"
    if getattr(options, "stream_large_bodies", None):
        return "broker-proxy decides on whole requests: unset stream_large_bodies"
    if getattr(options, "flow_detail", 0) > MAX_FLOW_DETAIL:
        return (f"flow_detail above {MAX_FLOW_DETAIL} prints request headers and bodies with "
                f"the real secrets the broker injected: use flow_detail {MAX_FLOW_DETAIL} or 0")
    for name in ("save_stream_file", "hardump"):
        if getattr(options, name, None):
            return (f"{name} writes requests with the real secrets the broker injected to "
                    f"disk: unset {name}")
    if getattr(options, "proxy_debug", False):
        return ("proxy_debug logs the bytes sent upstream, real secrets included: "
                "unset proxy_debug")
    keys = set(options.keys()) if hasattr(options, "keys") else set()
    if "web_port" in keys or "console_layout" in keys:
        return ("mitmweb and the mitmproxy console show every request with the real secrets the "
                "broker injected: run the broker under mitmdump or broker-proxy run")
    return None


class OptionGuard:
    """Refuses, at start-up and on every change, the options above (an ``OptionsError``)."""

    def configure(self, updated: set[str]) -> None:
        if problem := unsafe_option(ctx.options):
            raise OptionsError(problem)
