"""The answer's side: scrub every answer on an allowed flow, and record what was scrubbed.

The scrubbing itself is in ``response_scrubbing`` (bodies, streams, WebSocket messages); this
addon wires it to the hooks and fails closed around it: an answer that could not be scrubbed is
withheld (502) or, once its headers are gone, cut.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from broker_proxy.addons import mcp_list_filter, response_scrubbing
from broker_proxy.addons.flow_record import flow_record, settle_budget_once
from mitmproxy import http

from broker_proxy.decision.broker import Broker
from broker_proxy.request import codes
from broker_proxy.request.outbound import Allowed, Denied

log = logging.getLogger("broker_proxy.addon")


class ScrubAnswers:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is None:
            return
        record = flow_record(flow)
        verdict = record.verdict if record is not None else None
        try:
            response_scrubbing.on_response_headers(flow, verdict, self.broker.live_scrub)
            mcp_list_filter.on_response_headers(flow, verdict)  # after: the scrubbed stream
        except Exception as error:  # withhold rather than pass on unscrubbed
            log.error("response scrub failed: %s", type(error).__name__)
            response_scrubbing.withhold_after_error(flow, verdict)

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.response is None:
            return
        record = flow_record(flow)
        verdict = record.verdict if record is not None else None
        try:
            if verdict is not None and verdict.injected:
                # A 401 to an OAuth2 access token drops it: the next request mints a fresh one.
                self.broker.secrets.upstream_answered(
                    flow.response.status_code,
                    {n: verdict.scrub[n] for n in verdict.injected if n in verdict.scrub})
            redactions = response_scrubbing.on_response(flow, verdict)
            if not response_scrubbing.was_withheld(flow):
                mcp_list_filter.on_response(flow, verdict)
            withheld = response_scrubbing.was_withheld(flow)
        except Exception as error:  # withhold rather than pass on unscrubbed
            log.error("response scrub failed: %s", type(error).__name__)
            withheld = not flow.response.stream
            if flow.response.stream:  # headers are gone: abort instead
                if flow.killable:
                    flow.kill()
            else:
                self._withhold(flow, verdict)
            redactions = {}
        llm = self._settle(flow, None if withheld else response_scrubbing.usage_read(flow))
        if record is not None and (record.verdict.injected or redactions or withheld):
            self.broker.record_response(record.verdict, record.outbound,
                                        flow.response.status_code,
                                        (time.monotonic() - record.started) * 1000, redactions,
                                        withheld=withheld, llm=llm)

    def _settle(self, flow: http.HTTPFlow, usage: tuple[int, int] | None) -> dict[str, Any]:
        """Charge an LLM answer to its grant's budget once (the whole reservation unread)."""
        record = flow_record(flow)
        return settle_budget_once(self.broker, record, usage) if record is not None else {}

    @staticmethod
    def _withhold(flow: http.HTTPFlow, verdict: Allowed | None) -> None:
        denied = Denied(502, codes.RESPONSE_WITHHELD, "the answer could not be scrubbed",
                        verdict.grant_id if verdict else None)
        flow.response = http.Response.make(502, denied.body(), denied.headers())

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        record = flow_record(flow)
        if record is None or flow.websocket is None:
            return
        # A raise drops the message and cuts the connection (fail_closed.py): never a message
        # passed on unscrubbed.
        redactions = response_scrubbing.on_websocket_message(flow, record.verdict,
                                                             self.broker.live_scrub)
        if redactions:
            self.broker.record_response(record.verdict, record.outbound, 101, 0.0, redactions)

    # A flow that ends in an error is recorded by UpstreamFailures (sent or not sent), which
    # also settles its LLM budget.
