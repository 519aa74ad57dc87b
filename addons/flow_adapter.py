"""Turning mitmproxy flows into the core's plain values, and verdicts back into flows."""

from __future__ import annotations

import base64
import binascii

from mitmproxy import http

from broker_proxy.policy.destinations import canonical_host
from broker_proxy.request.outbound import Allowed, Denied, OutboundRequest

PROXY_AUTHORIZATION = "Proxy-Authorization"


def token_from_proxy_authorization(value: str | None) -> str | None:
    """The grant token is the password of the proxy URL, sent as Basic credentials.

    None: no credentials were sent (the 407 is then a challenge); "": credentials were sent
    but hold no token (the 407 is a refusal)."""
    if value is None:
        return None
    scheme, _, credentials = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return ""
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ""
    _user, sep, password = decoded.partition(":")
    return password if sep and password else ""


def outbound_request(flow: http.HTTPFlow) -> OutboundRequest:
    request = flow.request
    # As received: the broker decodes it within bounds, and only for an authenticated grant.
    body = request.raw_content or b""
    encoding = request.headers.get("content-encoding") if body else None
    return OutboundRequest(
        method=request.method.upper(),
        scheme=request.scheme,
        host=request.host,
        port=request.port,
        path=request.path.split("?", 1)[0],
        query=request.path.split("?", 1)[1] if "?" in request.path else "",
        headers=tuple(
            (name, value)
            for name, value in request.headers.items(multi=True)
            if name.lower() != "proxy-authorization"
        ),
        body=body,
        body_encoding=encoding if encoding and encoding.strip().lower() != "identity" else None,
        host_header=request.headers.get("host"),
        authority=request.authority or None,
        sni=flow.client_conn.sni,
    )


def connect_request(flow: http.HTTPFlow) -> OutboundRequest:
    return OutboundRequest(
        method="CONNECT",
        scheme="https",
        host=flow.request.host,
        port=flow.request.port,
        path="",
        query="",
        headers=(),
    )


def deny(flow: http.HTTPFlow, denied: Denied) -> None:
    flow.response = http.Response.make(denied.status, denied.body(), denied.headers())


def apply(flow: http.HTTPFlow, allowed: Allowed, request: OutboundRequest) -> None:
    if (host := canonical_host(request.host)) != request.host:
        # One spelling for matching, dialling, SNI and the certificate check: the one the
        # decision was made on ("api.example.com." and "API.example.com" are that host).
        flow.request.host = host
    if allowed.headers is not None:
        flow.request.headers = http.Headers(
            [(_raw(name), _raw(value)) for name, value in allowed.headers]
        )
    if allowed.query is not None or allowed.path is not None:
        # Send the path the decision was made on (canonical form), never the agent's spelling.
        path = allowed.path if allowed.path is not None else request.path
        query = allowed.query if allowed.query is not None else request.query
        flow.request.path = path + ("?" + query if query else "")
    if allowed.body is not None:
        # `content` re-applies any Content-Encoding and fixes Content-Length.
        flow.request.content = allowed.body


def _raw(text: str) -> bytes:
    # mitmproxy decodes header bytes as UTF-8 with surrogateescape; reverse it exactly.
    return text.encode("utf-8", "surrogateescape")
