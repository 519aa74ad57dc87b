"""Two broker replicas sharing one Redis grant store: one truth for grants, uses and revocations,
fail closed while Redis is gone, recover by themselves when it is back.

The Redis server is this module's own, on a free port, so it can be stopped and restarted; a
missing redis-server fails these tests loudly (see broker_proxy/devtools/redis_server.py).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import secrets
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from broker_proxy.audit.log import AuditLog, load_key
from broker_proxy.audit.verify import verify_path
from broker_proxy.devtools import prefork
from broker_proxy.devtools.local_pki import LocalPki
from broker_proxy.devtools.proxy_process import ProxyProcess
from broker_proxy.devtools.redis_server import RedisServer
from broker_proxy.grants.circuit import OPEN_FOR
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
    Upstreams,
    master_key_in_environment,
    random_master_key,
)

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": "Bearer {{secret:api_key}}"}
# A refused request must be answered within this, also while Redis is gone.
BOUND_SECONDS = 5.0


@dataclass
class Replicas:
    root: Path
    redis: RedisServer
    policy_file: Path
    a: ProxyProcess
    b: ProxyProcess
    api_key: str
    env: dict[str, str]
    upstreams: Upstreams

    def cli(self, proxy: ProxyProcess, *args: str) -> subprocess.CompletedProcess[str]:
        """`broker-proxy grant ...` from that replica's home, against the shared store."""
        return prefork.run(
            [sys.executable, "-m", "broker_proxy.cli", "--home", str(proxy.home), *args],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
            env=self.env | {"BROKER_PROXY_STORE": self.redis.url},
        )

    def issue(self, proxy: ProxyProcess, max_uses: int | None = None) -> dict:
        args = ["grant", "issue", "--agent", "bot", "--task", "replica test",
                "--secret", "api_key", "--policy", str(self.policy_file), "--json"]
        if max_uses is not None:
            args += ["--max-uses", str(max_uses)]
        done = self.cli(proxy, *args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def admin(self, proxy: ProxyProcess, method: str, path: str,
              body: object = None) -> requests.Response:
        token = (proxy.home / "admin.token").read_text().strip()
        return requests.request(method, proxy.admin_url + path, json=body, timeout=10,
                                headers={"Authorization": f"Bearer {token}",
                                         "X-Broker-Actor": "replica-tests"})

    def url(self, path: str) -> str:
        return f"https://{API_HOST}:{self.upstreams.api.port}{path}"

    def get(self, proxy: ProxyProcess, token: str, path: str) -> tuple[int, bytes]:
        """One request on a fresh connection; a refused CONNECT reads as its status."""
        address = proxy.proxy_url(token, "bot")
        try:
            answer = requests.get(self.url(path), headers=AUTH, timeout=15,
                                  proxies={"https": address}, verify=str(proxy.ca_path))
        except requests.exceptions.ProxyError as error:
            found = re.search(r"Tunnel connection failed: (\d{3})", str(error))
            return (int(found.group(1)) if found else -1), str(error).encode()
        return answer.status_code, answer.content

    def carried(self) -> int:
        return sum(1 for r in self.upstreams.api.requests
                   if r.header("Authorization") == f"Bearer {self.api_key}")


class Tunnel:
    """One kept-alive CONNECT tunnel through one replica."""

    def __init__(self, proxy: ProxyProcess, port: int, token: str) -> None:
        context = ssl.create_default_context(cafile=str(proxy.ca_path))
        self.connection = http.client.HTTPSConnection(proxy.host, proxy.port, context=context,
                                                      timeout=15)
        credentials = base64.b64encode(f"bot:{token}".encode()).decode()
        self.connection.set_tunnel(API_HOST, port,
                                   headers={"Proxy-Authorization": f"Basic {credentials}"})

    def get(self, path: str) -> tuple[int, dict]:
        self.connection.request("GET", path, headers=AUTH)
        response = self.connection.getresponse()
        body = response.read()
        return response.status, json.loads(body) if body else {}

    def close(self) -> None:
        self.connection.close()


def _home_with_vault(home: Home, api_key: str) -> None:
    home.ensure()
    Vault(home.vault, load_or_create_master_key(home, create=True)).set("api_key", api_key)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, pki: LocalPki,
             upstreams: Upstreams) -> Iterator[Replicas]:
    root = tmp_path_factory.mktemp("replicas")
    redis_server = RedisServer(root / "redis").start()
    api_key = "sk-replica-" + secrets.token_urlsafe(24)
    env = dict(os.environ, BROKER_PROXY_MASTER_KEY=random_master_key(),
               E2E_OTHER_KEY="ok-replica-" + secrets.token_urlsafe(24))
    env.pop("BROKER_PROXY_STORE", None)
    policy_file = root / "policy.yaml"
    policy_file.write_text(E2E_POLICY.format(
        api=API_HOST, api_port=upstreams.api.port, plain_port=upstreams.plain.port,
        other=OTHER_HOST, other_port=upstreams.other.port, egress=EGRESS_HOST,
        untrusted=UNTRUSTED_HOST, untrusted_port=upstreams.untrusted.port))
    # Shared by every replica: the CA, the policy, the audit key, the store. Not shared: the
    # home itself (its audit chain and run.json are the replica's own).
    ca_dir = root / "ca"
    homes = [Home(root / "replica-a"), Home(root / "replica-b")]
    with master_key_in_environment(env["BROKER_PROXY_MASTER_KEY"]):
        for home in homes:
            _home_with_vault(home, api_key)
    load_key(homes[0].audit_key, create=True)
    shutil.copy2(homes[0].audit_key, homes[1].audit_key)
    proxies: list[ProxyProcess] = []
    try:
        for home, name in zip(homes, ("replica-a", "replica-b"), strict=True):
            proxies.append(ProxyProcess(
                home.root, policy_file, upstream_ca=pki.ca_cert_path,
                resolve={host: "127.0.0.1" for host in HOSTS}, env=env,
                extra_args=["--store", redis_server.url, "--certs", str(ca_dir),
                            "--replica-id", name],
                log_path=root / f"{name}.log").start())
        yield Replicas(root, redis_server, policy_file, proxies[0], proxies[1], api_key, env,
                       upstreams)
    finally:
        for proxy in proxies:
            proxy.stop()
        redis_server.stop()
    # Invariant 1 (docs/ARCHITECTURE.md), for both replicas: no secret value in anything they wrote.
    for name in ("replica-a", "replica-b"):
        written = (root / f"{name}.log").read_text(errors="replace")
        written += (root / name / "audit.log").read_text(errors="replace")
        assert api_key not in written, f"a secret value reached {name}'s log or audit log"


@pytest.fixture(autouse=True)
def _redis_running(replicas: Replicas, upstreams: Upstreams) -> None:
    if not replicas.redis.answers():
        replicas.redis.start()
    upstreams.clear()


def test_a_grant_issued_on_one_replica_works_on_the_other(replicas: Replicas) -> None:
    from_cli = replicas.issue(replicas.a)
    assert replicas.get(replicas.b, from_cli["token"], "/v1/cli")[0] == 200
    made = replicas.admin(replicas.b, "POST", "/v1/grants",
                          {"agent": "bot", "task": "admin api", "secrets": ["api_key"]})
    assert made.status_code in (200, 201), made.text
    assert replicas.get(replicas.a, made.json()["token"], "/v1/admin")[0] == 200
    assert replicas.carried() == 2
    listed = replicas.cli(replicas.b, "grant", "list", "--json")
    assert {from_cli["id"], made.json()["id"]} <= {g["id"] for g in json.loads(listed.stdout)}


def test_max_uses_holds_exactly_across_replicas_under_200_concurrent_requests(
    replicas: Replicas,
) -> None:
    grant = replicas.issue(replicas.a, max_uses=37)
    targets = [replicas.a if n % 2 else replicas.b for n in range(200)]
    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(
            lambda proxy: replicas.get(proxy, grant["token"], "/v1/count"), targets))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] * 37 + [403] * 163
    assert {json.loads(body)["error"] for status, body in answers if status == 403} == {
        "grant_used_up"}
    assert replicas.carried() == 37
    shown = replicas.cli(replicas.b, "grant", "show", grant["id"], "--json")
    assert json.loads(shown.stdout)["uses"] == 37


def test_revoke_on_one_replica_blocks_the_next_request_on_the_other(replicas: Replicas) -> None:
    grant = replicas.issue(replicas.a)
    tunnel = Tunnel(replicas.b, replicas.upstreams.api.port, grant["token"])
    try:
        assert tunnel.get("/v1/before")[0] == 200
        revoked = replicas.admin(replicas.a, "POST", f"/v1/grants/{grant['id']}/revoke", {})
        assert revoked.status_code == 200, revoked.text
        status, body = tunnel.get("/v1/after")
    finally:
        tunnel.close()
    assert (status, body["error"]) == (403, "grant_revoked")
    assert [r.path for r in replicas.upstreams.api.requests] == ["/v1/before"]
    # And a revoke from the CLI of either home, on a kept-alive connection of the other.
    second = replicas.issue(replicas.b)
    tunnel = Tunnel(replicas.a, replicas.upstreams.api.port, second["token"])
    try:
        assert tunnel.get("/v1/before")[0] == 200
        assert replicas.cli(replicas.b, "grant", "revoke", second["id"]).returncode == 0
        assert tunnel.get("/v1/after")[1]["error"] == "grant_revoked"
    finally:
        tunnel.close()


def test_redis_gone_fails_closed_with_503_and_its_return_restores_service(
    replicas: Replicas,
) -> None:
    grant = replicas.issue(replicas.a)
    tunnel = Tunnel(replicas.b, replicas.upstreams.api.port, grant["token"])
    try:
        assert tunnel.get("/v1/before")[0] == 200
        replicas.redis.stop()
        started = time.monotonic()
        status, body = tunnel.get("/v1/while-down")  # inside an admitted tunnel
        assert time.monotonic() - started < BOUND_SECONDS
    finally:
        tunnel.close()
    assert (status, body["error"]) == (503, "grant_store_unavailable")
    started = time.monotonic()
    assert replicas.get(replicas.a, grant["token"], "/v1/new-tunnel")[0] == 503  # at CONNECT
    assert time.monotonic() - started < BOUND_SECONDS
    # No request went out unchecked while the store was gone.
    assert [r.path for r in replicas.upstreams.api.requests] == ["/v1/before"]
    metrics = requests.get(replicas.b.metrics_url, timeout=5).text
    assert re.search(r'broker_requests_total\{decision="deny",reason="grant_store_unavailable"\} '
                     r"[1-9]", metrics)

    replicas.redis.start()  # same port; it kept nothing, so grants start afresh
    fresh = replicas.issue(replicas.b)
    for proxy in (replicas.a, replicas.b):  # neither broker was restarted
        # Each broker's circuit (grants/circuit.py) lets a call through again at most
        # OPEN_FOR after its last failure: back within that, by itself.
        deadline = time.monotonic() + OPEN_FOR + 2
        while (status := replicas.get(proxy, fresh["token"], "/v1/back")[0]) == 503:
            assert time.monotonic() < deadline, "the broker did not recover"
            time.sleep(0.1)
        assert status == 200
    # The old token names a grant the empty store does not hold: refused, never let through.
    assert replicas.get(replicas.a, grant["token"], "/v1/old")[0] == 407


def test_each_replica_writes_its_own_verified_chain_naming_itself(replicas: Replicas) -> None:
    grant = replicas.issue(replicas.a)
    assert replicas.get(replicas.a, grant["token"], "/v1/a")[0] == 200
    assert replicas.get(replicas.b, grant["token"], "/v1/b")[0] == 200
    chains = replicas.root / "chains"
    chains.mkdir(exist_ok=True)
    for name, proxy in (("replica-a", replicas.a), ("replica-b", replicas.b)):
        records = list(AuditLog.read_records(proxy.home / "audit.log"))
        by_proxy = [r for r in records if r["event"] in ("proxy_started", "request", "response")]
        assert by_proxy and {r.get("replica") for r in by_proxy} == {name}
        assert any(r.get("path") == f"/v1/{name[-1]}" for r in by_proxy)
        shutil.copy2(proxy.home / "audit.log", chains / f"{name}.log")
    results = verify_path(chains, replicas.a.home / "audit.key")
    assert len(results) == 2 and all(result.ok for result in results), [
        r.message for r in results]
    done = prefork.run(
        [sys.executable, "-m", "broker_proxy.cli", "--home", str(replicas.a.home), "audit",
         "verify", str(chains)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_hung_redis_does_not_stall_the_proxy_for_other_connections(
    replicas: Replicas,
) -> None:
    """With a remote store, decisions run on worker threads: while some wait on a frozen Redis
    (up to its timeouts), the event loop still answers everyone else at once."""
    import signal
    from concurrent.futures import ThreadPoolExecutor

    grant = replicas.issue(replicas.b)
    tunnels = [Tunnel(replicas.b, replicas.upstreams.api.port, grant["token"])
               for _ in range(3)]
    try:
        for tunnel in tunnels:
            assert tunnel.get("/v1/warm")[0] == 200
        assert replicas.redis.process is not None
        replicas.redis.process.send_signal(signal.SIGSTOP)
        try:
            with ThreadPoolExecutor(max_workers=3) as pool:
                waiting = [pool.submit(tunnel.get, "/v1/while-frozen") for tunnel in tunnels]
                time.sleep(0.1)  # the three decisions are now waiting on Redis
                timings = []
                for _ in range(5):
                    started = time.monotonic()
                    status, _ = replicas.get(replicas.b, "", "/v1/no-credentials")
                    timings.append(time.monotonic() - started)
                    assert status == 407
                answers = [future.result(timeout=30) for future in waiting]
        finally:
            replicas.redis.process.send_signal(signal.SIGCONT)
    finally:
        for tunnel in tunnels:
            tunnel.close()
    assert all(status == 503 and body["error"] == "grant_store_unavailable"
               for status, body in answers)
    # Redis answers nothing for 0.5 s per call; the loop answered without waiting for it.
    assert max(timings) < 0.4, timings
