"""`broker-proxy policy check|schema`."""

from __future__ import annotations

import argparse
import json
import sys

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
