"""`broker-proxy policy test`: shipped tests pass, broken expectations fail by name."""

from pathlib import Path
from xml.etree import ElementTree

import pytest

from broker_proxy.cli import main
from broker_proxy.policy_tools import harness

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"

POLICY = """\
version: 1
secrets:
  api:
    from: env:BP_POLICY_TEST_UNUSED
    destinations:
      - host: api.example.com
        methods: [GET]
        paths: ["/v1/**"]
agents:
  bot:
    secrets: [api]
"""


def write_tests(tmp_path: Path, cases: str) -> Path:
    (tmp_path / "api.yaml").write_text(POLICY)
    path = tmp_path / "api.policy-test.yaml"
    path.write_text("cases:\n" + cases)
    return path


def test_every_example_policy_has_tests():
    policies = {p.name.removesuffix(".yaml") for p in POLICIES.glob("*.yaml")
                if not p.name.endswith(".policy-test.yaml")}
    tested = {p.name.removesuffix(".policy-test.yaml")
              for p in POLICIES.glob("*.policy-test.yaml")}
    assert policies == tested


def test_shipped_policy_tests_pass(capsys):
    assert main(["policy", "test", str(POLICIES)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].endswith(" passed, 0 failed")
    assert all(line.startswith("PASS ") for line in lines[:-1])
    assert int(lines[-1].split()[0]) == len(lines) - 1 >= 40


def test_a_broken_expectation_fails_with_the_case_named(tmp_path, capsys):
    path = write_tests(tmp_path, """\
  - name: reads v1
    agent: bot
    url: https://api.example.com/v1/items
    secret: api
    expect: inject api
  - name: writes are allowed (they are not)
    agent: bot
    method: POST
    url: https://api.example.com/v1/items
    secret: api
    expect: inject api
""")
    assert main(["policy", "test", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"PASS {path}::reads v1"
    assert out[1].startswith(f"FAIL {path}::writes are allowed (they are not): expected inject "
                             "api, got refuse destination_not_allowed")
    assert out[-1] == "1 passed, 1 failed"


def test_junit_names_the_failed_case(tmp_path, capsys):
    path = write_tests(tmp_path, """\
  - name: no secret to evil
    agent: bot
    url: https://evil.example.com/
    secret: api
    in: query
    expect: allow without secret
""")
    junit = tmp_path / "junit.xml"
    assert main(["policy", "test", str(path), "--junit", str(junit)]) == 1
    root = ElementTree.parse(junit).getroot()  # noqa: S314 (our own output)
    assert root.get("tests") == "1" and root.get("failures") == "1"
    case = root.find("testsuite/testcase")
    assert case is not None and case.get("name") == "no secret to evil"
    failure = case.find("failure")
    assert failure is not None
    assert failure.get("message") == ("expected allow without secret, got refuse "
                                      "placeholder_not_allowed_here")


def test_outcomes_come_from_the_broker_with_values_that_are_never_printed(
        tmp_path, capsys, monkeypatch):
    seen: list[str] = []
    resolve = harness.FakeSecrets.resolve

    def recording(self, secret):
        value = resolve(self, secret)
        seen.append(value.reveal())
        return value

    monkeypatch.setattr(harness.FakeSecrets, "resolve", recording)
    path = write_tests(tmp_path, """\
  - name: in the query, where the policy does not allow it
    agent: bot
    url: https://api.example.com/v1/items
    secret: api
    in: query
    expect: inject api
  - name: in a header
    agent: bot
    url: https://api.example.com/v1/items?page=2
    headers: {X-Token: "{placeholder}"}
    secret: api
    expect: inject api
""")
    junit = tmp_path / "junit.xml"
    assert main(["policy", "test", str(path), "--junit", str(junit)]) == 1
    captured = capsys.readouterr()
    assert "placeholder_not_allowed_here" in captured.out
    assert seen and all(value.startswith("fake-") for value in seen)
    for value in seen:
        assert value not in captured.out + captured.err + junit.read_text()


def test_a_candidate_policy_is_checked_against_the_same_tests(tmp_path, capsys):
    path = write_tests(tmp_path, """\
  - name: only v1
    agent: bot
    url: https://api.example.com/v2/items
    secret: api
    expect: refuse destination_not_allowed
""")
    wider = tmp_path / "wider.yaml"
    wider.write_text(POLICY.replace('paths: ["/v1/**"]', 'paths: ["/**"]'))
    assert main(["policy", "test", str(path)]) == 0
    assert main(["policy", "test", str(path), "--policy", str(wider)]) == 1
    assert "got inject api" in capsys.readouterr().out


def test_without_tests_the_policy_directory_is_searched(tmp_path, capsys):
    write_tests(tmp_path, """\
  - name: v1
    agent: bot
    url: https://api.example.com/v1/x
    secret: api
    expect: inject api
""")
    (tmp_path / "other.policy-test.yaml").write_text(
        "cases:\n  - {name: o, agent: x, url: 'https://o.example/', expect: inject nothing}\n")
    assert main(["policy", "test", "--policy", str(tmp_path / "api.yaml")]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"PASS {tmp_path / 'api.policy-test.yaml'}::v1", "1 passed, 0 failed"]


def test_no_test_files_is_one_clear_error(tmp_path, capsys):
    assert main(["policy", "test", str(tmp_path)]) == 1
    assert "no *.policy-test.yaml files found" in capsys.readouterr().err


@pytest.mark.parametrize(("case", "message"), [
    ("  - {name: a, agent: bot, url: 'https://x.example/', expcet: inject api}\n",
     "unknown key 'expcet'"),
    ("  - {name: a, agent: bot, url: 'https://x.example/', expect: maybe}\n",
     "is not 'inject SECRET'"),
    ("  - {name: a, agent: bot, url: 'https://x.example/', expect: 'refuse x', in: cookie}\n",
     "in: 'cookie'"),
    ("  - {name: a, agent: bot, url: 'https://x.example/', expect: 'refuse x',"
     " mcp: {tool: t, argument: {}}}\n", "mcp: unknown key 'argument'"),
    ("  - {name: a, agent: bot, url: 'https://x.example/', expect: 'refuse x',"
     " mcp: {tool: t}, body: '{}'}\n", "mcp: give one of mcp, graphql and body"),
    ("  - {name: a, agent: bot, url: 'https://x.example/', expect: 'refuse x',"
     " graphql: {operation_name: A}}\n", "graphql: expected a mapping with query"),
])
def test_a_bad_test_file_is_an_error_with_its_line(tmp_path, capsys, case, message):
    path = write_tests(tmp_path, case)
    assert main(["policy", "test", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"ERROR {path}:2: " in out and message in out
    assert out.splitlines()[-1] == "0 passed, 1 failed"


def test_an_agent_the_policy_does_not_know_is_refused_like_a_stale_grant(tmp_path, capsys):
    path = write_tests(tmp_path, """\
  - name: ghost
    agent: ghost
    url: https://api.example.com/v1/x
    expect: refuse grant_outside_policy
""")
    assert main(["policy", "test", str(path)]) == 0
