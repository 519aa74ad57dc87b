"""What the decision learned about a flow, for the hooks that handle its answer.

One typed record under one metadata key: the decision's verdict and the request it was made on
(the audit record of the answer names both), when it was decided (the answer's duration), under
mitmdump the request as the agent wrote it (placeholders), put back once the real one left, and
whether it left at all (a use is given back only for a request that certainly did not).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mitmproxy import http

from broker_proxy.request.outbound import Allowed, OutboundRequest

if TYPE_CHECKING:  # the addons that call settle_budget_once hold the broker
    from broker_proxy.decision.broker import Broker

log = logging.getLogger("broker_proxy.addon")

FLOW_KEY = "broker_proxy.flow"


@dataclass(slots=True)
class FlowRecord:
    verdict: Allowed
    outbound: OutboundRequest
    started: float  # time.monotonic() when the request was allowed
    agent_view: http.Request | None = None
    # Set once a connection was made for the request and it was handed to it: from then on
    # its use stays spent whatever happens (see upstream_error_pages.make_server_connection).
    sent: bool = False
    # Set when the request was recorded as not sent and its use given back: it must never
    # leave after that (the patched make_server_connection refuses it).
    returned: bool = False
    # Set once its LLM budget reservations were charged (answer's usage, or whole when the
    # answer failed after the request left): exactly once, whichever hook ends the flow.
    budget_settled: bool = False


def flow_record(flow: http.HTTPFlow) -> FlowRecord | None:
    """The record of an allowed flow; None for a flow the broker did not allow (yet)."""
    record = flow.metadata.get(FLOW_KEY)
    return record if isinstance(record, FlowRecord) else None


def settle_budget_once(broker: Broker, record: FlowRecord,
                       usage: tuple[int, int] | None) -> dict[str, Any]:
    """Charge an LLM answer to its grant's budget once (``usage`` None: the whole reservation)
    and return the audit fields; the answer's hook or, when it failed, UpstreamFailures."""
    if not record.verdict.budget or record.budget_settled:
        return {}
    record.budget_settled = True
    try:
        return broker.settle_budget(record.verdict, usage)
    except Exception as error:  # the reservation stays held: spent, never free
        log.error("budget settle failed: %s", type(error).__name__)
        return {}
