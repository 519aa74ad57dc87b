"""docs/limits.md's worked example, command by command, with the real openai SDK.

The commands the page shows are run here as written (the grant id filled in); the agent is the
official SDK in its own process with the environment `broker-proxy env --token` prints, talking
to api.openai.com, which `--resolve` points at a local stand-in answering in the Chat
Completions shape. Over the rate the SDK raises RateLimitError; with its retries on, it waits
for Retry-After and succeeds.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker_proxy.devtools import prefork
from broker_proxy.devtools.echo_server import EchoServer, ReceivedRequest
from broker_proxy.devtools.local_pki import LocalPki, write_pki
from broker_proxy.devtools.proxy_process import ProxyProcess
from broker_proxy.home import Home
from tests.conftest import random_master_key

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
DOC = (REPO / "docs" / "limits.md").read_text()
POLICY = REPO / "policies" / "openai-limits.yaml"


def _chat_reply(request: ReceivedRequest) -> tuple[int, dict[str, str], bytes]:
    """A Chat Completions answer as the API documents it."""
    body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": "ok", "refusal": None}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
    return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()


@pytest.fixture(scope="module")
def openai_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EchoServer,
                                                                           LocalPki]]:
    pki = write_pki(tmp_path_factory.mktemp("openai-pki"), ["api.openai.com"])
    server = EchoServer(pki.cert_path, pki.key_path, reply=_chat_reply).start()
    yield server, pki
    server.stop()


def _documented(command: str) -> str:
    assert command in DOC, f"docs/limits.md no longer shows: {command}"
    return command


def test_the_worked_example_runs_as_documented(tmp_path: Path, openai_api) -> None:
    server, pki = openai_api
    home = Home(tmp_path / "home").ensure()
    env = dict(os.environ, BROKER_PROXY_MASTER_KEY=random_master_key())
    # The example policy as shipped, with loopback upstreams allowed for the stand-in.
    policy_file = tmp_path / "openai-limits.yaml"
    policy_file.write_text(POLICY.read_text() + "network:\n  allow_addresses: [127.0.0.0/8]\n")
    _documented("export BROKER_PROXY_POLICY=policies/openai-limits.yaml")
    env["BROKER_PROXY_POLICY"] = str(policy_file)

    def run(command: str, stdin: str | None = None) -> str:
        argv = shlex.split(command)
        assert argv[0] == "broker-proxy"
        argv = [arg.replace("policies/openai-limits.yaml", str(policy_file)) for arg in argv]
        done = prefork.run([sys.executable, "-m", "broker_proxy.cli", "--home",
                               str(home.root), *argv[1:]], input=stdin, capture_output=True,
                              text=True, timeout=60, env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout

    real = "sk-proj-" + secrets.token_urlsafe(32)
    assert "ok" in run(_documented("broker-proxy policy check policies/openai-limits.yaml"))
    run(_documented("broker-proxy secret set openai < key.txt").split(" <")[0], stdin=real)
    proxy = ProxyProcess(home.root, policy_file, upstream_ca=pki.ca_cert_path, env=env,
                         extra_args=[f"--resolve=api.openai.com:443=127.0.0.1:{server.port}"],
                         log_path=tmp_path / "proxy.log").start()
    try:
        issued = json.loads(run(_documented(
            'broker-proxy grant issue --agent research-bot --task "nightly summary" '
            "--secret openai --rate 60/minute --json")))
        shown = run(_documented("broker-proxy grant show GRANT_ID").replace(
            "GRANT_ID", issued["id"]))
        assert "openai=60/minute, burst 10" in shown
        agent_env = {k: v for k, v in os.environ.items()
                     if k.upper() not in {"HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY",
                                          "BROKER_PROXY_MASTER_KEY"}}
        for line in run(f"broker-proxy env --token {issued['token']}").splitlines():
            variable, _, value = shlex.split(line.removeprefix("export "))[0].partition("=")
            agent_env[variable] = value
        agent_env["OPENAI_API_KEY"] = issued["placeholders"]["openai"]
        done = subprocess.run([sys.executable, "-c", AGENT], capture_output=True, text=True,
                              timeout=120, env=agent_env)
        # The $5 budget: what the calls cost, and what is left.
        after = json.loads(run(f"broker-proxy grant show {issued['id']} --json"))
        cost = after["budget"]["openai"]["cost_usd"]
        assert 0 < cost["used"] < 0.01 and cost["left"] == pytest.approx(5 - cost["used"])
    finally:
        proxy.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    assert real not in done.stdout + done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    # The burst of 10 at once, plus at most one earned per second the calls took.
    assert 10 <= answer["ok"] <= 10 + math.ceil(answer["elapsed"])
    assert answer["limited"] == {"status": 429, "code": "rate_limited", "retry_after": "1"}
    assert answer["after_retry"] == "ok"  # the SDK waited for Retry-After, then got through
    carried = [r for r in server.requests if r.header("Authorization") == f"Bearer {real}"]
    assert len(carried) == answer["ok"] + 1  # the refused call never went upstream
    assert real not in home.audit_log.read_text()


AGENT = """
import json, time, openai
client = openai.OpenAI(max_retries=0)  # OPENAI_API_KEY, HTTPS_PROXY, SSL_CERT_FILE from env
ask = dict(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
ok, limited, started = 0, None, time.monotonic()
# Until the first 429: the burst, plus the one a second earned meanwhile (a loaded machine
# takes more than a second for ten calls).
while limited is None and ok < 40:
    try:
        client.chat.completions.create(**ask)
        ok += 1
    except openai.RateLimitError as error:
        limited = {"status": error.status_code, "code": error.response.json()["error"],
                   "retry_after": error.response.headers.get("retry-after")}
elapsed = time.monotonic() - started
patient = openai.OpenAI(max_retries=3)
after = patient.chat.completions.create(**ask).choices[0].message.content
print(json.dumps({"ok": ok, "limited": limited, "after_retry": after, "elapsed": elapsed}))
"""
