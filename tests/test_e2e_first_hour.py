"""End to end, what the first hour of a new user hit: git's unauthenticated first CONNECT, and
AWS through `exec` out of the box. The real proxy, real git, curl and boto3."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from broker_proxy.audit.report import build_report
from broker_proxy.cli.env_cmd import agent_environment
from broker_proxy.devtools import prefork
from broker_proxy.devtools.echo_server import EchoServer
from broker_proxy.devtools.local_pki import LocalPki
from tests.conftest import API_HOST, Stack, curl_path
from tests.test_e2e_example_policies import api, start_example  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e


def _requests_since(stack: Stack, seq: int) -> list[dict]:
    records = [json.loads(line) for line in stack.home.audit_log.read_text().splitlines()]
    return [r for r in records if r["seq"] > seq and r["event"] == "request"]


def _last_seq(stack: Stack) -> int:
    return json.loads(stack.home.audit_log.read_text().splitlines()[-1])["seq"]


def _metric(stack: Stack, decision: str) -> float:
    text = requests.get(f"http://{stack.proxy.info['metrics']}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if (line.startswith("broker_requests_total{") and f'decision="{decision}"' in line
                and 'reason="proxy_auth_required"' in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_client_that_asks_for_the_challenge_first_is_not_a_refusal(stack: Stack) -> None:
    issued = stack.issue("api_key")
    before, denies = _last_seq(stack), _metric(stack, "deny")
    # curl --proxy-anyauth, like git's default, sends its first CONNECT without credentials
    # and the token only after the 407: the 407 contract is unchanged.
    url = stack.url(stack.upstreams.api, API_HOST, "/v1/challenge")
    done = subprocess.run(
        [curl_path(), "-sS", "--max-time", "15", "--proxy-anyauth",
         "-x", stack.proxy.proxy_url(issued.token, "bot"), "--cacert",
         str(stack.proxy.ca_path), "-o", "/dev/null", "-w", "%{http_code}", url],
        capture_output=True, text=True, timeout=30, check=False)
    assert done.stdout == "200", done.stderr
    records = _requests_since(stack, before)
    challenges = [r for r in records if r["decision"] == "challenge"]
    assert [(r["reason"], r["status"], r["grant"]) for r in challenges] == [
        ("proxy_auth_required", 407, None)]
    assert not [r for r in records if r["decision"] == "deny"]
    assert _metric(stack, "challenge") >= 1 and _metric(stack, "deny") == denies
    # The access review does not count it as a refusal.
    report = build_report(json.loads(line)
                          for line in stack.home.audit_log.read_text().splitlines())
    assert "proxy_auth_required" not in {r["reason"] for r in report["refusals"]}


def test_wrong_credentials_are_still_a_refusal_with_the_407_contract(stack: Stack) -> None:
    before = _last_seq(stack)
    url = stack.url(stack.upstreams.api, API_HOST, "/v1/x")
    done = subprocess.run(
        [curl_path(), "-sS", "--max-time", "15", "-x",
         stack.proxy.proxy_url("bpt_wrong_" + secrets.token_hex(8), "bot"),
         "--cacert", str(stack.proxy.ca_path), "-o", "/dev/null", "-w", "%{http_code}", url],
        capture_output=True, text=True, timeout=30, check=False)
    assert "407" in done.stdout + done.stderr
    [record] = _requests_since(stack, before)
    assert (record["decision"], record["reason"], record["status"]) == (
        "deny", "proxy_auth_required", 407)


def test_git_with_the_env_exports_sends_its_token_on_the_first_connect(
        stack: Stack, tmp_path: Path) -> None:
    issued = stack.issue("api_key")
    env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper()}
    env |= agent_environment(stack.proxy.proxy_url(issued.token, "bot"),
                             str(stack.proxy.ca_path))
    env |= {"HOME": str(tmp_path), "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1"}
    assert env["GIT_HTTP_PROXY_AUTHMETHOD"] == "basic"
    before = _last_seq(stack)
    url = stack.url(stack.upstreams.api, API_HOST, "/v1/repo.git")
    # The echo upstream is no git server: git fails after the request, which is all we need.
    subprocess.run(["git", "ls-remote", url], env=env, capture_output=True, timeout=60,
                   check=False)
    records = _requests_since(stack, before)
    assert records, "git sent nothing through the proxy"
    assert {r["decision"] for r in records} == {"allow"}, records


def test_exec_gives_boto3_placeholder_credentials_out_of_the_box(
        tmp_path: Path, api: tuple[EchoServer, LocalPki]) -> None:  # noqa: F811
    real = {"access_key_id": "AKIA" + secrets.token_hex(8).upper(),
            "secret_access_key": secrets.token_urlsafe(30)}
    example = start_example(tmp_path / "aws", "aws.yaml", "data-bot", ["aws-dev"],
                            {"aws-dev": json.dumps(real)}, api)
    upstream = api[0]
    upstream.clear()
    script = ("import json, boto3\n"
              "s = boto3.Session(region_name='us-east-1')\n"
              "print(json.dumps({'keys': s.client('s3').list_objects_v2("
              "Bucket='acme-reports')['KeyCount']}))\n")
    # The caller's own shell: a real-looking AWS key of its own, nothing set for the agent.
    caller = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    caller |= {"AWS_SECRET_ACCESS_KEY": "callers-own-" + secrets.token_hex(8),
               "AWS_SESSION_TOKEN": "callers-token", "AWS_CONFIG_FILE": "/dev/null",
               "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
    try:
        done = prefork.run(
            [sys.executable, "-m", "broker_proxy.cli", "--home", str(example.home.root), "exec",
             "--agent", "data-bot", "--task", "list reports", "--secret", "aws-dev", "--",
             sys.executable, "-c", script + "import os\nprint(json.dumps(sorted("
             "k for k in os.environ if k.startswith('AWS_'))))\n"
             "print(json.dumps(os.environ.get('AWS_SECRET_ACCESS_KEY')))"],
            env=caller, capture_output=True, text=True, timeout=120, check=False)
    finally:
        example.proxy.stop()
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert json.loads(lines[0]) == {"keys": 0}
    assert "AWS_SESSION_TOKEN" not in json.loads(lines[1])
    assert not json.loads(lines[2]).startswith("callers-own-")
    [received] = upstream.requests
    assert f"Credential={real['access_key_id']}/" in (received.header("Authorization") or "")
    assert not received.contains("AKIAZZZZPLACEHOLDER2")


NODE_FETCH = """
fetch(process.argv[1], {headers: {Authorization: "Bearer " + process.env.API_KEY}})
  .then(async (r) => { console.log(JSON.stringify({status: r.status})); })
  .catch((e) => { console.log(JSON.stringify({error: String(e.cause && e.cause.code || e)})); });
"""


def _node_version() -> tuple[int, int] | None:
    node = shutil.which("node")
    if node is None:
        return None
    text = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30,
                          check=True).stdout.strip().lstrip("v")
    major, minor, *_ = (int(part) for part in text.split("."))
    return major, minor


def test_node_follows_the_client_table(stack: Stack) -> None:
    """The README's Node rows, on the Node this machine has: with NODE_USE_ENV_PROXY on 24 and
    22.21+, fetch goes through the proxy; before those, Node's fetch ignores the variables."""
    version = _node_version()
    if version is None:
        pytest.skip("no node on PATH")
    issued = stack.issue("api_key")
    env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper()}
    env |= agent_environment(stack.proxy.proxy_url(issued.token, "bot"),
                             str(stack.proxy.ca_path))
    env |= {"NODE_USE_ENV_PROXY": "1", "API_KEY": "{{secret:api_key}}"}
    url = stack.url(stack.upstreams.api, API_HOST, "/v1/node")
    done = subprocess.run(["node", "-e", NODE_FETCH, url], env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    if version >= (24, 0) or (22, 21) <= version < (23, 0):
        assert answer == {"status": 200}
        [received] = stack.upstreams.api.requests
        assert received.header("Authorization") == f"Bearer {stack.api_key}"
    else:
        # Direct, not through the proxy: the name only the proxy knows does not resolve.
        assert "error" in answer and stack.upstreams.api.requests == []
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "| Node 20, and 22 before 22.21 |" in readme and "NODE_USE_ENV_PROXY=1" in readme
