"""Tunnel authentication: the grant token of a CONNECT, kept for the requests inside the tunnel.

Like mitmproxy's proxyauth, credentials seen on CONNECT are tied to the client connection; the
requests inside carry none. ``Proxy-Authorization`` is removed here and never forwarded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from concurrent.futures import Executor
from typing import Any
from weakref import WeakKeyDictionary

from broker_proxy.addons import flow_adapter
from mitmproxy import connection, http

from broker_proxy.decision.broker import Broker
from broker_proxy.decision.request_checks import header_size_problem
from broker_proxy.request import codes
from broker_proxy.request.outbound import Denied, OutboundRequest

log = logging.getLogger("broker_proxy.addon")


class TunnelAuth:
    def __init__(self, broker: Broker, decisions: Executor) -> None:
        self.broker = broker
        self._decisions = decisions
        self._tunnel_tokens: WeakKeyDictionary[connection.Client, str] = WeakKeyDictionary()

    def token_for(self, flow: http.HTTPFlow) -> str | None:
        """The tunnel's token, else the request's own (a plain-HTTP proxy request)."""
        token = self._tunnel_tokens.get(flow.client_conn)
        if token is None:
            token = flow_adapter.token_from_proxy_authorization(
                flow.request.headers.get(flow_adapter.PROXY_AUTHORIZATION))
        return token

    def http_connect(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        # The same caps as any request's head, before anything else reads it.
        if problem := header_size_problem(tuple(flow.request.headers.items(multi=True))):
            flow_adapter.deny(flow, Denied(431, codes.HEADERS_TOO_LARGE, problem))
            return None
        token = flow_adapter.token_from_proxy_authorization(
            flow.request.headers.get(flow_adapter.PROXY_AUTHORIZATION))
        flow.request.headers.pop(flow_adapter.PROXY_AUTHORIZATION, None)
        # A raise here or in the admission off the loop: no tunnel, a 503 (fail_closed.py).
        connect = flow_adapter.connect_request(flow)
        if token and self.broker.may_block():  # a store lookup over the network: off the loop
            return self._admit_off_loop(flow, token, connect)
        self._admitted(flow, token, self.broker.admit_tunnel(token, connect))
        return None

    async def _admit_off_loop(self, flow: http.HTTPFlow, token: str,
                              connect: OutboundRequest) -> None:
        denied = await asyncio.get_running_loop().run_in_executor(
            self._decisions, self.broker.admit_tunnel, token, connect)
        self._admitted(flow, token, denied)

    def _admitted(self, flow: http.HTTPFlow, token: str | None, denied: Denied | None) -> None:
        if denied is not None:
            flow_adapter.deny(flow, denied)
            return
        assert token is not None
        self._tunnel_tokens[flow.client_conn] = token
