"""Two replicas sharing one Redis grant store share their held requests too: a request held by
one replica is listed and approved through the other's admin API, and the limits count both."""

from __future__ import annotations

import os
import secrets
import shutil
import threading
import time
from collections.abc import Iterator

import pytest

from broker_proxy.audit.log import load_key
from broker_proxy.devtools.local_pki import LocalPki
from broker_proxy.devtools.proxy_process import ProxyProcess
from broker_proxy.devtools.redis_server import RedisServer
from broker_proxy.home import Home
from tests.conftest import API_HOST, HOSTS, Upstreams, master_key_in_environment, random_master_key
from tests.test_e2e_replicas import Replicas, Tunnel, _home_with_vault
from tests.test_e2e_request_approval import APPROVAL_POLICY

pytestmark = pytest.mark.e2e


@pytest.fixture
def replicas(tmp_path_factory: pytest.TempPathFactory, pki: LocalPki,
             upstreams: Upstreams) -> Iterator[Replicas]:
    root = tmp_path_factory.mktemp("held-replicas")
    redis_server = RedisServer(root / "redis").start()
    api_key = "sk-replica-" + secrets.token_urlsafe(24)
    env = dict(os.environ, BROKER_PROXY_MASTER_KEY=random_master_key())
    env.pop("BROKER_PROXY_STORE", None)
    policy_file = root / "policy.yaml"
    policy_file.write_text(APPROVAL_POLICY.replace("TIMEOUT", "60s").format(
        api=API_HOST, api_port=upstreams.api.port, egress="egress.invalid"))
    homes = [Home(root / "replica-a"), Home(root / "replica-b")]
    with master_key_in_environment(env["BROKER_PROXY_MASTER_KEY"]):
        for home in homes:
            _home_with_vault(home, api_key)
    load_key(homes[0].audit_key, create=True)
    shutil.copy2(homes[0].audit_key, homes[1].audit_key)
    proxies: list[ProxyProcess] = []
    upstreams.clear()
    try:
        for home, name in zip(homes, ("replica-a", "replica-b"), strict=True):
            proxies.append(ProxyProcess(
                home.root, policy_file, upstream_ca=pki.ca_cert_path,
                resolve={host: "127.0.0.1" for host in HOSTS}, env=env,
                extra_args=["--store", redis_server.url, "--certs", str(root / "ca"),
                            "--replica-id", name],
                log_path=root / f"{name}.log").start())
        yield Replicas(root, redis_server, policy_file, proxies[0], proxies[1], api_key, env,
                       upstreams)
    finally:
        for proxy in proxies:
            proxy.stop()
        redis_server.stop()
    for name in ("replica-a", "replica-b"):
        written = (root / f"{name}.log").read_text(errors="replace")
        written += (root / name / "audit.log").read_text(errors="replace")
        assert api_key not in written, f"a secret value reached {name}'s log or audit log"


def _pending(replicas: Replicas, proxy: ProxyProcess, count: int) -> list[dict]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        answer = replicas.admin(proxy, "GET", "/v1/requests")
        assert answer.status_code == 200, answer.text
        if len(items := answer.json()["requests"]) >= count:
            return items
        time.sleep(0.05)
    raise AssertionError("the held request did not show up on the other replica")


def test_held_by_one_replica_approved_through_the_others_admin_api(replicas: Replicas) -> None:
    grant = replicas.issue(replicas.a)
    answers: dict[str, tuple[int, dict]] = {}

    def agent(path: str) -> None:
        tunnel = Tunnel(replicas.b, replicas.upstreams.api.port, grant["token"])
        try:
            answers[path] = tunnel.get(path)
        finally:
            tunnel.close()

    threads = [threading.Thread(target=agent, args=(path,)) for path in ("/v1/yes", "/v1/no")]
    for thread in threads:
        thread.start()
    items = {item["request"]["path"]: item for item in _pending(replicas, replicas.a, 2)}
    approved_at = time.monotonic()
    approve = replicas.admin(replicas.a, "POST", f"/v1/requests/{items['/v1/yes']['id']}/approve",
                             {"shown_digest": items["/v1/yes"]["shown_digest"]})
    assert approve.status_code == 200, approve.text
    deny = replicas.admin(replicas.a, "POST", f"/v1/requests/{items['/v1/no']['id']}/deny",
                          {"reason": "not this one"})
    assert deny.status_code == 200, deny.text
    for thread in threads:
        thread.join(timeout=15)
    released_in = time.monotonic() - approved_at
    assert answers["/v1/yes"][0] == 200
    assert answers["/v1/no"][0] == 403 and answers["/v1/no"][1]["error"] == "request_denied"
    assert released_in < 3, released_in
    assert replicas.carried() == 1
    [sent] = replicas.upstreams.api.requests
    assert sent.path == "/v1/yes"
    # The decision is recorded by the replica that decided, the hold and the send by the other.
    audit_a = (replicas.root / "replica-a" / "audit.log").read_text()
    audit_b = (replicas.root / "replica-b" / "audit.log").read_text()
    assert items["/v1/yes"]["id"] in audit_a and '"request_approved"' in audit_a
    assert '"held"' in audit_b and '"request_approved"' not in audit_b
    # Both replicas list the same queue: now empty.
    for proxy in (replicas.a, replicas.b):
        assert replicas.admin(proxy, "GET", "/v1/requests").json()["requests"] == []
    print(f"a held request across replicas released {released_in:.2f} s after approval")


def test_a_replica_that_stops_leaves_its_held_request_to_the_other(replicas: Replicas) -> None:
    """Held by replica b, which stops (503 approval_interrupted); approved through a; the
    agent's retry through a goes out, spending that approval."""
    grant = replicas.issue(replicas.a)
    answers: list[tuple[int, dict]] = []

    def agent() -> None:
        tunnel = Tunnel(replicas.b, replicas.upstreams.api.port, grant["token"])
        try:
            answers.append(tunnel.get("/v1/after-stop"))
        finally:
            tunnel.close()

    thread = threading.Thread(target=agent)
    thread.start()
    [item] = _pending(replicas, replicas.a, 1)
    assert replicas.b.stop() == 0
    thread.join(timeout=15)
    assert answers[0][0] == 503 and answers[0][1]["error"] == "approval_interrupted"
    assert [i["id"] for i in _pending(replicas, replicas.a, 1)] == [item["id"]]
    approve = replicas.admin(replicas.a, "POST", f"/v1/requests/{item['id']}/approve", {})
    assert approve.status_code == 200, approve.text
    tunnel = Tunnel(replicas.a, replicas.upstreams.api.port, grant["token"])
    try:
        assert tunnel.get("/v1/after-stop")[0] == 200
    finally:
        tunnel.close()
    assert replicas.carried() == 1
