"""`policy diff`: what changes for whom, each widening flagged."""

import json

import pytest

from broker_proxy.cli import main
from broker_proxy.policy.coverage import glob_covers, host_covers
from broker_proxy.policy.diff import diff_policies
from broker_proxy.policy.loader import load_policy_text

OLD = """\
version: 1
secrets:
  gh:
    from: vault
    destinations:
      - host: api.github.com
        methods: [GET, POST]
        paths: ["/repos/acme/**", "/user"]
  spare:
    from: vault
    destinations: [{host: spare.example.com}]
agents:
  bot:
    secrets: [gh]
    max_ttl: 1h
    approval: [gh]
egress:
  allow: [pypi.org]
"""


def changes(new: str) -> list[tuple[str, str, bool]]:
    found = diff_policies(load_policy_text(OLD), load_policy_text(new))
    return [(c.kind, c.detail, c.widening) for c in found]


def test_same_policy_has_no_changes():
    assert changes(OLD) == []


def test_a_widened_path_pattern_is_flagged():
    assert changes(OLD.replace('"/repos/acme/**"', '"/repos/**"')) == [
        ("destination_widened", "https://api.github.com widened: paths +/repos/**", True)]


def test_a_narrowed_path_pattern_is_not_a_widening():
    assert changes(OLD.replace('"/repos/acme/**"', '"/repos/acme/widgets/**"')) == [
        ("destination_narrowed",
         "https://api.github.com narrowed: paths no longer all of /repos/acme/**", False)]


@pytest.mark.parametrize(("edit", "expected"), [
    (("methods: [GET, POST]", "methods: [GET, POST, DELETE]"),
     ("destination_widened", "https://api.github.com widened: methods +DELETE", True)),
    (("methods: [GET, POST]", "methods: [GET]"),
     ("destination_narrowed", "https://api.github.com narrowed: methods -POST", False)),
    (("host: api.github.com", "host: \"*.github.com\""),
     ("destination_widened",
      "https://*.github.com widened: host api.github.com -> *.github.com", True)),
    (("        methods: [GET, POST]\n", "        port: 8443\n        methods: [GET, POST]\n"),
     ("destination_widened", "new destination https://api.github.com:8443 "
                             "[GET,POST /repos/acme/**,/user]", True)),
    (("    approval: [gh]\n", ""),
     ("approval_dropped", "grants of gh no longer wait for approval", True)),
    (("max_ttl: 1h", "max_ttl: 8h"), ("max_ttl_raised", "max_ttl 1h -> 8h", True)),
    (("max_ttl: 1h", "max_ttl: 30m"), ("max_ttl_lowered", "max_ttl 1h -> 30m", False)),
    (("secrets: [gh]", "secrets: [gh, spare]"),
     ("agent_secret_added", "may now be granted spare", True)),
    (("allow: [pypi.org]", "allow: [pypi.org, evil.example.com]"),
     ("egress_added", "host evil.example.com added", True)),
])
def test_each_dimension(edit, expected):
    found = changes(OLD.replace(*edit))
    assert expected in found


def test_new_agents_widen_and_removed_secrets_are_listed():
    new = OLD.replace("  spare:\n    from: vault\n    destinations: [{host: spare.example.com}]\n",
                      "") + "  other:\n    secrets: []\n"
    new = new.replace("egress:\n  allow: [pypi.org]\n", "") + "egress:\n  allow: [pypi.org]\n"
    found = changes(new)
    assert ("secret_removed", "secret removed", False) in found
    assert ("agent_added", "agent added", True) in found


def test_moving_a_destination_is_one_widening_and_one_narrowing():
    found = changes(OLD.replace("host: api.github.com", "host: api.gitlab.com"))
    assert [kind for kind, _, _ in found] == ["destination_widened", "destination_narrowed"]


@pytest.mark.parametrize(("outer", "inner", "covers"), [
    ("/repos/**", "/repos/acme/**", True),
    ("/repos/acme/**", "/repos/**", False),
    ("/repos/*/issues", "/repos/acme/issues", True),
    ("/repos/acme/issues", "/repos/*/issues", False),
    ("/a*", "/ab*", True),
    ("/ab*", "/a*", False),
    ("/**", "/", True),
    ("/a/**", "/a", True),
    ("/a/*", "/a/**", False),
])
def test_glob_inclusion(outer, inner, covers):
    assert glob_covers(outer, inner) is covers


def test_host_inclusion():
    assert host_covers("*.example.com", "api.example.com")
    assert host_covers("*.example.com", "*.api.example.com")
    assert not host_covers("*.example.com", "example.com")
    assert not host_covers("api.example.com", "*.example.com")


def test_cli_text_json_and_gate(tmp_path, capsys):
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(OLD)
    new.write_text(OLD.replace('"/repos/acme/**"', '"/repos/**"'))
    assert main(["policy", "diff", str(old), str(new)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["WIDENS secrets.gh: https://api.github.com widened: paths +/repos/**",
                   "1 changes, 1 widening"]
    assert main(["policy", "diff", "--json", str(old), str(new)]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["widening"] is True
    assert answer["changes"][0]["kind"] == "destination_widened"
    assert main(["policy", "diff", "--fail-on-widening", str(old), str(new)]) == 1
    assert main(["policy", "diff", "--fail-on-widening", str(new), str(old)]) == 0


def test_a_new_or_moved_pin_is_flagged_as_widening(tmp_path) -> None:
    from broker_proxy.policy.diff import diff_policies
    from broker_proxy.policy.loader import load_policy_text

    old = load_policy_text("version: 1\nnetwork:\n  resolve: [\"a.example.com=10.0.0.1\"]\n")
    new = load_policy_text("version: 1\nnetwork:\n  resolve: [\"a.example.com=10.0.0.2\", "
                           "\"b.example.com:443=[::1]:8443\"]\n")
    changes = diff_policies(old, new)
    added = sorted(c.detail for c in changes if c.widening)
    assert added == ["pin a.example.com=10.0.0.2 added", "pin b.example.com:443=[::1]:8443 added"]
    assert [c.detail for c in changes if not c.widening] == ["pin a.example.com=10.0.0.1 removed"]
