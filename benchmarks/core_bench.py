"""The core decision path without mitmproxy: decisions per second, and how they scale.

Two paths are timed:
  match    authenticate the grant, check its state, match the destination, find and swap the
           placeholders (grant store in memory, no use reservation, no audit write): the pure
           decision logic, which must not slow down with more grants or destinations;
  full     the same through the real SQLite grant store (read + atomic use reservation) and
           the real audit log (fsync before the secret leaves), as `broker-proxy run` does it.
Grants go from 10 to 100,000 and policy destinations from 10 to 10,000.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import smoke
from broker_proxy.audit.log import AuditLog
from broker_proxy.decision.active_policy import ActivePolicy
from broker_proxy.decision.broker import Broker
from broker_proxy.grants.issuer import issue_grant
from broker_proxy.grants.model import Grant
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.grants.store import ReserveResult, authenticate_token
from broker_proxy.home import Home
from broker_proxy.metrics import BrokerMetrics
from broker_proxy.policy.loader import load_policy_text
from broker_proxy.request.outbound import Allowed, OutboundRequest
from broker_proxy.secrets.backends import SecretResolver
from broker_proxy.time_source import utc_now


class MemoryGrantStore(SqliteGrantStore):
    """Grants in a dict: isolates the decision logic from storage in the `match` figures.

    A subclass of the real store, not a look-alike: it is a `GrantStore` by construction, and
    a change to a verb's signature that the broker relies on makes this override wrong where
    mypy and the smoke run in `make test` see it (a look-alike once failed every decision with
    a TypeError that only `make bench` showed). The SQLite file under it stays empty.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.grants: dict[str, Grant] = {}
        self.uses: dict[str, int] = {}

    def create(self, grant: Grant) -> None:
        self.grants[grant.id] = grant

    def get(self, grant_id: str) -> Grant | None:
        return self.grants.get(grant_id)

    def authenticate(self, token: str) -> Grant | None:
        # The SQLite store authenticates through its own cache of rows; these grants have none.
        return authenticate_token(token, self.get)

    def reserve_use(self, grant_id: str, now: datetime, *, wait: bool = True,
                    deadline: float | None = None) -> ReserveResult:
        self.uses[grant_id] = self.uses.get(grant_id, 0) + 1  # a counter, as a store would
        return ReserveResult.RESERVED


class NullAudit(AuditLog):
    """The audit log with every write left out: the upper bound on what auditing costs.

    A subclass of the real log for the same reason as MemoryGrantStore: it stays an `AuditLog`
    as that class changes. Records are built (so their cost in the caller stays) but never
    written; their sequence numbers still count up, as `ensure_durable` callers expect.
    """

    def __init__(self, path: Path, key: bytes, fd: int, fsync: str) -> None:
        super().__init__(path, key, fd, fsync)
        self.left_out = 0  # records built and not written

    @classmethod
    def beside(cls, home: Home) -> NullAudit:
        return cls.open(home.root / "null-audit.log", home.audit_key, fsync="always")

    def append(self, event: str, *, durable: bool = False, **fields: object) -> dict[str, Any]:
        self.left_out += 1
        return {"seq": self.left_out - 1, "event": event, **fields}

    def ensure_durable(self, seq: int) -> None:
        pass


def policy_text(destinations: int) -> str:
    """`destinations` secrets, one destination each, on distinct hosts under 50 domains."""
    lines = ["version: 1", "secrets:"]
    for index in range(destinations):
        lines += [f"  s{index}:", f"    from: env:CORE_BENCH_{index % 10}", "    destinations:",
                  f"      - host: api{index}.d{index % 50}.example.com",
                  '        paths: ["/v1/**", "/v2/items/*"]']
    names = ", ".join(f"s{i}" for i in range(destinations))
    lines += ["agents:", "  bot:", f"    secrets: [{names}]", "    max_ttl: 2h"]
    return "\n".join(lines) + "\n"


def build(home: Home, destinations: int, grants: int, full: bool) -> tuple[Broker, str, str]:
    policy = load_policy_text(policy_text(destinations), "bench.yaml")
    store = SqliteGrantStore(home.grants_db) if full else MemoryGrantStore(home.grants_db)
    now = utc_now()
    token = ""
    for index in range(grants):
        issued = issue_grant(policy, store, agent="bot", task=f"t{index}",
                             secrets=[f"s{index % destinations}"], ttl=None, max_uses=None,
                             now=now)
        if index == grants // 2:
            token = issued.token
            chosen = issued.grant.secrets[0]
    audit = AuditLog.open(home.audit_log, home.audit_key) if full else NullAudit.beside(home)
    broker = Broker(policy=ActivePolicy.build(policy), grants=store, secrets=SecretResolver(home),
                    audit=audit, metrics=BrokerMetrics())
    return broker, token, chosen


def time_decisions(broker: Broker, token: str, secret: str, seconds: float) -> float:
    index = int(secret[1:])
    host = f"api{index}.d{index % 50}.example.com"
    request = OutboundRequest(
        method="POST", scheme="https", host=host, port=443, path="/v1/chat/completions",
        query="", headers=(("Host", host), ("Authorization", f"Bearer {{{{secret:{secret}}}}}"),
                           ("Content-Type", "application/json"), ("Accept", "*/*"),
                           ("User-Agent", "agent/1.0")),
        body=b'{"model":"x","messages":[]}', host_header=host, sni=host)
    first = broker.decide(token, request)
    if not isinstance(first, Allowed):  # a broken setup would time refusals
        raise SystemExit(f"the benchmark's request was refused: {first}")
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            broker.decide(token, request)
        count += 100
    return count / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="skip the 100,000-grant rows")
    smoke.add_flag(parser)
    args = parser.parse_args()
    os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"
    os.environ["BROKER_PROXY_MASTER_KEY"] = base64.urlsafe_b64encode(os.urandom(32)).decode()
    for index in range(10):
        os.environ[f"CORE_BENCH_{index}"] = secrets.token_urlsafe(24)
    grant_counts: tuple[int, ...] = (10, 1_000, 10_000) if args.quick else (10, 1_000, 100_000)
    many_destinations: tuple[int, ...] = (1_000, 10_000)
    if args.smoke:
        grant_counts, many_destinations, args.seconds = (10, 100), (50, 100), 0.05
    print(f"{'path':<6} {'grants':>8} {'destinations':>12} {'decisions/s':>12} {'us/decision':>12}")
    results: dict[tuple[str, int, int], float] = {}
    for path in ("match", "full"):
        rows = [(g, 10) for g in grant_counts] + [(10, d) for d in many_destinations]
        for grants, destinations in [*rows, (grant_counts[-1], many_destinations[-1])]:
            # SQLite build time; the lookup is by primary key either way.
            grants_used = 10_000 if path == "full" and grants > 10_000 else grants
            with tempfile.TemporaryDirectory() as scratch:
                home = Home(Path(scratch)).ensure()
                broker, token, secret = build(home, destinations, grants_used, path == "full")
                rate = time_decisions(broker, token, secret, args.seconds)
                broker.audit.close()
            results[(path, grants_used, destinations)] = rate
            print(f"{path:<6} {grants_used:>8} {destinations:>12} {rate:12.0f} "
                  f"{1e6 / rate:12.1f}", flush=True)
    base = results[("match", 10, 10)]
    worst = min(v for (p, _, _), v in results.items() if p == "match")
    print(f"\nmatch path: slowest configuration is {worst / base:.2f}x the 10-grant, "
          "10-destination figure")
    return 0


if __name__ == "__main__":
    sys.exit(main())
