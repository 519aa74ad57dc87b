"""`broker-proxy policy check|schema|explain|test|diff|replay`."""

from __future__ import annotations

import argparse
import json
import sys

from broker_proxy.cli.common import add_policy_option, load_policy_of, policy_file_of
from broker_proxy.cli.errors import CliError
from broker_proxy.policy.loader import PolicyError, load_policy
from broker_proxy.policy.schema import policy_json_schema


def register(commands: argparse._SubParsersAction) -> None:
    policy = commands.add_parser("policy", help="validate policies, print the schema")
    sub = policy.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    check = sub.add_parser(
        "check",
        help="validate policy files",
        description="Validate each FILE and print every error as FILE:LINE:COL: field: message. "
        "Exits non-zero if any file has an error.",
    )
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(handler=check_policies)
    schema = sub.add_parser("schema", help="print the policy's JSON Schema")
    schema.set_defaults(handler=print_schema)
    explain = sub.add_parser(
        "explain",
        help="say what the policy would do with a request",
        description="For METHOD URL, say for each secret (or an agent's secrets) whether its "
        "placeholder would be swapped in, and whether the request may go out without one. "
        "Grant state (expiry, uses, approval) is per grant and not part of the answer.",
    )
    explain.add_argument("method", metavar="METHOD", help="e.g. GET, POST")
    explain.add_argument("url", metavar="URL", help="e.g. https://api.github.com/repos/acme/x")
    explain.add_argument("--agent", help="only this agent's secrets")
    explain.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_policy_option(explain)
    explain.set_defaults(handler=explain_request)
    policy_test = sub.add_parser(
        "test",
        help="run a policy's tests (*.policy-test.yaml)",
        description="Run each case of the test files through the proxy's own decision code "
        "(a throwaway grant store and audit log, random fake secret values, no network) and "
        "compare with what the case expects. One line per case, then 'N passed, M failed'; "
        "exits 1 if any case failed. Without TESTS, runs the *.policy-test.yaml files in the "
        "policy file's directory.",
    )
    policy_test.add_argument("tests", nargs="*", metavar="TESTS",
                             help="test files or directories of them")
    policy_test.add_argument("--policy", metavar="FILE",
                             help="test this policy instead of the one each test file names")
    policy_test.add_argument("--junit", metavar="FILE", help="also write JUnit XML here")
    policy_test.set_defaults(handler=run_policy_tests)


def check_policies(args: argparse.Namespace) -> int:
    failed = False
    for path in args.files:
        try:
            policy = load_policy(path)
        except PolicyError as error:
            print(error, file=sys.stderr)
            failed = True
            continue
        print(f"{path}: ok ({len(policy.secrets)} secrets, {len(policy.agents)} agents)")
    return 1 if failed else 0


def print_schema(args: argparse.Namespace) -> int:
    print(json.dumps(policy_json_schema(), indent=2))
    return 0


def explain_request(args: argparse.Namespace) -> int:
    from broker_proxy.active_policy import ActivePolicy
    from broker_proxy.policy_explain import ExplainError, explain

    policy = ActivePolicy.build(load_policy_of(args))
    try:
        answer = explain(policy, args.method, args.url, agent=args.agent)
    except ExplainError as error:
        raise CliError(str(error)) from None
    if args.json:
        print(json.dumps(answer.as_dict(), indent=2, sort_keys=True))
        return 0
    print(f"{answer.method} {answer.scheme}://{answer.host}:{answer.port}{answer.path}")
    for secret in answer.secrets:
        print(f"  {secret.secret}: {'yes' if secret.allowed else 'no'} ({secret.reason})")
    if not answer.secrets:
        print("  no secrets to consider")
    verdict = (f"allowed ({answer.without_secret})" if answer.without_secret
               else "refused (destination_not_granted)")
    print(f"  without a secret: {verdict}")
    return 0


def run_policy_tests(args: argparse.Namespace) -> int:
    from pathlib import Path

    from broker_proxy.policy_tools.cases import TestFileError, find_test_files, read_test_file
    from broker_proxy.policy_tools.junit import write_junit
    from broker_proxy.policy_tools.runner import CaseResult, run_file

    override = Path(args.policy) if args.policy else None
    if args.tests:
        roots = [Path(item) for item in args.tests]
    else:
        roots = [(override or policy_file_of(args)).parent]
    files = find_test_files(roots)
    if not files:
        raise CliError("no *.policy-test.yaml files found in " + ", ".join(map(str, roots)))
    results: list[CaseResult] = []
    for path in files:
        try:
            test_file = read_test_file(path)
        except TestFileError as error:
            results.append(CaseResult(path, None, False, "error", str(error)))
            print(f"ERROR {error}")
            continue
        for result in run_file(test_file, override):
            results.append(result)
            print(_result_line(result))
    failed = sum(not result.passed for result in results)
    if args.junit:
        write_junit(results, Path(args.junit))
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


def _result_line(result) -> str:
    where = f"{result.file}::{result.name}"
    if result.passed:
        return f"PASS {where}"
    expected = str(result.case.expect) if result.case else "a runnable policy"
    detail = f" ({result.detail})" if result.detail else ""
    return f"FAIL {where}: expected {expected}, got {result.got}{detail}"
