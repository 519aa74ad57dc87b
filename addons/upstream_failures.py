"""Every allowed request whose upstream failed gets an answer, a log line and a record.

- The answer: ``502 upstream_error`` naming the grant and a fixed ``kind`` of failure
  (broker_proxy/decision/upstream_failure.py), written in place of mitmproxy's page by the
  patched error path (upstream_error_pages.py reads the page this addon leaves on the flow).
- The log line: one warning per failure, with the upstream, the kind and mitmproxy's reason.
- The record: a request that never left is ``request_not_sent`` and its use is given back; one
  that left and got no usable answer is a ``response`` with the kind, and its use stays spent.

It also bounds the two waits mitmproxy leaves to the idle timeout: an upstream TLS handshake
that stalls (``Deadlines.upstream_connect`` again, from the TCP connection) and an answer that
does not come (``Deadlines.upstream_read``, from the request's decision to its response
headers). Either closes the upstream connection, which mitmproxy then reports as an error on
the flow; the kind remembered here says why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any
from weakref import WeakKeyDictionary

from broker_proxy.addons import connection_limits
from broker_proxy.addons.connection_limits import Deadlines
from broker_proxy.addons.flow_record import FlowRecord, flow_record, settle_budget_once
from mitmproxy import connection, http
from mitmproxy.proxy import server_hooks
from mitmproxy.tls import TlsData

from broker_proxy.decision import upstream_failure
from broker_proxy.decision.broker import Broker
from broker_proxy.request.outbound import Allowed, Denied, OutboundRequest

log = logging.getLogger("broker_proxy.upstream")

PAGE_KEY = "broker_proxy.error_page"


class UpstreamFailures:
    def __init__(self, broker: Broker, deadlines: Deadlines | None = None) -> None:
        self.broker = broker
        self.deadlines = deadlines or Deadlines()
        # Why the latest upstream connection of a client failed, when this addon knows better
        # than the error text (its own TLS deadline closed it).
        self._kinds: WeakKeyDictionary[connection.Client, str] = WeakKeyDictionary()
        self._tls_timers: WeakKeyDictionary[connection.Server, asyncio.TimerHandle] = (
            WeakKeyDictionary())
        self._read_timers: dict[str, asyncio.TimerHandle] = {}  # by flow id

    # -- the upstream TLS handshake deadline -------------------------------------------------

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        if data.server.tls:
            self._tls_timers[data.server] = asyncio.get_running_loop().call_later(
                self.deadlines.upstream_connect, self._tls_expired, data.client, data.server)

    def tls_established_server(self, data: TlsData) -> None:
        self._tls_done(data.conn)

    def tls_failed_server(self, data: TlsData) -> None:
        self._tls_done(data.conn)

    def server_disconnected(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._tls_done(data.server)

    def _tls_done(self, server: connection.Connection) -> None:
        if isinstance(server, connection.Server) and (
                timer := self._tls_timers.pop(server, None)) is not None:
            timer.cancel()

    def _tls_expired(self, client: connection.Client, server: connection.Server) -> None:
        self._tls_timers.pop(server, None)
        self._kinds[client] = "tls_timeout"
        connection_limits.close_server(client, server)

    # -- the answer deadline -----------------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> None:
        if flow_record(flow) is not None and flow.response is None:
            self._arm_read(flow)

    def _arm_read(self, flow: http.HTTPFlow) -> None:
        self._read_timers[flow.id] = asyncio.get_running_loop().call_later(
            self.deadlines.upstream_read, self._read_expired, flow)

    def _disarm_read(self, flow: http.HTTPFlow) -> None:
        if (timer := self._read_timers.pop(flow.id, None)) is not None:
            timer.cancel()

    def _read_expired(self, flow: http.HTTPFlow) -> None:
        self._read_timers.pop(flow.id, None)
        record = flow_record(flow)
        if record is None or flow.response is not None or flow.error is not None:
            return
        if not record.sent:
            if flow.live and flow.client_conn.timestamp_end is None:
                self._arm_read(flow)  # still connecting: the connect and TLS deadlines bound it
            return
        flow.metadata[_READ_TIMEOUT] = True
        connection_limits.close_server(flow.client_conn, flow.server_conn)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._disarm_read(flow)

    # -- the answer, the log line and the record ---------------------------------------------

    def error(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        self._disarm_read(flow)
        record = flow_record(flow)
        if record is None or flow.error is None:
            return None
        # A raise is logged and recorded (fail_closed.py); the page mitmproxy writes by itself
        # is still ours.
        return self._failed(flow, record, flow.error.msg)

    def _failed(self, flow: http.HTTPFlow, record: FlowRecord,
                message: str) -> Coroutine[Any, Any, None] | None:
        sent = record.sent
        if flow.metadata.pop(_READ_TIMEOUT, False):
            kind = "read_timeout"
        else:
            kind = upstream_failure.classify(message, sent=sent)
            if not sent and kind in ("tls_failed", "connect_failed"):
                # Our TLS deadline knows the reason better than "connection closed".
                kind = self._kinds.pop(flow.client_conn, "") or kind
        if kind in ("connect_timeout", "tls_timeout") and message in (
                "connection cancelled", "connection closed"):
            message = (f"no {'connection' if kind == 'connect_timeout' else 'TLS handshake'} "
                       f"within {self.deadlines.upstream_connect:g}s")
        request = record.outbound
        elapsed_ms = (time.monotonic() - record.started) * 1000
        status = None if kind == "client_gone" else 502
        verdict = record.verdict
        # mitmproxy's text only for a request that never left: after, it may quote what the
        # upstream answered, which may echo the secret (docs/ARCHITECTURE.md, invariant 1).
        # An agent that cancels (a closed connection, a reset HTTP/2 stream) is routine, not
        # an upstream failure: below the proxy's default log level.
        log.log(logging.INFO if kind == "client_gone" else logging.WARNING,
                "upstream %s:%d failed for grant %s (%s)%s; the request was %s",
                request.host, request.port, verdict.grant_id, kind,
                "" if sent else f": {message}", "sent" if sent else "not sent")
        if status is not None:
            flow.metadata[PAGE_KEY] = Denied(
                502, upstream_failure.UPSTREAM_ERROR, upstream_failure.description(kind),
                verdict.grant_id, kind=kind)
        if sent:
            # It left: its LLM budget is charged the whole reservation (no usage to read).
            llm = settle_budget_once(self.broker, record, None)
            self.broker.record_upstream_failure(verdict, request, status, elapsed_ms, kind,
                                                llm=llm)
        elif not record.returned:
            record.returned = True  # before anything else: it must never leave now
            # Giving the use back writes to the grant store, which may wait for its lock or
            # the network: off the event loop. The answer waits for it, so the record is
            # there when the agent reads its 502.
            return self._not_sent(verdict, request, status, elapsed_ms, kind)
        return None

    async def _not_sent(self, verdict: Allowed, request: OutboundRequest, status: int | None,
                        elapsed_ms: float, kind: str) -> None:
        # A raise leaves the use spent (never one too few), logged and recorded by the hook's
        # wrapper (fail_closed.py).
        await asyncio.get_running_loop().run_in_executor(
            None, self.broker.record_not_sent, verdict, request, status, elapsed_ms, kind)

    def done(self) -> None:
        for timer in self._read_timers.values():
            timer.cancel()
        self._read_timers.clear()


_READ_TIMEOUT = "broker_proxy.read_timeout"


def page_of(flow: http.HTTPFlow) -> Denied | None:
    """The answer this addon chose for a failed flow, if any (for the patched error path)."""
    page = flow.metadata.get(PAGE_KEY)
    return page if isinstance(page, Denied) else None
