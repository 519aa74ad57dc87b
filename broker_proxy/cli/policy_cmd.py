"""`broker-proxy policy check|schema`."""

from __future__ import annotations

import argparse
import json
import sys

from broker_proxy.cli.common import add_policy_option, load_policy_of
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
