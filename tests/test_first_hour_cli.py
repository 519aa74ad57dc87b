"""The small things a new user trips over in the first hour, each as they would see it:
the command's own output, through `broker-proxy` itself (a subprocess where a pipe matters).
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from broker_proxy.cli import build_parser, main
from tests.conftest import Stack

PER_REQUEST_POLICY = """\
version: 1
secrets:
  pay:
    from: vault
    approval: per_request
    destinations: [{host: api.stripe.com}]
  gh:
    from: vault
    destinations: [{host: api.github.com}]
agents:
  bot: {secrets: [pay, gh], approval: [gh]}
"""


def test_policy_check_counts_in_singular_and_plural(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    one = tmp_path / "one.yaml"
    one.write_text("version: 1\nsecrets:\n  s: {from: vault, destinations: [{host: a.example}]}"
                   "\nagents:\n  bot: {secrets: [s]}\n")
    two = tmp_path / "two.yaml"
    two.write_text(PER_REQUEST_POLICY)
    assert main(["policy", "check", str(one), str(two)]) == 0
    out = capsys.readouterr().out
    assert f"{one}: ok (1 secret, 1 agent)" in out
    assert f"{two}: ok (2 secrets, 1 agent)" in out


def test_policy_explain_says_a_secret_waits_for_a_person(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(PER_REQUEST_POLICY)
    assert main(["policy", "explain", "--policy", str(policy), "--agent", "bot",
                 "POST", "https://api.stripe.com/v1/charges"]) == 0
    out = capsys.readouterr().out
    assert "pay: yes" in out and "held for a person's approval (approval: per_request)" in out
    assert main(["policy", "explain", "--policy", str(policy), "--agent", "bot",
                 "GET", "https://api.github.com/user"]) == 0
    assert "a grant of bot holding it waits for approval" in capsys.readouterr().out


def test_top_level_help_names_every_policy_action() -> None:
    text = build_parser().format_help()
    line = next(line for line in text.splitlines() if line.strip().startswith("policy "))
    for action in ("init", "check", "schema", "explain", "test", "diff", "replay"):
        assert action in line, line


def test_policy_schema_into_head_is_not_an_error() -> None:
    done = subprocess.run(  # noqa: S602 (a fixed pipeline, as a user types it)
        f"'{sys.executable}' -m broker_proxy.cli policy schema | head -1; "
        "exit ${PIPESTATUS[0]}", shell=True, executable="/bin/bash",
        capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout == "{\n"
    assert done.stderr == "" and done.returncode == 0


class _ClosedPipe(io.StringIO):
    """stdout whose reader has gone: every write fails as a closed pipe does."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self) -> int:
        raise io.UnsupportedOperation("no descriptor")


def test_a_reader_that_went_away_ends_the_command_quietly(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # Deterministic: the shell pipeline above only breaks when head wins the race.
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(["policy", "schema"]) == 0
    assert capsys.readouterr().err == ""


def test_max_ttl_is_documented_as_a_refusal() -> None:
    from broker_proxy.policy.schema import policy_json_schema

    text = str(policy_json_schema())
    assert "asking for longer is refused" in text
    assert "whatever the issuer asks" not in (Path(__file__).parent.parent / "policies" /
                                              "example.yaml").read_text()


def test_grant_approve_says_approved_and_show_prints_one_state(
        stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    issued = stack.issue("api_key", agent="careful-bot")
    home = ["--home", str(stack.home.root)]
    assert main([*home, "grant", "approve", issued.grant.id]) == 0
    assert capsys.readouterr().out.startswith(f"grant {issued.grant.id} approved\n")
    assert main([*home, "grant", "show", issued.grant.id]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines if line.startswith(("state:", "status:"))] == [
        "state:"]
    assert main([*home, "grant", "revoke", issued.grant.id]) == 0
    assert capsys.readouterr().out.startswith(f"grant {issued.grant.id} revoked\n")


def test_start_up_line_names_the_admin_api_and_the_console(stack: Stack) -> None:
    log = (stack.root / "proxy.log").read_text()
    [line] = [line for line in log.splitlines() if line.startswith("broker-proxy listening on")]
    admin = stack.proxy.info["admin"]
    assert f"admin API: http://{admin}, console: http://{admin}/ui/" in line
