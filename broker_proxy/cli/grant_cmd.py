"""`broker-proxy grant issue|list|show|approve|deny|revoke`.

These work on the grant store directly, so they work whether or not the proxy runs; a running
proxy sees every change on its next request because it reads the grant on every request.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from datetime import datetime

from broker_proxy.audit.files import chain_files
from broker_proxy.audit.log import AuditError, AuditLog
from broker_proxy.cli.common import (
    actor_of,
    add_by_option,
    add_policy_option,
    home_of,
    load_policy_of,
    print_json,
    proxy_address,
    store_url_of,
)
from broker_proxy.cli.errors import CliError
from broker_proxy.cli.limit_options import add_limit_options
from broker_proxy.cli.store_option import add_store_option
from broker_proxy.durations import parse_duration
from broker_proxy.grants.actions import change_grant, issue_audited
from broker_proxy.grants.factory import open_grant_store
from broker_proxy.grants.issuer import IssuedGrant
from broker_proxy.grants.limits_view import budget_view, rate_text
from broker_proxy.grants.model import Grant
from broker_proxy.grants.paging import walk
from broker_proxy.grants.store import GrantNotFound, GrantStore
from broker_proxy.home import Home
from broker_proxy.policy.loader import PolicyError
from broker_proxy.time_source import utc_now


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    grant = commands.add_parser("grant", help="issue, inspect and end task grants")
    sub = grant.add_subparsers(dest="grant_command", metavar="ACTION", required=True)

    issue = sub.add_parser(
        "issue",
        help="issue a grant for one task",
        description="Issue a task grant. Prints its id, the token (shown once, stored only as a "
        "hash), the proxy URL for HTTPS_PROXY, the expiry, the status and each secret's "
        "placeholder. The grant can never exceed the policy.",
    )
    issue.add_argument("--agent", required=True, help="agent name from the policy")
    issue.add_argument("--task", required=True, help="what the task is, for the audit trail")
    issue.add_argument("--secret", dest="secrets", action="append", required=True,
                       metavar="NAME", help="a secret to grant (repeat for more)")
    issue.add_argument("--ttl", help="lifetime, e.g. 15m, 1h (default: 15m or the agent's "
                       "max_ttl if shorter)")
    issue.add_argument("--max-uses", type=int, metavar="N",
                       help="requests that may carry a secret (default: unlimited)")
    add_limit_options(issue)
    issue.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_by_option(issue, "issues it")
    add_policy_option(issue)
    add_store_option(issue)
    issue.set_defaults(handler=issue_command)

    list_ = sub.add_parser("list", help="list grants")
    list_.add_argument("--pending", action="store_true", help="only grants awaiting approval")
    list_.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_store_option(list_)
    list_.set_defaults(handler=list_command)

    for action, text in (("show", "show one grant"), ("approve", "approve a pending grant"),
                         ("deny", "deny a pending grant"), ("revoke", "revoke a grant now")):
        parser = sub.add_parser(action, help=text)
        parser.add_argument("grant_id", metavar="ID")
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")
        if action != "show":
            add_by_option(parser, {"approve": "approves", "deny": "denies",
                                   "revoke": "revokes"}[action] + " it")
        add_store_option(parser)
        if action == "show":
            add_policy_option(parser)  # for what is left of an LLM budget
        parser.set_defaults(handler=change_command, action=action)


def open_store(args: argparse.Namespace) -> GrantStore:
    """--store, else $BROKER_PROXY_STORE, else the home's SQLite file: the proxy's own rule."""
    return open_grant_store(home_of(args), store_url_of(args))


def issue_command(args: argparse.Namespace) -> int:
    home = home_of(args)
    policy = load_policy_of(args)
    ttl = parse_duration(args.ttl) if args.ttl else None
    store = open_store(args)
    with AuditLog.open(home.audit_log, home.audit_key) as audit:
        issued = issue_audited(policy, store, audit, agent=args.agent, task=args.task,
                               secrets=args.secrets, ttl=ttl, max_uses=args.max_uses,
                               now=utc_now(), proxy_url_base=proxy_address(home),
                               by=actor_of(args), rates=args.rates,
                               concurrency=args.concurrency, cost_usd=args.cost_usd,
                               input_tokens=args.input_tokens,
                               output_tokens=args.output_tokens)
    print_issued(issued, as_json=args.json)
    return 0


def print_issued(issued: IssuedGrant, *, as_json: bool) -> None:
    grant = issued.grant
    public = grant.to_public_dict()
    if as_json:
        print_json(public | {"token": issued.token, "proxy_url": issued.proxy_url,
                             "placeholders": issued.placeholders})
        return
    print(f"grant {grant.id} issued ({public['state']})")
    print(f"  agent:       {grant.agent}")
    print(f"  task:        {grant.task}")
    print(f"  expires at:  {public['expires_at']}")
    print(f"  max uses:    {grant.max_uses if grant.max_uses is not None else 'unlimited'}")
    print(f"  token:       {issued.token}")
    print("               (shown once: only its hash is stored)")
    print(f"  proxy URL:   {issued.proxy_url}")
    print("  placeholders:")
    for name, placeholder in issued.placeholders.items():
        print(f"    {name}: {placeholder}")
    if public["state"] == "pending":
        print(f"  waiting for approval: broker-proxy grant approve {grant.id}")


def list_command(args: argparse.Namespace) -> int:
    """Oldest first, streamed: the store is read one page at a time (paging.walk) and each
    grant printed as it comes, so a million grants never sit in memory at once."""
    now = utc_now()
    store = open_store(args)
    grants: Iterable[Grant]
    if args.pending:
        # Only live grants are read (the store's index), not every grant kept.
        grants = (g for g in store.list(include_inactive=False, now=now)
                  if g.state_at(now) == "pending")
    else:
        grants = walk(store)
    if args.json:
        _stream_json_array(g.to_public_dict(now) for g in grants)
        return 0
    empty = True
    for grant in grants:
        empty = False
        print(_summary(grant, now))
    if empty:
        print("no grants")
    return 0


def _stream_json_array(items: Iterable[dict[str, object]]) -> None:
    """One JSON array, written item by item (the layout print_json gives a whole list)."""
    out = sys.stdout
    separator = "[\n"
    for item in items:
        # JSON text holds no raw line break inside a value, so each one starts a line to indent.
        out.write(separator + "  " + json.dumps(item, indent=2, sort_keys=True).replace(
            "\n", "\n  "))
        separator = ",\n"
    out.write("[]\n" if separator == "[\n" else "\n]\n")


def change_command(args: argparse.Namespace) -> int:
    store = open_store(args)
    now = utc_now()
    if args.action == "show":
        grant = store.get(args.grant_id)
        if grant is None:
            # Ended grants are purged after `run --grant-retention`; the audit log keeps them.
            raise CliError(f"{GrantNotFound(args.grant_id)} (an ended grant is purged from the "
                           "store after the proxy's --grant-retention; its history stays in "
                           "the audit log: broker-proxy audit tail --grant ID)")
    else:
        home = home_of(args)
        with AuditLog.open(home.audit_log, home.audit_key) as audit:
            grant = change_grant(store, audit, args.grant_id, args.action,
                                 by=actor_of(args), now=now)
    own_rates = store.own_rates(grant.id) if args.action == "show" else {}
    budget = _budget_view(args, store, grant.id) if args.action == "show" else {}
    if args.json:
        extra: dict[str, object] = {"rates": {name: rate_text(*own)
                                              for name, own in own_rates.items()}} \
            if own_rates else {}
        if budget:
            extra["budget"] = budget
        print_json(grant.to_public_dict(now) | extra)
    elif args.action == "show":
        public = grant.to_public_dict(now)
        if own_rates:
            public["rates"] = [f"{n}={rate_text(*own)}" for n, own in sorted(own_rates.items())]
        if budget:
            public["budget"] = [_budget_text(name, view) for name, view in sorted(budget.items())]
        for key, value in public.items():
            if key.startswith("decided_") or (key.startswith(("approved_", "denied_"))
                                               and value is None):
                continue  # said once, by the decision that was taken (or not shown at all)
            if key == "status":
                continue  # the stored status; `state` (as of now) is the one a person needs
            print(f"{key + ':':<12} {_shown_value(value)}")
        history = grant_history(home_of(args), grant.id)
        if history:
            print("history:")
            for line in history:
                print(f"  {line}")
    else:
        print(f"grant {grant.id} {_DONE[args.action]}")
        print(_summary(grant, now))
    return 0


def _budget_view(args: argparse.Namespace, store: GrantStore,
                 grant_id: str) -> dict[str, dict[str, object]]:
    """secret -> used, held (in flight) and, when the policy can be read, left of each cap."""
    use = store.budget_use(grant_id)
    if not use:
        return {}
    try:
        secrets = load_policy_of(args).secrets
    except PolicyError:
        secrets = {}
    view = budget_view(use, secrets)
    for entry in view.values():  # `grant show` says what is used and left, as it always did
        for numbers in entry.values():
            if isinstance(numbers, dict):
                numbers.pop("cap", None)
    return view


def _budget_text(name: str, view: dict[str, object]) -> str:
    parts = [f"{view['requests_in_flight']} requests in flight"]
    for dimension, numbers in view.items():
        if not isinstance(numbers, dict):
            continue
        left = "" if numbers["left"] is None else f", {numbers['left']:g} left"
        parts.append(f"{dimension} {numbers['used']:g} used{left}")
    return f"{name}: " + "; ".join(parts)


_DONE = {"approve": "approved", "deny": "denied", "revoke": "revoked"}


def _shown_value(value: object) -> str:
    """A value as an operator reads it: lists joined, nothing as "-", never a Python repr."""
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value)) if value else "-"
    return str(value)


def grant_history(home: Home, grant_id: str) -> list[str]:
    """Who issued, decided and revoked the grant, and why, from this home's audit chain.

    The store keeps states, not reasons: the audit records (`by`, `reason`) are the record of
    the actors. A proxy writing another home's chain (replicas) is not seen from here.
    """
    lines: list[str] = []
    files = chain_files(home.audit_log) if home.audit_log.exists() else []
    for file in files:
        try:
            records = list(AuditLog.read_records(file))
        except AuditError:
            return lines
        for record in records:
            if record.get("grant") != grant_id or record.get("event") not in _HISTORY_EVENTS:
                continue
            verb = _HISTORY_EVENTS[str(record["event"])]
            by = f" by {record['by']}" if record.get("by") else ""
            why = record.get("reason")
            because = f" ({why})" if why and why not in ("issued", verb, "approve", "deny",
                                                          "revoke") else ""
            lines.append(f"{record.get('ts')}  {verb}{by}{because}")
    return lines


_HISTORY_EVENTS = {"grant_issued": "issued", "grant_approved": "approved",
                   "grant_denied": "denied", "grant_revoked": "revoked",
                   "grant_expired": "expired"}


def _summary(grant: Grant, now: datetime) -> str:
    public = grant.to_public_dict(now)
    uses = f"{grant.uses}/{grant.max_uses}" if grant.max_uses is not None else f"{grant.uses}/-"
    return (f"{grant.id}  {public['state']:<8} agent={grant.agent} secrets="
            f"{','.join(grant.secrets)} uses={uses} expires={public['expires_at']} "
            f"task={grant.task!r}")
