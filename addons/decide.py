"""Running a decision: inline, on a worker thread, or after the audit record's fsync.

``request`` is a plain function that returns a coroutine only when it has to wait: mitmproxy
awaits what a hook returns, and every other request is decided without one. Every path that
decides catches its own errors and denies: mitmproxy's addon manager logs an exception from a
hook and lets the flow continue, which would fail open.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from concurrent.futures import Executor
from typing import Any

from broker_proxy.addons import flow_adapter, held_flow
from broker_proxy.addons.client_certs import ClientCerts
from broker_proxy.addons.flow_record import FLOW_KEY, FlowRecord
from broker_proxy.addons.tunnel_auth import TunnelAuth
from broker_proxy.addons.upstream_guard import UpstreamGuard
from mitmproxy import http

from broker_proxy.approvals.verdict import Held
from broker_proxy.decision import outbound as codes
from broker_proxy.decision.broker import Broker, DecisionMustWait
from broker_proxy.decision.outbound import Allowed, Denied, OutboundRequest, Verdict
from broker_proxy.decision.request_checks import upgrade_problem
from broker_proxy.runtime.durability_waiter import DurabilityWaiter

log = logging.getLogger("broker_proxy.addon")


class Decide:
    def __init__(self, broker: Broker, decisions: Executor, tunnels: TunnelAuth,
                 upstreams: UpstreamGuard, client_certs: ClientCerts, *,
                 keep_agent_view: bool = False) -> None:
        self.broker = broker
        self._decisions = decisions
        self._tunnels = tunnels
        self._upstreams = upstreams
        self._client_certs = client_certs
        # Under mitmdump, addons after ours print and save the flow: keep the request as the
        # agent sent it (placeholders) so the script can put it back once it has been sent.
        self.keep_agent_view = keep_agent_view
        # Secret-carrying requests wait here for their audit record's fsync, in batches.
        self._audit_sync: DurabilityWaiter[Allowed, Verdict] = DurabilityWaiter(
            self._durable_or_denied)

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
        """Decide, then deny or rewrite the flow."""
        if flow.response or flow.error or not flow.live:
            return None
        try:
            token = self._tunnels.token_for(flow)
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
        agent_view = flow.request.copy() if verdict.injected and self.keep_agent_view else None
        flow_adapter.apply(flow, verdict, outbound)
        self._upstreams.allow(flow)
        self._client_certs.request_allowed(flow.client_conn, flow.request.host,
                                           flow.request.port, verdict.grant_id)
        # Every allowed flow: its answer is scrubbed for every secret of its grant.
        flow.metadata[FLOW_KEY] = FlowRecord(verdict, outbound, time.monotonic(), agent_view)

    @staticmethod
    def _failed(flow: http.HTTPFlow, error: Exception) -> None:
        log.error("request hook failed: %s", type(error).__name__)
        flow_adapter.deny(flow, Denied(503, codes.INTERNAL_ERROR,
                                       "the broker could not decide; nothing was sent"))

    def done(self) -> None:
        self._audit_sync.stop()
        self.broker.budgets.close()  # budget settlements still on their thread land first

    def _durable_or_denied(self, verdict: Allowed) -> Verdict:
        return self.broker.make_durable(verdict) or verdict

    def _decide_durably(self, token: str | None, outbound: OutboundRequest,
                        approved_hold: str | None = None) -> Verdict:
        verdict = self.broker.decide(token, outbound, defer_durability=True,
                                     approved_hold=approved_hold)
        if isinstance(verdict, Allowed) and verdict.audit_seq is not None:
            return self._durable_or_denied(verdict)
        return verdict
