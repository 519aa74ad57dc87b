"""Large policies against a real `broker-proxy run`: a reload does not stall requests, and a
newer file wins over a huge one still being read."""

from __future__ import annotations

import hashlib
import re
import statistics
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from broker_proxy.audit.log import AuditLog
from broker_proxy.devtools.local_pki import LocalPki
from tests.conftest import API_HOST, E2E_POLICY, Stack, Upstreams, start_stack
from tests.policy_scale import with_filler

pytestmark = pytest.mark.e2e

API_AUTH = {"Authorization": "Bearer {{secret:api_key}}"}
RELOAD_SECRETS = 20_000  # a few seconds to parse: long enough to probe during, short for a test
HUGE_SECRETS = 100_000  # tens of seconds to parse here: it must never get that far


@pytest.fixture(scope="module")
def scale_stack(tmp_path_factory: pytest.TempPathFactory, pki: LocalPki,
                upstreams: Upstreams) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("scale"), pki, upstreams)
    yield running
    running.proxy.stop()
    written = (running.root / "proxy.log").read_text() + running.home.audit_log.read_text()
    for value in running.secret_values():
        assert value not in written


def base_policy(stack: Stack) -> str:
    ups = stack.upstreams
    return E2E_POLICY.format(
        api=API_HOST, api_port=ups.api.port, plain_port=ups.plain.port, other="other.test",
        other_port=ups.other.port, egress="egress.test", untrusted="untrusted.test",
        untrusted_port=ups.untrusted.port)


def write_policy(stack: Stack, text: str) -> str:
    staging = stack.policy_file.with_suffix(".tmp")
    staging.write_text(text)
    staging.replace(stack.policy_file)
    return hashlib.sha256(text.encode()).hexdigest()


def digest_in_force(stack: Stack) -> str:
    ready = requests.get(stack.proxy.admin_url + "/readyz", timeout=10)
    return ready.json()["checks"]["policy"]["digest"]


def reload_count(stack: Stack, result: str) -> float:
    metrics = requests.get(stack.proxy.metrics_url, timeout=10).text
    found = re.search(rf'^broker_policy_reloads_total{{result="{result}"}} (\S+)$', metrics,
                      re.MULTILINE)
    return float(found.group(1)) if found else 0.0


class Prober:
    """Requests through the proxy, one after another, each with its latency."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.token = stack.issue("api_key").token
        self.latencies: list[float] = []
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def probe(self) -> None:
        proxy = self.stack.proxy.proxy_url(self.token, "bot")
        url = self.stack.url(self.stack.upstreams.api, API_HOST, "/v1/probe")
        started = time.perf_counter()
        try:
            status = requests.get(url, headers=API_AUTH, timeout=30,
                                  proxies={"https": proxy},
                                  verify=str(self.stack.proxy.ca_path)).status_code
        except requests.RequestException:
            status = -1
        self.latencies.append(time.perf_counter() - started)
        self.statuses.append(status)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.probe()
            time.sleep(0.02)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def p99(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.99) - 1)]


def test_requests_keep_answering_while_a_large_policy_reloads(scale_stack: Stack) -> None:
    idle = Prober(scale_stack)
    for _ in range(20):
        idle.probe()
    assert set(idle.statuses) == {200}
    big = with_filler(base_policy(scale_stack), RELOAD_SECRETS)
    oks = reload_count(scale_stack, "ok")
    with Prober(scale_stack) as during:
        big_digest = write_policy(scale_stack, big)
        deadline = time.monotonic() + 120
        while digest_in_force(scale_stack) != big_digest:
            assert time.monotonic() < deadline, scale_stack.proxy.log_tail()
            time.sleep(0.1)
    assert reload_count(scale_stack, "ok") == oks + 1  # the reload did happen, once
    assert len(during.latencies) >= 10, "too few probes to say anything"
    assert set(during.statuses) == {200}, during.statuses
    # Generous: a reload in the proxy's own interpreter stalled probes for seconds.
    print(f"idle p50 {statistics.median(idle.latencies) * 1000:.0f} ms, during the reload "
          f"p50 {statistics.median(during.latencies) * 1000:.0f} ms "
          f"p99 {p99(during.latencies) * 1000:.0f} ms over {len(during.latencies)} probes")
    assert p99(during.latencies) < 2.0
    # The new policy serves: the filler grew the policy, the probe's secret is still there.
    assert idle.token  # the grant from before the reload still works
    idle.probe()
    assert idle.statuses[-1] == 200


def test_a_small_good_policy_written_after_a_huge_one_wins(scale_stack: Stack) -> None:
    superseded = reload_count(scale_stack, "superseded")
    huge_digest = write_policy(scale_stack, with_filler(base_policy(scale_stack), HUGE_SECRETS))
    time.sleep(2.5)  # the watcher looks every second: the huge file is being read by now
    small_digest = write_policy(scale_stack, base_policy(scale_stack) + "# small and good\n")
    deadline = time.monotonic() + 30
    while digest_in_force(scale_stack) != small_digest:
        assert time.monotonic() < deadline, scale_stack.proxy.log_tail()
        time.sleep(0.1)
    assert reload_count(scale_stack, "superseded") == superseded + 1
    time.sleep(3)  # long enough for a stale load to land, were it still running
    assert digest_in_force(scale_stack) == small_digest
    served = [record["policy"] for record in AuditLog.read_records(scale_stack.home.audit_log)
              if record["event"] == "policy_reloaded"]
    assert huge_digest not in served and served[-1] == small_digest
    log = (scale_stack.root / "proxy.log").read_text()
    assert "changed while it was being read" in log
