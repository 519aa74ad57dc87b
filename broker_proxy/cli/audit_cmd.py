"""`broker-proxy audit verify|tail|checkpoint`."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from broker_proxy.audit.checkpoint import (
    CheckpointPaths,
    latest_checkpoint,
    load_signing_key,
    write_checkpoint,
)
from broker_proxy.audit.display import format_record
from broker_proxy.audit.evidence import default_checkpoints, verify_evidence
from broker_proxy.audit.files import chain_files
from broker_proxy.audit.log import AuditLog
from broker_proxy.cli import audit_report_cmd
from broker_proxy.cli.common import home_of
from broker_proxy.cli.errors import CliError

FOLLOW_INTERVAL = 0.25  # seconds between looks at the log in --follow


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = commands.add_parser("audit", help="check and read the audit log")
    sub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    verify = sub.add_parser(
        "verify", help="check the hash chain and every MAC (and signed checkpoints)",
        description="Check the whole chain, across rotated files, and every MAC; name the first "
        "record that does not verify as FILE:LINE: seq N: reason. PATH may be a log or a "
        "directory of logs (one chain per *.log). Checkpoints in <home>/audit.checkpoints are "
        "checked too when present.")
    verify.add_argument("path", nargs="?", metavar="PATH",
                        help="audit log or directory (default <home>/audit.log)")
    verify.add_argument("--checkpoints", metavar="FILE",
                        help="signed checkpoints to check against (default "
                        "<home>/audit.checkpoints when it exists)")
    verify.add_argument("--public-key", metavar="FILE",
                        help="checkpoint public key (default <home>/audit-checkpoint.pub)")
    verify.set_defaults(handler=verify_command)
    checkpoint = sub.add_parser("checkpoint", help="write a signed checkpoint of the log now")
    checkpoint.set_defaults(handler=checkpoint_command)
    recover = sub.add_parser(
        "recover", help="record a cut or replaced log as an audit_gap record, so it can start",
        description="When the proxy refuses to start because <home>/audit.log is shorter than, "
        "or different from, the chain it last wrote (its head state, <home>/audit.log.head, "
        "and the newest signed checkpoint): append one signed audit_gap record naming the "
        "records lost (seqs and hashes expected against found), move the head state to it and "
        "write a checkpoint. Nothing in the log is removed or rewritten. Run it with the proxy "
        "stopped; `audit verify` then reports the gap every time.")
    recover.set_defaults(handler=recover_command)
    tail = sub.add_parser("tail", help="show the latest records")
    tail.add_argument("-n", type=int, default=20, help="records to show (default 20)")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new records")
    tail.add_argument("--grant", metavar="ID", help="only records of this grant")
    tail.add_argument("--json", action="store_true", help="raw JSON lines")
    tail.set_defaults(handler=tail_command)
    audit_report_cmd.register(sub)


def verify_command(args: argparse.Namespace) -> int:
    """Check everything first, then print one verdict, last: "ok" only when all of it holds."""
    home = home_of(args)
    target = Path(args.path) if args.path else home.audit_log
    if not target.exists() and not chain_files(target):
        raise CliError(f"no audit log at {target}")
    if args.checkpoints and target.is_dir():
        raise CliError("--checkpoints needs one audit log, not a directory")
    checkpoints = (Path(args.checkpoints) if args.checkpoints
                   else default_checkpoints(home.root, target))
    public = (Path(args.public_key) if args.public_key
              else CheckpointPaths.in_home(home.root).public)
    evidence = verify_evidence(target, home.audit_key, checkpoints=checkpoints,
                               public_key=public)
    if not evidence.ok:
        raise CliError(evidence.verdict)
    print("\n".join(evidence.details))
    print(evidence.verdict)
    return 0


def recover_command(args: argparse.Namespace) -> int:
    """Runs under the home lock: a proxy writing meanwhile would race the gap record."""
    from broker_proxy.audit.recover import recover_log
    from broker_proxy.runtime.home_lock import HomeBusy, HomeLock

    home = home_of(args)
    if not home.audit_key.exists():
        raise CliError(f"no audit key at {home.audit_key}")
    try:
        lock = HomeLock.acquire(home.root)
    except HomeBusy as busy:
        raise CliError(f"{busy}; stop the proxy before `audit recover`") from None
    try:
        paths = CheckpointPaths.in_home(home.root)
        newest = latest_checkpoint(paths.file, paths.public, home.audit_log)
        recovery = recover_log(home.audit_log, home.audit_key, checkpoint=newest)
        print(recovery.summary)
        if recovery.record is not None and paths.key.exists():
            key = load_signing_key(paths, create=False)
            with AuditLog.open(home.audit_log, home.audit_key) as log:
                written = write_checkpoint(log, key, paths.file)
            if written is not None:
                print(f"checkpoint: {written['count']} records, last hash "
                      f"{written['last_hash']} -> {paths.file}")
    finally:
        lock.release()
    return 0


def checkpoint_command(args: argparse.Namespace) -> int:
    home = home_of(args)
    if not home.audit_log.exists():
        raise CliError(f"no audit log at {home.audit_log}")
    paths = CheckpointPaths.in_home(home.root)
    key = load_signing_key(paths, create=True)
    with AuditLog.open(home.audit_log, home.audit_key) as log:
        written = write_checkpoint(log, key, paths.file)
    if written is None:
        print("audit log is empty: no checkpoint written")
    else:
        print(f"checkpoint: {written['count']} records, last hash {written['last_hash']} "
              f"-> {paths.file}")
    return 0


def tail_command(args: argparse.Namespace) -> int:
    home = home_of(args)
    live = home.audit_log
    if not live.exists():
        raise CliError(f"no audit log at {live}")

    def wanted(record: dict[str, object]) -> bool:
        if not args.grant or record.get("grant") == args.grant:
            return True
        named = record.get("grants")  # a grants_purged record names the batch it deleted
        return isinstance(named, list) and args.grant in named

    def show(record: dict[str, object]) -> None:
        print(json.dumps(record, sort_keys=True) if args.json else format_record(record),
              flush=True)

    follower = _Follower(live)
    latest = [record for record in follower.read_new() if wanted(record)]
    if len(latest) < args.n:  # reach back into rotated files for the rest
        for archive in reversed(chain_files(live)[:-1]):
            older = [r for r in AuditLog.read_records(archive) if wanted(r)]
            latest = older + latest
            if len(latest) >= args.n:
                break
    for record in latest[-args.n:] if args.n > 0 else []:
        show(record)
    if not args.follow:
        return 0
    while True:
        time.sleep(FOLLOW_INTERVAL)
        for record in follower.read_new():
            if wanted(record):
                show(record)


class _Follower:
    """Reads a live log's new whole lines, moving on to the new file when the log rotates.

    It keeps the file it has open until the live name points at another regular file, and reads
    the old one to its end first, so no record is lost or shown twice at a rotation.
    """

    def __init__(self, live: Path) -> None:
        self._live = live
        self._handle: IO[bytes] = open(live, "rb")  # noqa: SIM115 (kept open while following)
        self._partial = b""

    def read_new(self) -> Iterator[dict[str, object]]:
        records = list(self._drain())
        if self._rotated():
            # Open the new live file first, then read every archive between the one we held and
            # it: several rotations may have happened since our last look.
            held = os.fstat(self._handle.fileno())
            newer = open(self._live, "rb")  # noqa: SIM115
            now = os.fstat(newer.fileno())
            between, passed = [], False
            for file in chain_files(self._live):
                try:
                    info = os.stat(file)
                except OSError:
                    continue
                identity = (info.st_dev, info.st_ino)
                if identity == (now.st_dev, now.st_ino):
                    break
                if passed:
                    between.append(file)
                passed = passed or identity == (held.st_dev, held.st_ino)
            self._handle.close()
            for file in between:
                records += AuditLog.read_records(file)
            self._handle, self._partial = newer, b""
            records += self._drain()
        return iter(records)

    def _drain(self) -> Iterator[dict[str, object]]:
        data = self._partial + self._handle.read()
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn line: `audit verify` reports it
            if isinstance(record, dict):
                yield record

    def _rotated(self) -> bool:
        try:
            current = os.stat(self._live)
        except OSError:
            return False  # momentarily gone or unreadable: keep the file we have
        held = os.fstat(self._handle.fileno())
        return (current.st_dev, current.st_ino) != (held.st_dev, held.st_ino) and \
            os.path.isfile(self._live)
