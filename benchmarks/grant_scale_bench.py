"""`make bench-scale`, grants: does `broker-proxy run` cost more with a big grant store?

A part of benchmarks/scale_bench.py, run through it (it takes the same arguments).

For SQLite and for Redis, the same proxy is measured with 1 grant in its store and with
--grants (default 1,000,000) grants, rounds interleaved (1, N, 1, N, ...) so the load of the
shared machine falls on both alike:

  start-up   process start to listening (run.json written), in seconds, and the CPU seconds
             the process used until then (what the wall figure means on a loaded machine)
  idle CPU   the proxy's CPU seconds over --idle-seconds of no traffic, as % of one core
  cpu/req    the proxy's CPU ms per answered request, https-keepalive (10 clients, one tunnel
             each, a placeholder injected into every request)
  RSS        VmRSS after the load, MB

and the ratio N/1 of each (target: within 1.10x; RSS within +100 MB).

The big store is filled straight through the store's own schema (SqliteGrantStore.load_many,
RedisGrantStore.load_many: executemany / a pipeline), not one CLI call per grant. Its grants
mix states as a store holding a month of traffic would (see mixed_grants): 0.25% live (active
or pending), the rest ended (expired, revoked, denied, used up) within the default
--grant-retention of 30 days, so nothing is purged during the run; and --expiring grants whose
expiry falls during the run (the watcher writes their `grant_expired` records as it would).

Redis runs as a private redis-server started for the run (devtools.redis_server; nothing on
disk, stopped at the end), one database per store size, never the system's Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import smoke
from benchmarks.loadgen import ProxySpec, Target, run_load
from benchmarks.proc_stats import cpu_seconds, memory_kib
from broker_proxy.devtools.echo_server import EchoServer, ReceivedRequest
from broker_proxy.devtools.local_pki import write_pki
from broker_proxy.devtools.proxy_process import ProxyProcess
from broker_proxy.devtools.redis_server import RedisServer
from broker_proxy.grants.issuer import issue_grant
from broker_proxy.grants.model import Grant, GrantStatus, new_grant_id
from broker_proxy.grants.redis_store import RedisGrantStore
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.home import Home
from broker_proxy.policy.loader import load_policy
from broker_proxy.time_source import utc_now

HOST = "localhost"
PLACEHOLDER = "{{secret:bench}}"
CLIENTS = 10


def small_reply(request: ReceivedRequest) -> tuple[int, list[tuple[str, str]], bytes]:
    return 200, [("Content-Type", "application/json")], b'{"ok":true}'


def policy_text(https_port: int) -> str:
    return "\n".join([
        "version: 1", "secrets:", "  bench:", "    from: env:BENCH_SECRET", "    destinations:",
        f"      - host: {HOST}", f"        port: {https_port}", '        paths: ["/v1/**"]',
        "agents:", "  bench-agent:", "    secrets: [bench]", "    max_ttl: 2h",
        "network:", '  allow_addresses: [127.0.0.0/8, "::1/128"]', ""])


def mixed_grants(count: int, now: datetime) -> Iterator[Grant]:
    """`count` grants of the "background" agent in the states a month of traffic leaves.

    1,000,000 grants in 30 days is 33,000 a day; with TTLs of 15 minutes to an hour about
    1,400 are live at once. So per 10,000: 20 active and 5 pending (2,500 live in a million),
    and of the ended ones, per 100: 80 expired, 8 revoked, 2 denied, 4 used up, the rest
    expired too. All ended within the last 29 days: the default retention (30 days) purges
    none of them during the run.
    """
    day = timedelta(days=1)
    for index in range(count):
        kind = index % 100
        created = now - day * (29 * ((index * 7919) % 1000) / 1000) - timedelta(hours=1)
        expires = created + timedelta(minutes=15)
        status, uses, max_uses = GrantStatus.ACTIVE, 1, None
        decided_by = decided_at = revoked_at = None
        if index % 10_000 < 20:
            created, expires = now - timedelta(minutes=10), now + day
        elif index % 10_000 < 25:
            created, expires = now - timedelta(minutes=10), now + day
            status, uses = GrantStatus.PENDING, 0
        elif kind < 80:
            pass  # expired
        elif kind < 88:
            status, revoked_at = GrantStatus.REVOKED, created + timedelta(minutes=3)
        elif kind < 90:
            status, decided_by, decided_at = GrantStatus.DENIED, "ops", created
        elif kind < 94:
            uses, max_uses = 3, 3  # used up, then expired
        yield Grant(id=new_grant_id(), agent="background", task=f"background task {index}",
                    secrets=("bench",), created_at=created, expires_at=expires,
                    max_uses=max_uses, uses=uses, status=status, approved_by=decided_by,
                    approved_at=decided_at, revoked_at=revoked_at,
                    token_hash=secrets.token_bytes(32))


def expiring_grants(count: int, now: datetime, run_seconds: float) -> Iterator[Grant]:
    """Active grants whose expiries are spread over the measurements, once the fills are done:
    the watcher writes their `grant_expired` records as it would."""
    for index in range(count):
        yield Grant(id=new_grant_id(), agent="background", task=f"expiring task {index}",
                    secrets=("bench",), created_at=now - timedelta(minutes=5),
                    expires_at=now + timedelta(seconds=5 + run_seconds * index / count),
                    max_uses=None, uses=1, status=GrantStatus.ACTIVE, approved_by=None,
                    approved_at=None, revoked_at=None, token_hash=secrets.token_bytes(32))


@dataclass
class Figures:
    startup: list[float] = field(default_factory=list)
    startup_cpu: list[float] = field(default_factory=list)  # CPU s until ready: load-proof
    idle_pct: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    rate: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)


@dataclass
class Store:
    backend: str
    size: int
    url: str  # what `run --store` gets
    token: str = ""


def open_store(store: Store) -> SqliteGrantStore | RedisGrantStore:
    if store.backend == "sqlite":
        return SqliteGrantStore(store.url.removeprefix("sqlite:///"))
    return RedisGrantStore(store.url)


def prepare(store: Store, policy_file: Path) -> None:
    """Fill the store: `size - 1` background grants and the benchmark's own grant."""
    policy = load_policy(policy_file)
    now = utc_now()
    started = time.monotonic()
    with open_store(store) as opened:
        if store.size > 1:
            opened.load_many(mixed_grants(store.size - 1, now))
        issued = issue_grant(policy, opened, agent="bench-agent", task="benchmark",
                             secrets=["bench"], ttl=timedelta(hours=2), max_uses=None, now=now)
    store.token = issued.token
    took = time.monotonic() - started
    print(f"  {store.backend:<6} {store.size:>9,} grants filled in {took:5.1f} s", flush=True)


def measure(store: Store, home: Path, policy_file: Path, upstream_ca: Path, env: dict[str, str],
            target: Target, args: argparse.Namespace, figures: Figures, log: Path) -> None:
    proxy = ProxyProcess(home, policy_file, upstream_ca=upstream_ca, env=env,
                         extra_args=["--store", store.url], log_path=log)
    for start in range(args.starts):  # start-up is the noisiest figure: take several
        started = time.monotonic()
        proxy.start(timeout=120)
        figures.startup.append(time.monotonic() - started)
        assert proxy.process is not None
        pid = proxy.process.pid
        figures.startup_cpu.append(cpu_seconds(pid))
        if start < args.starts - 1:
            proxy.stop()
    try:
        time.sleep(args.settle)
        before, at = cpu_seconds(pid), time.monotonic()
        time.sleep(args.idle_seconds)
        figures.idle_pct.append((cpu_seconds(pid) - before) / (time.monotonic() - at) * 100)
        spec = ProxySpec(proxy.host, proxy.port, "bench-agent", store.token)
        before = cpu_seconds(pid)
        result = asyncio.run(run_load("https-keepalive", spec, target, str(proxy.ca_path),
                                      concurrency=CLIENTS, seconds=args.seconds))
        used = cpu_seconds(pid) - before
        bad = sum(n for status, n in result.statuses.items() if status != 200)
        if not result.requests or bad or result.errors:
            raise SystemExit(f"{store.backend} {store.size}: {result.requests} answered, "
                             f"{bad} not 200, {result.errors} errors: {proxy.log_tail()}")
        figures.cpu_ms.append(used * 1000 / result.requests)
        figures.rate.append(result.rate)
        figures.rss_mb.append(memory_kib(pid, "VmRSS") / 1024)
    finally:
        proxy.stop()


def spread(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}-" \
           f"{format(max(values), fmt)})"


def report(results: dict[tuple[str, int], Figures], sizes: tuple[int, int]) -> None:
    small, big = sizes
    print()
    header = (f"{'store':<7} {'grants':>9} {'start-up s':>18} {'start-up CPU s':>18} "
              f"{'idle CPU %':>18} "
              f"{'cpu ms/req':>18} {'req/s':>8} {'RSS MB':>18}")
    print(header)
    print("-" * len(header))
    for (backend, size), fig in results.items():
        print(f"{backend:<7} {size:>9,} {spread(fig.startup, '.2f'):>18} "
              f"{spread(fig.startup_cpu, '.2f'):>18} "
              f"{spread(fig.idle_pct, '.2f'):>18} {spread(fig.cpu_ms, '.3f'):>18} "
              f"{statistics.median(fig.rate):8.0f} {spread(fig.rss_mb, '.1f'):>18}")
    print(f"\nratio {big:,} / {small} grants (medians; target <= 1.10, RSS within +100 MB):")
    for backend in ("sqlite", "redis"):
        one, many = results.get((backend, small)), results.get((backend, big))
        if not one or not many:
            continue
        med = statistics.median
        idle_one, idle_many = med(one.idle_pct), med(many.idle_pct)
        # Idle CPU is counted in 10 ms ticks: near zero a ratio says nothing, so the
        # difference in points of a core is printed too.
        idle_ratio = f"{idle_many / idle_one:5.2f}x" if idle_one >= 0.1 else "  n/a"
        print(f"  {backend:<7} start-up {med(many.startup) / med(one.startup):5.2f}x "
              f"(fastest {min(many.startup) / min(one.startup):4.2f}x, CPU "
              f"{med(many.startup_cpu) / med(one.startup_cpu):4.2f}x)   "
              f"idle CPU {idle_ratio} ({idle_one:.2f}% -> {idle_many:.2f}% of a core, "
              f"{idle_many - idle_one:+.2f} points)   "
              f"cpu/req {med(many.cpu_ms) / med(one.cpu_ms):5.2f}x   "
              f"RSS {med(many.rss_mb) - med(one.rss_mb):+6.1f} MB")
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grants", type=int, default=1_000_000,
                        help="grants in the big store (default 1,000,000; e.g. 10000 for a "
                        "quick run)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each (default 3)")
    parser.add_argument("--stores", default="sqlite,redis", help="sqlite, redis or both")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds between ready and the idle measurement (default 10: past "
                        "the watcher's first sweep, which warms SQLite's page cache once)")
    parser.add_argument("--seconds", type=float, default=6.0, help="of load (default 6)")
    parser.add_argument("--starts", type=int, default=3,
                        help="start-ups timed per measurement (default 3)")
    parser.add_argument("--expiring", type=int, default=200,
                        help="grants of the big store that expire during the run (default 200)")
    smoke.add_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        args.grants, args.rounds, args.idle_seconds, args.settle = 50, 1, 0.1, 0.0
        args.seconds, args.starts, args.expiring = 0.2, 1, 5
    backends = [name for name in args.stores.split(",") if name]
    if set(backends) - {"sqlite", "redis"}:
        parser.error("--stores takes sqlite and/or redis")
    sizes = (1, args.grants)
    run_seconds = args.rounds * len(backends) * 2 * (args.settle + args.idle_seconds
                                                    + args.seconds + 4 * args.starts)
    env = dict(os.environ, BENCH_SECRET="bench-" + secrets.token_urlsafe(24),
               BROKER_PROXY_MASTER_KEY=base64.urlsafe_b64encode(os.urandom(32)).decode(),
               PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring")
    with tempfile.TemporaryDirectory(prefix="broker-scale-") as scratch:
        root = Path(scratch)
        pki = write_pki(root / "pki", [HOST], ["127.0.0.1"])
        redis = RedisServer(root / "redis").start() if "redis" in backends else None
        try:
            with EchoServer(pki.cert_path, pki.key_path, reply=small_reply) as upstream:
                policy_file = root / "policy.yaml"
                policy_file.write_text(policy_text(upstream.port))
                target = Target(HOST, upstream.port, "/v1/items",
                                (("Authorization", f"Bearer {PLACEHOLDER}"),))
                stores: list[Store] = []
                for backend in backends:
                    for db, size in enumerate(sizes):
                        if backend == "sqlite":
                            url = f"sqlite:///{root / f'grants-{size}.sqlite3'}"
                        else:
                            assert redis is not None
                            url = f"redis://127.0.0.1:{redis.port}/{db}"
                        stores.append(Store(backend, size, url))
                print(f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
                      f"filling stores ({args.grants:,} grants: 0.25% live, the rest ended "
                      f"within the retention; {args.expiring} more expiring during the run)",
                      flush=True)
                for store in stores:
                    prepare(store, policy_file)
                for store in stores:
                    if store.size > 1 and args.expiring:
                        with open_store(store) as opened:
                            for grant in expiring_grants(args.expiring, utc_now(), run_seconds):
                                opened.create(grant)
                results = {(store.backend, store.size): Figures() for store in stores}
                for round_no in range(args.rounds):
                    for store in stores:  # 1, N, 1, N: interleaved
                        home = Home(root / f"home-{store.backend}-{store.size}").ensure()
                        measure(store, home.root, policy_file, pki.ca_cert_path, env, target,
                                args, results[(store.backend, store.size)],
                                root / f"proxy-{store.backend}-{store.size}.log")
                        fig = results[(store.backend, store.size)]
                        print(f"  round {round_no + 1} {store.backend:<6} {store.size:>9,}: "
                              f"start-up {min(fig.startup[-args.starts:]):.2f} s, "
                              f"idle {fig.idle_pct[-1]:.2f}%, "
                              f"{fig.cpu_ms[-1]:.3f} ms/req, RSS {fig.rss_mb[-1]:.0f} MB",
                              flush=True)
                report(results, sizes)
        finally:
            if redis is not None:
                redis.stop()
    return 0

