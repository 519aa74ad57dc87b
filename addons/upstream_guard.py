"""Upstream dial control: only an address a decision allowed, resolved once and checked.

A request decision records the (host, port) it allowed for its client connection; mitmproxy
dials lazily, so ``server_connect`` sees every upstream connection before it exists and refuses
any other. The name is resolved once, each address checked against the policy (no loopback,
private or metadata address unless allowed), and exactly the checked address dialled: no
DNS-rebinding window between check and connect.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from weakref import WeakKeyDictionary

from broker_proxy.addons import server_names
from mitmproxy import connection, http, tcp
from mitmproxy.proxy import server_hooks

from broker_proxy.decision.addresses import address_allowed
from broker_proxy.decision.broker import Broker
from broker_proxy.decision.upstream_failure import dial_refusal
from broker_proxy.policy.resolve_pins import ResolvePins

log = logging.getLogger("broker_proxy.addon")


class UpstreamGuard:
    def __init__(self, broker: Broker, resolve: ResolvePins) -> None:
        self.broker = broker
        self.resolve = resolve
        # (host, port) pairs a decision allowed, per client: server_connect dials nothing else.
        self._allowed_upstreams: WeakKeyDictionary[connection.Client, set[tuple[str, int]]] = (
            WeakKeyDictionary())
        # Name-based addresses of upstream connections we dialled by checked IP; see
        # server_connected for why they are put back.
        self._dialled_names: WeakKeyDictionary[connection.Server, tuple[str, int]] = (
            WeakKeyDictionary())

    def allow(self, flow: http.HTTPFlow) -> None:
        """An allowed request may be dialled: its (host, port) on its client connection."""
        self._allowed_upstreams.setdefault(flow.client_conn, set()).add(
            (flow.request.host.lower(), flow.request.port))

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Resolve once, check the address, and connect to exactly that address."""
        try:
            await self._connect_checked(data)
        except Exception as error:  # fail closed: an unchecked address is never dialled
            log.error("server_connect hook failed: %s", type(error).__name__)
            data.server.error = dial_refusal("connect_failed",
                                             "the broker could not check the upstream address")

    async def _connect_checked(self, data: server_hooks.ServerConnectionHookData) -> None:
        if data.server.address is None:
            return
        host, port = data.server.address
        if (host.lower(), port) not in self._allowed_upstreams.get(data.client, ()):
            # mitmproxy 12.3.1's TCP layer dials the upstream even after tcp_start killed the
            # flow: only an address a request decision allowed may be dialled at all.
            data.server.error = dial_refusal("connect_failed",
                                             "no request to this upstream was allowed")
            return
        try:
            addresses, dial_port, pinned = await self._addresses(host, port)
        except OSError as error:
            data.server.error = dial_refusal("resolve_failed",
                                             f"cannot resolve {host}: {error.strerror or error}")
            return
        allowed_networks = self.broker.policy.policy.allow_addresses
        for address in addresses:
            if address_allowed(address, allowed_networks):
                self._dialled_names[data.server] = (host, port)
                data.server.address = (address, dial_port)
                if data.server.sni is None:
                    data.server.sni = host
                return
        how = "is pinned to" if pinned else "resolves only to"
        data.server.error = dial_refusal(
            "address_not_allowed",
            f"{host} {how} {', '.join(addresses)}, which network.allow_addresses does not "
            "allow (loopback, private, link-local or metadata)")

    async def _addresses(self, host: str, port: int) -> tuple[list[str], int, bool]:
        """The addresses to try, the port to dial (a pin may change both), whether pinned.

        `run --resolve` pins first, then the policy's `network.resolve`, read at each dial so a
        reload changes where new connections go.
        """
        pinned = (self.resolve.lookup(host, port)
                  or ResolvePins(self.broker.policy.policy.resolve).lookup(host, port))
        if pinned is not None:
            return [pinned[0]], pinned[1], True
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM)
        return [str(info[4][0]) for info in infos], port, False

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Give the open connection its name back.

        mitmproxy reuses an upstream connection only for requests whose (host, port) equals the
        connection's address. Left as the IP, every request would dial a new connection, and the
        old ones would pile up against mitmproxy's limit of 5 per address (10 s stalls).
        """
        name = self._dialled_names.pop(data.server, None)
        if name is not None:
            server_names.restore_name(data.server, name)

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        # Bytes inside a tunnel that are not HTTP bypass every request hook: cut them.
        flow.kill()
