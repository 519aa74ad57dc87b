"""What the decision learned about a flow, for the hooks that handle its answer.

One typed record under one metadata key: the decision's verdict and the request it was made on
(the audit record of the answer names both), when it was decided (the answer's duration), and
under mitmdump the request as the agent wrote it (placeholders), put back once the real one left.
"""

from __future__ import annotations

from dataclasses import dataclass

from mitmproxy import http

from broker_proxy.decision.outbound import Allowed, OutboundRequest

FLOW_KEY = "broker_proxy.flow"


@dataclass(slots=True)
class FlowRecord:
    verdict: Allowed
    outbound: OutboundRequest
    started: float  # time.monotonic() when the request was allowed
    agent_view: http.Request | None = None


def flow_record(flow: http.HTTPFlow) -> FlowRecord | None:
    """The record of an allowed flow; None for a flow the broker did not allow (yet)."""
    record = flow.metadata.get(FLOW_KEY)
    return record if isinstance(record, FlowRecord) else None
