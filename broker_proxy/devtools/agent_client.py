"""A minimal HTTPS-through-the-proxy client on the standard library.

The demo uses it to play the agent without third-party HTTP libraries; it sends exactly what an
SDK would: CONNECT with the grant token as proxy credentials, then the request in the tunnel.
"""

from __future__ import annotations

import base64
import http.client
import ssl
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class AgentResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def request_through_proxy(
    *,
    proxy: tuple[str, int],
    token: str,
    ca_file: Path,
    method: str,
    host: str,
    port: int,
    path: str,
    headers: dict[str, str],
    body: bytes | None = None,
    agent: str = "agent",
) -> AgentResponse:
    context = ssl.create_default_context(cafile=str(ca_file))
    connection = http.client.HTTPSConnection(proxy[0], proxy[1], context=context, timeout=15)
    credentials = base64.b64encode(f"{agent}:{token}".encode()).decode()
    connection.set_tunnel(host, port, headers={"Proxy-Authorization": f"Basic {credentials}"})
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return AgentResponse(response.status, dict(response.getheaders()), response.read())
    finally:
        connection.close()
