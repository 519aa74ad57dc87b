"""`broker-proxy policy explain` answers with the proxy's own rules."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from broker_proxy.decision.active_policy import ActivePolicy
from broker_proxy.devtools import prefork
from broker_proxy.policy.loader import load_policy, load_policy_text
from broker_proxy.policy_tools.explain import ExplainError, explain

EXAMPLE = Path(__file__).resolve().parent.parent / "policies" / "example.yaml"

POLICY = """\
version: 1
secrets:
  github:
    from: vault
    destinations:
      - host: api.github.com
        methods: [GET, POST]
        paths: ["/repos/acme/**"]
  internal:
    from: env:INTERNAL
    destinations:
      - host: "*.corp.example.com"
        port: 8443
agents:
  bot:
    secrets: [github]
egress:
  allow: [pypi.org]
"""


@pytest.fixture
def policy() -> ActivePolicy:
    return ActivePolicy.build(load_policy_text(POLICY, "explain.yaml"))


def answers(policy: ActivePolicy, method: str, url: str, agent: str | None = None) -> dict:
    return {a.secret: (a.allowed, a.reason) for a in explain(policy, method, url, agent).secrets}


def test_allowed_destination_is_explained_as_allowed(policy: ActivePolicy) -> None:
    result = answers(policy, "get", "https://API.github.com./repos/acme/x?page=2")
    assert result["github"][0] is True
    assert result["internal"][0] is False


def test_method_path_and_scheme_misses_say_why(policy: ActivePolicy) -> None:
    assert "method DELETE" in answers(policy, "DELETE", "https://api.github.com/repos/acme/x")[
        "github"][1]
    assert "matches none" in answers(policy, "GET", "https://api.github.com/orgs/evil")[
        "github"][1]
    assert "plaintext_http" in answers(policy, "GET", "http://api.github.com:443/repos/acme/x")[
        "github"][1]
    assert "never carries" in answers(policy, "TRACE", "https://api.github.com/repos/acme/x")[
        "github"][1]


def test_ambiguous_paths_never_carry_a_secret(policy: ActivePolicy) -> None:
    result = answers(policy, "GET", "https://api.github.com/repos/acme/..%2f..%2fadmin")
    assert result["github"][0] is False and "ambiguous_path" in result["github"][1]


def test_wildcard_and_port_are_matched_like_the_proxy(policy: ActivePolicy) -> None:
    assert answers(policy, "GET", "https://a.b.corp.example.com:8443/")["internal"][0] is True
    assert answers(policy, "GET", "https://corp.example.com:8443/")["internal"][0] is False
    assert answers(policy, "GET", "https://a.corp.example.com/")["internal"][0] is False


def test_requests_without_a_secret_follow_coverage_and_egress(policy: ActivePolicy) -> None:
    assert explain(policy, "GET", "https://pypi.org/simple/").without_secret == "egress allow-list"
    assert "github" in explain(policy, "GET", "https://api.github.com/").without_secret
    assert explain(policy, "GET", "https://evil.example/").without_secret == ""


def test_agent_narrows_the_secrets_considered(policy: ActivePolicy) -> None:
    assert set(answers(policy, "GET", "https://api.github.com/", agent="bot")) == {"github"}
    with pytest.raises(ExplainError):
        explain(policy, "GET", "https://api.github.com/", agent="nobody")


def test_not_a_url_is_an_error(policy: ActivePolicy) -> None:
    for url in ("notaurl", "ftp://x/", "https://user@host/", "https://host:99999/"):
        with pytest.raises(ExplainError):
            explain(policy, "GET", url)


def test_cli_prints_json_and_one_line_errors(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "broker_proxy.cli", "--home", str(tmp_path), "policy",
            "explain", "--policy", str(EXAMPLE)]
    done = prefork.run([*base, "--json", "GET", "https://api.github.com/repos/acme/x"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["secrets"]["github"]["allowed"] is True
    assert result["without_secret"]["allowed"] is True
    bad = prefork.run([*base, "GET", "notaurl"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert load_policy(EXAMPLE)  # the example the CLI test used is itself valid
