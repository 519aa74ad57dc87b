"""`broker-proxy run`'s settings: one RunConfig, `--print-config`, and one BrokerProcess.

The config is built once from flags, the environment and defaults, and says where each value
came from; `--print-config` prints it without starting anything. The process starts its stages
in one declared order and, when one fails, stops what had started (the home's lock included).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import secrets
import socket
import sys
from pathlib import Path

import pytest

from broker_proxy.admin_token import AdminApiError
from broker_proxy.cli import build_parser
from broker_proxy.devtools import prefork
from broker_proxy.home import Home
from broker_proxy.runtime.home_lock import HomeLock
from broker_proxy.runtime.process import MITMDUMP_OFF, STAGES, BrokerProcess
from broker_proxy.runtime.run_config import RunConfig, RunConfigError, build_run_config
from tests.master_keys import random_master_key

POLICY = """\
version: 1
secrets:
  api_key:
    from: env:RUN_CONFIG_TEST_KEY
    destinations:
      - host: api.example.com
agents:
  agent:
    secrets: [api_key]
    max_ttl: 1h
"""


def _args(*argv: str, home: Path | None = None) -> argparse.Namespace:
    before = ["--home", str(home)] if home is not None else []
    return build_parser().parse_args([*before, "run", *argv])


def test_each_value_comes_from_its_flag_else_its_variable_else_the_default(
        tmp_path: Path) -> None:
    environ = {"BROKER_PROXY_HOME": str(tmp_path / "from-env"),
               "BROKER_PROXY_STORE": "redis://user:hunter2@127.0.0.1:6379/0",
               "BROKER_PROXY_HEAP_TRIM_SECONDS": "0", "BROKER_PROXY_GC_FREEZE": "0"}
    config = build_run_config(_args("--listen", "127.0.0.1:0", "--metrics", "off",
                                    "--idle-timeout", "90s"), environ)
    assert config.home == Home.resolve(str(tmp_path / "from-env"))
    assert config.policy_file == config.home.policy
    assert (config.listen, config.metrics, config.admin) == (("127.0.0.1", 0), None,
                                                            ("127.0.0.1", 8081))
    assert (config.idle_timeout, config.heap_trim_seconds, config.gc_freeze) == (90.0, 0.0,
                                                                                 False)
    assert config.sources["home"] == config.sources["store"] == "env"
    assert config.sources["listen"] == config.sources["idle_timeout"] == "flag"
    assert "admin" not in config.sources  # the default
    shown = {name: (value, source) for name, value, source in config.describe()}
    assert shown["store"] == ("redis://user:***@127.0.0.1:6379/0", "env")
    assert shown["admin"] == ("127.0.0.1:8081", "default")
    assert set(shown) == {f.name for f in dataclasses.fields(RunConfig)} - {"sources"}
    flagged = build_run_config(_args(home=tmp_path / "flag"), environ)
    assert flagged.home.root == (tmp_path / "flag").absolute()
    assert flagged.sources["home"] == "flag"


@pytest.mark.parametrize(("argv", "message"), [
    (("--workers", "0"), "--workers must be at least 1"),
    (("--listen", "nowhere"), "--listen must be HOST:PORT"),
    (("--request-head-timeout", "0s"), "--request-head-timeout: "),
    (("--grant-retention", "soon"), "--grant-retention:"),
    (("--resolve", "api.example.com"), "--resolve must be HOST[:PORT]=IP[:PORT]"),
])
def test_a_bad_setting_is_refused_before_anything_starts(argv: tuple[str, ...],
                                                         message: str) -> None:
    with pytest.raises(RunConfigError, match=re.escape(message)):
        build_run_config(_args(*argv), {})


def test_print_config_shows_every_setting_and_starts_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    master_key = random_master_key()
    environment = {**os.environ, "BROKER_PROXY_MASTER_KEY": master_key,
                   "BROKER_PROXY_STORE": "redis://agent:s3cr3t-pass@127.0.0.1:1/0"}
    environment.pop("BROKER_PROXY_HOME", None)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    port = _busy_port()  # nothing may bind: print-config opens no port
    done = prefork.run(
        [sys.executable, "-m", "broker_proxy.cli", "--home", str(home), "run",
         "--print-config", "--policy", str(policy), "--listen", f"127.0.0.1:{port[1]}"],
        capture_output=True, text=True, timeout=60, env=environment, check=False)
    port[0].close()
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines()}
    for item in dataclasses.fields(RunConfig):
        if item.name != "sources":
            assert item.name in lines, item.name
    assert lines["home"].endswith("(flag)") and str(home) in lines["home"]
    assert lines["store"].endswith("(env)") and "s3cr3t-pass" not in done.stdout
    assert master_key not in done.stdout
    assert lines["master_key_in_env"].split()[1:] == ["True", "(env)"]
    assert lines["workers"].split()[1:] == ["1", "(default)"]
    assert lines["approval_timeout"].endswith("(policy)")
    assert lines["policy_file"].endswith("(flag)")
    assert not home.exists()  # no lock, no home, no audit record


def _busy_port() -> tuple[socket.socket, int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    return listener, listener.getsockname()[1]


def test_the_mitmdump_script_switches_stages_off_by_name() -> None:
    assert set(STAGES) >= MITMDUMP_OFF
    assert set(STAGES) - MITMDUMP_OFF == {"broker"}  # the script runs the broker only
    config = build_run_config(_args(), {})
    with pytest.raises(ValueError, match="no such stages"):
        BrokerProcess(config, off=frozenset({"listner"}))


def test_a_stage_that_fails_stops_what_started_the_lock_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_PROXY_MASTER_KEY", random_master_key())
    monkeypatch.setenv("RUN_CONFIG_TEST_KEY", secrets.token_hex(16))
    home = tmp_path / "home"
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    listener, port = _busy_port()
    try:
        config = build_run_config(_args(
            "--policy", str(policy), "--listen", "127.0.0.1:0", "--metrics", "off",
            "--admin", f"127.0.0.1:{port}", home=home), dict(os.environ))
        process = BrokerProcess(config, off=frozenset({"memory_trace", "heap_trim"}))
        with pytest.raises(AdminApiError, match="cannot listen for the admin API"):
            process.start()
    finally:
        listener.close()
    HomeLock.acquire(home).release()  # the failed start let go of the home
    assert not Home(home).runtime.exists()


def test_the_mitmdump_script_opens_its_broker_through_the_runtime_entry_point() -> None:
    from broker_proxy.addons import broker as script

    from broker_proxy.runtime.script_host import open_for_script

    assert script.runtime_opener() is open_for_script


def test_the_script_without_its_runtime_refuses_every_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from broker_proxy.addons import broker as script
    from mitmproxy.test import taddons, tflow

    monkeypatch.setattr(script, "entry_points", lambda **_: [])
    entry = script.BrokerScript()
    with taddons.context(entry) as tctx:
        tctx.configure(entry, broker_home=str(tmp_path / "home"))
        flow = tflow.tflow()
        entry.request(flow)
    assert flow.response is not None and flow.response.status_code == 503
    assert "runtime entry point" in entry.startup_error
