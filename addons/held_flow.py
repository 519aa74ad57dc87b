"""Holding a flow while a person decides, without holding up anything else.

The request hook awaits here: the event loop serves every other connection meanwhile, and the
agent's client just sees a slow answer. The desk calls back on whichever thread decided (the
admin API's, or its poller's when another process decided), so the answer is handed to the
loop with call_soon_threadsafe. A request that is allowed is decided again in full, with the
approval's ticket: the grant may have been revoked or used up while it
waited, and a held request counted against nothing until then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from broker_proxy.approvals.desk import ApprovalDesk, HeldRequest
from broker_proxy.approvals.verdict import Held, denied_by_person, interrupted, timed_out
from broker_proxy.request.outbound import Denied, Verdict

# Held again after an approval only when the request changed, which a flow cannot; a bound
# keeps a bug from looping.
MAX_HOLDS_PER_FLOW = 4


async def decided(desk: ApprovalDesk, held: Held) -> HeldRequest:
    """Wait for the person (or the policy's timeout); returns the held request as it ended."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[HeldRequest] = loop.create_future()

    def settle(item: HeldRequest) -> None:
        if not answer.done():
            answer.set_result(item)

    def settle_on_the_loop(item: HeldRequest) -> None:  # called on the deciding thread
        loop.call_soon_threadsafe(settle, item)

    desk.on_decided(held.hold_id, settle_on_the_loop)
    try:
        return await asyncio.wait_for(asyncio.shield(answer), held.timeout_s)
    except TimeoutError:
        return desk.time_out(held.hold_id)  # a decision that won the race stands


async def verdict_after_approval(desk: ApprovalDesk, held: Held,
                                 decide_again: Callable[[str], Verdict],
                                 waiting: Callable[[str, bool], None] = lambda *_: None
                                 ) -> Verdict:
    """Wait, then either the person's refusal or the broker's decision on the approved request.

    `decide_again(hold_id)` runs on a worker thread: the decision may wait for the grant store's
    lock or the audit log's fsync, which the loop must not. `waiting(hold_id, True)` is told
    which hold the flow waits on (and `False` once it waits no more), so that it can be
    abandoned when its agent goes away.
    """
    loop = asyncio.get_running_loop()
    hold = held
    for _ in range(MAX_HOLDS_PER_FLOW):
        waiting(hold.hold_id, True)
        try:
            item = await decided(desk, hold)
        finally:
            waiting(hold.hold_id, False)
        if item.state in ("abandoned", "pending"):
            # Its agent is gone, or the proxy stops (the item stays pending in a shared store,
            # for the agent's retry to find).
            return interrupted(item.grant)
        if item.state == "denied":
            return denied_by_person(item.grant, item.reason)
        if item.state != "allowed":
            return timed_out(item.grant)
        verdict = await loop.run_in_executor(None, decide_again, item.id)
        if not isinstance(verdict, Held):
            return verdict
        hold = verdict
    return Denied(403, held.error, "this request was held too many times", held.grant_id)
