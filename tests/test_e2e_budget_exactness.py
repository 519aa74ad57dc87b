"""200 concurrent LLM requests against one grant's output-token budget: what the grant is
charged never passes its cap, with one proxy process and with `--workers 2` on one SQLite store.

Each request reserves 10 output tokens and the stand-in reports 7, so between 10 (all admitted
at once) and 14 (each settled before the next) requests fit in a cap of 100; the invariant is
that the tokens charged, read back from the store, never exceed the cap, and match the audit.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from broker_proxy.devtools.echo_server import EchoServer
from broker_proxy.devtools.local_pki import LocalPki, write_pki
from broker_proxy.devtools.proxy_process import ProxyProcess
from tests.llm_stack import PLACEHOLDERS, LlmStack, start_llm_stack
from tests.llm_upstream import LLM_HOSTS, USAGE, llm_reply

pytestmark = pytest.mark.e2e

CAP = 100
RESERVED = 10
CONCURRENT = 200
POLICY = """\
version: 1
secrets:
  openai:
    from: vault
    placeholder: "{openai}"
    destinations: [{{host: api.openai.com}}]
    budget: {{output_tokens: 100}}
  anthropic:
    from: vault
    placeholder: "{anthropic}"
    destinations: [{{host: api.anthropic.com}}]
  gemini:
    from: vault
    placeholder: "{gemini}"
    destinations: [{{host: generativelanguage.googleapis.com}}]
agents:
  bot:
    secrets: [openai, anthropic, gemini]
network:
  allow_addresses: [127.0.0.0/8]
"""


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
    done = subprocess.run([sys.executable, "-m", "broker_proxy.cli", "--home",
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
