"""The tests' launcher: `python -m broker_proxy.cli` forked from a pre-imported zygote answers as
an exec'd interpreter does (exit codes, signals, stdio, environment), and a broken zygote only
costs a plain exec and one warning line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker_proxy.audit.log import AuditLog
from broker_proxy.devtools import prefork

CLI = [sys.executable, "-m", "broker_proxy.cli"]


@pytest.fixture(autouse=True)
def switched_on() -> Iterator[None]:
    was = prefork.enabled()
    prefork.enable(True)
    yield
    prefork.enable(was)


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def follower(home: Path) -> prefork.Popen:
    """A CLI process that runs until signalled: `audit tail --follow` on a home's audit log."""
    home.mkdir(exist_ok=True)
    with AuditLog.open(home / "audit.log", home / "audit.key") as log:
        log.append("proxy_started")
    return prefork.Popen([*CLI, "--home", str(home), "audit", "tail", "--follow"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_forked_call_answers_exactly_as_an_exec(tmp_path: Path) -> None:
    for argv in (["--version"], ["no-such-command"], ["--home", str(tmp_path), "grant", "list"]):
        forked = prefork.run([*CLI, *argv], capture_output=True, text=True, timeout=60)
        execd = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=60)
        assert (forked.returncode, forked.stdout, forked.stderr) == (
            execd.returncode, execd.stdout, execd.stderr)
    assert prefork.run([*CLI, "no-such-command"], capture_output=True).returncode == 2


def test_the_child_is_forked_from_the_zygote_and_reports_its_own_pid(tmp_path: Path) -> None:
    process = follower(tmp_path / "home")
    try:
        zygote = prefork._zygote._process
        assert zygote is not None and parent_of(process.pid) == zygote.pid
        assert process.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=0.2)
    finally:
        process.kill()
    assert process.wait(timeout=10) == -signal.SIGKILL


def test_signals_end_the_child_as_they_end_an_exec(tmp_path: Path) -> None:
    process = follower(tmp_path / "home")
    time.sleep(0.5)  # past start-up: the answer is the signal's, not an early exit's
    process.terminate()
    process.communicate(timeout=10)
    assert process.returncode == -signal.SIGTERM


def test_stdin_and_the_given_environment_reach_the_child_and_nothing_else(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefork._zygote.close()  # the next zygote starts with a variable no child was given
    monkeypatch.setenv("BROKER_PROXY_HOME", str(tmp_path / "zygote-home"))
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\n")
    given = {k: v for k, v in os.environ.items() if k != "BROKER_PROXY_HOME"}
    shown = prefork.run([*CLI, "run", "--print-config", "--policy", str(policy)],
                        capture_output=True, text=True, timeout=60, env=given)
    assert shown.returncode == 0, shown.stderr
    assert "zygote-home" not in shown.stdout
    home = tmp_path / "home"
    keyed = dict(given, BROKER_PROXY_MASTER_KEY=json.loads(prefork.run(
        [sys.executable, "-c", "import base64, json, os; "
         "print(json.dumps(base64.urlsafe_b64encode(os.urandom(32)).decode()))"],
        capture_output=True, text=True, check=True).stdout))
    stored = prefork.run([*CLI, "--home", str(home), "secret", "set", "api_key"],
                         input="value-from-stdin\n", capture_output=True, text=True,
                         timeout=60, env=keyed)
    assert stored.returncode == 0, stored.stderr
    listed = prefork.run([*CLI, "--home", str(home), "secret", "list"], capture_output=True,
                         text=True, timeout=60, env=keyed)
    assert listed.returncode == 0 and "api_key" in listed.stdout, listed.stderr
    assert "value-from-stdin" not in listed.stdout + listed.stderr


def test_a_dead_zygote_costs_one_warning_and_a_plain_exec(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    prefork.run([*CLI, "--version"], capture_output=True, check=True)  # the zygote is up
    zygote = prefork._zygote._process
    assert zygote is not None
    zygote.kill()
    zygote.wait()
    done = prefork.run([*CLI, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("broker-proxy ")
    warnings = [line for line in capfd.readouterr().err.splitlines() if "prefork" in line]
    assert len(warnings) == 1 and "exec'ing instead" in warnings[0]
    again = follower(tmp_path / "home")  # from a new zygote
    try:
        restarted = prefork._zygote._process
        assert restarted is not None and parent_of(again.pid) == restarted.pid
    finally:
        again.kill()
        again.wait()


def test_interpreter_start_settings_and_other_commands_keep_a_plain_exec() -> None:
    prefork.run([*CLI, "--version"], capture_output=True, check=True)
    tracing = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    done = prefork.run([*CLI, "--version"], capture_output=True, text=True, env=tracing)
    assert "import time:" in done.stderr  # read at interpreter start: it was exec'd
    other = prefork.run([sys.executable, "-c", "import os; print(os.getppid())"],
                        capture_output=True, text=True, check=True)
    assert int(other.stdout) == os.getpid()


def test_the_zygote_holds_no_thread_loop_log_handler_or_descriptor_a_child_could_inherit() -> None:
    probe = ("import asyncio, json, logging, os, sys, threading\n"
             "from broker_proxy.devtools import zygote\n"
             "zygote.preload()\n"
             "loop = asyncio.events._get_running_loop()\n"
             "fds = sorted(os.listdir('/proc/self/fd'))\n"
             "print(json.dumps([threading.active_count(), loop is None,\n"
             "                  len(logging.getLogger().handlers), fds]))")
    threads, no_loop, handlers, fds = json.loads(subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True,
        stdin=subprocess.DEVNULL, timeout=60).stdout)
    assert (threads, no_loop, handlers) == (1, True, 0)
    assert len(fds) <= 4  # 0, 1, 2 and listdir's own
