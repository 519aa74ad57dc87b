"""Checks that close HTTP tricks an attacker can use to move a secret somewhere it may not go.

Each function looks at one plain ``OutboundRequest`` (or part of it) and says what is wrong, or
returns ``None``. ``Broker.decide`` calls them in order; they never see a secret value, so they
run before any secret is looked up.
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import unquote_plus

from broker_proxy.decision.outbound import OutboundRequest

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

# RFC 3986 section 2.3: escapes of these characters are equivalent to the characters, so
# decoding them gives the one spelling both we and every upstream agree on.
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
# Characters that some upstream reads as a separator or decodes again: "%2f"/"%5c" as "/",
# "\\" as "/" (IIS, some proxies), "%25" as the start of a second round of decoding, ";" as a
# path parameter that Tomcat/Jetty drop ("/v1/..;/admin" is "/admin" there), "%00" as an end.
_AMBIGUOUS_ESCAPES = frozenset({"2F", "5C", "25", "00", "3B"})


class AmbiguousPath(ValueError):
    """A path that some upstream would read differently from how the policy matched it."""


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


def canonical_path(path: str) -> str:
    """The one spelling of ``path`` that the policy is matched on and that is sent upstream.

    Agents call the same few endpoints, so short paths are remembered (at most 4,096 of up to
    256 characters: 1 MiB however many distinct paths an agent sends).
    """
    if len(path) <= _CACHED_PATH_LENGTH:
        return _cached_canonical_path(path)
    return _canonical_path(path)


_CACHED_PATH_LENGTH = 256


@lru_cache(maxsize=4096)
def _cached_canonical_path(path: str) -> str:
    return _canonical_path(path)


def _canonical_path(path: str) -> str:
    """`canonical_path` without the cache.

    Escapes of unreserved characters are decoded ("/v%31" is "/v1") and other escapes are put in
    upper case; anything an upstream could resolve to another path (dot segments, empty
    segments, encoded or literal backslashes and slashes, double encoding, ``;`` parameters,
    NUL or control characters) is refused rather than guessed.
    """
    if not path.startswith("/"):
        raise AmbiguousPath("the path must start with /")
    out: list[str] = []
    index = 0
    while index < len(path):
        char = path[index]
        if char == "%":
            escape = path[index + 1 : index + 3]
            if len(escape) != 2 or not set(escape) <= _HEX:
                raise AmbiguousPath("a malformed percent-escape in the path")
            escape = escape.upper()
            if escape in _AMBIGUOUS_ESCAPES:
                raise AmbiguousPath(f"%{escape} in the path")
            decoded = chr(int(escape, 16))
            out.append(decoded if decoded in _UNRESERVED else "%" + escape)
            index += 3
            continue
        # Raw non-ASCII is refused too: some servers fold Unicode look-alikes ("\uff0e") to ASCII.
        if char in "\\;" or not 0x21 <= ord(char) <= 0x7E:
            raise AmbiguousPath(f"{char!r} in the path")
        out.append(char)
        index += 1
    canonical = "".join(out)
    segments = canonical.split("/")[1:]
    for position, segment in enumerate(segments):
        if segment in (".", ".."):
            raise AmbiguousPath("a dot segment in the path")
        if segment == "" and position != len(segments) - 1:
            raise AmbiguousPath("an empty segment (//) in the path")
    return canonical
