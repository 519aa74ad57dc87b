"""`broker-proxy audit verify|tail`."""

from __future__ import annotations

import argparse
import json
import time

from broker_proxy.audit.log import AuditLog
from broker_proxy.audit.verify import verify_chain
from broker_proxy.cli.common import home_of
from broker_proxy.cli.errors import CliError


def register(commands: argparse._SubParsersAction) -> None:
    audit = commands.add_parser("audit", help="check and read the audit log")
    sub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    verify = sub.add_parser("verify", help="check the hash chain and every MAC")
    verify.set_defaults(handler=verify_command)
    tail = sub.add_parser("tail", help="show the latest records")
    tail.add_argument("-n", type=int, default=20, help="records to show (default 20)")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new records")
    tail.add_argument("--grant", metavar="ID", help="only records of this grant")
    tail.add_argument("--json", action="store_true", help="raw JSON lines")
    tail.set_defaults(handler=tail_command)


def verify_command(args: argparse.Namespace) -> int:
    home = home_of(args)
    if not home.audit_log.exists():
        raise CliError(f"no audit log at {home.audit_log}")
    result = verify_chain(home.audit_log, home.audit_key)
    if not result.ok:
        raise CliError(f"audit log does not verify: {result.message}")
    print(f"audit log ok: {result.records} records, chain and MACs verify")
    return 0


def format_record(record: dict[str, object]) -> str:
    parts = [str(record.get("ts", "")), f"#{record.get('seq')}", str(record.get("event"))]
    for key in ("decision", "reason", "grant", "agent"):
        if record.get(key) is not None:
            parts.append(f"{key}={record[key]}")
    if record.get("secrets"):
        parts.append("secrets=" + ",".join(map(str, record["secrets"])))  # type: ignore[call-overload]
    if record.get("host"):
        parts.append(f"{record.get('method')} {record.get('scheme')}://{record.get('host')}:"
                     f"{record.get('port')}{record.get('path') or ''}")
    if record.get("status") is not None:
        parts.append(f"status={record['status']}")
    return "  ".join(parts)


def tail_command(args: argparse.Namespace) -> int:
    home = home_of(args)
    if not home.audit_log.exists():
        raise CliError(f"no audit log at {home.audit_log}")

    def show(record: dict[str, object]) -> None:
        if args.grant and record.get("grant") != args.grant:
            return
        print(json.dumps(record, sort_keys=True) if args.json else format_record(record),
              flush=True)

    records = [r for r in AuditLog.read_records(home.audit_log)
               if not args.grant or r.get("grant") == args.grant]
    for record in records[-args.n:] if args.n > 0 else []:
        show(record)
    if not args.follow:
        return 0
    seen = sum(1 for _ in AuditLog.read_records(home.audit_log))
    while True:
        time.sleep(0.5)
        all_records = list(AuditLog.read_records(home.audit_log))
        for record in all_records[seen:]:
            show(record)
        seen = len(all_records)
