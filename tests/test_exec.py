"""`broker-proxy exec`: a real Python agent calls a local HTTPS API with its placeholder, and
its grant is gone when it ends, however it ends."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest

from broker_proxy.devtools import prefork
from broker_proxy.grants.model import Grant
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from tests.conftest import API_HOST, PYTHON, Stack

pytestmark = pytest.mark.e2e

AGENT_SCRIPT = """\
import json, os, sys, time
from pathlib import Path
import requests

out, url, mode = sys.argv[1], sys.argv[2], sys.argv[3]
answer = requests.get(url, headers={"Authorization": "Bearer " + os.environ["API_KEY"]},
                      timeout=15)
report = {"status": answer.status_code, "body": answer.text, "env": dict(os.environ),
          "argv": sys.argv, "pid": os.getpid()}
Path(out + ".tmp").write_text(json.dumps(report))
os.replace(out + ".tmp", out)
if mode == "sleep":
    time.sleep(120)
sys.exit(int(mode) if mode.isdigit() else 0)
"""


def start_exec(stack: Stack, tmp_path: Path, *, mode: str = "0", agent: str = "bot",
               extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen[str], str, Path]:
    script = tmp_path / "agent.py"
    script.write_text(AGENT_SCRIPT)
    out = tmp_path / "report.json"
    task = "exec test " + secrets.token_hex(4)
    url = stack.url(stack.upstreams.api, API_HOST, "/v1/exec")
    args = [PYTHON, "-m", "broker_proxy.cli", "--home", str(stack.home.root), "exec",
            "--agent", agent, "--task", task, "--secret", "api_key", *extra, "--",
            PYTHON, str(script), str(out), url, mode]
    # stack.env holds the vault master key and the env: secret: exec must not pass them on.
    process = prefork.Popen(args, env=stack.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    return process, task, out


def grant_of(stack: Stack, task: str) -> Grant:
    with SqliteGrantStore(stack.home.grants_db) as store:
        [grant] = [g for g in store.list() if g.task == task]
        return grant


def wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        if process.poll() is not None:
            pytest.fail(f"exec ended early: {process.returncode} {process.stderr.read()}")
        time.sleep(0.05)
    pytest.fail("the agent script did not report")


def assert_no_secret(stack: Stack, text: str) -> None:
    for value in [*stack.secret_values(), stack.env["BROKER_PROXY_MASTER_KEY"]]:
        assert value not in text


def test_exec_runs_the_agent_with_placeholders_and_revokes_after_exit(
        stack: Stack, tmp_path: Path) -> None:
    process, task, out = start_exec(stack, tmp_path, mode="3")
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 3, stderr  # CMD's exit code passes through
    report = json.loads(out.read_text())
    assert report["status"] == 200
    env = report["env"]
    assert env["API_KEY"] == "{{secret:api_key}}"
    assert env["HTTPS_PROXY"] == env["https_proxy"] == env["HTTP_PROXY"]
    assert env["HTTPS_PROXY"].endswith("@" + stack.proxy.info["listen"])
    for variable in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
                     "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO"):
        assert env[variable] == str(stack.proxy.ca_path)
    assert "BROKER_PROXY_MASTER_KEY" not in env
    assert "E2E_OTHER_KEY" not in env
    # Invariant 1 (docs/ARCHITECTURE.md): the real secret reached the API, never the agent.
    [received] = stack.upstreams.api.requests
    assert received.header("Authorization") == f"Bearer {stack.api_key}"
    assert_no_secret(stack, out.read_text() + stdout + stderr)
    grant = grant_of(stack, task)
    assert grant.state_at(grant.created_at) == "revoked"
    assert grant.uses == 1


def test_grant_is_revoked_when_the_command_is_killed(stack: Stack, tmp_path: Path) -> None:
    process, task, out = start_exec(stack, tmp_path, mode="sleep")
    report = wait_for(out, process)
    assert report["status"] == 200
    assert grant_of(stack, task).status == "active"
    os.kill(report["pid"], signal.SIGKILL)
    process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGKILL
    assert grant_of(stack, task).status == "revoked"


def test_sigterm_to_exec_stops_the_command_and_revokes(stack: Stack, tmp_path: Path) -> None:
    process, task, out = start_exec(stack, tmp_path, mode="sleep")
    report = wait_for(out, process)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGTERM
    assert grant_of(stack, task).status == "revoked"
    assert not Path(f"/proc/{report['pid']}").exists(), "the command outlived exec"


def test_exec_waits_for_approval_then_runs(stack: Stack, tmp_path: Path) -> None:
    process, task, out = start_exec(stack, tmp_path, agent="careful-bot",
                                    extra=("--wait-approval", "30s"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with SqliteGrantStore(stack.home.grants_db) as store:
            pending = [g for g in store.list() if g.task == task]
        if pending:
            break
        time.sleep(0.05)
    [grant] = pending
    assert grant.status == "pending"
    time.sleep(0.5)
    assert not out.exists(), "the command ran before the approval"
    approve = prefork.run([PYTHON, "-m", "broker_proxy.cli", "--home", str(stack.home.root),
                              "grant", "approve", grant.id], env=stack.env,
                             capture_output=True, text=True, timeout=30)
    assert approve.returncode == 0, approve.stderr
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert f"grant {grant.id} waits for approval" in stderr
    assert json.loads(out.read_text())["status"] == 200
    assert grant_of(stack, task).status == "revoked"


def test_exec_gives_up_when_nobody_approves(stack: Stack, tmp_path: Path) -> None:
    process, task, out = start_exec(stack, tmp_path, agent="careful-bot",
                                    extra=("--wait-approval", "1s"))
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "was not approved within 1s; the command was not run" in stderr
    assert not out.exists()
    assert grant_of(stack, task).status == "revoked"


def test_exec_without_a_running_proxy_is_one_clear_line(stack: Stack, tmp_path: Path) -> None:
    done = prefork.run([PYTHON, "-m", "broker_proxy.cli", "--home", str(tmp_path / "none"),
                           "exec", "--agent", "bot", "--task", "t", "--secret", "api_key", "--",
                           PYTHON, "-c", "print('ran')"], env=stack.env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("broker-proxy: no broker-proxy is running for home ")
    assert len(done.stderr.strip().splitlines()) == 1


def test_exec_keeps_the_callers_no_proxy_adds_loopback_and_points_every_ca_variable_at_ours(
        stack: Stack, tmp_path: Path) -> None:
    import dataclasses

    caller = dataclasses.replace(stack, env=dict(stack.env, NO_PROXY="db.internal",
                                                 no_proxy="cache.local",
                                                 AWS_CA_BUNDLE="/etc/ssl/other.pem"))
    process, _task, out = start_exec(caller, tmp_path)
    _stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    report = json.loads(out.read_text())
    assert report["status"] == 200  # the API still goes through the proxy
    env = report["env"]
    assert env["NO_PROXY"] == env["no_proxy"] == "db.internal,cache.local,localhost,127.0.0.1,::1"
    for variable in ("AWS_CA_BUNDLE", "DENO_CERT", "PIP_CERT"):
        assert env[variable] == str(stack.proxy.ca_path)
