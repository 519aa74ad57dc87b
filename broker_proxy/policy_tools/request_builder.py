"""Requests the tools decide on, built the way the proxy's adapter builds them from a flow.

A request inside a CONNECT tunnel reaches ``Broker.decide`` with the TLS name as SNI, the Host
header as sent and no absolute-form authority; ``build_request`` makes exactly that from a URL,
and puts a placeholder where a test (or a replayed record) says it sat.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from broker_proxy.decision.authority import AuthorityError, split_authority
from broker_proxy.policy_tools.harness import amz_date, basic_credentials
from broker_proxy.request.outbound import OutboundRequest

# Where a placeholder can sit in a request. "sigv4": the placeholder is the access key id of an
# AWS SigV4 signature (a `sign: aws-sigv4` secret).
PLACES = ("header", "query", "body", "basic", "sigv4")
_UNSIGNED = "UNSIGNED-PAYLOAD"


class RequestError(ValueError):
    """A URL or placement a request cannot be built from."""


@dataclass(frozen=True, slots=True)
class Placement:
    placeholder: str
    place: str  # one of PLACES
    header: str | None = None  # "header": the header to put it in (default Authorization)
    aws_service: str = "s3"  # "sigv4": the credential scope
    aws_region: str = "us-east-1"


def build_request(method: str, url: str, headers: dict[str, str] | None = None,
                  body: str | bytes = b"", placements: tuple[Placement, ...] = ()
                  ) -> OutboundRequest:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RequestError(f"not an http(s) URL: {url!r}")
    try:
        host, port = split_authority(parts.netloc, parts.scheme)
    except AuthorityError as error:
        raise RequestError(str(error)) from None
    fields = list((headers or {}).items())
    query = parts.query
    data = body.encode("utf-8") if isinstance(body, str) else body
    for placement in placements:
        fields, query, data = _place(placement, fields, query, data)
    if not any(name.lower() == "host" for name, _ in fields):
        fields.insert(0, ("Host", parts.netloc))
    if data and not any(name.lower() == "content-length" for name, _ in fields):
        fields.append(("Content-Length", str(len(data))))
    return OutboundRequest(
        method=method.upper(), scheme=parts.scheme, host=host, port=port,
        path=parts.path or "/", query=query, headers=tuple(fields), body=data,
        host_header=parts.netloc, authority=None,
        sni=host if parts.scheme == "https" else None,
    )


def _place(placement: Placement, fields: list[tuple[str, str]], query: str, data: bytes
           ) -> tuple[list[tuple[str, str]], str, bytes]:
    placeholder = placement.placeholder
    if placement.place == "header":
        name = placement.header or "Authorization"
        value = f"Bearer {placeholder}" if name.lower() == "authorization" else placeholder
        return [*fields, (name, value)], query, data
    if placement.place == "basic":
        return [*fields, ("Authorization", basic_credentials("agent", placeholder))], query, data
    if placement.place == "query":
        pair = "key=" + quote(placeholder, safe="")
        return fields, f"{query}&{pair}" if query else pair, data
    if placement.place == "body":
        if not data:
            data = json.dumps({"key": placeholder}).encode()
            fields = [*fields, ("Content-Type", "application/json")]
            return fields, query, data
        raise RequestError('a request with a body of its own: write "{placeholder}" in it '
                           "where the placeholder goes")
    if placement.place == "sigv4":
        date = amz_date()
        scope = f"{placeholder}/{date[:8]}/{placement.aws_region}/{placement.aws_service}"
        # The agent's own signature is never checked (it was made with a fake key): the
        # proxy signs again with the real one, so any well-formed hex will do.
        authorization = (f"AWS4-HMAC-SHA256 Credential={scope}/aws4_request, "
                         "SignedHeaders=host;x-amz-content-sha256;x-amz-date, "
                         f"Signature={'0' * 64}")
        return [*fields, ("x-amz-date", date), ("x-amz-content-sha256", _UNSIGNED),
                ("Authorization", authorization)], query, data
    raise RequestError(f"unknown place {placement.place!r}: use {', '.join(PLACES)}")
