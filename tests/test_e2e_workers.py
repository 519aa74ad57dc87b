"""`broker-proxy run --workers N`: several processes on one port, one truth."""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.proc_stats import children as children_of
from benchmarks.proc_stats import cpu_seconds
from broker_proxy.devtools import prefork
from broker_proxy.devtools.proxy_process import ProxyProcess
from tests.conftest import API_HOST, HOSTS, Stack, start_stack
from tests.e2e_clients import CLIENTS

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": "Bearer {{secret:api_key}}"}


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory, pki, upstreams) -> Stack:
    stack = start_stack(tmp_path_factory.mktemp("workers"), pki, upstreams)
    stack.proxy.stop()
    proxy = ProxyProcess(stack.home.root, stack.policy_file, upstream_ca=pki.ca_cert_path,
                         resolve={host: "127.0.0.1" for host in HOSTS}, env=stack.env,
                         extra_args=["--workers", "2"],
                         log_path=stack.root / "workers.log").start()
    stack.proxy = proxy
    yield stack
    proxy.stop()


def test_two_workers_share_the_port_and_max_uses(two_workers: Stack) -> None:
    stack = two_workers
    assert stack.proxy.process is not None
    parent = stack.proxy.process.pid
    (child,) = children_of(parent)
    before = {pid: cpu_seconds(pid) for pid in (parent, child)}
    grant = stack.issue("api_key", max_uses=30)
    client = CLIENTS["curl"]  # a new connection per request, so the kernel spreads them
    url = stack.url(stack.upstreams.api, API_HOST, "/v1/workers")
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda _: client(stack, grant.token, "GET", url, headers=AUTH),
                                range(60)))
    assert sorted(a.status for a in answers) == [200] * 30 + [403] * 30
    carried = [r for r in stack.upstreams.api.requests
               if r.header("Authorization") == f"Bearer {stack.api_key}"]
    assert len(carried) == 30
    used = {pid: cpu_seconds(pid) - before[pid] for pid in (parent, child)}
    assert all(seconds > 0.05 for seconds in used.values()), used


def requests_counted(stack: Stack) -> dict[str, float]:
    """broker_requests_total by decision, and the injections, as /metrics serves them."""
    text = urllib.request.urlopen(stack.proxy.metrics_url, timeout=10).read().decode()
    counted: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "broker_requests_total":
                decision = sample.labels["decision"]
                counted[decision] = counted.get(decision, 0) + sample.value
            elif sample.name == "broker_injections_total":
                counted["injections"] = counted.get("injections", 0) + sample.value
    return counted


def test_metrics_count_every_workers_requests(two_workers: Stack) -> None:
    stack = two_workers
    assert stack.proxy.process is not None
    parent = stack.proxy.process.pid
    (child,) = children_of(parent)
    served_before = cpu_seconds(child)
    before = requests_counted(stack)
    grant = stack.issue("api_key", max_uses=25)
    client = CLIENTS["curl"]  # a new connection per request: both workers answer some
    url = stack.url(stack.upstreams.api, API_HOST, "/v1/workers-metrics")
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda _: client(stack, grant.token, "GET", url, headers=AUTH),
                                range(40)))
    assert sorted(a.status for a in answers) == [200] * 25 + [403] * 15
    assert cpu_seconds(child) - served_before > 0.05  # the second worker served too
    after = requests_counted(stack)
    # Without shared metrics the first worker would report only the requests it decided.
    assert sum(after.get(d, 0) - before.get(d, 0) for d in ("allow", "deny")) == 40
    assert after.get("allow", 0) - before.get("allow", 0) == 25
    assert after.get("deny", 0) - before.get("deny", 0) == 15
    assert after.get("injections", 0) - before.get("injections", 0) == 25
    stack.issue("api_key", max_uses=5)  # unused, so active
    time.sleep(0.3)  # scrapes closer together than 0.2 s reuse the last grant sweep
    grants = {sample.name: sample.value for family in text_string_to_metric_families(
        urllib.request.urlopen(stack.proxy.metrics_url, timeout=10).read().decode())
        for sample in family.samples}
    assert grants["broker_grants_active"] >= 1  # the first worker's gauge, served once


def test_secret_set_returns_once_every_worker_scrubs_the_new_value(two_workers: Stack) -> None:
    stack = two_workers
    assert stack.proxy.process is not None
    parent = stack.proxy.process.pid
    (child,) = children_of(parent)
    acks = stack.home.root / "scrub-acks"
    assert sorted(ack.name for ack in acks.iterdir()) == sorted([str(parent), str(child)])
    new = "sk-e2e-rotated-" + secrets.token_urlsafe(24)
    done = prefork.run([sys.executable, "-m", "broker_proxy.cli", "--home",
                           str(stack.home.root), "secret", "set", "api_key"], input=new,
                          capture_output=True, text=True, timeout=60, env=stack.env)
    assert done.returncode == 0, done.stderr
    assert "running proxy confirmed" in done.stdout and "(2 processes)" in done.stdout
    # Right away, whichever worker answers: an echo of the new value comes back scrubbed,
    # though no request injected it yet.
    grant = stack.issue("api_key")
    url = stack.url(stack.upstreams.api, API_HOST, "/v1/rotated")
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda _: CLIENTS["curl"](
            stack, grant.token, "GET", url, headers={"X-Shown": new}), range(8)))
    assert all(a.status == 200 and new.encode() not in a.body for a in answers)
    assert all(b"{{secret:api_key}}" in a.body for a in answers)
    written = (stack.root / "workers.log").read_text(errors="replace")
    written += stack.home.audit_log.read_text(errors="replace")
    assert new not in written


def test_stopping_the_first_worker_stops_the_group(two_workers: Stack) -> None:
    stack = two_workers
    assert stack.proxy.process is not None
    (child,) = children_of(stack.proxy.process.pid)
    stack.proxy.process.send_signal(signal.SIGTERM)
    stack.proxy.process.wait(timeout=15)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the second worker outlived the first")
    assert not stack.home.runtime.exists()
