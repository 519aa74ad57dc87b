"""`run --workers N` supervises its workers: a killed worker is reaped, logged, counted and
started again; a worker that cannot start says so in one line, backs off, takes no connections
(the others answer them), and comes back once it can."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.proc_stats import children as children_of
from broker_proxy.audit.verify import verify_chain
from broker_proxy.devtools.proxy_process import ProxyProcess
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from tests.conftest import API_HOST, HOSTS, Stack, start_stack
from tests.e2e_clients import CLIENTS

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": "Bearer {{secret:api_key}}"}


@pytest.fixture
def group(tmp_path: Path, pki, upstreams) -> Iterator[Stack]:
    stack = start_stack(tmp_path / "workers", pki, upstreams)
    stack.proxy.stop()
    proxy = ProxyProcess(stack.home.root, stack.policy_file, upstream_ca=pki.ca_cert_path,
                         resolve={host: "127.0.0.1" for host in HOSTS}, env=stack.env,
                         extra_args=["--workers", "2"],
                         log_path=stack.root / "workers.log").start()
    stack.proxy = proxy
    yield stack
    proxy.stop()


def _child(stack: Stack, other_than: int | None = None, timeout: float = 15) -> int:
    assert stack.proxy.process is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = [pid for pid in children_of(stack.proxy.process.pid) if pid != other_than]
        if children:
            return children[0]
        time.sleep(0.05)
    raise AssertionError("no worker process")


def _log(stack: Stack) -> str:
    return (stack.root / "workers.log").read_text(errors="replace")


def _wait_for_log(stack: Stack, pattern: str, timeout: float = 15) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := re.search(pattern, _log(stack)):
            return found
        time.sleep(0.05)
    raise AssertionError(f"no log line matching {pattern!r}:\n{_log(stack)[-2000:]}")


def _restarts(stack: Stack) -> float:
    text = urllib.request.urlopen(stack.proxy.metrics_url, timeout=10).read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if sample.name == "broker_worker_restarts_total")


def _uses(stack: Stack, grant_id: str) -> int:
    store = SqliteGrantStore(stack.home.grants_db)
    try:
        grant = store.get(grant_id)
        assert grant is not None
        return grant.uses
    finally:
        store.close()


def test_a_killed_worker_is_logged_counted_and_started_again(group: Stack) -> None:
    stack = group
    grant = stack.issue("api_key", max_uses=10_000)
    url = stack.url(stack.upstreams.api, API_HOST, "/v1/supervised")
    client = CLIENTS["curl"]  # a new connection per request: the kernel spreads them
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            statuses.append(client(stack, grant.token, "GET", url, headers=AUTH).status)

    first = _child(stack)
    loaders = [threading.Thread(target=load) for _ in range(3)]
    for thread in loaders:
        thread.start()
    time.sleep(1.0)
    os.kill(first, signal.SIGKILL)
    _wait_for_log(stack, rf"worker {first} killed by SIGKILL; starting another in 0\.5s")
    second = _child(stack, other_than=first)
    _wait_for_log(stack, rf"worker {second} starting in place of the one that ended")
    time.sleep(1.5)
    stop.set()
    for thread in loaders:
        thread.join(timeout=30)
    assert _restarts(stack) == 1
    # After the restart every request is answered, and by both processes again.
    after = [client(stack, grant.token, "GET", url, headers=AUTH).status for _ in range(20)]
    assert after == [200] * 20
    assert second in children_of(stack.proxy.process.pid)  # type: ignore[union-attr]
    # Only requests in flight on the killed worker could be lost; none was sent unrecorded.
    carried = sum(r.header("Authorization") == f"Bearer {stack.api_key}"
                  for r in stack.upstreams.api.requests)
    assert carried <= _uses(stack, grant.grant.id)
    assert statuses.count(200) + 20 <= carried
    assert "Traceback" not in _log(stack)
    result = verify_chain(stack.home.audit_log, stack.home.audit_key)
    assert result.ok, result.message


def test_a_worker_that_cannot_start_says_so_backs_off_and_comes_back(group: Stack) -> None:
    stack = group
    grant = stack.issue("api_key", max_uses=10_000)
    url = stack.url(stack.upstreams.api, API_HOST, "/v1/supervised")
    good_policy = stack.policy_file.read_text()
    stack.policy_file.write_text(good_policy + "\n  broken: [\n")  # the next start refuses it
    first = _child(stack)
    os.kill(first, signal.SIGKILL)
    _wait_for_log(stack, rf"worker {first} killed by SIGKILL; starting another in 0\.5s")
    # The new worker refuses the policy in one line, exits, and the next try waits longer.
    _wait_for_log(stack, r"worker \d+ exited with status \d+; starting another in 1s")
    _wait_for_log(stack, r"worker \d+ exited with status \d+; starting another in 2s")
    assert re.search(r"policy\.yaml:\d+:\d+: ", _log(stack))
    assert "Traceback" not in _log(stack)
    # Meanwhile no connection is reset: the first process answers them all.
    answers = [CLIENTS["curl"](stack, grant.token, "GET", url, headers=AUTH).status
               for _ in range(20)]
    assert answers == [200] * 20
    # Fixed only while no replacement is half-started: on a loaded machine a start takes seconds,
    # and one that read the fixed policy would stay up without the new start waited for below.
    deadline = time.monotonic() + 60
    while _log(stack).count("starting in place") > _log(stack).count("exited with status"):
        assert time.monotonic() < deadline, "a replacement worker neither started nor exited"
        time.sleep(0.05)
    starts = _log(stack).count("starting in place")
    stack.policy_file.write_text(good_policy)
    # A worker started after the fix stays up (one started just before it may still fail).
    deadline = time.monotonic() + 45
    while True:
        exits = _log(stack).count("exited with status")
        time.sleep(4.0)
        if (_log(stack).count("exited with status") == exits
                and _log(stack).count("starting in place") > starts
                and len(children_of(stack.proxy.process.pid)) == 1):  # type: ignore[union-attr]
            break
        assert time.monotonic() < deadline, "no worker came back after the policy was fixed"
    assert _restarts(stack) >= 3


@pytest.mark.audit_tampered  # its log is cut on purpose and left so
def test_a_worker_that_cannot_open_the_audit_log_leaves_its_connections_answered_503(
        group: Stack) -> None:
    stack = group
    grant = stack.issue("api_key", max_uses=10_000)
    url = stack.url(stack.upstreams.api, API_HOST, "/v1/supervised")
    assert CLIENTS["curl"](stack, grant.token, "GET", url, headers=AUTH).status == 200
    # The live log replaced by something no writer can use: every process must fail closed.
    os.rename(stack.home.audit_log, f"{stack.home.audit_log}.moved")
    os.mkdir(stack.home.audit_log)
    stack.upstreams.clear()
    first = _child(stack)
    os.kill(first, signal.SIGKILL)
    _wait_for_log(stack, r"broker-proxy: cannot open audit log .*audit\.log: Is a directory\n")
    _wait_for_log(stack, r"worker \d+ exited with status 1; starting another in 1s")
    answers = [CLIENTS["curl"](stack, grant.token, "GET", url, headers=AUTH)
               for _ in range(20)]
    # Answered (503, the proxy's JSON), never reset; nothing left unaudited.
    assert [answer.status for answer in answers] == [503] * 20
    assert {answer.json()["error"] for answer in answers} == {"audit_unavailable"}
    assert stack.upstreams.api.requests == []
    assert "Traceback" not in _log(stack)
