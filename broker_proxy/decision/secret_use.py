"""A request that would carry secrets, as ``Broker.decide`` learns about it step by step.

One record handed from step to step (broker.py, approval_hold.py) instead of a growing list of
arguments: where each placeholder sits, which secrets, what the request is for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from broker_proxy.decision.active_policy import ActivePolicy
from broker_proxy.decision.header_templates import TemplateUse
from broker_proxy.decision.placeholders import PlaceholderScanner
from broker_proxy.decision.protocol_checks import ProtocolReading
from broker_proxy.decision.request_scan import PlacedHit
from broker_proxy.grants.model import Grant
from broker_proxy.request.outbound import OutboundRequest
from broker_proxy.request.reservation import Reservation


@dataclass(slots=True)
class SecretUse:
    """A request that would carry secrets, as the decision learns about it.

    The checks narrow it as they go: the canonical path (``request`` is then what is sent),
    the body with hosted tools' terms or budget fields written in, the MCP or GraphQL calls
    it makes, the budget reservations it holds.
    """

    request: OutboundRequest
    grant: Grant
    policy: ActivePolicy
    scanner: PlaceholderScanner
    hits: list[PlacedHit]
    templates: list[TemplateUse]
    names: list[str] = field(init=False)  # every secret it carries, sorted
    sent_path: str = field(init=False)  # the path as the agent sent it
    protocol: ProtocolReading | None = None
    body_changed: bool = False  # the proxy rewrote the body (not only swapped placeholders)
    tickets: tuple[Reservation, ...] = ()

    def __post_init__(self) -> None:
        self.names = sorted({hit.secret for hit in self.hits if hit.secret}
                            | {use.secret for use in self.templates})
        self.sent_path = self.request.path

    def audit_fields(self) -> dict[str, Any] | None:
        return self.protocol.audit_fields() if self.protocol is not None else None
