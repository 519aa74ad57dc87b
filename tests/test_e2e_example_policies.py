"""Each shipped example policy works with the SDK a user installs today.

The real SDK (openai, anthropic, boto3) or the REST shape its users send (GitHub, Slack, via
requests) runs in its own process with exactly the environment `broker-proxy env --token`
prints, talks to the real host name on port 443, and reaches a local stand-in through
`--resolve HOST:443=127.0.0.1:PORT`. The policy is the example file itself, with only its
secret sources switched to the vault (no 1Password, keyring or Slack token here) and loopback
upstreams allowed.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from broker_proxy.devtools import prefork
from broker_proxy.devtools.echo_server import EchoServer, ReceivedRequest
from broker_proxy.devtools.local_pki import LocalPki, write_pki
from broker_proxy.devtools.proxy_process import ProxyProcess
from broker_proxy.home import Home
from broker_proxy.secrets.master_key import load_or_create_master_key
from broker_proxy.secrets.vault import Vault
from tests.conftest import master_key_in_environment, random_master_key
from tests.replay_property import assert_replay_unchanged

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
REAL_HOSTS = ("api.openai.com", "api.anthropic.com", "api.github.com", "slack.com",
              "sts.amazonaws.com", "sts.us-east-1.amazonaws.com", "s3.us-east-1.amazonaws.com",
              "acme-reports.s3.us-east-1.amazonaws.com", "s3.amazonaws.com",
              "acme-reports.s3.amazonaws.com")

_STS = (b'<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
        b"<GetCallerIdentityResult><Arn>arn:aws:iam::123456789012:user/agent</Arn>"
        b"<UserId>AIDAEXAMPLE</UserId><Account>123456789012</Account>"
        b"</GetCallerIdentityResult><ResponseMetadata><RequestId>1</RequestId>"
        b"</ResponseMetadata></GetCallerIdentityResponse>")
_S3_LIST = (b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            b"<Name>acme-reports</Name><Prefix></Prefix><KeyCount>0</KeyCount>"
            b"<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated></ListBucketResult>")


def _api_reply(request: ReceivedRequest) -> tuple[int, dict[str, str], bytes]:
    """A minimal well-formed answer of the real API, so each SDK parses it without error."""
    host = (request.header("Host") or "").split(":")[0]
    if host.startswith("sts."):
        return 200, {"Content-Type": "text/xml"}, _STS
    if host.endswith(("s3.us-east-1.amazonaws.com", "s3.amazonaws.com")):
        return 200, {"Content-Type": "application/xml"}, _S3_LIST
    if host == "api.anthropic.com":
        body = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
                "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}
    elif host == "api.openai.com":
        body = {"object": "list", "data": [{"id": "gpt-x", "object": "model", "created": 0,
                                            "owned_by": "openai"}]}
    else:
        body = {"ok": True}
    return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EchoServer, LocalPki]]:
    pki = write_pki(tmp_path_factory.mktemp("real-names-pki"), list(REAL_HOSTS))
    server = EchoServer(pki.cert_path, pki.key_path, reply=_api_reply).start()
    yield server, pki
    server.stop()


@dataclass
class Example:
    """One example policy running in its own proxy, and a grant of it for one agent."""

    proxy: ProxyProcess
    home: Home
    values: dict[str, str]  # secret name -> the random real value in the vault
    agent_env: dict[str, str]  # what `broker-proxy env --token` printed, plus the placeholders
    placeholders: dict[str, str]


def _cli(home: Home, env: dict[str, str], *args: str) -> str:
    done = prefork.run([sys.executable, "-m", "broker_proxy.cli", "--home", str(home.root),
                           *args], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def start_example(root: Path, name: str, agent: str, grant: list[str],
                  values: dict[str, str], api: tuple[EchoServer, LocalPki]) -> Example:
    server, pki = api
    policy = yaml.safe_load((REPO / "policies" / name).read_text())
    for secret in policy["secrets"].values():
        secret["from"] = "vault"
        for key in ("command", "timeout", "cache_ttl"):
            secret.pop(key, None)
    policy["network"] = {"allow_addresses": ["127.0.0.0/8"]}
    root.mkdir(parents=True)
    policy_file = root / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    home = Home(root / "home").ensure()
    env = dict(os.environ, BROKER_PROXY_MASTER_KEY=random_master_key())
    vault = Vault(home.vault, _master_key(home, env))
    for secret, value in values.items():
        vault.set(secret, value)
    pins = [f"--resolve={host}:443=127.0.0.1:{server.port}" for host in REAL_HOSTS]
    proxy = ProxyProcess(home.root, policy_file, upstream_ca=pki.ca_cert_path, env=env,
                         extra_args=pins, log_path=root / "proxy.log").start()
    issued = json.loads(_cli(home, env, "grant", "issue", "--policy", str(policy_file),
                             "--agent", agent, "--task", "sdk e2e",
                             *[f"--secret={s}" for s in grant], "--json"))
    exports = _cli(home, env, "env", "--token", issued["token"])
    # The agent's shell as a user has it, with a CA variable of its own that must not win.
    agent_env = {k: v for k, v in os.environ.items()
                 if k.upper() not in {"HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY",
                                      "BROKER_PROXY_MASTER_KEY"}}
    agent_env["AWS_CA_BUNDLE"] = "/etc/ssl/certs/not-the-proxy-ca.pem"
    for line in exports.splitlines():
        assignment = shlex.split(line.removeprefix("export "))[0]
        variable, _, value = assignment.partition("=")
        agent_env[variable] = value
    placeholders = issued["placeholders"]
    for secret, placeholder in placeholders.items():
        if (variable := policy["secrets"][secret].get("env")) is not None:
            agent_env[variable] = placeholder
    return Example(proxy, home, values, agent_env, placeholders)


def _master_key(home: Home, env: dict[str, str]) -> bytes:
    """The vault key the proxy will find in its environment (the variable is read here too)."""
    with master_key_in_environment(env["BROKER_PROXY_MASTER_KEY"]):
        return load_or_create_master_key(home, create=True)


def run_agent(example: Example, script: str, extra_env: dict[str, str] | None = None) -> dict:
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=90, env=example.agent_env | (extra_env or {}))
    assert done.returncode == 0, done.stderr[-3000:]
    for value in example.values.values():
        assert value not in done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def upstream(api: tuple[EchoServer, LocalPki]) -> EchoServer:
    api[0].clear()
    return api[0]


def _stop(example: Example) -> None:
    example.proxy.stop()
    written = example.home.audit_log.read_text()
    for value in example.values.values():
        assert value not in written
    assert_replay_unchanged(example.home.audit_log, example.home.root.parent / "policy.yaml")


def test_openai_example_with_the_openai_sdk(tmp_path: Path, api, upstream: EchoServer) -> None:
    real = "sk-proj-" + secrets.token_urlsafe(32)
    example = start_example(tmp_path / "openai", "openai.yaml", "research-bot", ["openai"],
                            {"openai": real}, api)
    try:
        answer = run_agent(example, """
import json, openai
client = openai.OpenAI()  # OPENAI_API_KEY, HTTPS_PROXY and SSL_CERT_FILE from the environment
models = client.models.list()
print(json.dumps({"ids": [m.id for m in models.data]}))
""")
    finally:
        _stop(example)
    assert answer == {"ids": ["gpt-x"]}
    [received] = upstream.requests
    assert (received.method, received.path) == ("GET", "/v1/models")
    assert received.header("Authorization") == f"Bearer {real}"
    assert received.sni == "api.openai.com"


def test_anthropic_example_with_the_anthropic_sdk(tmp_path: Path, api,
                                                  upstream: EchoServer) -> None:
    real = "sk-ant-api03-" + secrets.token_urlsafe(32)
    example = start_example(tmp_path / "anthropic", "anthropic.yaml", "writer", ["anthropic"],
                            {"anthropic": real}, api)
    try:
        answer = run_agent(example, """
import json, anthropic
client = anthropic.Anthropic()  # ANTHROPIC_API_KEY from the environment
message = client.messages.create(model="claude-x", max_tokens=1,
                                 messages=[{"role": "user", "content": "hi"}])
print(json.dumps({"text": message.content[0].text}))
""")
    finally:
        _stop(example)
    assert answer == {"text": "hi"}
    [received] = upstream.requests
    assert (received.method, received.path) == ("POST", "/v1/messages")
    sent = {name.lower(): value for name, value in received.headers}
    # Whichever header this SDK version uses, it carries the real key and nothing else does.
    assert real in (sent.get("authorization", "").removeprefix("Bearer "), sent.get("x-api-key"))
    assert not received.contains(example.placeholders["anthropic"])


def test_github_example_with_the_rest_shape_of_gh_and_octokit(tmp_path: Path, api,
                                                              upstream: EchoServer) -> None:
    real = "ghp_" + secrets.token_urlsafe(27)
    example = start_example(tmp_path / "github", "github.yaml", "coder", ["github-api"],
                            {"github-api": real, "github-git": "unused"}, api)
    try:
        answer = run_agent(example, """
import json, os, requests
answer = requests.get("https://api.github.com/user", timeout=30, headers={
    "Authorization": "Bearer " + os.environ["GH_TOKEN"], "Accept": "application/vnd.github+json"})
print(json.dumps({"status": answer.status_code, "body": answer.text[:300]}))
""")
    finally:
        _stop(example)
    assert answer["status"] == 200, answer
    [received] = upstream.requests
    assert received.header("Authorization") == f"Bearer {real}"


def test_slack_example_with_the_rest_shape_of_slack_sdks(tmp_path: Path, api,
                                                         upstream: EchoServer) -> None:
    real = "xoxb-" + secrets.token_hex(20)
    example = start_example(tmp_path / "slack", "slack.yaml", "notifier", ["slack-bot"],
                            {"slack-bot": real}, api)
    try:
        answer = run_agent(example, """
import json, requests
answer = requests.post("https://slack.com/api/chat.postMessage", timeout=30,
                       json={"channel": "C1", "text": "done"})
print(json.dumps({"status": answer.status_code, "ok": answer.json()["ok"]}))
""")
    finally:
        _stop(example)
    assert answer == {"status": 200, "ok": True}
    [received] = upstream.requests
    assert received.header("Authorization") == f"Bearer {real}"


def test_aws_example_with_boto3(tmp_path: Path, api, upstream: EchoServer) -> None:
    real = {"access_key_id": "AKIA" + secrets.token_hex(8).upper(),
            "secret_access_key": secrets.token_urlsafe(30)}
    example = start_example(tmp_path / "aws", "aws.yaml", "data-bot", ["aws-dev"],
                            {"aws-dev": json.dumps(real)}, api)
    placeholder = "AKIAZZZZPLACEHOLDER2"
    try:
        answer = run_agent(example, """
import json, boto3
session = boto3.Session(region_name="us-east-1")  # keys, proxy, AWS_CA_BUNDLE from the env
identity = session.client("sts").get_caller_identity()
listing = session.client("s3").list_objects_v2(Bucket="acme-reports")
print(json.dumps({"account": identity["Account"], "keys": listing["KeyCount"]}))
""", {"AWS_ACCESS_KEY_ID": placeholder, "AWS_SECRET_ACCESS_KEY": "anything",
      "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"})
    finally:
        _stop(example)
    assert answer == {"account": "123456789012", "keys": 0}
    assert len(upstream.requests) == 2
    for received in upstream.requests:
        assert f"Credential={real['access_key_id']}/" in (received.header("Authorization") or "")
        assert not received.contains(placeholder)
