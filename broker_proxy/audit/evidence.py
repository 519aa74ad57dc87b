"""One verdict on the evidence: the chain, every MAC, every record's shape, signed checkpoints.

`broker-proxy audit verify` prints it and the console's "Verify now" shows it; the report's
integrity statement (integrity.py) is built from the same two verifiers (verify.verify_path,
which also checks each record against the published schema, and checkpoint.verify_checkpoints).
A log one of them calls good and another bad would leave a reviewer with two truths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from broker_proxy.audit.checkpoint import CheckpointError, CheckpointPaths, verify_checkpoints
from broker_proxy.audit.errors import AuditError
from broker_proxy.audit.head import head_path, read_head
from broker_proxy.audit.key_file import load_key
from broker_proxy.audit.record_schema import RECORD_SCHEMA_FILE
from broker_proxy.audit.verify import VerifyResult, verify_chain, verify_path


@dataclass(frozen=True, slots=True)
class Evidence:
    ok: bool
    records: int  # records that verified, over every chain
    chains: tuple[VerifyResult, ...]
    problem: str | None  # the first problem, one line: the verdict when not ok
    details: tuple[str, ...]  # what was checked, a line each
    checkpoints: int | None  # signed checkpoints that matched; None when none were checked

    @property
    def verdict(self) -> str:
        """The one line every reader ends with: `audit log ok`, or the first problem."""
        if self.ok:
            return "audit log ok"
        if self.checkpoints is not None:
            return f"audit checkpoints do not verify: {self.problem}"
        return f"audit log does not verify: {self.problem}"


def default_checkpoints(home_root: Path, target: Path) -> Path | None:
    """The home's checkpoint file, when it exists and `target` is the home's own log."""
    paths = CheckpointPaths.in_home(home_root)
    if paths.file.exists() and Path(target) == home_root / "audit.log":
        return paths.file
    return None


def verify_evidence(target: Path, key: Path, *, checkpoints: Path | None = None,
                    public_key: Path | None = None) -> Evidence:
    """Verify the chain(s) at `target` (a log or a directory), then `checkpoints` if given.

    Raises AuditKeyError (from verify_path) when the key cannot be used at all.
    """
    results = tuple(verify_path(target, key))
    records = sum(result.records for result in results)
    details = [f"chain: {result.message}, chain, MACs and record shapes verify"
               for result in results if result.ok]
    bad = next((result for result in results if not result.ok), None)
    if bad is not None:
        return Evidence(False, records, results, bad.message, tuple(details), None)
    details.append(f"records: every record matches {RECORD_SCHEMA_FILE}")
    if checkpoints is None:
        details.append("checkpoints: none checked (a cut at a line boundary cannot be seen "
                       "without them; see --checkpoints)")
        return _with_head(target, key, Evidence(True, records, results, None, tuple(details),
                                                None))
    public = public_key or checkpoints.with_name("audit-checkpoint.pub")
    try:
        held, problem = verify_checkpoints(target, key, checkpoints, public)
    except (CheckpointError, AuditError) as error:
        held, problem = 0, str(error)
    if problem:
        return Evidence(False, records, results, problem, tuple(details), held)
    details.append(f"checkpoints: {held} signed checkpoint(s) match the log")
    return _with_head(target, key, Evidence(True, records, results, None, tuple(details), held))


def _with_head(target: Path, key: Path, evidence: Evidence) -> Evidence:
    """Checked last: the checkpoints name a cut more precisely where they cover it."""
    if not (Path(target).is_file() and head_path(Path(target)).exists()):
        return evidence
    detail, problem = check_head(Path(target), key, evidence.chains[0])
    if problem is not None:
        return Evidence(False, evidence.records, evidence.chains, problem, evidence.details,
                        None)
    return Evidence(True, evidence.records, evidence.chains, None,
                    (*evidence.details, detail), evidence.checkpoints)


def check_head(target: Path, key_path: Path, result: VerifyResult) -> tuple[str, str | None]:
    """The log must reach the head state its writer left, with the same record there: a cut
    at a line boundary leaves a chain that verifies, and only the head (or a checkpoint) tells.

    Returns (detail line, problem or None).
    """
    try:
        head = read_head(head_path(target), load_key(key_path, create=False))
    except AuditError as error:
        return "", f"audit head state: {error}"
    if head is None:
        return "head: none", None
    if result.last_seq < head.count - 1:
        return "", (f"audit log was cut: it ends at seq {result.last_seq} but its writer had "
                    f"written {head.count} records ({head_path(target).name}); the records "
                    "after it are lost: run `broker-proxy audit recover`")
    found: list[str] = []

    def observe(seq: int, digest: str) -> None:
        if seq == head.count - 1:
            found.append(digest)

    verify_chain(target, key_path, observe)
    if found != [head.last_hash]:
        return "", (f"audit log differs from the chain its writer last wrote: record seq "
                    f"{head.count - 1} is not the one in {head_path(target).name}; run "
                    "`broker-proxy audit recover`")
    return f"head: the log holds the {head.count} records its writer last made durable", None
