"""Core decisions per second with the SQLite and the Redis grant store (run by hand).

    .venv/bin/python benchmarks/store_bench.py [--seconds 5] [--threads 1,4]

Each decision is the whole `Broker.decide` for a secret-carrying request: authenticate the
token, check the grant, match the policy, resolve the secret, reserve a use in the store, write
the durable audit record, rewrite. Only the grant store differs between the rows, so the
difference is what sharing grants across replicas costs. Redis is a private `redis-server` on a
free port on loopback (a network hop to a real Redis adds its round-trip time twice per
decision: authenticate and reserve). No mitmproxy, no sockets to an upstream.

"store ops/s" is the store's share alone (authenticate + reserve_use, no policy, no audit):
a whole decision is bounded by the durable audit write (one fsync each), which hides much
of the store's difference.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import smoke
from broker_proxy.audit.log import AuditLog
from broker_proxy.decision.active_policy import ActivePolicy
from broker_proxy.decision.broker import Broker
from broker_proxy.devtools.redis_server import RedisServer
from broker_proxy.grants.factory import open_grant_store
from broker_proxy.grants.issuer import issue_grant
from broker_proxy.grants.store import GrantStore
from broker_proxy.home import Home
from broker_proxy.metrics import BrokerMetrics
from broker_proxy.policy.loader import load_policy_text
from broker_proxy.request.outbound import Allowed, OutboundRequest
from broker_proxy.secrets.backends import SecretResolver
from broker_proxy.time_source import utc_now

POLICY = """\
version: 1
secrets:
  bench:
    from: env:STORE_BENCH_SECRET
    destinations:
      - host: api.bench.local
agents:
  bench:
    secrets: [bench]
    max_ttl: 1h
"""
REQUEST = OutboundRequest(method="GET", scheme="https", host="api.bench.local", port=443,
                          path="/v1/things", query="",
                          headers=(("Authorization", "Bearer {{secret:bench}}"),))


def measure_store(store: GrantStore, seconds: float, threads: int) -> float:
    """The store's share of a decision alone: authenticate + reserve_use, per second."""
    policy = ActivePolicy.build(load_policy_text(POLICY))
    issued = issue_grant(policy.policy, store, agent="bench", task="store benchmark",
                         secrets=["bench"], ttl=None, max_uses=None, now=utc_now())
    return _run(threads, seconds, lambda: (store.authenticate(issued.token),
                                           store.reserve_use(issued.grant.id, utc_now())))


def _run(threads: int, seconds: float, step: Callable[[], object]) -> float:
    counts = [0] * threads
    stop = time.monotonic() + seconds

    def work(slot: int) -> None:
        while time.monotonic() < stop:
            step()
            counts[slot] += 1

    started = time.monotonic()
    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.monotonic() - started)


def measure(store: GrantStore, home: Home, seconds: float, threads: int) -> float:
    """Decisions per second over `seconds`, from `threads` callers sharing one broker."""
    audit = AuditLog.open(home.audit_log, home.audit_key)
    policy = ActivePolicy.build(load_policy_text(POLICY))
    broker = Broker(policy=policy, grants=store, secrets=SecretResolver(home), audit=audit,
                    metrics=BrokerMetrics())
    issued = issue_grant(policy.policy, store, agent="bench", task="store benchmark",
                         secrets=["bench"], ttl=None, max_uses=None, now=utc_now())
    assert isinstance(broker.decide(issued.token, REQUEST), Allowed)  # warm up, and sanity

    def decide() -> None:
        if not isinstance(broker.decide(issued.token, REQUEST), Allowed):
            raise SystemExit("a decision was refused during the benchmark")

    try:
        return _run(threads, seconds, decide)
    finally:
        audit.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", default="1,4", help="comma-separated caller counts")
    smoke.add_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.threads = 0.05, "1,2"
    thread_counts = [int(n) for n in args.threads.split(",")]
    os.environ["STORE_BENCH_SECRET"] = "bench-" + secrets.token_urlsafe(24)

    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp) / "redis") as redis:
        stores: list[tuple[str, Callable[[Home], GrantStore]]] = [
            ("sqlite", lambda home: open_grant_store(home, None)),
            ("redis", lambda home: open_grant_store(home, redis.url)),
        ]
        print(f"{'store':<8} {'callers':>7} {'decisions/s':>12} {'store ops/s':>12}")
        for name, opener in stores:
            for threads in thread_counts:
                home = Home(Path(tmp) / f"{name}-{threads}").ensure()
                store = opener(home)
                try:
                    rate = measure(store, home, args.seconds, threads)
                    store_rate = measure_store(store, args.seconds, threads)
                finally:
                    store.close()
                print(f"{name:<8} {threads:>7} {rate:>12.0f} {store_rate:>12.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
