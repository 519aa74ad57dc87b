"""The mitmproxy adapter: flows in, core decisions out.

Every hook that decides catches its own errors and denies: mitmproxy's addon manager logs an
exception from a hook and lets the flow continue, which would fail open.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from weakref import WeakKeyDictionary

from mitmproxy import connection, ctx, http, tcp, tls
from mitmproxy.exceptions import OptionsError
from mitmproxy.proxy import server_hooks

from addons import flow_adapter, held_flow, response_scrubbing, server_names
from addons.client_certs import ClientCerts, Upstream
from addons.option_guards import unsafe_option
from broker_proxy import outbound as codes
from broker_proxy.addresses import address_allowed
from broker_proxy.approvals.verdict import Held
from broker_proxy.broker import Broker, DecisionMustWait
from broker_proxy.durability_waiter import DurabilityWaiter
from broker_proxy.outbound import Allowed, Denied, OutboundRequest, Verdict
from broker_proxy.request_checks import header_size_problem, upgrade_problem
from broker_proxy.resolve_pins import ResolvePins

log = logging.getLogger("broker_proxy.addon")

METADATA_KEY = "broker_proxy"
AGENT_VIEW_KEY = "broker_proxy.agent_view"  # the request before injection (mitmdump only)
DECISION_THREADS = 4  # decisions in flight at once when they may block (see Broker.may_block)


class BrokerAddon:
    def __init__(self, broker: Broker, resolve: ResolvePins | None = None, *,
                 keep_agent_view: bool = False) -> None:
        self.broker = broker
        self.resolve = resolve or ResolvePins()
        # Under mitmdump, addons after ours print and save the flow: keep the request as the
        # agent sent it (placeholders) so the script can put it back once it has been sent.
        self.keep_agent_view = keep_agent_view
        # Credentials seen on CONNECT, tied to the client connection like mitmproxy's proxyauth.
        self._tunnel_tokens: WeakKeyDictionary[connection.Client, str] = WeakKeyDictionary()
        # Secret-carrying requests wait here for their audit record's fsync, in batches.
        self._audit_sync: DurabilityWaiter[Allowed, Verdict] = DurabilityWaiter(
            self._durable_or_denied)
        self._decisions = ThreadPoolExecutor(max_workers=DECISION_THREADS,
                                             thread_name_prefix="broker-decide")
        # (host, port) pairs a decision allowed, per client: server_connect dials nothing else.
        self._allowed_upstreams: WeakKeyDictionary[connection.Client, set[tuple[str, int]]] = (
            WeakKeyDictionary())
        # Name-based addresses of upstream connections we dialled by checked IP; see
        # server_connected for why they are put back.
        self._dialled_names: WeakKeyDictionary[connection.Server, tuple[str, int]] = (
            WeakKeyDictionary())
        self._client_certs = ClientCerts(broker)  # mTLS, see addons/client_certs.py

    def configure(self, updated: set[str]) -> None:
        # Options of mitmproxy that would undo the broker's guarantees.
        if problem := unsafe_option(ctx.options):
            raise OptionsError(problem)

    def http_connect(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        # The same caps as any request's head, before anything else reads it.
        if problem := header_size_problem(tuple(flow.request.headers.items(multi=True))):
            flow_adapter.deny(flow, Denied(431, codes.HEADERS_TOO_LARGE, problem))
            return None
        token = flow_adapter.token_from_proxy_authorization(
            flow.request.headers.get(flow_adapter.PROXY_AUTHORIZATION))
        flow.request.headers.pop(flow_adapter.PROXY_AUTHORIZATION, None)
        try:
            connect = flow_adapter.connect_request(flow)
            if token and self.broker.may_block():  # a store lookup over the network: off the loop
                return self._admit_off_loop(flow, token, connect)
            denied = self.broker.admit_tunnel(token, connect)
        except Exception as error:  # fail closed: no tunnel without an admission
            log.error("http_connect hook failed: %s", type(error).__name__)
            denied = Denied(503, codes.INTERNAL_ERROR, "the broker could not decide")
        self._admitted(flow, token, denied)
        return None

    async def _admit_off_loop(self, flow: http.HTTPFlow, token: str,
                              connect: OutboundRequest) -> None:
        try:
            denied = await asyncio.get_running_loop().run_in_executor(
                self._decisions, self.broker.admit_tunnel, token, connect)
        except Exception as error:  # fail closed: no tunnel without an admission
            log.error("http_connect hook failed: %s", type(error).__name__)
            denied = Denied(503, codes.INTERNAL_ERROR, "the broker could not decide")
        self._admitted(flow, token, denied)

    def _admitted(self, flow: http.HTTPFlow, token: str | None, denied: Denied | None) -> None:
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
            return
        # Here, not only in `request`: mitmproxy's DisableH2C strips "Upgrade: h2c" in its own
        # `request` hook, before ours, and would forward the rest of the request.
        try:
            problem = upgrade_problem(tuple(flow.request.headers.items(multi=True)))
        except Exception as error:  # fail closed
            log.error("requestheaders hook failed: %s", type(error).__name__)
            problem = "the broker could not check this request"
        if problem:
            flow_adapter.deny(flow, Denied(403, codes.UPGRADE_NOT_ALLOWED, problem))

    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """Decide, then deny or rewrite the flow.

        A plain function that returns a coroutine only when it has to wait (a decision that may
        block, or a secret-carrying request waiting for its audit record's fsync): mitmproxy
        awaits what a hook returns, and every other request is decided without one.
        """
        if flow.response or flow.error or not flow.live:
            return None
        try:
            token = self._tunnel_tokens.get(flow.client_conn)
            if token is None:  # plain-HTTP proxy request: credentials ride on each request
                token = flow_adapter.token_from_proxy_authorization(
                    flow.request.headers.get(flow_adapter.PROXY_AUTHORIZATION))
            # Never forwarded, whatever the decision, also when sent inside a tunnel.
            flow.request.headers.pop(flow_adapter.PROXY_AUTHORIZATION, None)
            outbound = flow_adapter.outbound_request(flow)
            if self.broker.may_block():
                # Redis, an OAuth2 token endpoint or a command may wait: decide on a worker
                # thread so the event loop keeps serving every other connection.
                return self._decide_off_loop(flow, token, outbound)
            try:
                verdict = self.broker.decide(token, outbound, defer_durability=True,
                                             wait=False)
            except DecisionMustWait:
                # Another writer holds the grant store's lock (SQLite waits up to 5 s for
                # it): wait on a worker thread, not on the loop every connection shares.
                return self._decide_off_loop(flow, token, outbound)
            if isinstance(verdict, Held):  # a person decides: wait without blocking the loop
                return self._decide_off_loop(flow, token, outbound, verdict)
            if isinstance(verdict, Allowed) and verdict.audit_seq is not None:
                # Invariant 5: its record on disk before it leaves. Fsyncs are shared by the
                # requests of one pass of the event loop, or of one batch on a thread when
                # the disk is slow (see DurabilityWaiter).
                return self._conclude_after_sync(flow, verdict, outbound)
            self._conclude(flow, verdict, outbound)
        except Exception as error:  # fail closed
            self._failed(flow, error)
        return None

    async def _decide_off_loop(self, flow: http.HTTPFlow, token: str | None,
                               outbound: OutboundRequest, held: Held | None = None) -> None:
        try:
            verdict: Verdict = held or await asyncio.get_running_loop().run_in_executor(
                self._decisions, self._decide_durably, token, outbound)
            if isinstance(verdict, Held):
                verdict = await held_flow.verdict_after_approval(
                    self.broker.approvals, verdict,
                    lambda hold_id: self._decide_durably(token, outbound, hold_id))
            self._conclude(flow, verdict, outbound)
        except Exception as error:  # fail closed
            self._failed(flow, error)

    async def _conclude_after_sync(self, flow: http.HTTPFlow, verdict: Allowed,
                                   outbound: OutboundRequest) -> None:
        try:
            self._conclude(flow, await self._audit_sync.wait(verdict), outbound)
        except Exception as error:  # fail closed
            self._failed(flow, error)

    def _conclude(self, flow: http.HTTPFlow, verdict: Verdict,
                  outbound: OutboundRequest) -> None:
        if isinstance(verdict, Denied):
            flow_adapter.deny(flow, verdict)
            return
        if verdict.injected and self.keep_agent_view:
            flow.metadata[AGENT_VIEW_KEY] = flow.request.copy()
        flow_adapter.apply(flow, verdict, outbound)
        self._allowed_upstreams.setdefault(flow.client_conn, set()).add(
            (flow.request.host.lower(), flow.request.port))
        self._client_certs.request_allowed(flow.client_conn, flow.request.host,
                                           flow.request.port, verdict.grant_id)
        # Every allowed flow: its answer is scrubbed for every secret of its grant.
        flow.metadata[METADATA_KEY] = (verdict, outbound, time.monotonic())

    @staticmethod
    def _failed(flow: http.HTTPFlow, error: Exception) -> None:
        log.error("request hook failed: %s", type(error).__name__)
        flow_adapter.deny(flow, Denied(503, codes.INTERNAL_ERROR,
                                       "the broker could not decide; nothing was sent"))

    def done(self) -> None:
        self._audit_sync.stop()

    def _durable_or_denied(self, verdict: Allowed) -> Verdict:
        return self.broker.make_durable(verdict) or verdict

    def _decide_durably(self, token: str | None, outbound: OutboundRequest,
                        approved_hold: str | None = None) -> Verdict:
        verdict = self.broker.decide(token, outbound, defer_durability=True,
                                     approved_hold=approved_hold)
        if isinstance(verdict, Allowed) and verdict.audit_seq is not None:
            return self._durable_or_denied(verdict)
        return verdict

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is None:
            return
        verdict = self._verdict(flow)
        try:
            response_scrubbing.on_response_headers(flow, verdict)
        except Exception as error:  # withhold rather than pass on unscrubbed
            log.error("response scrub failed: %s", type(error).__name__)
            response_scrubbing.withhold_after_error(flow, verdict)

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.response is None:
            return
        carried = flow.metadata.get(METADATA_KEY)
        verdict = carried[0] if carried is not None else None
        try:
            # A 401 to an OAuth2 access token drops it: the next request mints a fresh one.
            note_status = getattr(self.broker.secrets, "upstream_answered", None)
            if note_status and verdict is not None and verdict.injected:
                note_status(flow.response.status_code,
                            {n: verdict.scrub[n] for n in verdict.injected if n in verdict.scrub})
            redactions = response_scrubbing.on_response(flow, verdict)
        except Exception as error:  # withhold rather than pass on unscrubbed
            log.error("response scrub failed: %s", type(error).__name__)
            if flow.response.stream:  # headers are gone: abort instead
                if flow.killable:
                    flow.kill()
            else:
                self._withhold(flow, verdict)
            redactions = {}
        if carried is not None and (verdict.injected or redactions):
            _, outbound, started = carried
            self.broker.record_response(verdict, outbound, flow.response.status_code,
                                        (time.monotonic() - started) * 1000, redactions)

    @staticmethod
    def _verdict(flow: http.HTTPFlow) -> Allowed | None:
        carried = flow.metadata.get(METADATA_KEY)
        return carried[0] if carried is not None else None

    @staticmethod
    def _withhold(flow: http.HTTPFlow, verdict: Allowed | None) -> None:
        denied = Denied(502, codes.RESPONSE_WITHHELD, "the answer could not be scrubbed",
                        verdict.grant_id if verdict else None)
        flow.response = http.Response.make(502, denied.body(), denied.headers())

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        carried = flow.metadata.get(METADATA_KEY)
        if carried is None or flow.websocket is None:
            return
        verdict, outbound, _ = carried
        try:
            redactions = response_scrubbing.on_websocket_message(flow, verdict)
        except Exception as error:  # never pass a message on unscrubbed
            log.error("websocket scrub failed: %s", type(error).__name__)
            flow.websocket.messages[-1].drop()
            if flow.killable:
                flow.kill()
            return
        if redactions:
            self.broker.record_response(verdict, outbound, 101, 0.0, redactions)

    def error(self, flow: http.HTTPFlow) -> None:
        carried = flow.metadata.get(METADATA_KEY)
        if carried is not None and carried[0].injected:
            verdict, outbound, started = carried
            self.broker.record_response(verdict, outbound, None,
                                        (time.monotonic() - started) * 1000, {})

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Resolve once, check the address, and connect to exactly that address.

        Connecting to the checked address closes the DNS-rebinding window between check and
        connect.
        """
        try:
            await self._connect_checked(data)
        except Exception as error:  # fail closed: an unchecked address is never dialled
            log.error("server_connect hook failed: %s", type(error).__name__)
            data.server.error = "the broker could not check the upstream address"

    async def _connect_checked(self, data: server_hooks.ServerConnectionHookData) -> None:
        if data.server.address is None:
            return
        host, port = data.server.address
        if (host.lower(), port) not in self._allowed_upstreams.get(data.client, ()):
            # mitmproxy 12.3.1's TCP layer dials the upstream even after tcp_start killed the
            # flow: only an address a request decision allowed may be dialled at all.
            data.server.error = "no request to this upstream was allowed by the broker"
            return
        try:
            addresses, dial_port = await self._addresses(host, port)
        except OSError as error:
            data.server.error = f"cannot resolve {host}: {error.strerror or error}"
            return
        allowed_networks = self.broker.policy.policy.allow_addresses
        for address in addresses:
            if address_allowed(address, allowed_networks):
                self._dialled_names[data.server] = (host, port)
                data.server.address = (address, dial_port)
                if data.server.sni is None:
                    data.server.sni = host
                return
        data.server.error = (f"{host} resolves only to addresses the policy does not allow "
                             "(loopback, private, link-local or metadata)")

    async def _addresses(self, host: str, port: int) -> tuple[list[str], int]:
        """The addresses to try and the port to dial (a --resolve pin may change both)."""
        if (pinned := self.resolve.lookup(host, port)) is not None:
            return [pinned[0]], pinned[1]
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM)
        return [str(info[4][0]) for info in infos], port

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Give the open connection its name back.

        mitmproxy reuses an upstream connection only for requests whose (host, port) equals the
        connection's address. Left as the IP, every request would dial a new connection, and the
        old ones would pile up against mitmproxy's limit of 5 per address (10 s stalls).
        """
        name = self._dialled_names.pop(data.server, None)
        if name is not None:
            server_names.restore_name(data.server, name)

    def tls_start_server(self, tls_start: tls.TlsData) -> Coroutine[Any, Any, None] | None:
        try:
            wanted = self._client_certs.wanted(tls_start)
        except Exception as error:  # no certificate then: the upstream refuses, nothing leaks
            log.error("client certificate hook failed: %s", type(error).__name__)
            return None
        if wanted is None:
            return None
        # The grant store, the key's backend and the audit fsync may all block: off the loop.
        return self._present_client_cert(tls_start, wanted)

    async def _present_client_cert(self, tls_start: tls.TlsData, wanted: Upstream) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._decisions, self._client_certs.present, tls_start, wanted)
        except Exception as error:  # no certificate then: the upstream refuses, nothing leaks
            log.error("client certificate hook failed: %s", type(error).__name__)

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        # Bytes inside a tunnel that are not HTTP bypass every request hook: cut them.
        flow.kill()


