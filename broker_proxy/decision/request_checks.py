"""Checks that close HTTP tricks an attacker can use to move a secret somewhere it may not go.

Each function looks at one plain ``OutboundRequest`` (or part of it) and says what is wrong, or
returns ``None``. ``Broker.decide`` calls them in order; they never see a secret value, so they
run before any secret is looked up.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

from broker_proxy.request.outbound import OutboundRequest

# Header caps, checked before the placeholder scan and before any secret lookup: a huge header
# costs us CPU for every regex pass and is never needed to call an API.
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADER_FIELD_BYTES = 16 * 1024

# Frameworks (Rails, Laravel, Express method-override, ASP.NET) let these turn a POST into a
# DELETE/PUT after the proxy matched the destination's methods on the request line.
METHOD_OVERRIDE_HEADERS = frozenset(
    {"x-http-method-override", "x-http-method", "x-method-override"}
)
_METHOD_PARAM = re.compile(r"(?<![A-Za-z0-9_])_method(?![A-Za-z0-9_])", re.IGNORECASE)
_CONTROLS_IN_NAME = re.compile("[\x00-\x1f\x7f]")
_CONTROLS_IN_VALUE = re.compile("[\x00-\x08\x0a-\x1f\x7f]")  # HTAB is legal in values


def header_size_problem(headers: tuple[tuple[str, str], ...]) -> str | None:
    total = 0
    for name, value in headers:
        size = len(name) + len(value) + 4  # ": " and CRLF, as on the wire
        if size > MAX_HEADER_FIELD_BYTES:
            return f"a header field is longer than {MAX_HEADER_FIELD_BYTES} bytes"
        total += size
    if total > MAX_HEADER_BYTES:
        return f"the headers are longer than {MAX_HEADER_BYTES} bytes in all"
    return None


def header_controls_problem(headers: tuple[tuple[str, str], ...]) -> str | None:
    """CR, LF, NUL and other controls that an HTTP/1 upstream could read as a new line."""
    # Joined, a control character is in the whole exactly when it is in one of the parts.
    names = "".join(name for name, _ in headers)
    values = "".join(value for _, value in headers)
    if _CONTROLS_IN_NAME.search(names) or _CONTROLS_IN_VALUE.search(values):
        return "control characters in a header name or value"
    return None


def upgrade_problem(headers: tuple[tuple[str, str], ...]) -> str | None:
    """Only WebSocket may switch protocols: after a 101 to anything else (h2c, TLS, a raw
    protocol) the bytes no longer go through a request hook, so nothing could check them."""
    for name, value in headers:
        lowered = name.lower()
        if lowered == "http2-settings":
            return "HTTP/2 cleartext upgrades (h2c) are refused"
        if lowered == "upgrade":
            protocols = [p.strip().lower() for p in value.split(",") if p.strip()]
            if protocols != ["websocket"]:
                return "only WebSocket upgrades are allowed through the broker"
    return None


def method_override_problem(request: OutboundRequest) -> str | None:
    """Any method override refuses a secret-carrying request.

    Refusing every override (rather than only one naming a method the destination lacks) keeps
    the rule independent of which of many spellings an upstream framework honours.
    """
    for name, _value in request.headers:
        if name.lower() in METHOD_OVERRIDE_HEADERS:
            return f"the {name} header cannot travel with a secret"
    for pair in request.query.split("&"):
        if unquote_plus(pair.split("=", 1)[0]).strip().lower() == "_method":
            return "a _method query parameter cannot travel with a secret"
    if request.body:
        text = request.body.decode("latin-1")
        if _METHOD_PARAM.search(text) or _METHOD_PARAM.search(unquote_plus(text)):
            return "a _method body parameter cannot travel with a secret"
    return None
