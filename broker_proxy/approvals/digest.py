"""What a person approves: a digest of the request's shape, and a summary safe to show.

The approval binds to method, authority, path, query and body. Any change to one of them is
another request and is held again, so an agent cannot swap the body once a person said yes.
Headers are not part of the shape: clients add and reorder them freely (dates, ids), and the
placeholders a header may carry are checked against the policy on every request anyway.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from broker_proxy.decision.outbound import OutboundRequest


@dataclass(frozen=True, slots=True)
class RequestShape:
    """Everything a person is shown about a held request: no header, no query or body text."""

    method: str
    scheme: str
    host: str
    port: int
    path: str
    query_sha256: str
    query_size: int
    body_sha256: str
    body_size: int
    digest: str  # binds an approval to this exact request

    def to_public_dict(self) -> dict[str, object]:
        return {"method": self.method, "scheme": self.scheme, "host": self.host,
                "port": self.port, "path": self.path, "query_sha256": self.query_sha256,
                "query_size": self.query_size, "body_sha256": self.body_sha256,
                "body_size": self.body_size, "digest": self.digest}


def request_shape(request: OutboundRequest) -> RequestShape:
    query = request.query.encode("utf-8", "surrogateescape")
    query_sha = hashlib.sha256(query).hexdigest()
    body_sha = hashlib.sha256(request.body).hexdigest()
    # Length-prefixed parts: no two different requests can join into the same string.
    parts = (request.method, request.scheme, request.host.lower(), str(request.port),
             request.path, query_sha, body_sha)
    joined = b"".join(len(p.encode("utf-8", "surrogateescape")).to_bytes(4, "big")
                      + p.encode("utf-8", "surrogateescape") for p in parts)
    return RequestShape(method=request.method, scheme=request.scheme, host=request.host,
                        port=request.port, path=request.path, query_sha256=query_sha,
                        query_size=len(query), body_sha256=body_sha,
                        body_size=len(request.body),
                        digest=hashlib.sha256(b"broker-proxy request v1\0" + joined).hexdigest())
