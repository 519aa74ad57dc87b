"""End to end: header templates, Basic, per-grant placeholders and the command and keyring
backends, through the real proxy process with real clients."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from broker_proxy.devtools import prefork
from broker_proxy.devtools.local_pki import LocalPki
from broker_proxy.devtools.proxy_process import ProxyProcess
from broker_proxy.home import Home
from tests.conftest import (
    API_HOST,
    HOSTS,
    OTHER_HOST,
    Stack,
    Upstreams,
    curl_path,
    random_master_key,
)
from tests.e2e_clients import via_curl, via_requests
from tests.file_keyring import FILE_VARIABLE

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parent.parent

POLICY = """\
version: 1
secrets:
  templated:
    from: env:BP_E2E_TEMPLATED
    destinations: [{{host: {api}, port: {api_port}, paths: ["/tpl/**"]}}]
    inject: [{{header: Authorization, value: "Bearer {{secret}}"}}]
  forced:
    from: env:BP_E2E_FORCED
    destinations: [{{host: {api}, port: {api_port}, paths: ["/force/**"]}}]
    inject: [{{header: X-Api-Key, value: "{{secret}}", overwrite: true}}]
  basic_pw:
    from: env:BP_E2E_BASIC
    basic: {{username: robot}}
    destinations: [{{host: {api}, port: {api_port}, paths: ["/basic/**"]}}]
  shaped:
    from: env:BP_E2E_SHAPED
    placeholder_format: {{prefix: "sk-e2e-", length: 40}}
    destinations: [{{host: {other}, port: {other_port}}}]
  cmd_ok:
    from: command
    command: [{python}, "-c", "{count_and_print}"]
    cache_ttl: 5m
    destinations: [{{host: {api}, port: {api_port}, paths: ["/cmd/**"]}}]
  cmd_fail:
    from: command
    command: [{python}, "-c", "import sys; sys.exit(3)"]
    destinations: [{{host: {api}, port: {api_port}, paths: ["/cmd/**"]}}]
  cmd_slow:
    from: command
    command: [{python}, "-c", "import time; time.sleep(30)"]
    timeout: 1s
    destinations: [{{host: {api}, port: {api_port}, paths: ["/cmd/**"]}}]
  from_keyring:
    from: keyring:bp-e2e/robot
    destinations: [{{host: {api}, port: {api_port}, paths: ["/keyring/**"]}}]
agents:
  bot:
    secrets: [templated, forced, basic_pw, shaped, cmd_ok, cmd_fail, cmd_slow, from_keyring]
    max_ttl: 1h
network:
  allow_addresses: [127.0.0.0/8]
"""


class KindsStack(Stack):
    values: dict[str, str]
    counter: Path


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory, pki: LocalPki,
          upstreams: Upstreams) -> Iterator[KindsStack]:
    root = tmp_path_factory.mktemp("kinds")
    home = Home(root / "home").ensure()
    values = {name: "v-" + secrets.token_urlsafe(24)
              for name in ("templated", "forced", "basic_pw", "shaped", "cmd_ok",
                           "from_keyring")}
    value_file, counter = root / "cmd-value", root / "cmd-count"
    value_file.write_text(values["cmd_ok"] + "\n")
    keyring_file = root / "keyring.json"
    keyring_file.write_text(json.dumps({"bp-e2e/robot": values["from_keyring"]}))
    # The command reads its value from a file and counts its runs: no value in argv.
    count_and_print = (
        f"import pathlib; c = pathlib.Path({str(counter)!r}); "
        "c.write_text(str(int(c.read_text()) + 1) if c.exists() else '1'); "
        f"print(pathlib.Path({str(value_file)!r}).read_text(), end='')"
    ).replace('"', '\\"')
    policy_file = root / "policy.yaml"
    policy_file.write_text(POLICY.format(
        api=API_HOST, api_port=upstreams.api.port, other=OTHER_HOST,
        other_port=upstreams.other.port, python=json.dumps(sys.executable),
        count_and_print=count_and_print))
    env = dict(os.environ, BROKER_PROXY_MASTER_KEY=random_master_key(),
               BP_E2E_TEMPLATED=values["templated"], BP_E2E_FORCED=values["forced"],
               BP_E2E_BASIC=values["basic_pw"], BP_E2E_SHAPED=values["shaped"],
               PYTHON_KEYRING_BACKEND="tests.file_keyring.FileKeyring",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get(
                   "PYTHONPATH")])),
               **{FILE_VARIABLE: str(keyring_file)})
    proxy = ProxyProcess(home.root, policy_file, upstream_ca=pki.ca_cert_path,
                         resolve={host: "127.0.0.1" for host in HOSTS}, env=env,
                         log_path=root / "proxy.log").start()
    stack = KindsStack(root, home, policy_file, proxy, upstreams, "", "", env)
    stack.values, stack.counter = values, counter
    yield stack
    proxy.stop()
    written = (root / "proxy.log").read_text(errors="replace")
    written += home.audit_log.read_text(errors="replace")
    for value in values.values():
        assert value not in written, "a secret value reached the proxy's log or audit log"


@pytest.fixture(autouse=True)
def _clear(upstreams: Upstreams) -> None:
    upstreams.clear()


def api_url(kinds: KindsStack, path: str) -> str:
    return kinds.url(kinds.upstreams.api, API_HOST, path)


def audit_reasons(kinds: KindsStack) -> list[str]:
    lines = kinds.home.audit_log.read_text().splitlines()
    return [json.loads(line).get("reason") for line in lines if line.strip()]


@pytest.mark.parametrize("client", [via_curl, via_requests], ids=["curl", "requests"])
def test_template_sets_the_header_when_the_agent_sends_nothing(kinds: KindsStack, client) -> None:
    grant = kinds.issue("templated")
    answer = client(kinds, grant.token, "GET", api_url(kinds, "/tpl/me"))
    assert answer.status == 200
    (received,) = kinds.upstreams.api.requests
    assert received.header("Authorization") == f"Bearer {kinds.values['templated']}"
    # The upstream echoes it: the agent gets the placeholder, never the value.
    assert kinds.values["templated"].encode() not in answer.body


def test_template_is_not_applied_to_a_path_outside_the_destination(kinds: KindsStack) -> None:
    grant = kinds.issue("templated", "forced")
    answer = via_requests(kinds, grant.token, "GET", api_url(kinds, "/elsewhere"))
    assert answer.status == 200
    (received,) = kinds.upstreams.api.requests
    assert received.header("Authorization") is None


def test_agent_header_where_the_template_does_not_overwrite_is_refused(kinds: KindsStack) -> None:
    grant = kinds.issue("templated")
    answer = via_requests(kinds, grant.token, "GET", api_url(kinds, "/tpl/me"),
                          headers={"Authorization": "Bearer agent-own"})
    assert answer.status == 403
    assert answer.json()["error"] == "header_already_set"
    assert kinds.upstreams.api.requests == []


def test_template_with_overwrite_replaces_the_agent_header(kinds: KindsStack) -> None:
    grant = kinds.issue("forced")
    answer = via_curl(kinds, grant.token, "GET", api_url(kinds, "/force/x"),
                      headers={"X-Api-Key": "agent-own"})
    assert answer.status == 200
    (received,) = kinds.upstreams.api.requests
    assert received.header("X-Api-Key") == kinds.values["forced"]


def expected_basic(kinds: KindsStack) -> str:
    raw = f"robot:{kinds.values['basic_pw']}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def test_requests_basic_auth_with_a_placeholder_password_is_swapped(kinds: KindsStack) -> None:
    grant = kinds.issue("basic_pw")
    proxy = kinds.proxy.proxy_url(grant.token, "bot")
    response = requests.get(api_url(kinds, "/basic/login"), timeout=15,
                            auth=("anyone", "{{secret:basic_pw}}"),
                            proxies={"https": proxy}, verify=str(kinds.proxy.ca_path))
    assert response.status_code == 200
    (received,) = kinds.upstreams.api.requests
    assert received.header("Authorization") == expected_basic(kinds)
    # Neither the value nor its Basic encoding comes back to the agent.
    assert kinds.values["basic_pw"].encode() not in response.content
    assert expected_basic(kinds).split()[1].encode() not in response.content


def test_curl_user_option_with_a_placeholder_password_is_swapped(kinds: KindsStack) -> None:
    grant = kinds.issue("basic_pw")
    done = subprocess.run(
        [curl_path(), "-sS", "--max-time", "15", "-x", kinds.proxy.proxy_url(grant.token, "bot"),
         "--cacert", str(kinds.proxy.ca_path), "-u", "robot:{{secret:basic_pw}}",
         "-o", "/dev/null", "-w", "%{http_code}", api_url(kinds, "/basic/login")],
        capture_output=True, timeout=30, check=False)
    assert done.stdout == b"200"
    (received,) = kinds.upstreams.api.requests
    assert received.header("Authorization") == expected_basic(kinds)


def test_basic_placeholder_outside_the_destination_is_blocked(kinds: KindsStack) -> None:
    grant = kinds.issue("basic_pw")
    answer = via_requests(kinds, grant.token, "GET", api_url(kinds, "/tpl/x"), headers={
        "Authorization": "Basic " + base64.b64encode(b"robot:{{secret:basic_pw}}").decode()})
    assert answer.status == 403
    assert answer.json()["error"] == "destination_not_allowed"
    assert kinds.upstreams.api.requests == []


def test_per_grant_placeholder_works_with_its_own_grant(kinds: KindsStack) -> None:
    grant = kinds.issue("shaped")
    placeholder = grant.placeholders["shaped"]
    assert placeholder.startswith("sk-e2e-") and len(placeholder) == len("sk-e2e-") + 40
    answer = via_curl(kinds, grant.token, "GET", kinds.url(kinds.upstreams.other, OTHER_HOST,
                                                           "/v1/models"),
                      headers={"Authorization": f"Bearer {placeholder}"})
    assert answer.status == 200
    (received,) = kinds.upstreams.other.requests
    assert received.header("Authorization") == f"Bearer {kinds.values['shaped']}"
    assert kinds.values["shaped"].encode() not in answer.body


def test_per_grant_placeholder_of_another_grant_is_refused(kinds: KindsStack) -> None:
    mine, theirs = kinds.issue("shaped"), kinds.issue("shaped")
    url = kinds.url(kinds.upstreams.other, OTHER_HOST, "/v1/models")
    borrowed = via_requests(kinds, mine.token, "GET", url, headers={
        "Authorization": f"Bearer {theirs.placeholders['shaped']}"})
    unknown = via_requests(kinds, mine.token, "GET", url, headers={
        "Authorization": "Bearer {{secret:nothing}}"})
    assert borrowed.status == unknown.status == 403
    assert borrowed.json() == unknown.json()
    assert kinds.upstreams.other.requests == []


def test_grant_issue_prints_the_per_grant_placeholder(kinds: KindsStack) -> None:
    done = prefork.run(
        [sys.executable, "-m", "broker_proxy.cli", "--home", str(kinds.home.root), "grant",
         "issue", "--policy", str(kinds.policy_file), "--agent", "bot", "--task", "cli",
         "--secret", "shaped", "--json"],
        capture_output=True, timeout=60, check=False, env=kinds.env)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)["placeholders"]["shaped"]
    assert shown.startswith("sk-e2e-") and len(shown) == len("sk-e2e-") + 40


def test_command_backend_value_is_used_and_cached(kinds: KindsStack) -> None:
    grant = kinds.issue("cmd_ok")
    for _ in range(2):
        answer = via_requests(kinds, grant.token, "GET", api_url(kinds, "/cmd/x"),
                              headers={"X-Key": "{{secret:cmd_ok}}"})
        assert answer.status == 200
    assert [r.header("X-Key") for r in kinds.upstreams.api.requests] == [
        kinds.values["cmd_ok"]] * 2
    assert kinds.counter.read_text() == "1"  # cache_ttl: one run for both requests


@pytest.mark.parametrize("secret", ["cmd_fail", "cmd_slow"])
def test_command_that_fails_or_times_out_fails_closed_and_is_audited(kinds: KindsStack,
                                                                     secret: str) -> None:
    grant = kinds.issue(secret)
    before = audit_reasons(kinds).count("secret_unavailable")
    answer = via_requests(kinds, grant.token, "GET", api_url(kinds, "/cmd/x"),
                          headers={"X-Key": "{{secret:" + secret + "}}"})
    assert answer.status == 503
    assert answer.json()["error"] == "secret_unavailable"
    assert kinds.upstreams.api.requests == []
    assert audit_reasons(kinds).count("secret_unavailable") == before + 1


def test_keyring_backend_value_is_swapped_in(kinds: KindsStack) -> None:
    grant = kinds.issue("from_keyring")
    answer = via_curl(kinds, grant.token, "GET", api_url(kinds, "/keyring/x"),
                      headers={"X-Key": "{{secret:from_keyring}}"})
    assert answer.status == 200
    (received,) = kinds.upstreams.api.requests
    assert received.header("X-Key") == kinds.values["from_keyring"]
