"""What a person approves: a digest of the request's shape and of the secrets it would carry.

The approval binds to method, authority, path, query, body, the headers that matter and the
exact set of secrets with where each one sits (`carries`: `payments@header:authorization`).
Any change to one of them is another request and is held again: an agent cannot swap the body
once a person said yes, nor have a standing "same request N times" approval carry a secret
that was not shown (the same request with another gated secret in a header is held again).

Headers that matter are the ones that carry a placeholder (name and value) and the ones that
change how the body is read (Content-Type, Content-Encoding). Other headers are not bound:
clients add and reorder them freely (dates, request ids, retry counters), and nothing in them
is swapped for a secret.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from broker_proxy.request.outbound import OutboundRequest

BOUND_HEADERS = frozenset({"content-type", "content-encoding"})


class FoundPlaceholder(Protocol):
    """One placeholder in a text (decision/placeholders.PlaceholderHit)."""

    @property
    def start(self) -> int: ...

    @property
    def end(self) -> int: ...

    @property
    def secret(self) -> str | None: ...


class PlaceholderFinder(Protocol):
    """What a hold asks of the policy's placeholder scanner (decision/placeholders.py): the
    approvals sit below the decision, which hands its scanner in."""

    def might_contain(self, text: str) -> bool: ...

    def find(self, text: str) -> Sequence[FoundPlaceholder]: ...


@dataclass(frozen=True, slots=True)
class RequestShape:
    """The bound facts of a held request; the preview (preview.py) is what a person reads."""

    method: str
    scheme: str
    host: str
    port: int
    path: str
    query_sha256: str
    query_size: int
    body_sha256: str
    body_size: int
    carries: tuple[str, ...]  # "SECRET@PLACE", sorted: the exact secrets and where each sits
    headers_sha256: str  # the headers that matter (see BOUND_HEADERS and placeholders)
    digest: str  # binds an approval to this exact request

    def to_public_dict(self) -> dict[str, object]:
        return {"method": self.method, "scheme": self.scheme, "host": self.host,
                "port": self.port, "path": self.path, "query_sha256": self.query_sha256,
                "query_size": self.query_size, "body_sha256": self.body_sha256,
                "body_size": self.body_size, "carries": list(self.carries),
                "headers_sha256": self.headers_sha256, "digest": self.digest}


def carried(scanner: PlaceholderFinder, request: OutboundRequest,
            hits: Iterable[tuple[str, str | None]],
            templated: Iterable[tuple[str, str]] = ()) -> tuple[str, ...]:
    """Each secret and the place it would be swapped into, e.g. `pay@header:authorization`.

    `hits` is (place, secret) for each placeholder found (decision/request_scan.PlacedHit);
    `templated` is (secret, header) for headers the proxy sets itself from the policy.
    """
    places: set[str] = set()
    in_headers: set[str] = set()
    for name, value in request.headers:
        for found in scanner.find(value):
            if found.secret:
                places.add(f"{found.secret}@header:{name.lower()}")
                in_headers.add(found.secret)
    for place, secret in hits:
        if secret and (place != "header" or secret not in in_headers):
            # Query, body, and placeholders in a header in another spelling (Basic, encoded).
            places.add(f"{secret}@{place}")
    places.update(f"{secret}@template:{header.lower()}" for secret, header in templated)
    return tuple(sorted(places))


def request_shape(request: OutboundRequest, carries: tuple[str, ...] = (),
                  scanner: PlaceholderFinder | None = None) -> RequestShape:
    query = request.query.encode("utf-8", "surrogateescape")
    query_sha = hashlib.sha256(query).hexdigest()
    body_sha = hashlib.sha256(request.body).hexdigest()
    bound = sorted((name.lower(), value) for name, value in request.headers
                   if name.lower() in BOUND_HEADERS
                   or (scanner is not None and scanner.might_contain(value)))
    headers_sha = hashlib.sha256(_joined([part for pair in bound for part in pair])).hexdigest()
    parts = [request.method, request.scheme, request.host.lower(), str(request.port),
             request.path, query_sha, body_sha, headers_sha, *carries]
    return RequestShape(method=request.method, scheme=request.scheme, host=request.host,
                        port=request.port, path=request.path, query_sha256=query_sha,
                        query_size=len(query), body_sha256=body_sha,
                        body_size=len(request.body), carries=carries,
                        headers_sha256=headers_sha,
                        digest=hashlib.sha256(b"broker-proxy request v2\0"
                                              + _joined(parts)).hexdigest())


def _joined(parts: list[str]) -> bytes:
    # Length-prefixed parts: no two different requests can join into the same string.
    return b"".join(len(p.encode("utf-8", "surrogateescape")).to_bytes(4, "big")
                    + p.encode("utf-8", "surrogateescape") for p in parts)
