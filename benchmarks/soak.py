"""Memory over a long run: does the broker's RSS stay flat as finished flows pile up?

Default mode: drives `broker-proxy run` with HTTPS keep-alive requests that carry a secret
(injection, scrubbing and audit on) until --requests have been answered, and prints the proxy's
RSS every 10% of the way. Flat means: no growth with the number of finished flows.

--mixed: --minutes of paced traffic at --rate req/s, mixing a new CONNECT tunnel per request with
kept-alive tunnels, requests with a placeholder (injected, echoed back, scrubbed) and without, and
now and then a refused one (a path the grant does not cover), with the audit log rotating every
4 MB. Prints RSS every --report-every minutes and a verdict: growth after --warmup minutes.
--tracemalloc PREFIX makes the proxy write a memory report at every report (and an
allocation snapshot with BROKER_PROXY_TRACEMALLOC_FRAMES>0)
(see broker_proxy/runtime/memory_trace.py; compare them with benchmarks/snapshot_diff.py).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import smoke
from benchmarks.loadgen import ProxySpec, Target, run_load
from benchmarks.proc_stats import memory_kib
from benchmarks.run import PLACEHOLDER, broker_policy, small_reply
from benchmarks.soak_mixed import MixedTraffic
from broker_proxy.devtools.echo_server import EchoServer, ReceivedRequest
from broker_proxy.devtools.local_pki import write_pki
from broker_proxy.devtools.proxy_process import ProxyProcess
from broker_proxy.grants.issuer import issue_grant
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.home import Home
from broker_proxy.policy.loader import load_policy
from broker_proxy.runtime.heap_trim import ENV_INTERVAL
from broker_proxy.runtime.memory_trace import ENV_PREFIX
from broker_proxy.time_source import utc_now


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--mixed", action="store_true", help="paced mixed traffic (see above)")
    parser.add_argument("--rate", type=float, default=50.0, help="--mixed: requests per second")
    parser.add_argument("--minutes", type=float, default=60.0,
                        help="--mixed: how long (at most 110: the policy's max_ttl is 2 h)")
    parser.add_argument("--report-every", type=float, default=5.0, metavar="MINUTES",
                        help="--mixed: print RSS this often (default 5)")
    parser.add_argument("--warmup", type=float, default=5.0, metavar="MINUTES",
                        help="--mixed: growth is measured from the first report at or after "
                        "this (default 5)")
    parser.add_argument("--audit-max-bytes", default="4M", help="--mixed: rotation size")
    parser.add_argument("--tracemalloc", metavar="PREFIX",
                        help="--mixed: the proxy traces allocations and writes "
                        "PREFIX-N.snapshot at every report")
    parser.add_argument("--no-heap-trim", action="store_true",
                        help="--mixed: the proxy does not trim its C heap (the comparison)")
    smoke.add_flag(parser)  # both modes, a few seconds each
    args = parser.parse_args()
    args.step_seconds = 2.0  # of load between two looks at the RSS
    if args.smoke:
        args.requests, args.step_seconds = 100, 0.5
        plain_soak(args)
        args.minutes, args.rate, args.report_every, args.warmup = 0.06, 20.0, 0.03, 0.0
        args.audit_max_bytes = "8K"  # a few rotations in the few seconds
        return mixed_soak(args)
    if args.mixed:
        return mixed_soak(args)
    return plain_soak(args)


def plain_soak(args: argparse.Namespace) -> int:
    env = dict(os.environ, BENCH_SECRET="soak-" + secrets.token_urlsafe(24),
               BROKER_PROXY_MASTER_KEY=base64.urlsafe_b64encode(os.urandom(32)).decode(),
               PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring")
    for index in range(10):
        env[f"BENCH_SECRET_{index}"] = secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="broker-soak-") as scratch:
        root = Path(scratch)
        pki = write_pki(root / "pki", ["localhost"], ["127.0.0.1"])
        with EchoServer(pki.cert_path, pki.key_path, reply=small_reply) as upstream:
            home = Home(root / "home").ensure()
            policy_file = root / "policy.yaml"
            policy_file.write_text(broker_policy(upstream.port, upstream.port, 11, 3))
            store = SqliteGrantStore(home.grants_db)
            grant = issue_grant(load_policy(policy_file), store, agent="bench-agent",
                                task="soak", secrets=["bench"], ttl=None, max_uses=None,
                                now=utc_now())
            store.close()
            target = Target("localhost", upstream.port, "/v1/items",
                            (("Authorization", f"Bearer {PLACEHOLDER}"),))
            with ProxyProcess(home.root, policy_file, upstream_ca=pki.ca_cert_path, env=env,
                              extra_args=["--audit-max-bytes", "64M"],
                              log_path=root / "soak.log") as proxy:
                assert proxy.process is not None
                pid = proxy.process.pid
                spec = ProxySpec(proxy.host, proxy.port, "bench-agent", grant.token)
                done = 0
                step = max(1, args.requests // 10)
                print(f"{'requests':>9} {'RSS MiB':>8} {'req/s':>7}", flush=True)
                while done < args.requests:
                    result = asyncio.run(run_load(
                        "https-keepalive", spec, target, str(proxy.ca_path),
                        concurrency=args.concurrency, seconds=args.step_seconds))
                    bad = sum(n for status, n in result.statuses.items() if status != 200)
                    if bad or result.errors or not result.requests:
                        raise SystemExit(f"{result.requests} answered, {bad} not 200, "
                                         f"{result.errors} errors: {proxy.log_tail()}")
                    before = done
                    done += result.requests
                    if done // step != before // step or done >= args.requests:
                        rss = memory_kib(pid, "VmRSS") / 1024
                        print(f"{done:9d} {rss:8.1f} {result.rate:7.0f}", flush=True)
    return 0


def echo_authorization(request: ReceivedRequest) -> tuple[int, list[tuple[str, str]], bytes]:
    """Echo what the upstream received, so an injected secret comes back and is scrubbed."""
    seen = request.header("Authorization") or ""
    body = json.dumps({"ok": True, "seen": seen, "items": list(range(20))}).encode()
    return 200, [("Content-Type", "application/json")], body


def _stop(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def mixed_soak(args: argparse.Namespace) -> int:
    # Started with nohup in the background, SIGINT is ignored: let SIGTERM and SIGINT both stop
    # the soak through the context managers, so the proxy and the test server go with it.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    env = dict(os.environ, BENCH_SECRET="soak-" + secrets.token_urlsafe(24),
               BROKER_PROXY_MASTER_KEY=base64.urlsafe_b64encode(os.urandom(32)).decode(),
               PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring")
    for index in range(10):
        env[f"BENCH_SECRET_{index}"] = secrets.token_urlsafe(16)
    if args.tracemalloc:
        env[ENV_PREFIX] = str(Path(args.tracemalloc).resolve())
    if args.no_heap_trim:
        env[ENV_INTERVAL] = "0"
    with tempfile.TemporaryDirectory(prefix="broker-soak-") as scratch:
        root = Path(scratch)
        pki = write_pki(root / "pki", ["localhost"], ["127.0.0.1"])
        with EchoServer(pki.cert_path, pki.key_path, reply=echo_authorization) as upstream:
            home = Home(root / "home").ensure()
            policy_file = root / "policy.yaml"
            policy_file.write_text(broker_policy(upstream.port, upstream.port, 11, 3))
            store = SqliteGrantStore(home.grants_db)
            # The default TTL (15 min) would end the grant mid-soak, refusing all that follows.
            grant = issue_grant(load_policy(policy_file), store, agent="bench-agent",
                                task="soak", secrets=["bench"],
                                ttl=timedelta(minutes=args.minutes + 10), max_uses=None,
                                now=utc_now())
            store.close()
            auth = (("Authorization", f"Bearer {PLACEHOLDER}"),)
            granted = Target("localhost", upstream.port, "/v1/items", auth)
            plain = Target("localhost", upstream.port, "/v1/public")
            refused = Target("localhost", upstream.port, "/admin/items", auth)
            with ProxyProcess(home.root, policy_file, upstream_ca=pki.ca_cert_path, env=env,
                              extra_args=["--audit-max-bytes", args.audit_max_bytes],
                              log_path=root / "soak.log") as proxy:
                assert proxy.process is not None
                traffic = MixedTraffic(ProxySpec(proxy.host, proxy.port, "bench-agent",
                                                 grant.token),
                                       granted, plain, refused, str(proxy.ca_path))
                rows = asyncio.run(_mixed_run(args, traffic, proxy.process.pid, upstream,
                                              home.root))
    return _verdict(rows, args.warmup)


async def _mixed_run(args: argparse.Namespace, traffic: MixedTraffic, pid: int,
                     upstream: EchoServer, home: Path) -> list[tuple[float, float]]:
    """Run the traffic and sample RSS every --report-every minutes; (minute, MiB) rows."""
    print(f"mixed soak: {args.rate:.0f} req/s for {args.minutes:g} min, audit rotation at "
          f"{args.audit_max_bytes}, heap trim {'off' if args.no_heap_trim else 'on'}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    print(f"{'minute':>6} {'RSS MiB':>8} {'sent':>8} {'audit files':>11}  answers", flush=True)
    rows: list[tuple[float, float]] = []
    started = time.monotonic()

    def report() -> None:
        minute = (time.monotonic() - started) / 60
        rss = memory_kib(pid, "VmRSS") / 1024
        rows.append((minute, rss))
        if args.tracemalloc:
            os.kill(pid, signal.SIGUSR2)
        audit_files = len(list(home.glob("audit.log*")))
        print(f"{minute:6.1f} {rss:8.1f} {traffic.tally.sent:8d} {audit_files:11d}  "
              f"{traffic.tally.summary()}  (load {os.getloadavg()[0]:.1f})", flush=True)

    async def reporter() -> None:
        next_report = started + args.report_every * 60
        while True:
            await asyncio.sleep(min(10.0, max(0.0, next_report - time.monotonic())))
            upstream.clear()  # the test server keeps every request; this is the proxy's soak
            if time.monotonic() >= next_report:
                report()
                next_report += args.report_every * 60

    report()
    sampler = asyncio.create_task(reporter())
    await traffic.run(args.rate, args.minutes * 60)
    sampler.cancel()
    if time.monotonic() - started - rows[-1][0] * 60 > 5:
        report()
    return rows


def _verdict(rows: list[tuple[float, float]], warmup: float) -> int:
    """Growth from the first row at or after the warm-up to the last, and the fitted slope
    over those rows (less sensitive to one row caught in a burst than the two ends are)."""
    after = [(minute, rss) for minute, rss in rows if minute >= warmup - 0.05]
    if len(after) < 2 or after[-1][0] - after[0][0] <= 0:
        print("verdict: too short for a growth figure after the warm-up")
        return 1
    (first_minute, first), (last_minute, last) = after[0], after[-1]
    growth = last - first
    mean_minute = sum(minute for minute, _ in after) / len(after)
    mean_rss = sum(rss for _, rss in after) / len(after)
    slope = (sum((minute - mean_minute) * (rss - mean_rss) for minute, rss in after)
             / sum((minute - mean_minute) ** 2 for minute, _ in after))
    spread = max(rss for _, rss in after) - min(rss for _, rss in after)
    print(f"verdict: RSS {first:.1f} MiB at minute {first_minute:.1f} -> {last:.1f} MiB at minute "
          f"{last_minute:.1f}: growth {growth:+.1f} MiB "
          f"({growth / (last_minute - first_minute):+.3f} MiB/min); fitted slope "
          f"{slope:+.3f} MiB/min; highest - lowest after warm-up {spread:.1f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
