"""`broker-proxy request list|approve|deny`: the requests held for a person's approval.

Held requests are connections waiting inside the running proxy, so these commands talk to its
admin API (found through run.json, with the token in <home>/admin.token), not to a file.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from typing import Any

from broker_proxy.cli.common import actor_of, add_by_option, home_of, print_json, running_proxy
from broker_proxy.cli.errors import CliError
from broker_proxy.home import Home

ACTOR_HEADER = "X-Broker-Actor"  # the admin API audits the caller as admin-api:<this>


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    request = commands.add_parser(
        "request", help="list, approve or deny requests held for approval",
        description="Requests that would carry a secret marked `approval: per_request` wait "
        "in the running proxy until a person decides. An approval covers exactly the request "
        "shown (method, host, path, query and body digest).")
    sub = request.add_subparsers(dest="request_command", metavar="ACTION", required=True)
    list_ = sub.add_parser("list", help="the requests waiting now, oldest first")
    list_.add_argument("--json", action="store_true", help="print JSON for scripts")
    list_.set_defaults(handler=list_command)
    approve = sub.add_parser("approve", help="let a held request go (once by default)")
    approve.add_argument("hold_id", metavar="ID")
    approve.add_argument("--uses", type=int, metavar="N",
                         help="also let the same request through for the grant's next uses, "
                         "N in all")
    approve.add_argument("--minutes", type=int, metavar="M",
                         help="also let the same request through for M minutes")
    approve.add_argument("--reason", help="recorded in the audit log")
    approve.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_by_option(approve, "approves it")
    approve.set_defaults(handler=decide_command, action="approve")
    deny = sub.add_parser("deny", help="refuse a held request")
    deny.add_argument("hold_id", metavar="ID")
    deny.add_argument("--reason", help="recorded, and shown to the agent")
    deny.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_by_option(deny, "denies it")
    deny.set_defaults(handler=decide_command, action="deny")


def list_command(args: argparse.Namespace) -> int:
    held = admin_call(home_of(args), "GET", "/v1/requests")["requests"]
    if args.json:
        print_json(held)
        return 0
    if not held:
        print("no held requests")
        return 0
    for item in held:
        print(describe(item))
    return 0


def decide_command(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"by": actor_of(args)}
    if args.reason:
        body["reason"] = args.reason
    if args.action == "approve":
        body |= {k: v for k, v in (("uses", args.uses), ("minutes", args.minutes))
                 if v is not None}
    item = admin_call(home_of(args), "POST", f"/v1/requests/{args.hold_id}/{args.action}", body)
    if args.json:
        print_json(item)
    else:
        print(f"request {item['id']} {item['state']} ({item['choice']})")
    return 0


def describe(item: dict[str, Any]) -> str:
    shown = item["request"]
    carries = shown.get("carries") or item["secrets"]
    return (f"{item['id']}  {item['agent']} ({item['task']})  {shown['method']} "
            f"{shown['scheme']}://{shown['host']}:{shown['port']}{shown['path']}  "
            f"query {shown['query_size']} B, body {shown['body_size']} B "
            f"sha256 {shown['body_sha256'][:12]}  carries {','.join(carries)}  "
            f"grant {item['grant']}  until {item['expires_at']} "
            f"(the whole request: request list --json)")


def admin_call(home: Home, method: str, path: str, body: dict[str, Any] | None = None,
               actor: str | None = None) -> dict[str, Any]:
    info = running_proxy(home)
    if info is None or not info.get("admin"):
        raise CliError(f"no running proxy with an admin API for {home.root}: held requests "
                       "live in the running proxy")
    try:
        token = home.admin_token.read_text().strip()
    except OSError as error:
        raise CliError(f"cannot read {home.admin_token}: {error.strerror}") from None
    request = urllib.request.Request(
        f"http://{info['admin']}{path}", method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                 **({ACTOR_HEADER: actor} if actor else {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - http only
            reply: dict[str, Any] = json.loads(answer.read())  # the admin API answers objects
            return reply
    except urllib.error.HTTPError as error:
        try:
            message = json.loads(error.read()).get("message", error.reason)
        except ValueError:
            message = error.reason
        raise CliError(f"{message} (HTTP {error.code})") from None
    except OSError as error:
        raise CliError(f"cannot reach the admin API at {info['admin']}: {error}") from None
