"""A real MCP server (the `mcp` SDK's MCPServer, Streamable HTTP) behind local HTTPS, and the
SDK's client pointed at it through the proxy.

The server runs in this process under uvicorn, in a thread, with the tests' PKI; a small ASGI
wrapper records the Authorization header of every request that reached it, so a test can tell
whether the real credential arrived (the tools never echo it).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from broker_proxy.devtools.local_pki import LocalPki

# The mcp SDK (with uvicorn and httpx2) takes about a second of CPU to import: it is imported
# where it is used, so that collecting the suite (once per pytest-xdist worker) does not pay.
if TYPE_CHECKING:
    from mcp.client.session import ClientSession
    from mcp.server.mcpserver import MCPServer

MCP_HOST = "mcp.test.local"


def tracker_server() -> MCPServer:
    """An issue tracker's MCP server: read tools, and a destructive one."""
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("tracker")

    @server.tool()
    def list_issues() -> str:
        """The open issues."""
        return "#1 crash on start, #2 typo"

    @server.tool()
    def get_issue(number: int) -> str:
        """One issue."""
        return f"issue #{number}: crash on start"

    @server.tool()
    def delete_repository(name: str) -> str:
        """Delete a repository for good."""
        return f"deleted {name}"

    return server


class McpUpstream:
    """uvicorn serving one MCPServer app over HTTPS on a free port, in a thread."""

    def __init__(self, pki: LocalPki, *, json_response: bool) -> None:
        import uvicorn
        from mcp.server.transport_security import TransportSecuritySettings

        self.authorizations: list[str] = []
        self.bodies: list[bytes] = []  # every request body chunk that reached the server
        app = tracker_server().streamable_http_app(
            json_response=json_response,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))

        async def recording(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                headers = dict(scope["headers"])
                self.authorizations.append(headers.get(b"authorization", b"").decode())


            async def receiving() -> Any:
                message = await receive()
                if message.get("type") == "http.request":
                    self.bodies.append(message.get("body", b""))
                return message

            await app(scope, receiving, send)

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(recording, log_level="warning", lifespan="on",
                                ssl_certfile=str(pki.cert_path), ssl_keyfile=str(pki.key_path))
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._sock]}, daemon=True)

    def start(self) -> McpUpstream:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the MCP upstream did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()

    def clear(self) -> None:
        self.authorizations.clear()
        self.bodies.clear()

    def received(self, text: str) -> bool:
        return any(text.encode() in body for body in self.bodies)


@asynccontextmanager
async def mcp_session(url: str, proxy_url: str, ca_path: str,
                      headers: dict[str, str]) -> AsyncIterator[ClientSession]:
    """An initialized SDK client session to ``url`` through the proxy (HTTPS_PROXY's effect)."""
    import httpx2
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    context = ssl.create_default_context(cafile=ca_path)
    async with httpx2.AsyncClient(proxy=proxy_url, verify=context, headers=headers,
                                  timeout=20) as http, \
            streamable_http_client(url, http_client=http) as streams, \
            ClientSession(streams[0], streams[1]) as session:
        await session.initialize()
        yield session


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 30))
