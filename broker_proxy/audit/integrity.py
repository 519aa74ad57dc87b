"""The integrity statement a report opens with: does the log it was built from verify?

Built only from the public verifiers (verify.verify_path, checkpoint.verify_checkpoints), so the
report says exactly what `broker-proxy audit verify` would say, and ends with that command. A
report over a log that does not verify (or that could not be checked: no key) says so in its
`headline`, which every format puts first.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from broker_proxy.audit.checkpoint import CheckpointError, verify_checkpoints
from broker_proxy.audit.log import AuditError
from broker_proxy.audit.verify import VerifyResult, verify_path


def integrity_statement(paths: list[Path], key_path: Path, *, checkpoints: Path | None = None,
                        public_key: Path | None = None,
                        home: Path | None = None) -> dict[str, Any]:
    """Verify every chain named by `paths`; the dict of schemas/audit-report.v1.json#integrity."""
    chains, problem = _chains(paths, key_path)
    checkpoint_info = None
    if checkpoints is not None and problem is None:
        checkpoint_info = _checkpoints(paths, key_path, checkpoints, public_key)
        if checkpoint_info["problem"] and problem is None:
            problem = checkpoint_info["problem"]
    commands = _reverify_commands(paths, key_path, checkpoints, public_key, home)
    ok = problem is None
    if ok:
        headline = _ok_headline(chains, checkpoint_info)
    else:
        headline = f"INTEGRITY FAILED: the audit log does not verify: {problem}"
    return {"ok": ok, "headline": headline, "chains": chains, "checkpoints": checkpoint_info,
            "reverify": " && ".join(commands)}


def _chains(paths: list[Path], key_path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """(each chain's verdict, the first problem found or None)."""
    chains: list[dict[str, Any]] = []
    problem: str | None = None
    try:
        for path in paths:
            for result in verify_path(path, key_path):
                chains.append(_chain(path, result))
                if not result.ok and problem is None:
                    problem = result.message
    except AuditError as error:
        problem = f"cannot be verified: {error}"
    return chains, problem


def _chain(path: Path, result: VerifyResult) -> dict[str, Any]:
    return {
        "log": result.path if not result.ok else str(result.files[-1]
                                                      if result.files else path),
        "ok": result.ok,
        "records": result.records,
        "first_seq": 0 if result.records else None,
        # Not records - 1: seqs skip at a recorded gap (audit_gap).
        "last_seq": result.last_seq if result.records else None,
        "files": list(result.files),
        "rotations": max(len(result.files) - 1, 0),
        "torn_lines_recovered": len(result.recovered),
        "problem": None if result.ok else result.message,
        "recorded_gaps": [f"line {gap.line_no}: {gap.describe()}" for gap in result.gaps],
    }


def _reverify_commands(paths: list[Path], key_path: Path, checkpoints: Path | None,
                       public_key: Path | None, home: Path | None) -> list[str]:
    """The `audit verify` command line(s) that say the same, one per log or directory."""
    commands = []
    # `audit verify` reads <home>/audit.key: name the home that holds the key used here.
    key_home = Path(key_path).parent if Path(key_path).name == "audit.key" else home
    for path in paths:  # `audit verify` takes one log or directory
        command = ["broker-proxy"]
        if key_home is not None:
            command += ["--home", str(key_home)]
        command += ["audit", "verify", str(path)]
        if checkpoints is not None and len(paths) == 1:
            command += ["--checkpoints", str(checkpoints)]
            if public_key is not None:
                command += ["--public-key", str(public_key)]
        commands.append(shlex.join(command))
    return commands


def _ok_headline(chains: list[dict[str, Any]], checkpoint_info: dict[str, Any] | None) -> str:
    total = sum(chain["records"] for chain in chains)
    spans = "; ".join(
        f"{Path(chain['log']).name}: records {chain['first_seq']}..{chain['last_seq']}"
        f" in {len(chain['files'])} file(s)" for chain in chains)
    held = ""
    if checkpoint_info is not None:
        held = (f"; {checkpoint_info['count']} signed checkpoint(s) match"
                f" (key {checkpoint_info['key']})")
    gaps = [gap for chain in chains for gap in chain["recorded_gaps"]]
    lost = f"; {len(gaps)} recorded gap(s) of lost records: {'; '.join(gaps)}" if gaps else ""
    return f"INTEGRITY OK: {total} records verify ({spans}){held}{lost}"


def _checkpoints(paths: list[Path], key_path: Path, checkpoints: Path,
                 public_key: Path | None) -> dict[str, Any]:
    key = public_key or checkpoints.with_name("audit-checkpoint.pub")
    info: dict[str, Any] = {"file": str(checkpoints), "count": 0, "problem": None, "key": None}
    try:
        info["key"] = key.read_text().strip()
    except OSError:
        info["problem"] = f"checkpoint public key {key} cannot be read"
        return info
    if len(paths) != 1 or paths[0].is_dir():
        info["problem"] = "checkpoints can be checked against one audit log, not several"
        return info
    try:
        held, problem = verify_checkpoints(paths[0], key_path, checkpoints, key)
    except (CheckpointError, AuditError) as error:
        held, problem = 0, str(error)
    info["count"], info["problem"] = held, problem
    return info
