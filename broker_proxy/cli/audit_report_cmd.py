"""`broker-proxy audit report` and `audit export`: evidence for access reviews and for SIEMs."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import BinaryIO

from broker_proxy.audit.checkpoint import CheckpointPaths
from broker_proxy.audit.export import FORMATS, Exporter, ExportError, resume_point
from broker_proxy.audit.files import chain_files
from broker_proxy.audit.integrity import integrity_statement
from broker_proxy.audit.path_templates import templater
from broker_proxy.audit.reading import chains_of, read_merged
from broker_proxy.audit.report import ReportBuilder, Scope, normalise_time, parse_window
from broker_proxy.audit.report_html import render_html
from broker_proxy.audit.report_text import render_csv, render_text
from broker_proxy.cli.common import home_of
from broker_proxy.cli.errors import CliError
from broker_proxy.policy.loader import load_policy

REPORT_FORMATS = ("text", "json", "html", "csv")
FOLLOW_INTERVAL = 0.25


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = sub.add_parser(
        "report", help="an access-review report: grants, approvals, uses, refusals, anomalies",
        description="Read audit logs (a file, a directory of rotated files or one chain per "
        "replica, or several paths) and report per grant who issued and approved it, what it "
        "used where, what was refused, scrubbed or withheld, and what looks wrong. The first "
        "line says whether the log verifies.")
    report.add_argument("paths", nargs="*", metavar="PATH",
                        help="audit log(s) or directories (default <home>/audit.log)")
    report.add_argument("--format", choices=REPORT_FORMATS, default="text")
    report.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")
    report.add_argument("--agent", help="only this agent's grants")
    report.add_argument("--task", help="only grants of this task")
    report.add_argument("--grant", metavar="ID", help="only this grant")
    report.add_argument("--secret", metavar="NAME", help="only records naming this secret")
    report.add_argument("--since", metavar="TIME", help="from this time (ISO 8601, UTC if no "
                        "offset), inclusive")
    report.add_argument("--until", metavar="TIME", help="up to this time, exclusive")
    report.add_argument("--window", metavar="HH:MM-HH:MM",
                        help="usual hours (UTC); activity outside them is an anomaly")
    report.add_argument("--policy", metavar="FILE",
                        help="group paths under this policy's path patterns (default: the "
                        "paths as sent)")
    report.add_argument("--key", metavar="FILE", help="audit key (default <home>/audit.key)")
    report.add_argument("--checkpoints", metavar="FILE",
                        help="signed checkpoints to check (default <home>/audit.checkpoints "
                        "when it exists and the report is on <home>/audit.log)")
    report.add_argument("--public-key", metavar="FILE",
                        help="checkpoint public key (default <home>/audit-checkpoint.pub)")
    report.set_defaults(handler=report_command)
    export = sub.add_parser(
        "export", help="write the log as JSON lines or OCSF events (resumable)",
        description="Write every record of one chain, in order, as JSON lines (the record "
        "itself) or OCSF 1.8.0 events. With --output the export goes on from the last record "
        "already in the file (a torn last line is cut and written again), so a killed export "
        "restarted loses and repeats nothing; to stdout, pass --from-seq.")
    export.add_argument("path", nargs="?", metavar="PATH",
                        help="audit log (default <home>/audit.log)")
    export.add_argument("--format", choices=FORMATS, default="jsonl")
    export.add_argument("--output", "-o", metavar="FILE", help="append here (resumes)")
    export.add_argument("--from-seq", type=int, default=None, metavar="N",
                        help="start at record seq N (default 0, or where --output ends)")
    export.add_argument("--follow", "-f", action="store_true",
                        help="keep exporting new records as they are written")
    export.set_defaults(handler=export_command)


def report_command(args: argparse.Namespace) -> int:
    home = home_of(args)
    paths = [Path(p) for p in args.paths] or [home.audit_log]
    for path in paths:
        if not path.exists() and not chain_files(path):
            raise CliError(f"no audit log at {path}")
    try:
        scope = Scope(agent=args.agent, task=args.task, grant=args.grant, secret=args.secret,
                      since=normalise_time(args.since) if args.since else None,
                      until=normalise_time(args.until) if args.until else None,
                      window=parse_window(args.window) if args.window else None)
    except ValueError as error:
        raise CliError(str(error)) from None
    checkpoints = public = None
    cp_paths = CheckpointPaths.in_home(home.root)
    if args.checkpoints:
        checkpoints = Path(args.checkpoints)
    elif cp_paths.file.exists() and paths == [home.audit_log]:
        checkpoints = cp_paths.file
    if checkpoints is not None:
        public = Path(args.public_key) if args.public_key else cp_paths.public
    key = Path(args.key) if args.key else home.audit_key
    # Verifying the chain costs more than reading it for the report: do both at once, the
    # verification in its own process (another core), through the same public verifiers as
    # `audit verify`.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        verifying = pool.submit(integrity_statement, paths, key, checkpoints=checkpoints,
                                public_key=public, home=home.root)
        builder = ReportBuilder(scope, templater(load_policy(args.policy))
                                if args.policy else None)
        for record in read_merged(chains_of(paths)):
            builder.feed(record)
        report = {"integrity": verifying.result(), **builder.result()}
    integrity = report["integrity"]
    if args.format == "json":
        # The integrity verdict is the first member and on the first line.
        first = json.dumps({"integrity_ok": integrity["ok"], "headline": integrity["headline"]})
        rest = json.dumps(report, indent=1, sort_keys=False)
        text = "{" + first[1:-1] + ",\n" + rest[2:] + "\n"
    elif args.format == "html":
        text = render_html(report)
    elif args.format == "csv":
        text = render_csv(report)
    else:
        text = render_text(report)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def export_command(args: argparse.Namespace) -> int:
    home = home_of(args)
    live = Path(args.path) if args.path else home.audit_log
    if not live.exists() and not chain_files(live):
        raise CliError(f"no audit log at {live}")
    if live.is_dir():
        raise CliError("export reads one chain; run one export per replica's log")
    try:
        start = args.from_seq or 0
        if args.output:
            resumed = resume_point(Path(args.output))
            if resumed is not None:
                if args.from_seq is not None and args.from_seq != resumed:
                    raise CliError(f"{args.output} ends before seq {resumed}; --from-seq "
                                   f"{args.from_seq} would lose or repeat records")
                start = resumed
            sink: BinaryIO = open(args.output, "ab")  # noqa: SIM115 (open for the command's life)
        else:
            sink = sys.stdout.buffer
        exporter = Exporter(live, args.format, sink, start)
        if args.follow:
            exporter.follow(FOLLOW_INTERVAL)
        else:
            exporter.run_once()
    except ExportError as error:
        raise CliError(str(error)) from None
    except BrokenPipeError:
        return 0
    return 0
