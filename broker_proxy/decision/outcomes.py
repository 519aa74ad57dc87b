"""The second half of an allowed request's story: what came back, or that it never left.

A mixin of ``Broker`` (like limit_checks.py) so that broker.py holds the decision itself, read
top to bottom; what the proxy records once the request has gone (or could not go) is here.
"""

from __future__ import annotations

import logging
from typing import Any

from broker_proxy.audit.log import AuditError, AuditLog
from broker_proxy.decision.budget_keeper import BudgetKeeper
from broker_proxy.grants.store import GrantStore, GrantStoreError
from broker_proxy.metrics import BrokerMetrics
from broker_proxy.request.outbound import Allowed, OutboundRequest
from broker_proxy.scrubbing.grant_scrub import base_secret

log = logging.getLogger("broker_proxy")


def _sent_fields(allowed: Allowed, request: OutboundRequest, status: int | None,
                 duration_ms: float) -> dict[str, Any]:
    """The members every outcome record of an allowed request shares (one place, so the three
    kinds of outcome cannot drift apart)."""
    return {"reason": allowed.reason, "secrets": list(allowed.injected),
            "method": request.method, "scheme": request.scheme, "host": request.host,
            "port": request.port, "path": request.path, "status": status,
            "duration_ms": round(duration_ms, 3)}


class OutcomeRecords:
    # Provided by Broker (a dataclass): declared here for the type checker only.
    grants: GrantStore
    audit: AuditLog
    metrics: BrokerMetrics
    budgets: BudgetKeeper

    def record_response(self, allowed: Allowed, request: OutboundRequest, status: int | None,
                        duration_ms: float, redactions: dict[str, int], *,
                        withheld: bool = False, llm: dict[str, Any] | None = None) -> None:
        """The second half of a secret-carrying request's story: what came back.

        `withheld`: the answer could not be scrubbed and the agent got a 502 instead; a reviewer
        must be able to tell that from a 502 the upstream sent.
        """
        for name, count in redactions.items():
            # A retired value counts under its secret: labels stay a bounded set.
            self.metrics.redactions.labels(base_secret(name)).inc(count)
        try:
            self.audit.append("response", grant=allowed.grant_id, decision="allow",
                              **_sent_fields(allowed, request, status, duration_ms),
                              redactions=sum(redactions.values()),
                              **({"withheld": True} if withheld else {}), **(llm or {}))
        except AuditError:
            self.metrics.audit_write_errors.inc()

    def record_not_sent(self, allowed: Allowed, request: OutboundRequest, status: int | None,
                        duration_ms: float, why: str) -> bool:
        """An allowed request that never left (its upstream could not be reached, or its
        client went away first): give its use back and say so in the audit log.

        Call only when the request was certainly not written to any upstream. Returns whether
        a use was given back. Invariant 11 (docs/ARCHITECTURE.md): `max_uses` counts requests
        whose secret left.
        """
        returned = False
        # Its LLM budget reservations and concurrency slots too: nothing was spent.
        self.budgets.release(allowed.grant_id, allowed.budget)
        if allowed.injected:
            try:
                returned = self.grants.release_use(allowed.grant_id)
            except GrantStoreError:
                # The use stays spent: counting one too many never lets a request through.
                log.warning("could not give back the use of grant %s", allowed.grant_id)
        try:
            self.audit.append("request_not_sent", grant=allowed.grant_id, decision="allow",
                              **_sent_fields(allowed, request, status, duration_ms),
                              outcome="not_sent", upstream_error=why, use_returned=returned)
        except AuditError:
            self.metrics.audit_write_errors.inc()
        self.metrics.upstream_failures.labels(why, "not_sent").inc()
        return returned

    def record_upstream_failure(self, allowed: Allowed, request: OutboundRequest,
                                status: int | None, duration_ms: float, why: str, *,
                                llm: dict[str, Any] | None = None) -> None:
        """An allowed request that left but got no usable answer: the use stays spent (and
        `llm`, the audit fields of the whole LLM budget reservation it was charged)."""
        self.metrics.upstream_failures.labels(why, "sent").inc()
        if not allowed.injected:
            return
        try:
            self.audit.append("response", grant=allowed.grant_id, decision="allow",
                              **_sent_fields(allowed, request, status, duration_ms), redactions=0,
                              outcome="sent", upstream_error=why, **(llm or {}))
        except AuditError:
            self.metrics.audit_write_errors.inc()
