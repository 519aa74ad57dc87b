"""How fast `policy replay` re-decides an audit log: records per second on a generated log.

The log is written by the real AuditLog (hash chain, MACs): 20 audited grant_issued records, then
request records drawn from 5,000 distinct requests (20 agents, 10 secrets, 5 hosts each,
250 paths per host) with the mix a busy proxy sees: uses, requests without a secret, refusals.
The candidate policy drops one destination, so part of the log comes back "now refused".
Run by hand: `.venv/bin/python benchmarks/replay_bench.py [--records 1000000] [--log FILE]`
(an existing --log is reused, otherwise written there).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import smoke
from broker_proxy.audit.log import AuditLog
from broker_proxy.policy.loader import load_policy_text
from broker_proxy.policy_tools.replay import replay_log

SECRETS, AGENTS, HOSTS, PATHS = 10, 20, 5, 250


def policy_text(drop: bool = False) -> str:
    lines = ["version: 1", "secrets:"]
    for s in range(SECRETS):
        lines += [f"  s{s}:", "    from: vault", "    destinations:"]
        for h in range(HOSTS):
            if drop and (s, h) == (0, 0):
                continue
            lines += [f"      - host: h{h}.s{s}.example.com", "        methods: [GET, POST]",
                      '        paths: ["/v1/**"]']
    lines.append("agents:")
    for a in range(AGENTS):
        lines += [f"  a{a}:", f"    secrets: [s{a % SECRETS}, s{(a + 1) % SECRETS}]"]
    lines += ["egress:", "  allow: [pypi.org]"]
    return "\n".join(lines) + "\n"


def write_log(path: Path, records: int) -> None:
    rng = random.Random(7)
    audit = AuditLog.open(path, path.with_suffix(".key"), fsync="batch")
    grants = []
    for a in range(AGENTS):
        held = sorted({f"s{a % SECRETS}", f"s{(a + 1) % SECRETS}"})
        grant = f"g_{a:016x}"
        audit.append("grant_issued", decision="allow", reason="issued", grant=grant,
                     agent=f"a{a}", task="bench", secrets=held, by="bench")
        grants.append((grant, f"a{a}", held))
    for _ in range(records):
        grant, agent, held = rng.choice(grants)
        secret = rng.choice(held)
        host = f"h{rng.randrange(HOSTS)}.{secret}.example.com"
        path_ = f"/v1/items/{rng.randrange(PATHS)}"
        roll = rng.random()
        fields: dict[str, Any]
        if roll < 0.7:
            fields = dict(decision="allow", reason="injected", secrets=[secret], host=host,
                          path=path_, status=None)
        elif roll < 0.85:
            fields = dict(decision="allow", reason="allowed", secrets=[], host=host,
                          path=path_, status=None)
        elif roll < 0.95:
            fields = dict(decision="deny", reason="destination_not_allowed", secrets=[],
                          host="evil.example.com", path=path_, status=403)
        else:
            fields = dict(decision="deny", reason="grant_expired", secrets=[], host=host,
                          path=path_, status=403)
        audit.append("request", grant=grant, agent=agent, task="bench", method="GET",
                     scheme="https", port=443, **fields)
    audit.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--log", type=Path)
    smoke.add_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        args.records = 1000
    with tempfile.TemporaryDirectory() as scratch:
        log = args.log or Path(scratch) / "audit.log"
        if not log.exists():
            started = time.perf_counter()
            write_log(log, args.records)
            print(f"wrote {args.records:,} request records in "
                  f"{time.perf_counter() - started:.1f}s ({log.stat().st_size / 2**20:.0f} MiB)")
        new = load_policy_text(policy_text(drop=True))
        started = time.perf_counter()
        report = replay_log(new, log)
        seconds = time.perf_counter() - started
        print(f"replayed {report.records:,} request records in {seconds:.2f}s: "
              f"{report.records / seconds:,.0f} records/s")
        print(f"unchanged {report.unchanged:,}, now refused {dict(report.now_refused)}, "
              f"now allowed {dict(report.now_allowed)}")


if __name__ == "__main__":
    main()
