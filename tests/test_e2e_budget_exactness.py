"""200 concurrent LLM requests against one grant's output-token budget: what the grant is
charged never passes its cap: one proxy process and `--workers 2` on one SQLite store, and two
replicas on one Redis.

Each request reserves 10 output tokens and the stand-in reports 7, so between 10 (all admitted
at once) and 14 (each settled before the next) requests fit in a cap of 100; the invariant is
that the tokens charged, read back from the store, never exceed the cap, and match the audit.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import ssl
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from broker_proxy.audit.log import load_key
from broker_proxy.devtools import prefork
from broker_proxy.devtools.echo_server import EchoServer
from broker_proxy.devtools.local_pki import LocalPki, write_pki
from broker_proxy.devtools.proxy_process import ProxyProcess
from broker_proxy.devtools.redis_server import RedisServer
from broker_proxy.grants.issuer import issue_grant
from broker_proxy.grants.redis_store import RedisGrantStore
from broker_proxy.home import Home
from broker_proxy.policy.loader import load_policy
from broker_proxy.secrets.master_key import load_or_create_master_key
from broker_proxy.secrets.vault import Vault
from broker_proxy.time_source import utc_now
from tests.conftest import master_key_in_environment, random_master_key
from tests.llm_stack import PLACEHOLDERS, LlmStack, llm_policy, start_llm_stack
from tests.llm_upstream import LLM_HOSTS, USAGE, llm_reply

pytestmark = pytest.mark.e2e

CAP = 100
RESERVED = 10
CONCURRENT = 200
POLICY = llm_policy(openai="budget: {{output_tokens: 100}}\n")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPki:
    return write_pki(tmp_path_factory.mktemp("llm-pki"), list(LLM_HOSTS))


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory, pki: LocalPki) -> Iterator[LlmStack]:
    upstream = EchoServer(pki.cert_path, pki.key_path, reply=llm_reply).start()
    stack = start_llm_stack(tmp_path_factory.mktemp("exact"), POLICY, upstream, pki)
    yield stack
    stack.proxy.stop()
    upstream.stop()


def _one(stack: LlmStack, token: str) -> int:
    context = ssl.create_default_context(cafile=str(stack.proxy.ca_path))
    with httpx.Client(proxy=stack.proxy.proxy_url(token, "bot"), verify=context,
                      timeout=30) as client:
        return client.post("https://api.openai.com/v1/chat/completions",
                           headers={"Authorization": f"Bearer {PLACEHOLDERS['openai']}"},
                           json={"model": "gpt-4o-mini", "max_tokens": RESERVED,
                                 "messages": [{"role": "user", "content": "hi"}]}).status_code


def _storm(stack: LlmStack) -> None:
    issued = stack.issue("openai")
    stack.upstream.clear()
    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(lambda _: _one(stack, issued.token), range(CONCURRENT)))
    admitted = statuses.count(200)
    assert statuses.count(429) == CONCURRENT - admitted
    assert CAP // RESERVED <= admitted <= CAP // USAGE[1]
    assert stack.carried("openai") == admitted
    done = prefork.run([sys.executable, "-m", "broker_proxy.cli", "--home",
                           str(stack.home.root), "grant", "show", issued.grant.id, "--policy",
                           str(stack.policy_file), "--json"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    charged = json.loads(done.stdout)["budget"]["openai"]["output_tokens"]
    assert charged["in_flight"] == 0
    assert charged["used"] == admitted * USAGE[1] <= CAP


def test_one_process_never_charges_past_the_cap(llm: LlmStack) -> None:
    _storm(llm)


def test_two_workers_never_charge_past_the_cap(llm: LlmStack, pki: LocalPki) -> None:
    llm.proxy.stop()
    pins = [f"--resolve={host}:443=127.0.0.1:{llm.upstream.port}" for host in LLM_HOSTS]
    llm.proxy = ProxyProcess(llm.home.root, llm.policy_file, upstream_ca=pki.ca_cert_path,
                             env=llm.proxy.env, extra_args=[*pins, "--workers", "2"],
                             log_path=llm.root / "workers.log").start()
    _storm(llm)


def test_two_replicas_on_redis_never_charge_past_the_cap(tmp_path: Path, pki: LocalPki) -> None:
    upstream = EchoServer(pki.cert_path, pki.key_path, reply=llm_reply).start()
    redis_server = RedisServer(tmp_path / "redis").start()
    env = dict(os.environ, BROKER_PROXY_MASTER_KEY=random_master_key())
    env.pop("BROKER_PROXY_STORE", None)
    values = {name: f"real-{name}-" + secrets.token_urlsafe(24) for name in PLACEHOLDERS}
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY.format(**PLACEHOLDERS))
    homes = [Home(tmp_path / "replica-a").ensure(), Home(tmp_path / "replica-b").ensure()]
    with master_key_in_environment(env["BROKER_PROXY_MASTER_KEY"]):
        for home in homes:
            vault = Vault(home.vault, load_or_create_master_key(home, create=True))
            for name, value in values.items():
                vault.set(name, value)
    load_key(homes[0].audit_key, create=True)
    shutil.copy2(homes[0].audit_key, homes[1].audit_key)
    pins = [f"--resolve={host}:443=127.0.0.1:{upstream.port}" for host in LLM_HOSTS]
    proxies: list[ProxyProcess] = []
    try:
        for home, name in zip(homes, ("replica-a", "replica-b"), strict=True):
            proxies.append(ProxyProcess(
                home.root, policy_file, upstream_ca=pki.ca_cert_path, env=env,
                extra_args=[*pins, "--store", redis_server.url, "--certs",
                            str(tmp_path / "ca"), "--replica-id", name],
                log_path=tmp_path / f"{name}.log").start())
        stacks = [LlmStack(tmp_path, home, policy_file, proxy, upstream, values)
                  for home, proxy in zip(homes, proxies, strict=True)]
        with RedisGrantStore(redis_server.url) as store:
            grant = issue_grant(load_policy(policy_file), store, agent="bot", task="replicas",
                                secrets=["openai"], ttl=None, max_uses=None, now=utc_now())
            with ThreadPoolExecutor(max_workers=16) as pool:
                statuses = list(pool.map(lambda i: _one(stacks[i % 2], grant.token),
                                         range(CONCURRENT)))
            admitted = statuses.count(200)
            assert statuses.count(429) == CONCURRENT - admitted
            assert CAP // RESERVED <= admitted <= CAP // USAGE[1]
            deadline = time.monotonic() + 10
            while (use := store.budget_use(grant.grant.id)["openai"]).held != (0, 0, 0, 0):
                assert time.monotonic() < deadline, use  # settlements land off the loop
                time.sleep(0.1)
            assert use.used[1] == admitted * USAGE[1] <= CAP
    finally:
        for proxy in proxies:
            proxy.stop()
        redis_server.stop()
        upstream.stop()
