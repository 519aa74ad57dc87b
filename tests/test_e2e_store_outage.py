"""A Redis grant store outage fails fast after the first failure, through the real proxy.

The proxy runs with `--store redis://...` against a redis-server of this module's own. While
Redis is frozen (SIGSTOP: every call would wait its 0.5 s timeout) or gone (killed), 100
concurrent agents are all answered 503 `grant_store_unavailable` in about the time one is:
the first failure opens the store's circuit (grants/circuit.py) and the rest are refused
without waiting. Nothing reaches the upstream meanwhile, and once Redis is back requests flow
again without restarting the proxy. The listing pages through a Redis store by cursor too.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from benchmarks.grant_scale_bench import mixed_grants
from broker_proxy.audit.log import AuditLog
from broker_proxy.devtools.local_pki import LocalPki
from broker_proxy.devtools.proxy_process import ProxyProcess
from broker_proxy.devtools.redis_server import RedisServer
from broker_proxy.grants.circuit import OPEN_FOR
from broker_proxy.grants.issuer import IssuedGrant, issue_grant
from broker_proxy.grants.paging import walk
from broker_proxy.grants.redis_store import RedisGrantStore
from broker_proxy.home import Home
from broker_proxy.policy.loader import load_policy
from broker_proxy.secrets.master_key import load_or_create_master_key
from broker_proxy.secrets.vault import Vault
from broker_proxy.time_source import utc_now
from tests.conftest import (
    API_HOST,
    E2E_POLICY,
    EGRESS_HOST,
    HOSTS,
    OTHER_HOST,
    UNTRUSTED_HOST,
    Upstreams,
    master_key_in_environment,
    random_master_key,
)

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": "Bearer {{secret:api_key}}"}
AGENTS = 100
# What one refused request costs while Redis is frozen: one command timeout (0.5 s), plus a
# loaded two-core machine running 100 client threads. Before the circuit: p50 6.6 s, max 12.6 s.
ONE_REQUEST_BOUND = 3.0
LISTED = 5_000


@dataclass
class RedisStack:
    root: Path
    redis: RedisServer
    proxy: ProxyProcess
    policy_file: Path
    api_key: str
    upstreams: Upstreams

    def issue(self) -> IssuedGrant:
        with RedisGrantStore(self.redis.url) as store:
            return issue_grant(load_policy(self.policy_file), store, agent="bot",
                               task="outage test", secrets=["api_key"], ttl=None,
                               max_uses=None, now=utc_now(),
                               proxy_url_base=self.proxy.info["listen"])

    def get(self, token: str, path: str) -> tuple[int, float]:
        """(status, seconds) of one request on a fresh connection; a refused CONNECT reads as
        its status."""
        started = time.monotonic()
        try:
            answer = requests.get(f"https://{API_HOST}:{self.upstreams.api.port}{path}",
                                  headers=AUTH, timeout=30, verify=str(self.proxy.ca_path),
                                  proxies={"https": self.proxy.proxy_url(token, "bot")})
            status = answer.status_code
        except requests.exceptions.ProxyError as error:
            found = re.search(r"Tunnel connection failed: (\d{3})", str(error))
            status = int(found.group(1)) if found else -1
        return status, time.monotonic() - started


@pytest.fixture(scope="module")
def redis_stack(tmp_path_factory: pytest.TempPathFactory, pki: LocalPki,
                upstreams: Upstreams) -> Iterator[RedisStack]:
    root = tmp_path_factory.mktemp("outage")
    redis_server = RedisServer(root / "redis").start()
    api_key = "sk-outage-" + secrets.token_urlsafe(24)
    env = dict(os.environ, BROKER_PROXY_MASTER_KEY=random_master_key(),
               E2E_OTHER_KEY="ok-outage-" + secrets.token_urlsafe(24))
    env.pop("BROKER_PROXY_STORE", None)
    policy_file = root / "policy.yaml"
    policy_file.write_text(E2E_POLICY.format(
        api=API_HOST, api_port=upstreams.api.port, plain_port=upstreams.plain.port,
        other=OTHER_HOST, other_port=upstreams.other.port, egress=EGRESS_HOST,
        untrusted=UNTRUSTED_HOST, untrusted_port=upstreams.untrusted.port))
    home = Home(root / "home").ensure()
    with master_key_in_environment(env["BROKER_PROXY_MASTER_KEY"]):
        Vault(home.vault, load_or_create_master_key(home, create=True)).set("api_key", api_key)
    proxy = ProxyProcess(home.root, policy_file, upstream_ca=pki.ca_cert_path,
                         resolve={host: "127.0.0.1" for host in HOSTS}, env=env,
                         extra_args=["--store", redis_server.url],
                         log_path=root / "proxy.log")
    try:
        proxy.start()
        yield RedisStack(root, redis_server, proxy, policy_file, api_key, upstreams)
    finally:
        proxy.stop()
        redis_server.stop()
    written = (root / "proxy.log").read_text(errors="replace") + home.audit_log.read_text()
    assert api_key not in written


@pytest.fixture(autouse=True)
def _redis_running(redis_stack: RedisStack, upstreams: Upstreams) -> None:
    if not redis_stack.redis.answers():
        redis_stack.redis.start()
    upstreams.clear()


def _hundred_at_once(stack: RedisStack, token: str, path: str) -> list[tuple[int, float]]:
    with ThreadPoolExecutor(max_workers=AGENTS) as pool:
        return list(pool.map(lambda _: stack.get(token, path), range(AGENTS)))


def _recovered(stack: RedisStack, token: str) -> float:
    """Seconds until a request is let through again (asserted within a few seconds)."""
    started = time.monotonic()
    while time.monotonic() - started < 3 * OPEN_FOR + 5:
        if stack.get(token, "/v1/back")[0] == 200:
            return time.monotonic() - started
        time.sleep(0.1)
    pytest.fail("the proxy did not recover after Redis came back")


def _report(label: str, answers: list[tuple[int, float]]) -> tuple[float, float]:
    seconds = sorted(s for _, s in answers)
    p50, worst = statistics.median(seconds), seconds[-1]
    print(f"{label}: {len(answers)} requests, p50 {p50:.2f} s, max {worst:.2f} s")
    return p50, worst


def test_a_frozen_redis_answers_100_concurrent_agents_in_about_the_time_of_one(
    redis_stack: RedisStack,
) -> None:
    grant = redis_stack.issue()
    assert redis_stack.get(grant.token, "/v1/before")[0] == 200
    process = redis_stack.redis.process
    assert process is not None
    process.send_signal(signal.SIGSTOP)
    try:
        answers = _hundred_at_once(redis_stack, grant.token, "/v1/while-frozen")
    finally:
        process.send_signal(signal.SIGCONT)
    p50, worst = _report("redis SIGSTOP", answers)
    assert {status for status, _ in answers} == {503}
    assert worst < ONE_REQUEST_BOUND, (p50, worst)
    assert [r.path for r in redis_stack.upstreams.api.requests] == ["/v1/before"]
    print(f"recovered {_recovered(redis_stack, grant.token):.2f} s after SIGCONT")
    records = list(AuditLog.read_records(redis_stack.proxy.home / "audit.log"))
    refused = [r for r in records if r.get("reason") == "grant_store_unavailable"]
    assert len(refused) >= AGENTS  # every refusal is on the record
    metrics = requests.get(redis_stack.proxy.metrics_url, timeout=5).text
    assert re.search(r'broker_requests_total\{decision="deny",reason="grant_store_unavailable"\} '
                     r"[1-9]", metrics)


def test_a_stopped_redis_answers_100_concurrent_agents_fast_and_recovers_on_restart(
    redis_stack: RedisStack,
) -> None:
    grant = redis_stack.issue()
    assert redis_stack.get(grant.token, "/v1/before")[0] == 200
    redis_stack.redis.stop()
    answers = _hundred_at_once(redis_stack, grant.token, "/v1/while-stopped")
    p50, worst = _report("redis stopped", answers)
    assert {status for status, _ in answers} == {503}
    assert worst < ONE_REQUEST_BOUND, (p50, worst)
    redis_stack.redis.start()  # same port, empty: the old grant is gone with it
    fresh = redis_stack.issue()
    print(f"recovered {_recovered(redis_stack, fresh.token):.2f} s after restart")
    assert [r.path for r in redis_stack.upstreams.api.requests] == ["/v1/before", "/v1/back"]


def test_the_admin_api_pages_through_a_redis_store_by_cursor(redis_stack: RedisStack) -> None:
    with RedisGrantStore(redis_stack.redis.url) as store:
        store.load_many(mixed_grants(LISTED, utc_now()))
        expected = {grant.id for grant in walk(store)}
    token = (redis_stack.proxy.home / "admin.token").read_text().strip()
    seen: list[str] = []
    cursor: str | None = None
    while True:
        answer = requests.get(f"{redis_stack.proxy.admin_url}/v1/grants", timeout=30,
                              params={"limit": 700, **({"after": cursor} if cursor else {})},
                              headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200 and len(answer.json()) <= 700
        seen += [grant["id"] for grant in answer.json()]
        cursor = answer.headers.get("X-Next-Cursor")
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) and set(seen) == expected
    assert len(expected) >= LISTED
