"""Request rates per grant through the real proxy: 429 rate_limited with Retry-After, audited
and counted, and exact under 200 concurrent requests with one process, `--workers 2` and two
replicas sharing Redis; and the cap on requests in flight (429 concurrency_limited)."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker_proxy.audit.log import load_key
from broker_proxy.devtools import prefork
from broker_proxy.devtools.echo_server import EchoServer, ReceivedRequest
from broker_proxy.devtools.local_pki import LocalPki
from broker_proxy.devtools.proxy_process import ProxyProcess
from broker_proxy.devtools.redis_server import RedisServer
from broker_proxy.home import Home
from broker_proxy.secrets.master_key import load_or_create_master_key
from broker_proxy.secrets.vault import Vault
from tests.conftest import (
    API_HOST,
    E2E_POLICY,
    EGRESS_HOST,
    HOSTS,
    OTHER_HOST,
    UNTRUSTED_HOST,
    Stack,
    Upstreams,
    master_key_in_environment,
    random_master_key,
    start_stack,
)
from tests.e2e_clients import Answer, via_curl, via_httpx

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": "Bearer {{secret:api_key}}"}
LIMIT = 20  # per hour, all of it as burst: nothing refills while a test runs
CONCURRENT = 200
RATED_POLICY = E2E_POLICY.replace("    env: API_KEY\n",
                                  f"    env: API_KEY\n    rate: {LIMIT}/hour\n")
assert RATED_POLICY != E2E_POLICY


def _policy_text(upstreams: Upstreams) -> str:
    return RATED_POLICY.format(
        api=API_HOST, api_port=upstreams.api.port, plain_port=upstreams.plain.port,
        other=OTHER_HOST, other_port=upstreams.other.port, egress=EGRESS_HOST,
        untrusted=UNTRUSTED_HOST, untrusted_port=upstreams.untrusted.port)


@pytest.fixture(scope="module")
def rated(tmp_path_factory: pytest.TempPathFactory, pki: LocalPki,
          upstreams: Upstreams) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("rated"), pki, upstreams, policy=RATED_POLICY)
    yield running
    running.proxy.stop()
    written = (running.root / "proxy.log").read_text(errors="replace")
    written += running.home.audit_log.read_text(errors="replace")
    assert running.api_key not in written


@pytest.fixture(autouse=True)
def _clear(upstreams: Upstreams) -> None:
    upstreams.clear()


def _cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return prefork.run([sys.executable, "-m", "broker_proxy.cli", "--home",
                           str(stack.home.root), *args], capture_output=True, text=True,
                          timeout=60, env=stack.env, stdin=subprocess.DEVNULL)


def _metric(url: str, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()))


def _carried(upstreams: Upstreams, api_key: str) -> int:
    return sum(1 for r in upstreams.api.requests
               if r.header("Authorization") == f"Bearer {api_key}")


def _assert_rate_limited(answer: Answer, grant_id: str, interval_s: int = 3600 // LIMIT) -> None:
    assert answer.status == 429, answer
    body = answer.json()
    assert body["error"] == "rate_limited" and body["grant"] == grant_id
    assert set(body) == {"error", "grant", "message"}  # the shape of every other refusal
    assert 1 <= int(answer.headers["retry-after"]) <= interval_s


def test_200_concurrent_requests_admit_exactly_the_rate(rated: Stack) -> None:
    grant = rated.issue("api_key")
    url = rated.url(rated.upstreams.api, API_HOST, "/v1/rated")
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(
            lambda _: via_httpx(rated, grant.token, "GET", url, headers=AUTH),
            range(CONCURRENT)))
    statuses = sorted(a.status for a in answers)
    assert statuses == [200] * LIMIT + [429] * (CONCURRENT - LIMIT)
    for answer in answers:
        if answer.status == 429:
            _assert_rate_limited(answer, grant.grant.id)
    assert _carried(rated.upstreams, rated.api_key) == LIMIT
    # Counted, and by a bounded label (the secret's name).
    refused = CONCURRENT - LIMIT
    assert _metric(rated.proxy.metrics_url, "broker_rate_limited_total",
                   secret="api_key") == refused
    assert _metric(rated.proxy.metrics_url, "broker_requests_total", decision="deny",
                   reason="rate_limited") == refused
    # Audited, each refusal with its 429, and the chain verifies.
    records = [json.loads(line) for line in rated.home.audit_log.read_text().splitlines()]
    limited = [r for r in records if r.get("reason") == "rate_limited"
               and r.get("grant") == grant.grant.id]
    assert len(limited) == refused and {r["status"] for r in limited} == {429}
    done = _cli(rated, "audit", "verify")
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_rate_limited_request_spends_no_use(rated: Stack) -> None:
    grant = rated.issue("api_key", max_uses=LIMIT + 1)
    url = rated.url(rated.upstreams.api, API_HOST, "/v1/uses")
    answers = [via_httpx(rated, grant.token, "GET", url, headers=AUTH) for _ in range(LIMIT + 5)]
    assert [a.status for a in answers] == [200] * LIMIT + [429] * 5
    shown = json.loads(_cli(rated, "grant", "show", grant.grant.id, "--json").stdout)
    assert shown["uses"] == LIMIT


def test_a_grant_may_ask_for_less_never_more(rated: Stack) -> None:
    done = _cli(rated, "grant", "issue", "--agent", "bot", "--task", "slow task", "--secret",
                "api_key", "--rate", "2/hour", "--policy", str(rated.policy_file), "--json")
    assert done.returncode == 0, done.stderr
    issued = json.loads(done.stdout)
    url = rated.url(rated.upstreams.api, API_HOST, "/v1/less")
    answers = [via_httpx(rated, issued["token"], "GET", url, headers=AUTH) for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 429]
    _assert_rate_limited(answers[2], issued["id"], 1800)
    assert int(answers[2].headers["retry-after"]) > 3600 // LIMIT  # the grant's own, stricter
    shown = _cli(rated, "grant", "show", issued["id"])
    assert "rates:" in shown.stdout and "api_key=2/hour" in shown.stdout
    more = _cli(rated, "grant", "issue", "--agent", "bot", "--task", "greedy", "--secret",
                "api_key", "--rate", "100/hour", "--policy", str(rated.policy_file))
    assert more.returncode != 0
    assert more.stderr.strip().count("\n") == 0 and "more than the policy allows" in more.stderr


def test_workers_share_one_bucket(rated: Stack, pki: LocalPki) -> None:
    rated.proxy.stop()
    workers = ProxyProcess(rated.home.root, rated.policy_file, upstream_ca=pki.ca_cert_path,
                           resolve={host: "127.0.0.1" for host in HOSTS}, env=rated.env,
                           extra_args=["--workers", "2"],
                           log_path=rated.root / "workers.log").start()
    try:
        rated.proxy = workers
        grant = rated.issue("api_key")
        url = rated.url(rated.upstreams.api, API_HOST, "/v1/workers")
        # curl: a new connection per request, so the kernel spreads them over both workers.
        with ThreadPoolExecutor(max_workers=12) as pool:
            answers = list(pool.map(
                lambda _: via_curl(rated, grant.token, "GET", url, headers=AUTH),
                range(CONCURRENT)))
        statuses = sorted(a.status for a in answers)
        assert statuses == [200] * LIMIT + [429] * (CONCURRENT - LIMIT)
        assert _carried(rated.upstreams, rated.api_key) == LIMIT
    finally:
        workers.stop()


# -- two replicas, one Redis ------------------------------------------------------------------


def test_two_replicas_on_redis_share_one_bucket(tmp_path: Path, pki: LocalPki,
                                                upstreams: Upstreams) -> None:
    upstreams.clear()
    redis_server = RedisServer(tmp_path / "redis").start()
    api_key = "sk-rated-" + secrets.token_urlsafe(24)
    env = dict(os.environ, BROKER_PROXY_MASTER_KEY=random_master_key(),
               E2E_OTHER_KEY="ok-" + secrets.token_urlsafe(24))
    env.pop("BROKER_PROXY_STORE", None)
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(_policy_text(upstreams))
    homes = [Home(tmp_path / "replica-a"), Home(tmp_path / "replica-b")]
    with master_key_in_environment(env["BROKER_PROXY_MASTER_KEY"]):
        for home in homes:
            home.ensure()
            Vault(home.vault, load_or_create_master_key(home, create=True)).set("api_key",
                                                                               api_key)
    load_key(homes[0].audit_key, create=True)
    shutil.copy2(homes[0].audit_key, homes[1].audit_key)
    proxies: list[ProxyProcess] = []
    try:
        for home, name in zip(homes, ("replica-a", "replica-b"), strict=True):
            proxies.append(ProxyProcess(
                home.root, policy_file, upstream_ca=pki.ca_cert_path,
                resolve={host: "127.0.0.1" for host in HOSTS}, env=env,
                extra_args=["--store", redis_server.url, "--certs", str(tmp_path / "ca"),
                            "--replica-id", name],
                log_path=tmp_path / f"{name}.log").start())
        done = prefork.run(
            [sys.executable, "-m", "broker_proxy.cli", "--home", str(homes[0].root), "grant",
             "issue", "--agent", "bot", "--task", "replicas", "--secret", "api_key",
             "--policy", str(policy_file), "--json"], capture_output=True, text=True,
            timeout=60, env=env | {"BROKER_PROXY_STORE": redis_server.url})
        assert done.returncode == 0, done.stderr
        token = json.loads(done.stdout)["token"]
        stacks = [Stack(tmp_path, home, policy_file, proxy, upstreams, api_key, "", env)
                  for home, proxy in zip(homes, proxies, strict=True)]
        url = f"https://{API_HOST}:{upstreams.api.port}/v1/replicas"
        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(
                lambda i: via_httpx(stacks[i % 2], token, "GET", url, headers=AUTH),
                range(CONCURRENT)))
        statuses = sorted(a.status for a in answers)
        assert statuses == [200] * LIMIT + [429] * (CONCURRENT - LIMIT)
        assert _carried(upstreams, api_key) == LIMIT
        # Both replicas refused some: the bucket is the store's, not a process's.
        assert all(_metric(p.metrics_url, "broker_rate_limited_total") > 0 for p in proxies)
    finally:
        for proxy in proxies:
            proxy.stop()
        redis_server.stop()


# -- concurrency ------------------------------------------------------------------------------


def _slow_reply(request: ReceivedRequest) -> tuple[int, dict[str, str], bytes]:
    time.sleep(3)  # long enough that every request of the burst arrives while two are held
    return 200, {"Content-Type": "application/json"}, b'{"ok": true}'


def test_concurrency_caps_requests_in_flight(tmp_path: Path, pki: LocalPki,
                                             upstreams: Upstreams) -> None:
    slow = EchoServer(pki.cert_path, pki.key_path, reply=_slow_reply).start()
    policy = E2E_POLICY.replace("    env: API_KEY\n", "    env: API_KEY\n    concurrency: 2\n")
    stack = start_stack(tmp_path, pki, dataclasses.replace(upstreams, api=slow), policy=policy)
    try:
        grant = stack.issue("api_key")
        url = stack.url(slow, API_HOST, "/v1/slow")
        with ThreadPoolExecutor(max_workers=10) as pool:
            answers = list(pool.map(
                lambda _: via_httpx(stack, grant.token, "GET", url, headers=AUTH), range(10)))
        assert sorted(a.status for a in answers) == [200] * 2 + [429] * 8
        refused = next(a for a in answers if a.status == 429)
        assert refused.json()["error"] == "concurrency_limited"
        assert refused.headers["retry-after"] == "1"
        # The slots came back with the answers.
        assert via_httpx(stack, grant.token, "GET", url, headers=AUTH).status == 200
        shown = json.loads(_cli(stack, "grant", "show", grant.grant.id, "--policy",
                                str(stack.policy_file), "--json").stdout)
        assert shown["budget"]["api_key"]["requests_in_flight"] == 0
    finally:
        stack.proxy.stop()
        slow.stop()


def test_a_request_that_never_left_gives_its_slot_back(tmp_path: Path, pki: LocalPki,
                                                      upstreams: Upstreams) -> None:
    # A closed port: the dial is refused, the request never leaves (502 connect_refused,
    # recorded request_not_sent). Its slot must come back with its use, or the next request
    # would be refused concurrency_limited for a request that is not in flight.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused = closed.getsockname()[1]
    closed.close()
    policy = E2E_POLICY.replace(
        "    env: API_KEY\n", "    env: API_KEY\n    concurrency: 1\n").replace(
        "      - host: {untrusted}\n",
        f"      - host: {{api}}\n        port: {refused}\n      - host: {{untrusted}}\n")
    stack = start_stack(tmp_path, pki, upstreams, policy=policy)
    try:
        grant = stack.issue("api_key")
        for _ in range(3):
            failed = via_httpx(stack, grant.token, "GET", f"https://{API_HOST}:{refused}/v1/x",
                               headers=AUTH)
            assert failed.status == 502, failed
            assert failed.json()["kind"] == "connect_refused"
        ok = via_httpx(stack, grant.token, "GET", stack.url(upstreams.api, API_HOST, "/v1/x"),
                       headers=AUTH)
        assert ok.status == 200, ok
        records = [json.loads(line) for line in stack.home.audit_log.read_text().splitlines()]
        assert sum(r["event"] == "request_not_sent" and r["grant"] == grant.grant.id
                   for r in records) == 3
        shown = json.loads(_cli(stack, "grant", "show", grant.grant.id, "--policy",
                                str(stack.policy_file), "--json").stdout)
        assert shown["budget"]["api_key"]["requests_in_flight"] == 0
    finally:
        stack.proxy.stop()
