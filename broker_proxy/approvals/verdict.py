"""The broker's third answer: not yet. A held request, and the codes of how it can end.

``Held`` is a ``Denied`` (403 ``approval_required``) so that any caller that does not know
about holding refuses the request: failing closed is the default. The proxy's addon knows,
waits for the person's decision and asks the broker again.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker_proxy.request.outbound import Denied

APPROVAL_REQUIRED = "approval_required"  # held; only seen by a caller that cannot wait
REQUEST_DENIED = "request_denied"  # a person said no to this request
APPROVAL_TIMED_OUT = "approval_timed_out"  # nobody decided within the policy's timeout
APPROVAL_UNAVAILABLE = "approval_unavailable"  # no admin API in this process to decide it
APPROVAL_QUEUE_FULL = "approval_queue_full"
APPROVAL_INTERRUPTED = "approval_interrupted"  # the proxy stopped while the request waited
RETRY_AFTER_STOP_S = 5  # a restarted proxy listens again within seconds


@dataclass(frozen=True, slots=True)
class Held(Denied):
    hold_id: str = ""
    timeout_s: float = 0.0


def denied_by_person(grant_id: str, reason: str | None) -> Denied:
    # The person's reason is for the agent too: it is what they typed, no request data.
    message = "a person denied this request" + (f": {reason}" if reason else "")
    return Denied(403, REQUEST_DENIED, message, grant_id)


def timed_out(grant_id: str) -> Denied:
    return Denied(403, APPROVAL_TIMED_OUT,
                  "nobody approved this request within the policy's approval_timeout", grant_id)


def interrupted(grant_id: str) -> Denied:
    return Denied(503, APPROVAL_INTERRUPTED,
                  "the proxy stopped while this request waited for approval; nothing was sent, "
                  "send it again", grant_id, retry_after=RETRY_AFTER_STOP_S)
