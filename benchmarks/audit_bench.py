"""What the audit log costs: core decisions per second with it on and off.

Each row is the full decision path (SQLite grant store with the atomic use reservation, secret
resolution, placeholder swap) for a request that carries a secret, so its record is durable
(fsync'd before the secret leaves) in both modes; what differs is the other records:

  off     a null audit object: no record written at all (the upper bound);
  batch   the real log, fsync batched for records that carry no secret (the default);
  always  the real log, fsync after every record.

Then raw appends per second (no decision), durable and not, with and without rotation.
Run by hand: `.venv/bin/python benchmarks/audit_bench.py [--seconds 2]`.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import smoke
from benchmarks.core_bench import NullAudit, build, time_decisions
from broker_proxy.audit.log import AuditLog
from broker_proxy.home import Home


def decisions(mode: str, seconds: float) -> float:
    with tempfile.TemporaryDirectory(dir=os.environ.get("AUDIT_BENCH_DIR")) as scratch:
        home = Home(Path(scratch)).ensure()
        broker, token, secret = build(home, 10, 10, full=True)
        broker.audit.close()
        if mode == "off":
            broker.audit = NullAudit.beside(home)
        else:
            broker.audit = AuditLog.open(home.audit_log, home.audit_key, fsync=mode)
        rate = time_decisions(broker, token, secret, seconds)
        broker.audit.close()
        return rate


def appends(fsync: str, durable: bool, rotate: bool, seconds: float) -> float:
    with tempfile.TemporaryDirectory(dir=os.environ.get("AUDIT_BENCH_DIR")) as scratch:
        log = AuditLog.open(Path(scratch) / "audit.log", Path(scratch) / "audit.key", fsync=fsync)
        if rotate:
            log.rotate_at(1024 * 1024)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            for _ in range(50):
                log.append("request", durable=durable, decision="allow", reason="injected",
                           grant="g_0123456789abcdef", agent="bot", task="benchmark",
                           secrets=["api_key"], method="POST", scheme="https",
                           host="api.example.com", port=443, path="/v1/chat/completions")
            count += 50
        rate = count / (time.perf_counter() - started)
        log.close()
        return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0)
    smoke.add_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        args.seconds = 0.05
    os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"
    os.environ["BROKER_PROXY_MASTER_KEY"] = base64.urlsafe_b64encode(os.urandom(32)).decode()
    for index in range(10):
        os.environ[f"CORE_BENCH_{index}"] = secrets.token_urlsafe(24)
    print(f"{'decision path, audit':<28} {'decisions/s':>12} {'us/decision':>12}")
    rates = {}
    for mode in ("off", "batch", "always"):
        rates[mode] = decisions(mode, args.seconds)
        print(f"{mode:<28} {rates[mode]:12.0f} {1e6 / rates[mode]:12.1f}", flush=True)
    print(f"audit on (batch) runs at {rates['batch'] / rates['off']:.2f}x the rate of audit off")
    print(f"\n{'raw appends':<28} {'records/s':>12} {'us/record':>12}")
    for fsync, durable, rotate in (("batch", False, False), ("batch", False, True),
                                   ("batch", True, False), ("always", False, False)):
        label = f"{fsync}{', durable' if durable else ''}{', rotate 1 MiB' if rotate else ''}"
        rate = appends(fsync, durable, rotate, args.seconds)
        print(f"{label:<28} {rate:12.0f} {1e6 / rate:12.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
