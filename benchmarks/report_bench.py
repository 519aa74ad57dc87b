"""How fast `audit report` reads a big log, and in how much memory.

Writes N records (default 1,000,000) with the real AuditLog (hash chain, MAC, rotation at
64 MiB) in the proportions a busy proxy writes them: per grant an issue, an approval for one in
ten, requests that carry a secret each with its response, passthrough requests, refusals, and a
revocation. Then runs `broker-proxy audit report` on it (text and json) as a child process and
prints wall time and the child's peak RSS (getrusage).

Run by hand: `.venv/bin/python benchmarks/report_bench.py [--records 1000000] [--dir DIR]`.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import smoke
from broker_proxy.audit.log import AuditLog
from broker_proxy.home import Home

USES_PER_GRANT = 200


def write_log(home: Home, records: int) -> int:
    """Append about `records` records; returns how many were written."""
    log = AuditLog.open(home.audit_log, home.audit_key, fsync="batch")
    log.rotate_at(64 << 20)
    written, grant_no = 0, 0
    try:
        while written < records:
            grant_no += 1
            grant = f"g-{grant_no:06d}"
            agent = f"agent-{grant_no % 17}"
            common: dict[str, Any] = {"grant": grant, "agent": agent,
                                      "task": f"task {grant_no % 101}"}
            log.append("grant_issued", decision="allow", reason="issued", by="ops",
                       secrets=["github", "openai"], expires_at="2030-01-01T00:00:00Z",
                       max_uses=1000, grant_status="active", **common)
            written += 1
            if grant_no % 10 == 0:
                log.append("grant_approved", decision="allow", reason="approve", by="alice",
                           secrets=["github"], **common)
                written += 1
            for use in range(USES_PER_GRANT):
                secret = "github" if use % 3 else "openai"
                host = "api.github.com" if secret == "github" else "api.openai.com"
                path = f"/repos/acme/r{use % 7}/issues" if secret == "github" else "/v1/chat"
                log.append("request", decision="allow", reason="injected", secrets=[secret],
                           method="GET" if use % 2 else "POST", scheme="https", host=host,
                           port=443, path=path, fingerprints=[f"{secret}:0123456789abcdef"],
                           **common)
                log.append("response", decision="allow", reason="injected", secrets=[secret],
                           grant=grant, method="GET" if use % 2 else "POST", scheme="https",
                           host=host, port=443, path=path, status=200 if use % 11 else 404,
                           duration_ms=12.5, redactions=1 if use == 5 else 0)
                written += 2
                if use % 20 == 0:
                    log.append("request", decision="deny", reason="destination_not_allowed",
                               secrets=[], method="POST", scheme="https",
                               host="paste.example.net", port=443, path="/upload",
                               status=403, **common)
                    written += 1
            log.append("grant_revoked", decision="deny", reason="revoke", by="ops",
                       secrets=["github", "openai"], **common)
            written += 1
    finally:
        log.close()
    return written


def run_report(home: Home, fmt: str, *extra: str) -> tuple[float, float, int, int]:
    """(wall s, CPU s, peak RSS KiB, output bytes) of one report run (and its verifier child).

    CPU seconds are what the figure means on a shared machine: wall time there depends on who
    else runs. The verifier runs in a second process beside the report pass.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "broker_proxy.cli", "--home", str(home.root), "audit", "report",
         "--format", fmt, *extra], capture_output=True, check=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return seconds, cpu, after.ru_maxrss, len(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--dir", default=os.environ.get("REPORT_BENCH_DIR"))
    parser.add_argument("--home", help="report on this home's log (written first if it has "
                        "none) and keep it")
    smoke.add_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        args.records = 2000
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        home = Home(Path(args.home or scratch)).ensure()
        if not home.audit_log.exists():
            started = time.perf_counter()
            written = write_log(home, args.records)
            print(f"wrote {written} records in {time.perf_counter() - started:.1f} s")
        size = sum(f.stat().st_size for f in home.root.glob("audit.log*"))
        print(f"log: {size / 1e6:.0f} MB")
        for fmt in ("text", "json"):
            seconds, cpu, peak, length = run_report(home, fmt)
            # RUSAGE_CHILDREN's maxrss is the largest process so far (report or verifier).
            print(f"report --format {fmt}: {seconds:.1f} s wall, {cpu:.1f} s CPU (report and "
                  f"verifier), largest process {peak / 1024:.0f} MiB, {length} bytes")

if __name__ == "__main__":
    main()
