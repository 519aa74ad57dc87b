"""The broker's approval step: a request whose secrets (or MCP tool) need a person's yes is
held on the desk (approvals/desk.py) until it has one.

A mixin of ``Broker`` (like limit_checks.py) so that ``Broker.decide`` still reads top to
bottom in broker.py, with the hold one line there; the desk calls and answers are here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from broker_proxy.approvals.desk import ApprovalDesk, HeldRequest, QueueFull
from broker_proxy.approvals.digest import carried, request_shape
from broker_proxy.approvals.preview import build_preview, preview_level
from broker_proxy.approvals.verdict import (
    APPROVAL_QUEUE_FULL,
    APPROVAL_REQUIRED,
    APPROVAL_UNAVAILABLE,
    Held,
    denied_by_person,
)
from broker_proxy.audit.log import AuditError
from broker_proxy.decision.request_record import request_fields
from broker_proxy.decision.secret_use import SecretUse
from broker_proxy.grants.model import Grant
from broker_proxy.metrics import BrokerMetrics
from broker_proxy.request import codes
from broker_proxy.request.outbound import Denied, OutboundRequest


class ApprovalHolds:
    # Provided by Broker (a dataclass): declared here for the type checker only.
    approvals: ApprovalDesk
    metrics: BrokerMetrics
    clock: Callable[[], datetime]

    def _deny(self, request: OutboundRequest, grant: Grant | None, status: int, code: str,
              message: str, *, challenge: bool = False,
              fields: dict[str, Any] | None = None) -> Denied:
        raise NotImplementedError

    def _held_for_approval(self, use: SecretUse, approved_hold: str | None) -> Denied | None:
        """None when no secret here needs approval, or this exact request was approved.

        "Exact" includes the secrets it carries and where: an approval shown one set of
        secrets never lets another set through (digest.py).
        """
        request, grant, policy, names = use.request, use.grant, use.policy, use.names
        gated = [n for n in names if policy.policy.secrets[n].per_request_approval]
        # An MCP tool under `approval: per_request` gates the request whatever its secret.
        tools = use.protocol.approval_calls if use.protocol is not None else ()
        if not gated and not tools:
            return None
        carries = carried(use.scanner, request, use.hits,
                          [(t.secret, t.template.header) for t in use.templates])
        shape = request_shape(request, carries, use.scanner)
        if (self.approvals.redeem(approved_hold, grant.id, shape.digest)
                or self.approvals.take_allowance(grant.id, shape.digest)):
            return None
        # The retry of a request its stopped proxy could not answer finds its item again.
        resumed = self.approvals.resume(grant.id, shape.digest, tuple(names))
        if resumed is not None:
            return self._resumed_hold(use, resumed)
        if not self.approvals.accepting:
            return self._deny(request, grant, 403, APPROVAL_UNAVAILABLE,
                              "this request needs a person's approval, and this proxy process "
                              "has no admin API to ask one")
        if self.approvals.full(grant.id):
            return self._deny(request, grant, 503, APPROVAL_QUEUE_FULL,
                              "too many requests are waiting for approval")
        timeout = policy.policy.approval_timeout
        level = preview_level([
            destination.approval_preview for name in (gated or names)
            for destination in policy.index.destinations_for(name, request.scheme,
                                                             request.host, request.port)])
        try:
            item = self.approvals.hold(
                grant=grant.id, agent=grant.agent, task=grant.task, secrets_=tuple(names),
                shape=shape, preview=build_preview(request, use.scanner, carries, level, tools),
                timeout=timeout, audit_fields={**request_fields(
                    request, grant, "held", APPROVAL_REQUIRED, None, names),
                    **(use.audit_fields() or {})})
        except QueueFull:
            return self._deny(request, grant, 503, APPROVAL_QUEUE_FULL,
                              "too many requests are waiting for approval")
        except AuditError:
            self.metrics.audit_write_errors.inc()
            return Denied(503, codes.AUDIT_UNAVAILABLE,
                          "the audit log cannot be written; nothing was sent", grant.id)
        return Held(403, APPROVAL_REQUIRED, "this request waits for a person's approval",
                    grant.id, hold_id=item.id, timeout_s=timeout.total_seconds())

    def _resumed_hold(self, use: SecretUse, resumed: HeldRequest) -> Denied | None:
        """A held request sent again: allowed, denied, or still waiting for its person."""
        if resumed.state == "allowed":
            return None
        if resumed.state == "denied":
            refusal = denied_by_person(use.grant.id, resumed.reason)
            return self._deny(use.request, use.grant, refusal.status, refusal.error,
                              refusal.message)
        left = (resumed.expires_at - self.clock()).total_seconds()
        return Held(403, APPROVAL_REQUIRED, "this request waits for a person's approval",
                    use.grant.id, hold_id=resumed.id, timeout_s=max(left, 0.0))
