"""The mitmproxy adapter: flows in, core decisions out.

Every hook that decides catches its own errors and denies: mitmproxy's addon manager logs an
exception from a hook and lets the flow continue, which would fail open.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from weakref import WeakKeyDictionary

from mitmproxy import connection, ctx, http, tcp
from mitmproxy.exceptions import OptionsError
from mitmproxy.proxy import server_hooks

from addons import flow_adapter
from broker_proxy import outbound as codes
from broker_proxy.addresses import address_allowed
from broker_proxy.broker import Broker
from broker_proxy.outbound import Denied
from broker_proxy.redaction import Redactor

log = logging.getLogger("broker_proxy.addon")

METADATA_KEY = "broker_proxy"


class BrokerAddon:
    def __init__(self, broker: Broker, resolve: dict[str, str] | None = None) -> None:
        self.broker = broker
        self.resolve = dict(resolve or {})
        # Credentials seen on CONNECT, tied to the client connection like mitmproxy's proxyauth.
        self._tunnel_tokens: WeakKeyDictionary[connection.Client, str] = WeakKeyDictionary()

    def configure(self, updated: set[str]) -> None:
        # Options of mitmproxy that would undo the broker's guarantees.
        if getattr(ctx.options, "ssl_insecure", False):
            raise OptionsError("broker-proxy never sends secrets to unverified upstreams: "
                               "unset ssl_insecure")
        if getattr(ctx.options, "stream_large_bodies", None):
            raise OptionsError("broker-proxy decides on whole requests: unset "
                               "stream_large_bodies")

    def http_connect(self, flow: http.HTTPFlow) -> None:
        token = flow_adapter.token_from_proxy_authorization(
            flow.request.headers.get(flow_adapter.PROXY_AUTHORIZATION))
        flow.request.headers.pop(flow_adapter.PROXY_AUTHORIZATION, None)
        denied = self.broker.admit_tunnel(token, flow_adapter.connect_request(flow))
        if denied is not None:
            flow_adapter.deny(flow, denied)
            return
        assert token is not None
        self._tunnel_tokens[flow.client_conn] = token

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        if flow.request.stream:
            # A streamed body reaches the upstream before `request` runs: no decision possible.
            flow_adapter.deny(flow, Denied(403, codes.STREAMING_NOT_SUPPORTED,
                                           "request bodies are not streamed through the broker"))

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        try:
            token = self._tunnel_tokens.get(flow.client_conn)
            if token is None:  # plain-HTTP proxy request: credentials ride on each request
                token = flow_adapter.token_from_proxy_authorization(
                    flow.request.headers.get(flow_adapter.PROXY_AUTHORIZATION))
            # Never forwarded, whatever the decision, also when sent inside a tunnel.
            flow.request.headers.pop(flow_adapter.PROXY_AUTHORIZATION, None)
            outbound = flow_adapter.outbound_request(flow)
            verdict = self.broker.decide(token, outbound)
            if isinstance(verdict, Denied):
                flow_adapter.deny(flow, verdict)
                return
            flow_adapter.apply(flow, verdict, outbound)
            if verdict.injected:
                flow.metadata[METADATA_KEY] = (verdict, outbound, time.monotonic())
        except Exception as error:  # fail closed
            log.error("request hook failed: %s", type(error).__name__)
            flow_adapter.deny(flow, Denied(503, codes.INTERNAL_ERROR,
                                           "the broker could not decide; nothing was sent"))

    def response(self, flow: http.HTTPFlow) -> None:
        carried = flow.metadata.get(METADATA_KEY)
        if carried is None or flow.response is None:
            return
        verdict, outbound, started = carried
        try:
            redactions = self._scrub(flow.response, Redactor(verdict.scrub))
        except Exception as error:  # withhold rather than pass on unscrubbed
            log.error("response scrub failed: %s", type(error).__name__)
            flow.response = http.Response.make(
                502, Denied(502, "response_withheld", "the answer could not be scrubbed",
                            verdict.grant_id).body(), {"Content-Type": "application/json"})
            redactions = {}
        self.broker.record_response(verdict, outbound, flow.response.status_code,
                                    (time.monotonic() - started) * 1000, redactions)

    def error(self, flow: http.HTTPFlow) -> None:
        carried = flow.metadata.get(METADATA_KEY)
        if carried is not None:
            verdict, outbound, started = carried
            self.broker.record_response(verdict, outbound, None,
                                        (time.monotonic() - started) * 1000, {})

    @staticmethod
    def _scrub(response: http.Response, redactor: Redactor) -> dict[str, int]:
        counts: dict[str, int] = {}

        def add(found: dict[str, int]) -> None:
            for name, count in found.items():
                counts[name] = counts.get(name, 0) + count

        reason, found = redactor.scrub(response.data.reason)
        response.data.reason = reason
        add(found)
        fields = []
        for name, value in response.headers.fields:
            value, found = redactor.scrub(value)
            add(found)
            fields.append((name, value))
        response.headers = http.Headers(fields)
        # Raises ValueError on a body that cannot be decoded: the caller withholds it.
        body = response.get_content(strict=True)
        if body:
            scrubbed, found = redactor.scrub(body)
            if found:
                response.content = scrubbed
                add(found)
        return counts

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Resolve once, check the address, and connect to exactly that address.

        Connecting to the checked address closes the DNS-rebinding window between check and
        connect.
        """
        if data.server.address is None:
            return
        host, port = data.server.address
        try:
            addresses = await self._addresses(host, port)
        except OSError as error:
            data.server.error = f"cannot resolve {host}: {error.strerror or error}"
            return
        allowed_networks = self.broker.policy.policy.allow_addresses
        for address in addresses:
            if address_allowed(address, allowed_networks):
                data.server.address = (address, port)
                if data.server.sni is None:
                    data.server.sni = host
                return
        data.server.error = (f"{host} resolves only to addresses the policy does not allow "
                             "(loopback, private, link-local or metadata)")

    async def _addresses(self, host: str, port: int) -> list[str]:
        if host in self.resolve:
            return [self.resolve[host]]
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM)
        return [str(info[4][0]) for info in infos]

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        # Bytes inside a tunnel that are not HTTP bypass every request hook: cut them.
        flow.kill()


