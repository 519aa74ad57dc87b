"""Running a decision: inline, on a worker thread, or after the audit record's fsync.

``request`` is a plain function that returns a coroutine only when it has to wait: mitmproxy
awaits what a hook returns, and every other request is decided without one. Every path that
decides catches its own errors and denies: mitmproxy's addon manager logs an exception from a
hook and lets the flow continue, which would fail open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from concurrent.futures import Executor
from typing import Any, NoReturn
from weakref import WeakKeyDictionary

from broker_proxy.addons import flow_adapter, held_flow
from broker_proxy.addons.client_certs import ClientCerts
from broker_proxy.addons.flow_record import FLOW_KEY, FlowRecord
from broker_proxy.addons.tunnel_auth import TunnelAuth
from broker_proxy.addons.upstream_guard import UpstreamGuard
from mitmproxy import connection, http

from broker_proxy.approvals.verdict import Held
from broker_proxy.audit.durability_waiter import DurabilityWaiter
from broker_proxy.decision.broker import Broker
from broker_proxy.decision.limit_checks import DecisionMustWait
from broker_proxy.decision.request_checks import upgrade_problem
from broker_proxy.grants.store import STORE_WAIT_SECONDS
from broker_proxy.request import codes
from broker_proxy.request.outbound import Allowed, Denied, OutboundRequest, Verdict

log = logging.getLogger("broker_proxy.addon")

STOP_ANSWER_WAIT_S = 2.0  # at stop, how long held flows get to write their 503


class Decide:
    def __init__(self, broker: Broker, decisions: Executor, tunnels: TunnelAuth,
                 upstreams: UpstreamGuard, client_certs: ClientCerts, *,
                 store_writers: Executor | None = None,
                 keep_agent_view: bool = False) -> None:
        self.broker = broker
        self._decisions = decisions
        # Decisions that must wait for the grant store's write lock wait here, apart from
        # `decisions`: a request that writes nothing never queues behind one that waits.
        self._store_writers = store_writers or decisions
        self._tunnels = tunnels
        self._upstreams = upstreams
        self._client_certs = client_certs
        # Under mitmdump, addons after ours print and save the flow: keep the request as the
        # agent sent it (placeholders) so the script can put it back once it has been sent.
        self.keep_agent_view = keep_agent_view
        # Secret-carrying requests wait here for their audit record's fsync, in batches.
        self._audit_sync: DurabilityWaiter[Allowed, Verdict] = DurabilityWaiter(
            self._durable_or_denied)
        # The held requests each client's flows wait on (see client_disconnected).
        self._holds: WeakKeyDictionary[connection.Client, set[str]] = WeakKeyDictionary()

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
        # Every wait on the grant store ends by this, however many requests wait before it.
        deadline = time.monotonic() + STORE_WAIT_SECONDS
        try:
            token = self._tunnels.token_for(flow)
            # Never forwarded, whatever the decision, also when sent inside a tunnel.
            flow.request.headers.pop(flow_adapter.PROXY_AUTHORIZATION, None)
            outbound = flow_adapter.outbound_request(flow)
            if self.broker.may_block():
                # Redis, an OAuth2 token endpoint or a command may wait: decide on a worker
                # thread so the event loop keeps serving every other connection.
                return self._decide_off_loop(flow, token, outbound, deadline)
            try:
                verdict = self.broker.decide(token, outbound, defer_durability=True,
                                             wait=False)
            except DecisionMustWait:
                # Another writer holds the grant store's lock: wait on a store writer thread
                # (until the deadline), not on the loop every connection shares.
                return self._decide_off_loop(flow, token, outbound, deadline, must_wait=True)
            if isinstance(verdict, Held):  # a person decides: wait without blocking the loop
                return self._decide_off_loop(flow, token, outbound, deadline, verdict)
            if isinstance(verdict, Allowed) and verdict.audit_seq is not None:
                # docs/ARCHITECTURE.md, invariant 5: its record on disk before it leaves.
                # Fsyncs are shared by the requests of one pass of the event loop, or of one
                # batch on a thread when the disk is slow (see DurabilityWaiter).
                return self._conclude_after_sync(flow, verdict, outbound)
            self._conclude(flow, verdict, outbound)
        except Exception as error:  # fail closed
            self._failed(flow, error)
        return None

    async def _decide_off_loop(self, flow: http.HTTPFlow, token: str | None,
                               outbound: OutboundRequest, deadline: float,
                               held: Held | None = None, *, must_wait: bool = False) -> None:
        loop = asyncio.get_running_loop()
        try:
            verdict: Verdict | None = held
            if verdict is None and not must_wait:
                # DecisionMustWait: nothing written or spent; decide again where waiting is.
                with contextlib.suppress(DecisionMustWait):
                    verdict = await loop.run_in_executor(
                        self._decisions, self._decide_durably, token, outbound, None,
                        deadline, False)
            if verdict is None:
                verdict = await loop.run_in_executor(
                    self._store_writers, self._decide_durably, token, outbound, None, deadline)
            if isinstance(verdict, Held):
                # The person took their time; the decision after it gets a bound of its own.
                verdict = await held_flow.verdict_after_approval(
                    self.broker.approvals, verdict,
                    lambda hold_id: self._decide_durably(
                        token, outbound, hold_id, time.monotonic() + STORE_WAIT_SECONDS),
                    lambda hold_id, waits: self._waiting(flow.client_conn, hold_id, waits))
            self._conclude(flow, verdict, outbound)
        except Exception as error:  # fail closed
            self._failed(flow, error)

    async def _conclude_after_sync(self, flow: http.HTTPFlow, verdict: Allowed,
                                   outbound: OutboundRequest) -> None:
        try:
            self._conclude(flow, await self._audit_sync.wait(verdict), outbound)
        except Exception as error:  # fail closed
            self._failed(flow, error)

    def _waiting(self, client: connection.Client, hold_id: str, waits: bool) -> None:
        """Which held requests a client's flows wait on, so that they end with their client."""
        holds = self._holds.setdefault(client, set())
        if waits:
            holds.add(hold_id)
        else:
            holds.discard(hold_id)

    def client_disconnected(self, client: connection.Client) -> None:
        """A held request whose agent went away is abandoned: a later approval spends no use."""
        for hold_id in list(self._holds.pop(client, ())):
            if self.broker.approvals.abandon(hold_id, "the agent disconnected") is not None:
                log.warning("held request %s abandoned: its agent disconnected", hold_id)

    async def done(self) -> None:
        """At stop, every held request is answered 503 approval_interrupted (and recorded)."""
        self._audit_sync.stop()
        abandoned = self.broker.approvals.abandon_all("the proxy stopped")
        if abandoned:
            log.warning("%d held request(s) answered 503 approval_interrupted: the proxy stops",
                        len(abandoned))
            # Let the held flows write their answers before the loop ends.
            deadline = time.monotonic() + STOP_ANSWER_WAIT_S
            while any(self._holds.values()) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)
        self.broker.budgets.close()  # budget settlements still on their thread land first

    def _conclude(self, flow: http.HTTPFlow, verdict: Verdict,
                  outbound: OutboundRequest) -> None:
        if isinstance(verdict, Denied):
            flow_adapter.deny(flow, verdict)
            return
        if flow.client_conn.timestamp_end is not None:
            # Its agent went away while it was decided (an approval that raced the
            # disconnect): it must not leave, and its use is given back.
            if verdict.injected:  # the grant store may wait: off the event loop
                asyncio.get_running_loop().run_in_executor(
                    None, self.broker.record_not_sent, verdict, outbound, None, 0.0,
                    "client_gone")
            flow_adapter.deny(flow, Denied(503, codes.INTERNAL_ERROR,
                                           "the agent went away", verdict.grant_id))
            return
        agent_view = flow.request.copy() if verdict.injected and self.keep_agent_view else None
        flow_adapter.apply(flow, verdict, outbound)
        self._upstreams.allow(flow)
        self._client_certs.request_allowed(flow.client_conn, flow.request.host,
                                           flow.request.port, verdict.grant_id)
        # Every allowed flow: its answer is scrubbed for every secret of its grant.
        flow.metadata[FLOW_KEY] = FlowRecord(verdict, outbound, time.monotonic(), agent_view)

    @staticmethod
    def _failed(flow: http.HTTPFlow, error: Exception) -> NoReturn:
        """To the hook's fail-closed wrapper (fail_closed.py): it denies 503 and records."""
        raise error

    def _durable_or_denied(self, verdict: Allowed) -> Verdict:
        return self.broker.make_durable(verdict) or verdict

    def _decide_durably(self, token: str | None, outbound: OutboundRequest,
                        approved_hold: str | None = None, deadline: float | None = None,
                        wait: bool = True) -> Verdict:
        verdict = self.broker.decide(token, outbound, defer_durability=True, wait=wait,
                                     approved_hold=approved_hold, deadline=deadline)
        if isinstance(verdict, Allowed) and verdict.audit_seq is not None:
            return self._durable_or_denied(verdict)
        return verdict
