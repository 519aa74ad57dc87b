"""The fields every audit record of a request decision carries: who, what, where, and how it
ended (the audit schema's request fields; never a secret value, the query string left out)."""

from __future__ import annotations

from typing import Any

from broker_proxy.grants.model import Grant
from broker_proxy.request.outbound import OutboundRequest


def request_fields(request: OutboundRequest, grant: Grant | None, decision: str, reason: str,
                   status: int | None, secrets: list[str]) -> dict[str, Any]:
    return {
        "decision": decision,
        "reason": reason,
        "grant": grant.id if grant else None,
        "agent": grant.agent if grant else None,
        "task": grant.task if grant else None,
        "secrets": secrets,
        "method": request.method,
        "scheme": request.scheme,
        "host": request.host,
        "port": request.port,
        "path": request.path,
        "status": status,
    }
