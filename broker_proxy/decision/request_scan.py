"""Where placeholders sit in a request, and the request with the secrets swapped in.

Places are named as the policy's ``inject`` list names them (header, query, body) plus places a
secret may never go (path, cookie, referer, host). Query components are also searched
percent-decoded, so ``%7B%7Bsecret:x%7D%7D`` cannot slip past the checks as an unswapped
placeholder that some upstream would decode.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import NamedTuple
from urllib.parse import quote, unquote

from broker_proxy.decision.basic_credentials import swap_basic
from broker_proxy.decision.encoded_placeholders import hidden_header_hits
from broker_proxy.decision.placeholders import PlaceholderScanner
from broker_proxy.request.outbound import OutboundRequest

# Headers a placeholder may never be swapped into: they route the request, identify the agent's
# browser state, or leak the URL onward.
NEVER_INJECT_HEADERS = frozenset(
    {"host", "cookie", "referer", "origin", "forwarded", "via", "x-forwarded-for",
     "x-forwarded-host", "proxy-authorization", "proxy-connection"}
)


class PlacedHit(NamedTuple):
    place: str  # header, query, body, path, or the name of a forbidden header
    secret: str | None


def find_placeholders(scanner: PlaceholderScanner, request: OutboundRequest) -> list[PlacedHit]:
    hits: list[PlacedHit] = []
    for name, value in request.headers:
        lowered = name.lower()
        if in_value := scanner.find(value):
            place = lowered if lowered in NEVER_INJECT_HEADERS else "header"
            hits.extend(PlacedHit(place, hit.secret) for hit in in_value)
        if in_name := scanner.find(name):
            hits.extend(PlacedHit(lowered, hit.secret) for hit in in_name)
        if hidden := hidden_header_hits(scanner, name, value, plain=len(in_value)):
            hits.extend(PlacedHit(*hit) for hit in hidden)
    if request.query:
        for component in _query_parts(request.query):
            if found := scanner.find(unquote(component)):
                hits.extend(PlacedHit("query", hit.secret) for hit in found)
    for path_form in {request.path, unquote(request.path)}:
        if found := scanner.find(path_form):
            hits.extend(PlacedHit("path", hit.secret) for hit in found)
    if request.body:
        text = request.body.decode("latin-1")  # byte-for-byte, whatever the charset
        if found := scanner.find(text):
            hits.extend(PlacedHit("body", hit.secret) for hit in found)
    return hits


def _query_parts(query: str) -> Iterator[str]:
    for pair in query.split("&"):
        yield from pair.split("=", 1)


class RequestRewriter:
    """Swaps placeholders for values, in one pass per field, only where hits were checked."""

    def __init__(self, scanner: PlaceholderScanner, values: Mapping[str, str],
                 basic_usernames: Mapping[str, str] | None = None) -> None:
        self._scanner = scanner
        self._values = values
        # secret -> Basic user-id, for secrets whose "basic" hits were checked.
        self._basic_usernames = basic_usernames or {}

    def _swap(self, text: str) -> str:
        return self._scanner.substitute(text, self._values.__getitem__)

    def headers(self, headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...] | None:
        rewritten = tuple((name, self._swap_header(name, value)) for name, value in headers)
        return rewritten if rewritten != headers else None

    def _swap_header(self, name: str, value: str) -> str:
        if self._basic_usernames:
            swapped = swap_basic(self._scanner, name, value, self._values,
                                 self._basic_usernames)
            if swapped is not None:
                return swapped
        if not self._scanner.might_contain(value):
            return value
        return self._swap(value)

    def query(self, query: str) -> str | None:
        if not query or not self._scanner.might_contain(unquote(query)):
            return None
        pairs = []
        for pair in query.split("&"):
            parts = pair.split("=", 1)
            pairs.append("=".join(self._swap_component(part) for part in parts))
        rewritten = "&".join(pairs)
        return rewritten if rewritten != query else None

    def _swap_component(self, component: str) -> str:
        decoded = unquote(component)
        if not self._scanner.find(decoded):
            return component  # untouched components keep the agent's exact encoding
        return quote(self._swap(decoded), safe="")

    def body(self, body: bytes) -> bytes | None:
        if not body:
            return None
        text = body.decode("latin-1")
        if not self._scanner.find(text):
            return None
        utf8_values = {n: v.encode().decode("latin-1") for n, v in self._values.items()}
        return self._scanner.substitute(text, utf8_values.__getitem__).encode("latin-1")
