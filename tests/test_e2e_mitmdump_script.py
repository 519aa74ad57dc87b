"""`mitmdump -s addons/broker.py` works as well as `broker-proxy run`.

Most tests load the script from the path `broker-proxy mitmdump-script` prints (what a user of a
plain pip install runs); the bad-pin test loads it from the checkout's addons/ folder.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from broker_proxy.runtime.local_ports import free_port, wait_for_port
from tests.conftest import API_HOST, EVIL_HOST, HOSTS, Stack
from tests.e2e_clients import via_requests

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent


class ScriptStack:
    """Looks enough like the ProxyProcess that the e2e clients can use it."""

    def __init__(self, port: int, ca_path: Path) -> None:
        self.port = port
        self.host = "127.0.0.1"
        self.ca_path = ca_path

    def proxy_url(self, token: str, agent: str = "agent") -> str:
        return f"http://{agent}:{token}@127.0.0.1:{self.port}"


def _installed_script() -> str:
    done = subprocess.run([str(Path(sys.executable).parent / "broker-proxy"), "mitmdump-script"],
                          capture_output=True, text=True, check=True, timeout=60)
    script = done.stdout.strip()
    assert Path(script).name == "broker.py" and Path(script).is_file()
    return script


def _mitmdump_args(stack: Stack, tmp_path: Path, port: int, *extra: str) -> list[str]:
    mitmdump = Path(sys.executable).parent / "mitmdump"
    bundle = stack.home.upstream_ca_bundle  # written by the running `broker-proxy run`
    args = [str(mitmdump), *extra, "-s", _installed_script(),
            "--listen-host", "127.0.0.1", "--listen-port", str(port),
            "--set", f"confdir={tmp_path / 'confdir'}",
            "--set", f"broker_home={stack.home.root}",
            "--set", f"broker_policy={stack.policy_file}",
            "--set", f"ssl_verify_upstream_trusted_ca={bundle}"]
    for host in HOSTS:
        args += ["--set", f"broker_resolve={host}=127.0.0.1"]
    return args


def test_mitmdump_script_injects_and_blocks(stack: Stack, tmp_path: Path) -> None:
    port = free_port()
    confdir = tmp_path / "confdir"
    args = _mitmdump_args(stack, tmp_path, port, "-q")
    log = (tmp_path / "mitmdump.log").open("wb")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=stack.env,
                               stdin=subprocess.DEVNULL)
    try:
        wait_for_port(port, process)
        script_stack = Stack(**{**stack.__dict__, "proxy": ScriptStack(
            port, confdir / "mitmproxy-ca-cert.pem")})
        grant = stack.issue("api_key")
        auth = {"Authorization": "Bearer {{secret:api_key}}"}
        allowed = via_requests(script_stack, grant.token, "GET",
                               stack.url(stack.upstreams.api, API_HOST, "/v1/script"),
                               headers=auth)
        blocked = via_requests(script_stack, grant.token, "GET",
                               stack.url(stack.upstreams.evil, EVIL_HOST, "/v1/script"),
                               headers=auth)
        no_token = via_requests(script_stack, "", "GET",
                                stack.url(stack.upstreams.api, API_HOST, "/v1/script"))
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
    assert allowed.status == 200, (tmp_path / "mitmdump.log").read_text()
    (received,) = stack.upstreams.api.requests
    assert received.header("Authorization") == f"Bearer {stack.api_key}"
    assert stack.api_key.encode() not in allowed.body
    assert (blocked.status, blocked.json()["error"]) == (403, "destination_not_allowed")
    assert no_token.status == -1 and b"407" in no_token.body
    assert stack.upstreams.evil.requests == []
    assert stack.api_key not in (tmp_path / "mitmdump.log").read_text()


@pytest.mark.parametrize("option", [
    ["--flow-detail", "2"], ["--flow-detail", "4"], ["-w", "{tmp}/flows"],
    ["--set", "hardump={tmp}/flows.har"], ["--set", "proxy_debug=true"],
])
def test_mitmdump_refuses_options_that_would_show_or_store_injected_secrets(
        stack: Stack, tmp_path: Path, option: list[str]) -> None:
    extra = [part.replace("{tmp}", str(tmp_path)) for part in option]
    completed = subprocess.run(_mitmdump_args(stack, tmp_path, free_port(), *extra),
                               capture_output=True, text=True, timeout=60, env=stack.env,
                               stdin=subprocess.DEVNULL)
    assert completed.returncode != 0
    assert "broker-proxy refuses all requests" in completed.stdout + completed.stderr
    assert all(path.stat().st_size == 0 for path in tmp_path.glob("flows*"))  # nothing saved


def test_mitmdump_dump_shows_the_placeholder_never_the_injected_value(
        stack: Stack, tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "mitmdump.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(_mitmdump_args(stack, tmp_path, port, "--flow-detail", "1"),
                                   stdout=log, stderr=subprocess.STDOUT, env=stack.env,
                                   stdin=subprocess.DEVNULL)
        try:
            wait_for_port(port, process)
            script_stack = Stack(**{**stack.__dict__, "proxy": ScriptStack(
                port, tmp_path / "confdir" / "mitmproxy-ca-cert.pem")})
            grant = stack.issue("api_key")
            answer = via_requests(script_stack, grant.token, "GET", stack.url(
                stack.upstreams.api, API_HOST, "/v1/dumped?key={{secret:api_key}}"),
                headers={"Authorization": "Bearer {{secret:api_key}}"})
        finally:
            process.terminate()
            process.wait(timeout=10)
    dumped = log_path.read_text()
    assert answer.status == 200, dumped
    (received,) = stack.upstreams.api.requests
    assert stack.api_key in received.path  # injected in the query that left
    assert "/v1/dumped?key=%7B%7Bsecret" in dumped  # the agent's placeholder is what is shown
    assert stack.api_key not in dumped


def test_mitmdump_script_with_a_bad_resolve_pin_says_why_it_refuses(
        stack: Stack, tmp_path: Path) -> None:
    mitmdump = Path(sys.executable).parent / "mitmdump"
    port = free_port()
    confdir = tmp_path / "confdir"
    args = [str(mitmdump), "-q", "-s", str(REPO / "addons" / "broker.py"),
            "--listen-host", "127.0.0.1", "--listen-port", str(port),
            "--set", f"confdir={confdir}",
            "--set", f"broker_home={stack.home.root}",
            "--set", f"broker_policy={stack.policy_file}",
            "--set", f"broker_resolve={API_HOST}=not-an-address"]
    log = (tmp_path / "mitmdump.log").open("wb")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=stack.env,
                               stdin=subprocess.DEVNULL)
    try:
        wait_for_port(port, process)
        script_stack = Stack(**{**stack.__dict__, "proxy": ScriptStack(
            port, confdir / "mitmproxy-ca-cert.pem")})
        grant = stack.issue("api_key")
        # Plain HTTP: the refusal's body is readable (a refused CONNECT hides it).
        answer = via_requests(script_stack, grant.token, "GET",
                              stack.url(stack.upstreams.plain, API_HOST, "/v1/script"))
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
    text = answer.body.decode() + (tmp_path / "mitmdump.log").read_text()
    assert "broker_resolve must be HOST[:PORT]=IP[:PORT]" in text
    assert "CliError" not in text
