"""Blocking work stays off the event loop: one slow request never stalls the others.

Another process holds `BEGIN EXCLUSIVE` on the grant database, so the secret-carrying request
that must reserve a use waits (up to SQLite's 5 s busy timeout, then 503). Meanwhile a request
on another grant that spends no use must be answered at once.
"""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from tests.conftest import API_HOST, EGRESS_HOST, Stack
from tests.e2e_clients import Answer, via_requests

pytestmark = pytest.mark.e2e


def test_a_request_waiting_for_the_grant_store_lock_stalls_no_other(stack: Stack) -> None:
    waiting_grant, other_grant = stack.issue("api_key"), stack.issue("api_key")
    holder = sqlite3.connect(stack.home.grants_db, isolation_level=None, timeout=10)
    holder.execute("BEGIN EXCLUSIVE")
    waiting: list[Answer] = []
    try:
        slow = threading.Thread(target=lambda: waiting.append(via_requests(
            stack, waiting_grant.token, "GET",
            stack.url(stack.upstreams.api, API_HOST, "/v1/needs-a-use"),
            headers={"Authorization": "Bearer {{secret:api_key}}"})))
        slow.start()
        time.sleep(1.0)  # the secret request is now waiting for the lock
        started = time.monotonic()
        other = via_requests(stack, other_grant.token, "GET",
                             stack.url(stack.upstreams.egress, EGRESS_HOST, "/plain"))
        took = time.monotonic() - started
        still_waiting = slow.is_alive()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    slow.join(timeout=30)
    assert other.status == 200
    assert took < 2.0, f"a request that needs no lock waited {took:.1f} s behind one that does"
    assert still_waiting, "the secret request did not wait for the lock"
    assert waiting and waiting[0].status in (200, 503)
