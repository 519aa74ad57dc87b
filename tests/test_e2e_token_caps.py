"""A grant may ask for lower token caps than the policy's (`--input-tokens`, `--output-tokens`,
the admin API's "input_tokens"/"output_tokens"), never higher: a one-line error and no grant.

Through the real CLI (`grant issue`, `grant show`), the admin API and the real proxy in front of
the LLM stand-in (llm_upstream.py: 11 input and 7 output tokens per answer), with the openai SDK.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from broker_proxy.devtools import prefork
from tests.llm_stack import LlmStack, llm_policy, llm_stack_fixture

pytestmark = pytest.mark.e2e

POLICY = llm_policy(openai="budget: {{input_tokens: 100000, output_tokens: 100}}\n")
HI = [{"role": "user", "content": "hi"}]


llm = llm_stack_fixture("token-caps", POLICY)


def _cli(llm: LlmStack, *args: str) -> subprocess.CompletedProcess[str]:
    return prefork.run([sys.executable, "-m", "broker_proxy.cli", "--home",
                           str(llm.home.root), *args], capture_output=True, text=True,
                          timeout=60,
                          env=dict(os.environ, BROKER_PROXY_POLICY=str(llm.policy_file)))


DOC = (Path(__file__).parents[1] / "docs" / "limits.md").read_text()
COMMAND = ("grant issue --agent bot --task short --secret openai --output-tokens openai=30 "
           "--input-tokens 5000 --json")


def test_grant_issue_asks_for_fewer_output_tokens_and_the_proxy_holds_it(llm: LlmStack) -> None:
    import openai
    assert f"broker-proxy {COMMAND}" in DOC  # the command docs/limits.md shows
    done = _cli(llm, *shlex.split(COMMAND))  # the policy from $BROKER_PROXY_POLICY
    assert done.returncode == 0, done.stderr
    issued = json.loads(done.stdout)
    sdk = llm.openai(issued["token"])
    sdk.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=20)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as raised:  # 7 used + 25 > 30, though < 100
        sdk.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=25)  # type: ignore[arg-type]
    answer = raised.value.response.json()
    assert answer["error"] == "budget_exhausted" and "output tokens" in answer["message"]
    shown = _cli(llm, "grant", "show", issued["id"], "--policy", str(llm.policy_file), "--json")
    budget = json.loads(shown.stdout)["budget"]["openai"]
    assert budget["output_tokens"] == {"used": 7, "in_flight": 0, "left": 23}
    assert budget["input_tokens"] == {"used": 11, "in_flight": 0, "left": 5000 - 11}


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--output-tokens", "101",
     'output_tokens 101 for secret "openai" is more than the policy allows (100)'),
    ("--input-tokens", "openai=200000",
     'input_tokens 200000 for secret "openai" is more than the policy allows (100000)'),
    ("--output-tokens", "anthropic=5",
     'output_tokens "anthropic=5" names a secret the grant does not hold'),
    ("--output-tokens", "0", 'invalid output_tokens "0": write a whole number >= 1'),
])
def test_more_than_the_policy_is_a_one_line_error_and_no_grant(
        llm: LlmStack, flag: str, value: str, message: str) -> None:
    for command in (["grant", "issue"], ["exec"]):
        tail = ["--", sys.executable, "-c", "pass"] if command == ["exec"] else []
        done = _cli(llm, *command, "--policy", str(llm.policy_file), "--agent", "bot",
                    "--task", "greedy", "--secret", "openai", flag, value, *tail)
        assert done.returncode != 0
        [line] = done.stderr.strip().splitlines()  # one line, whichever prefix the command uses
        assert line.endswith(message), done.stderr
        assert "Traceback" not in done.stderr
    listed = _cli(llm, "grant", "list", "--json")
    assert "greedy" not in listed.stdout


def test_admin_api_takes_token_caps_and_refuses_more(llm: LlmStack) -> None:
    token = llm.home.admin_token.read_text().strip()

    def post(body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(
            llm.proxy.admin_url + "/v1/grants", data=json.dumps(body).encode(), method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    base = {"agent": "bot", "task": "api", "secrets": ["openai"]}
    status, body = post(base | {"output_tokens": ["openai=40"], "input_tokens": ["900"]})
    assert status == 201, body
    request = urllib.request.Request(llm.proxy.admin_url + f"/v1/grants/{body['id']}",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        budget = json.loads(answer.read())["limits"]["budget"]["openai"]
    assert budget["output_tokens"]["cap"] == 40 and budget["input_tokens"]["cap"] == 900
    status, body = post(base | {"output_tokens": ["500"]})
    assert (status, body["error"]) == (422, "grant_not_allowed")
    assert body["message"] == ('output_tokens 500 for secret "openai" is more than the policy '
                               "allows (100)")
