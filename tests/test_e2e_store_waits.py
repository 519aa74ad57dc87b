"""Waits on the grant store are bounded per request, through the real proxy and real processes.

Another process holds the SQLite store's write lock (`BEGIN IMMEDIATE`, then sleeps) while
secret-carrying requests arrive: each of them, the first and the last alike, is answered 503
`grant_store_unavailable` within the documented bound (STORE_WAIT_SECONDS from its arrival),
nothing reaches the upstream, and requests that carry no placeholder (they write nothing to the
store) are answered at once throughout.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from broker_proxy.audit.log import AuditLog
from broker_proxy.audit.verify import verify_path
from broker_proxy.grants.store import STORE_WAIT_SECONDS
from tests.conftest import API_HOST, EGRESS_HOST, Stack
from tests.e2e_clients import via_curl

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": "Bearer {{secret:api_key}}"}
WRITERS = 6  # more than the proxy's four store-writer threads
HOLD_SECONDS = 12.0  # longer than the bound: every writer must give up, none may get through
SLACK = 1.5  # process start-up, curl, a loaded two-core machine

# Holds the write lock of the store at argv[1] for argv[2] seconds; says "locked" once it has it.
LOCK_HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


@pytest.fixture
def lock_holder(stack: Stack) -> Iterator[subprocess.Popen[str]]:
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(stack.home.grants_db),
                               str(HOLD_SECONDS)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def _timed(call, *args, **kwargs):  # type: ignore[no-untyped-def]
    started = time.monotonic()
    answer = call(*args, **kwargs)
    return answer, time.monotonic() - started


def test_writers_behind_a_held_sqlite_lock_are_each_answered_503_within_the_bound(
    stack: Stack, request: pytest.FixtureRequest,
) -> None:
    grant = stack.issue("api_key")
    api_url = stack.url(stack.upstreams.api, API_HOST, "/v1/locked")
    egress_url = stack.url(stack.upstreams.egress, EGRESS_HOST, "/simple/")
    # Warm up the tunnel path once so the timings below are the store's, not start-up's.
    assert via_curl(stack, grant.token, "GET", egress_url).status == 200
    request.getfixturevalue("lock_holder")
    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        writers = [pool.submit(_timed, via_curl, stack, grant.token, "GET", api_url,
                               headers=AUTH) for _ in range(WRITERS)]
        time.sleep(0.5)  # the writers now wait for the lock
        plain = [_timed(via_curl, stack, grant.token, "GET", egress_url) for _ in range(5)]
        answers = [future.result(timeout=60) for future in writers]
    print(f"{WRITERS} writers behind a lock held {HOLD_SECONDS:.0f} s, answered after "
          f"{', '.join(f'{s:.2f}' for _, s in answers)} s; requests without a placeholder "
          f"meanwhile {', '.join(f'{s:.2f}' for _, s in plain)} s")
    for answer, seconds in answers:
        assert (answer.status, answer.json()["error"]) == (503, "grant_store_unavailable")
        assert seconds < STORE_WAIT_SECONDS + SLACK, [s for _, s in answers]
    # A request without a placeholder writes nothing to the store: never queued behind those.
    for answer, seconds in plain:
        assert answer.status == 200
        assert seconds < 1.5, [s for _, s in plain]
    # Nothing carrying the secret went upstream, and the audit says why each was refused.
    assert not any(r.header("Authorization") for r in stack.upstreams.api.requests)
    records = [r for r in AuditLog.read_records(stack.home.audit_log)
               if r.get("grant") == grant.grant.id and r.get("path") == "/v1/locked"]
    assert [(r["decision"], r["reason"], r["status"]) for r in records] == [
        ("deny", "grant_store_unavailable", 503)] * WRITERS
    assert all(result.ok for result in verify_path(stack.home.audit_log, stack.home.audit_key))


def test_once_the_lock_is_released_secret_carrying_requests_flow_again(
    stack: Stack, request: pytest.FixtureRequest,
) -> None:
    grant = stack.issue("api_key", max_uses=5)
    lock_holder = request.getfixturevalue("lock_holder")
    lock_holder.kill()
    lock_holder.wait()
    answer = via_curl(stack, grant.token, "GET",
                      stack.url(stack.upstreams.api, API_HOST, "/v1/after"), headers=AUTH)
    assert answer.status == 200
    assert [r.header("Authorization") for r in stack.upstreams.api.requests] == [
        f"Bearer {stack.api_key}"]
