"""Stricter policy checks: never-matching paths are errors, suspicious shapes are warnings."""

from pathlib import Path

import pytest

from broker_proxy.cli import main
from broker_proxy.policy.lint import check_file
from broker_proxy.policy.loader import PolicyError, load_policy_text

POLICIES = sorted(p for p in (Path(__file__).resolve().parent.parent / "policies").glob("*.yaml")
                  if not p.name.endswith(".policy-test.yaml"))

SUSPICIOUS = """\
version: 1
secrets:
  api:
    from: vault
    destinations:
      - host: "*.example.com"
      - host: api.example.com
        methods: [GET]
        paths: ["/v1/**"]
      - host: plain.example.com
        scheme: http
        port: 443
  lonely:
    from: vault
    destinations: [{host: lonely.example.com}]
agents:
  bot:
    secrets: [api]
  idle:
    secrets: []
"""


def one_path(glob: str) -> str:
    return ("version: 1\nsecrets:\n  s:\n    from: vault\n    destinations:\n"
            f"      - host: a.example.com\n        paths: [\"{glob}\"]\n")


@pytest.mark.parametrize(("glob", "why"), [
    ("/a//b", "empty segment"),
    ("/a/./b", "dot segment"),
    ("/a/../b", "dot segment"),
    ("/files;v=1", "';'"),
    ("/a%2Fb", "%2F"),
    ("/v%31/**", "canonical path"),
])
def test_path_patterns_that_can_never_match_are_errors(glob, why):
    with pytest.raises(PolicyError) as raised:
        load_policy_text(one_path(glob), "p.yaml")
    (issue,) = raised.value.issues
    assert (issue.line, issue.column) == (7, 17)
    assert issue.field_path == "secrets.s.destinations[0].paths[0]"
    assert "can never match" in issue.message and why in issue.message


@pytest.mark.parametrize("glob", ["/a/**", "/a/*/b", "/", "/a%20b", "/a/"])
def test_reachable_path_patterns_load(glob):
    load_policy_text(one_path(glob))


def test_suspicious_shapes_are_warnings_at_their_line(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(SUSPICIOUS)
    _, warnings = check_file(path)
    assert [str(w) for w in warnings] == [
        f"{path}:7:9: secrets.api.destinations[1]: warning: shadowed by destinations[0], "
        "which covers everything this one allows",
        f"{path}:12:15: secrets.api.destinations[2].port: warning: http on port 443, the "
        "usual port of https",
        f"{path}:13:3: secrets.lonely: warning: no agent holds this secret, so no grant can "
        "use it",
        f"{path}:19:3: agents.idle: warning: none of this agent's secrets has a destination: "
        "it can be granted nothing",
    ]


def test_two_equal_destinations_warn_once():
    text = ("version: 1\nsecrets:\n  s:\n    from: vault\n    destinations:\n"
            "      - host: a.example.com\n      - host: a.example.com\n"
            "agents:\n  bot:\n    secrets: [s]\n")
    from broker_proxy.policy.lint import policy_warnings
    warnings = policy_warnings(load_policy_text(text), text, "p.yaml")
    assert [(w.line, w.field_path) for w in warnings] == [(7, "secrets.s.destinations[1]")]


def test_check_passes_with_warnings_and_strict_fails(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(SUSPICIOUS)
    assert main(["policy", "check", str(path)]) == 0
    captured = capsys.readouterr()
    assert "4 warnings" in captured.out and captured.err.count(": warning: ") == 4
    assert main(["policy", "check", "--strict", str(path)]) == 1


@pytest.mark.parametrize("path", POLICIES, ids=lambda path: path.name)
def test_shipped_policies_have_no_warnings(path):
    assert check_file(path)[1] == []


def test_check_reads_and_composes_the_file_once(tmp_path, monkeypatch):
    """Loader and linter share one composed tree: a large policy is not parsed twice."""
    import yaml

    path = tmp_path / "p.yaml"
    path.write_text(SUSPICIOUS)
    expected = [str(w) for w in check_file(path)[1]]
    composed = []
    real = yaml.CSafeLoader.get_single_node if yaml.__with_libyaml__ else None

    def counting(self):
        composed.append(1)
        return real(self)

    if real is None:
        pytest.skip("PyYAML without libyaml")
    monkeypatch.setattr(yaml.CSafeLoader, "get_single_node", counting)

    def no_second_compose(*args, **kwargs):
        raise AssertionError("composed again")

    monkeypatch.setattr(yaml, "compose", no_second_compose)
    assert [str(w) for w in check_file(path)[1]] == expected
    assert composed == [1]
