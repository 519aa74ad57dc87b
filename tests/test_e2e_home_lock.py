"""One `broker-proxy run` per home: a second one refuses and leaves the first one's files alone."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from broker_proxy.cli.run_cmd import _remove_own_runtime
from broker_proxy.devtools import prefork
from broker_proxy.home import Home
from tests.conftest import API_HOST, PYTHON, Stack
from tests.e2e_clients import CLIENTS

pytestmark = pytest.mark.e2e


def test_a_second_run_on_the_same_home_refuses_naming_the_holder(stack: Stack) -> None:
    before = stack.home.runtime.read_text()
    audit_before = stack.home.audit_log.read_bytes()
    second = prefork.run(
        [PYTHON, "-m", "broker_proxy.cli", "--home", str(stack.home.root), "run",
         "--policy", str(stack.policy_file), "--listen", "127.0.0.1:0",
         "--metrics", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, env=stack.env)
    assert second.returncode != 0
    [line] = second.stderr.strip().splitlines()
    assert f"pid {stack.proxy.process.pid}" in line and str(stack.home.root) in line
    assert stack.home.runtime.read_text() == before
    # Nothing written in the first proxy's chain by the one that refused.
    assert stack.home.audit_log.read_bytes().startswith(audit_before)
    assert b"proxy_stopped" not in stack.home.audit_log.read_bytes()[len(audit_before):]
    grant = stack.issue("api_key")
    answer = CLIENTS["curl"](stack, grant.token, "GET",
                             stack.url(stack.upstreams.api, API_HOST, "/v1/still"),
                             headers={"Authorization": "Bearer {{secret:api_key}}"})
    assert answer.status == 200


def test_run_json_of_another_process_is_never_removed(tmp_path: Path) -> None:
    home = Home(tmp_path).ensure()
    home.runtime.write_text(json.dumps({"pid": os.getpid() + 1, "listen": "127.0.0.1:1"}))
    _remove_own_runtime(home)
    assert home.runtime.exists()
    home.runtime.write_text(json.dumps({"pid": os.getpid(), "listen": "127.0.0.1:1"}))
    _remove_own_runtime(home)
    assert not home.runtime.exists()
