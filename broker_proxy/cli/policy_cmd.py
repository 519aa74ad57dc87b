"""`broker-proxy policy init|check|schema|explain|test|diff|replay`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from broker_proxy.cli.common import add_policy_option, load_policy_of, policy_file_of
from broker_proxy.cli.errors import CliError
from broker_proxy.policy.loader import PolicyError, load_policy
from broker_proxy.policy.schema import policy_json_schema

if TYPE_CHECKING:
    from broker_proxy.policy_tools.runner import CaseResult


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    policy = commands.add_parser(
        "policy", help="init, check, schema, explain, test, diff, replay: write, validate and "
        "test policies")
    sub = policy.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    _add_init(sub)
    _add_check(sub)
    schema = sub.add_parser("schema", help="print the policy's JSON Schema")
    schema.set_defaults(handler=print_schema)
    _add_explain(sub)
    _add_test(sub)
    _add_diff(sub)
    _add_replay(sub)


def _add_init(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`policy init`: write an example policy to edit."""
    init = sub.add_parser(
        "init",
        help="write a starting policy from an example shipped with broker-proxy",
        description="Write the example policy NAME (default: example) to the policy file "
        "(--policy FILE, else $BROKER_PROXY_POLICY, else <home>/policy.yaml), to edit and then "
        "`policy check`. --list names the examples. An existing file is kept unless --force.",
    )
    init.add_argument("--example", metavar="NAME", default="example",
                      help="which example (default: example; see --list)")
    init.add_argument("--list", action="store_true", help="list the examples and exit")
    init.add_argument("--force", action="store_true", help="replace an existing file")
    add_policy_option(init)
    init.set_defaults(handler=init_policy)


def _add_check(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`policy check`: errors, then warnings, of each file."""
    check = sub.add_parser(
        "check",
        help="validate policy files",
        description="Validate each FILE and print every error as FILE:LINE:COL: field: message, "
        "then warnings (FILE:LINE:COL: field: warning: message) for what is suspicious but "
        "allowed. Exits non-zero if any file has an error (with --strict, or a warning).",
    )
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument("--strict", action="store_true", help="warnings are errors too")
    check.set_defaults(handler=check_policies)


def _add_explain(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`policy explain`: what the policy would do with one request."""
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


def _add_test(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`policy test`: run *.policy-test.yaml cases through the decision code."""
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


def _add_diff(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`policy diff`: what changes from OLD to NEW, widenings flagged."""
    diff = sub.add_parser(
        "diff",
        help="what changes from OLD to NEW, widenings flagged",
        description="Agents and secrets added or removed, destinations widened or narrowed "
        "(host, port, method, path), approvals added or dropped, max_ttl, inject places, "
        "egress hosts. Each widening is flagged WIDENS (JSON: widening: true).",
    )
    diff.add_argument("old", metavar="OLD")
    diff.add_argument("new", metavar="NEW")
    diff.add_argument("--json", action="store_true", help="print JSON for scripts")
    diff.add_argument("--fail-on-widening", action="store_true",
                      help="exit 1 if NEW widens anything (for CI gates)")
    diff.set_defaults(handler=diff_policies_cmd)


def _add_replay(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`policy replay`: an audit log decided again under a new policy."""
    replay = sub.add_parser(
        "replay",
        help="decide every request of an audit log again under a policy",
        description="Re-decide each request record of the audit LOG (with its rotated "
        "archives; a directory: every chain in it) under NEW with the proxy's own decision "
        "code, and count what is unchanged, now refused (by reason, with examples) and now "
        "allowed.",
    )
    replay.add_argument("new", metavar="NEW", help="the candidate policy")
    replay.add_argument("--audit", required=True, metavar="LOG", help="audit log or directory")
    replay.add_argument("--json", action="store_true", help="print JSON for scripts")
    replay.set_defaults(handler=replay_audit)


def init_policy(args: argparse.Namespace) -> int:
    from broker_proxy.policy_tools.examples import (
        ExampleError,
        example_names,
        example_summary,
        write_example,
    )

    if args.list:
        for name in example_names():
            print(f"{name:<12} {example_summary(name)}")
        return 0
    target = policy_file_of(args)
    try:
        write_example(args.example, target, force=args.force)
    except ExampleError as error:
        raise CliError(str(error)) from None
    print(f"wrote {target} from the example policy {args.example!r}; edit it, then: "
          f"broker-proxy policy check {target}")
    return 0


def check_policies(args: argparse.Namespace) -> int:
    from broker_proxy.policy.lint import check_file

    failed = False
    for path in args.files:
        try:
            policy, warnings = check_file(path)
        except PolicyError as error:
            print(error, file=sys.stderr)
            failed = True
            continue
        for warning in warnings:
            print(warning, file=sys.stderr)
        if warnings and args.strict:
            failed = True
            continue
        counts = [_count(len(policy.secrets), "secret"), _count(len(policy.agents), "agent")]
        if warnings:
            counts.append(_count(len(warnings), "warning"))
        print(f"{path}: ok ({', '.join(counts)})")
    return 1 if failed else 0


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def print_schema(args: argparse.Namespace) -> int:
    print(json.dumps(policy_json_schema(), indent=2))
    return 0


def explain_request(args: argparse.Namespace) -> int:
    from broker_proxy.decision.active_policy import ActivePolicy
    from broker_proxy.policy_tools.explain import ExplainError, explain

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
    if answer.withheld:
        print("  answers withheld (502 response_withheld) when their media type is: "
              + ", ".join(answer.withheld))
    return 0


def run_policy_tests(args: argparse.Namespace) -> int:
    from pathlib import Path

    from broker_proxy.policy_tools.cases import TestFileError, find_test_files, read_test_file
    from broker_proxy.policy_tools.junit import write_junit
    from broker_proxy.policy_tools.runner import CaseResult, run_file

    # With TESTS, --policy replaces the policy each file names (try a candidate against the
    # tests); without, the tests beside the policy that name it are run.
    override = Path(args.policy) if args.policy and args.tests else None
    policy = None if args.tests else (Path(args.policy) if args.policy else policy_file_of(args))
    roots = ([Path(item) for item in args.tests] if args.tests or policy is None
             else [policy.parent])
    results: list[CaseResult] = []
    found = 0
    for path in find_test_files(roots):
        try:
            test_file = read_test_file(path)
        except TestFileError as error:
            results.append(CaseResult(path, None, False, "error", str(error)))
            print(f"ERROR {error}")
            found += 1
            continue
        if policy is not None and test_file.policy.resolve() != policy.resolve():
            continue
        found += 1
        for result in run_file(test_file, override):
            results.append(result)
            print(_result_line(result))
    if not found:
        raise CliError("no *.policy-test.yaml files found in " + ", ".join(map(str, roots)))
    failed = sum(not result.passed for result in results)
    if args.junit:
        write_junit(results, Path(args.junit))
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


def _result_line(result: CaseResult) -> str:
    where = f"{result.file}::{result.name}"
    if result.passed:
        return f"PASS {where}"
    expected = str(result.case.expect) if result.case else "a runnable policy"
    detail = f" ({result.detail})" if result.detail else ""
    return f"FAIL {where}: expected {expected}, got {result.got}{detail}"


def diff_policies_cmd(args: argparse.Namespace) -> int:
    from broker_proxy.policy.diff import as_json, diff_policies

    changes = diff_policies(load_policy(args.old), load_policy(args.new))
    widening = any(change.widening for change in changes)
    if args.json:
        print(json.dumps(as_json(changes), indent=2))
    else:
        for change in changes:
            print(change)
        count = sum(change.widening for change in changes)
        print(f"{len(changes)} changes, {count} widening" if changes else "no changes")
    return 1 if widening and args.fail_on_widening else 0


def replay_audit(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from broker_proxy.policy_tools.replay import replay_log

    log = Path(args.audit)
    if not log.exists():
        raise CliError(f"no audit log at {log}")
    started = time.perf_counter()
    report = replay_log(load_policy(args.new), log)
    seconds = time.perf_counter() - started
    if args.json:
        print(json.dumps({**report.as_dict(), "seconds": round(seconds, 3)}, indent=2))
        return 0
    refused, allowed = sum(report.now_refused.values()), sum(report.now_allowed.values())
    print(f"{report.records} requests replayed in {seconds:.2f}s "
          f"({report.records / seconds if seconds else 0:,.0f} records/s)")
    print(f"  unchanged: {report.unchanged} ({report.kept} not policy decisions, kept)")
    print(f"  now refused: {refused}")
    for reason, count in report.now_refused.most_common():
        print(f"    {reason}: {count}")
        for example in report.examples[f"refused:{reason}"]:
            print(f"      e.g. {example}")
    print(f"  now allowed: {allowed}")
    for label, count in report.now_allowed.most_common():
        print(f"    {label}: {count}")
        for example in report.examples[f"allowed:{label}"]:
            print(f"      e.g. {example}")
    if report.unreadable:
        print(f"  ({report.unreadable} lines were not audit records and were skipped)")
    if report.assumed_grants:
        print(f"  ({report.assumed_grants} records of grants issued before the log began: "
              "assumed to hold all their agent's secrets)")
    return 0
