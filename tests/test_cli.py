"""The command line as an operator meets it: one clear line and a non-zero exit on bad input,
never a traceback, never a secret value."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from broker_proxy.cli import main
from broker_proxy.devtools import prefork
from tests.conftest import random_master_key

POLICY = """\
version: 1
secrets:
  github:
    from: vault
    destinations:
      - host: api.github.com
agents:
  research-bot:
    secrets: [github]
    max_ttl: 1h
"""


def run_cli(home: Path, *args: str, stdin: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ if env is None else env)
    return prefork.run([sys.executable, "-m", "broker_proxy.cli", "--home", str(home), *args],
                          input=stdin, capture_output=True, text=True, timeout=60,
                          env=environment)


def assert_one_line_failure(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode != 0, done
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BROKER_PROXY_MASTER_KEY", random_master_key())
    (tmp_path / "home").mkdir(mode=0o700)
    (tmp_path / "home" / "policy.yaml").write_text(POLICY)
    return tmp_path / "home"


def test_every_command_has_help(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # In this process: argparse prints the help and exits, the same as from a shell, without
    # starting one interpreter per command (the entry point itself is run by the other tests).
    for command in (["run"], ["demo"], ["policy", "check"], ["policy", "schema"],
                    ["policy", "explain"], ["exec"],
                    ["secret", "set"], ["secret", "list"], ["secret", "rm"],
                    ["secret", "forget-retired"], ["grant", "issue"],
                    ["grant", "list"], ["grant", "show"], ["grant", "revoke"], ["env"],
                    ["audit", "verify"], ["audit", "tail"], ["ca", "path"], ["ca", "export"],
                    ["mitmdump-script"]):
        with pytest.raises(SystemExit) as exited:
            main(["--home", str(home), *command, "--help"])
        assert exited.value.code == 0, command
        assert "usage: broker-proxy" in capsys.readouterr().out


def test_mitmdump_script_prints_the_installed_entry_point(home: Path) -> None:
    done = run_cli(home, "mitmdump-script")
    assert done.returncode == 0, done.stderr
    script = Path(done.stdout.strip())
    assert script.is_file() and script.name == "broker.py"
    assert script.parent.name == "addons"


def test_malformed_yaml_is_one_located_line(home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nsecrets:\n  github: [unclosed\n")
    done = run_cli(home, "policy", "check", str(bad))
    assert_one_line_failure(done, f"{bad}:")


def test_unknown_fields_are_all_reported_with_their_location(home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(POLICY.replace("    from: vault\n", "    from: vault\n    colour: red\n")
                   + "extra: true\n")
    done = run_cli(home, "policy", "check", str(bad))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2, done.stderr
    assert lines[0].startswith(f"{bad}:5:5: secrets.github.colour: ")
    assert lines[1].startswith(f"{bad}:12:1: extra: ")


def test_unreadable_policy_file_is_one_line(home: Path, tmp_path: Path) -> None:
    done = run_cli(home, "policy", "check", str(tmp_path / "missing.yaml"))
    assert_one_line_failure(done, "missing.yaml")


def test_policy_check_accepts_every_shipped_policy(home: Path) -> None:
    shipped = sorted(str(p) for p in (Path(__file__).parent.parent / "policies").glob("*.yaml")
                     if not p.name.endswith(".policy-test.yaml"))
    assert shipped
    done = run_cli(home, "policy", "check", *shipped)
    assert done.returncode == 0, done.stderr


def test_secret_set_reads_stdin_and_list_never_shows_the_value(home: Path) -> None:
    value = "ghp_" + secrets.token_urlsafe(24)
    stored = run_cli(home, "secret", "set", "github", stdin=value + "\n")
    assert stored.returncode == 0, stored.stderr
    listed = run_cli(home, "secret", "list")
    assert listed.returncode == 0, listed.stderr
    assert "github" in listed.stdout and "ok" in listed.stdout
    for output in (stored.stdout, stored.stderr, listed.stdout, listed.stderr):
        assert value not in output
    assert value.encode() not in (home / "vault.bin").read_bytes()


def test_missing_vault_key_is_a_clear_error(home: Path) -> None:
    assert run_cli(home, "secret", "set", "github", stdin="v" * 20).returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "BROKER_PROXY_MASTER_KEY"}
    done = run_cli(home, "secret", "rm", "github", env=env)
    assert_one_line_failure(done, "vault key not found")


def test_wrong_vault_key_is_a_clear_error(home: Path) -> None:
    assert run_cli(home, "secret", "set", "github", stdin="v" * 20).returncode == 0
    env = dict(os.environ, BROKER_PROXY_MASTER_KEY=random_master_key())
    done = run_cli(home, "secret", "list", env=env)
    assert_one_line_failure(done, "wrong key or corrupted")


def test_grant_issue_prints_token_once_and_json_fields(home: Path) -> None:
    done = run_cli(home, "grant", "issue", "--agent", "research-bot", "--task", "triage",
                   "--secret", "github", "--ttl", "10m", "--max-uses", "3", "--json")
    assert done.returncode == 0, done.stderr
    issued = json.loads(done.stdout)
    assert {"id", "token", "proxy_url", "expires_at", "status", "placeholders"} <= set(issued)
    assert issued["placeholders"] == {"github": "{{secret:github}}"}
    assert issued["token"] in issued["proxy_url"]
    assert issued["status"] == "active"
    shown = run_cli(home, "grant", "show", issued["id"], "--json")
    listed = run_cli(home, "grant", "list", "--json")
    assert issued["token"] not in shown.stdout + listed.stdout
    assert json.loads(shown.stdout)["max_uses"] == 3
    revoked = run_cli(home, "grant", "revoke", issued["id"], "--json")
    assert json.loads(revoked.stdout)["state"] == "revoked"


@pytest.mark.parametrize(("args", "needle"), [
    (["--agent", "research-bot", "--secret", "nope"], 'may not be granted secret "nope"'),
    (["--agent", "nobody", "--secret", "github"], 'agent "nobody" is not in the policy'),
    (["--agent", "research-bot", "--secret", "github", "--ttl", "soon"], "invalid duration"),
    (["--agent", "research-bot", "--secret", "github", "--ttl", "2h"], "exceeds max_ttl"),
    (["--agent", "research-bot", "--secret", "github", "--max-uses", "0"], "max_uses"),
])
def test_grant_issue_refuses_what_the_policy_does_not_allow(home: Path, args: list[str],
                                                            needle: str) -> None:
    done = run_cli(home, "grant", "issue", "--task", "t", *args)
    assert_one_line_failure(done, needle)


def test_grant_commands_with_a_bad_policy_file_fail_cleanly(home: Path) -> None:
    (home / "policy.yaml").write_text("version: 2\n")
    done = run_cli(home, "grant", "issue", "--agent", "a", "--task", "t", "--secret", "s")
    assert_one_line_failure(done, "policy.yaml:1:10: version")


def test_unknown_grant_id_is_one_line(home: Path) -> None:
    assert_one_line_failure(run_cli(home, "grant", "revoke", "g_0000000000000000"),
                            "g_0000000000000000")


def _issue(home: Path) -> dict:
    done = run_cli(home, "grant", "issue", "--agent", "research-bot", "--task", "t",
                   "--secret", "github", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _exports(stdout: str) -> dict[str, str]:
    import shlex

    pairs = [shlex.split(line.removeprefix("export "))[0] for line in stdout.splitlines()]
    return dict(pair.split("=", 1) for pair in pairs)


def test_env_prints_the_exports_an_agent_needs(home: Path) -> None:
    issued = _issue(home)
    caller = dict(os.environ, NO_PROXY="db.internal,.corp", no_proxy="cache.local",
                  AWS_CA_BUNDLE="/etc/ssl/other-ca.pem")
    done = run_cli(home, "env", "--token", issued["token"], env=caller)
    assert done.returncode == 0, done.stderr
    exports = _exports(done.stdout)
    for variable in ("HTTPS_PROXY", "HTTP_PROXY", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE",
                     "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO", "AWS_CA_BUNDLE",
                     "DENO_CERT", "PIP_CERT"):
        assert variable in exports
    assert exports["AWS_CA_BUNDLE"] == exports["SSL_CERT_FILE"]
    # The grant's agent, not a generic name, is the user part of the proxy URL.
    assert exports["HTTPS_PROXY"].startswith("http://research-bot:bpt_")
    for name in ("NO_PROXY", "no_proxy"):
        assert exports[name].split(",") == ["db.internal", ".corp", "cache.local", "localhost",
                                            "127.0.0.1", "::1"]
    assert "no proxy is running" in done.stderr
    through = run_cli(home, "env", "--token", issued["token"], "--no-loopback-bypass",
                      env=caller)
    assert _exports(through.stdout)["NO_PROXY"] == "db.internal,.corp,cache.local"


@pytest.mark.parametrize("token", ["bpt_bogus", "nonsense",
                                   "bpt_g_0123456789abcdef_" + "x" * 43])
def test_env_with_an_unknown_token_says_it_is_unknown(home: Path, token: str) -> None:
    assert_one_line_failure(run_cli(home, "env", "--token", token), "unknown grant token")


def test_env_with_a_revoked_grant_is_an_error_not_exports(home: Path) -> None:
    issued = _issue(home)
    assert run_cli(home, "grant", "revoke", issued["id"]).returncode == 0
    done = run_cli(home, "env", "--token", issued["token"])
    assert_one_line_failure(done, issued["id"], "revoked")
    assert done.stdout == ""


def test_ca_path_names_the_ca_run_made_elsewhere_not_a_second_one(home: Path,
                                                                  tmp_path: Path) -> None:
    from broker_proxy.cli.run_cmd import home_certs
    from broker_proxy.home import Home

    elsewhere = tmp_path / "repo-certs"
    assert home_certs(Home(home), str(elsewhere)) == elsewhere  # what `run --certs` does
    done = run_cli(home, "ca", "path")
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).parent == elsewhere
    assert not (home / "certs").exists()
    issued = _issue(home)
    exports = _exports(run_cli(home, "env", "--token", issued["token"]).stdout)
    assert Path(exports["SSL_CERT_FILE"]).parent == elsewhere
    # A CA exists now: another --certs would make a second one.
    from broker_proxy.cli.errors import CliError

    with pytest.raises(CliError, match="this home's CA is in"):
        home_certs(Home(home), str(tmp_path / "third"))


def test_run_without_a_policy_file_says_how_to_start(tmp_path: Path) -> None:
    empty = tmp_path / "fresh-home"
    done = run_cli(empty, "run", "--listen", "127.0.0.1:0", "--metrics", "off",
                   "--admin", "off")
    assert_one_line_failure(done, "no policy file at", "policies/example.yaml")


def test_ca_path_creates_and_prints_the_ca(home: Path) -> None:
    done = run_cli(home, "ca", "path")
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip())
    assert path.exists() and b"BEGIN CERTIFICATE" in path.read_bytes()


def test_audit_verify_names_the_first_tampered_record(home: Path) -> None:
    for _ in range(3):
        run_cli(home, "grant", "issue", "--agent", "research-bot", "--task", "t",
                "--secret", "github")
    assert run_cli(home, "audit", "verify").returncode == 0
    log = home / "audit.log"
    lines = log.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace('"task":"t"', '"task":"x"')
    log.write_text("".join(lines))
    done = run_cli(home, "audit", "verify")
    assert_one_line_failure(done, "audit.log:2")
    tail = run_cli(home, "audit", "tail")
    assert tail.returncode == 0 and "grant_issued" in tail.stdout


APPROVAL_POLICY = POLICY.replace("    max_ttl: 1h\n", "    max_ttl: 1h\n    approval: [github]\n")


def test_grant_show_of_an_unknown_id_says_so_once(home: Path) -> None:
    done = run_cli(home, "grant", "show", "g_0000000000000000")
    assert_one_line_failure(done, "grant g_0000000000000000 not found")
    assert "no grant" not in done.stderr


def test_a_denied_grant_names_its_denier_as_denier_never_as_approver(home: Path) -> None:
    (home / "policy.yaml").write_text(APPROVAL_POLICY)
    issued = _issue(home)
    assert run_cli(home, "grant", "deny", issued["id"]).returncode == 0
    shown = json.loads(run_cli(home, "grant", "show", issued["id"], "--json").stdout)
    assert shown["approved_by"] is None and shown["approved_at"] is None
    assert shown["denied_by"] and shown["denied_at"]
    assert shown["decided_by"] == shown["denied_by"]
    text = run_cli(home, "grant", "show", issued["id"]).stdout
    assert "denied_by:" in text and "approved_by:" not in text


def test_grant_show_reads_like_text_and_tells_who_revoked_and_why(home: Path) -> None:
    issued = _issue(home)
    assert run_cli(home, "grant", "revoke", issued["id"]).returncode == 0
    text = run_cli(home, "grant", "show", issued["id"]).stdout
    assert "['" not in text and "None" not in text
    assert "secrets:     github" in text
    history = text.split("history:\n", 1)[1]
    lines = history.strip().splitlines()
    assert "issued by " in lines[0] and "revoked by " in lines[-1]


def test_exec_usage_names_every_option(home: Path) -> None:
    usage = run_cli(home, "exec", "--help").stdout.split("\n\n", 1)[0]
    for option in ("--policy", "--store", "--ttl", "--max-uses", "--wait-approval"):
        assert option in usage
