"""`make bench`: broker-proxy against bare mitmproxy, side by side, in one run.

Setups (each a real process on this machine):
  direct           the load generator talks to the upstream itself
  mitmdump         bare `mitmdump -q`, no script
  mitmdump -s      `mitmdump -q -s benchmarks/minimal_inject.py` (the common way to inject)
  broker           `broker-proxy run`, policy of 1,000 secrets and 100 agents, 10,000 active
                   grants, placeholder injection, response scrubbing and audit log on
  broker x2        the same with `--workers 2` (CPU and memory summed over both processes)
Workloads:
  https-keepalive       10 clients, one CONNECT tunnel each, requests back to back
  https-new-connection  4 clients, a new CONNECT + TLS handshake per request
  http-proxy            10 clients, plain-HTTP proxy requests (absolute-form), keep-alive;
                        the broker serves these from its egress allow-list (no secret over http)

How to read it: req/s and latency are what the client saw; "cpu ms/req" is the proxy process's
own CPU time per answered request (the load generator and upstream share the 2 cores, so this
is the fairer cost figure); "peak MB" is the proxy's VmHWM. Ratios compare the broker to bare
mitmdump in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import smoke
from benchmarks.loadgen import ProxySpec, Result, Target, run_load
from benchmarks.proc_stats import group_cpu_seconds, group_peak_kib
from broker_proxy.devtools.echo_server import EchoServer, ReceivedRequest
from broker_proxy.devtools.local_pki import write_pki
from broker_proxy.devtools.proxy_process import ProxyProcess
from broker_proxy.grants.issuer import issue_grant
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.home import Home
from broker_proxy.policy.loader import load_policy
from broker_proxy.runtime.local_ports import free_port, wait_for_port
from broker_proxy.time_source import utc_now

HERE = Path(__file__).resolve().parent
HOST = "localhost"
WORKLOADS = {"https-keepalive": 10, "https-new-connection": 4, "http-proxy": 10}
PLACEHOLDER = "{{secret:bench}}"


def small_reply(request: ReceivedRequest) -> tuple[int, list[tuple[str, str]], bytes]:
    return 200, [("Content-Type", "application/json")], b'{"ok":true,"items":[1,2,3]}'


@dataclass
class Row:
    setup: str
    workload: str
    result: Result
    cpu_ms_per_request: float
    peak_mb: float


def broker_policy(https_port: int, http_port: int, secret_count: int, agent_count: int) -> str:
    lines = ["version: 1", "secrets:", "  bench:", "    from: env:BENCH_SECRET",
             "    destinations:", f"      - host: {HOST}", f"        port: {https_port}",
             "        methods: [GET, POST]", '        paths: ["/v1/**"]']
    for index in range(secret_count - 1):
        lines += [f"  svc{index}:", f"    from: env:BENCH_SECRET_{index}", "    destinations:",
                  f"      - host: api{index}.svc{index % 50}.example.com",
                  '        paths: ["/v1/**", "/v2/items/*"]']
    lines += ["agents:", "  bench-agent:", "    secrets: [bench]", "    max_ttl: 2h"]
    per_agent = max(1, (secret_count - 1) // agent_count)
    for agent in range(agent_count - 1):
        names = [f"svc{(agent * per_agent + k) % (secret_count - 1)}" for k in range(per_agent)]
        lines += [f"  agent{agent}:", f"    secrets: [{', '.join(sorted(set(names)))}]",
                  "    max_ttl: 2h"]
    lines += ["egress:", f"  allow: [{HOST}]", "network:",
              '  allow_addresses: [127.0.0.0/8, "::1/128"]']
    del http_port
    return "\n".join(lines) + "\n"


def issue_bench_grants(home: Home, policy_file: Path, grants: int) -> str:
    """Fill the home's store: `grants - 1` grants spread over the policy's other agents, then
    the bench agent's own; returns its token."""
    policy = load_policy(policy_file)
    store = SqliteGrantStore(home.grants_db)
    now = utc_now()
    other_agents = [name for name in policy.agents if name != "bench-agent"]
    for index in range(grants - 1):
        agent = other_agents[index % len(other_agents)]
        issue_grant(policy, store, agent=agent, task=f"background task {index}",
                    secrets=sorted(policy.agents[agent].secrets)[:2], ttl=None, max_uses=None,
                    now=now)
    grant = issue_grant(policy, store, agent="bench-agent", task="benchmark",
                        secrets=["bench"], ttl=policy.agents["bench-agent"].max_ttl,
                        max_uses=None, now=now)
    store.close()
    return grant.token


def measure(setup: str, pid: int | None, proxy: ProxySpec | None, targets: dict[str, Target],
            ca_file: str, seconds: float) -> list[Row]:
    rows = []
    for workload, concurrency in WORKLOADS.items():
        before = group_cpu_seconds(pid) if pid else 0.0
        result = asyncio.run(run_load(workload, proxy, targets[workload], ca_file,
                                      concurrency=concurrency, seconds=seconds))
        used = (group_cpu_seconds(pid) - before) if pid else float("nan")
        per_request = used * 1000 / result.requests if result.requests else float("nan")
        peak = group_peak_kib(pid) / 1024 if pid else float("nan")
        rows.append(Row(setup, workload, result, per_request, peak))
        print(f"  {setup:<12} {workload:<21} {result.rate:8.0f} req/s", flush=True)
    return rows


def print_table(rows: list[Row]) -> None:
    print()
    header = (f"{'setup':<12} {'workload':<21} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'cpu ms/req':>10} {'peak MB':>8} {'errors':>6} {'non-2xx':>7}")
    print(header)
    print("-" * len(header))
    for row in rows:
        result = row.result
        bad = sum(n for status, n in result.statuses.items() if not 200 <= status < 300)
        print(f"{row.setup:<12} {row.workload:<21} {result.rate:8.0f} "
              f"{result.percentile(0.5) * 1000:8.2f} {result.percentile(0.99) * 1000:8.2f} "
              f"{row.cpu_ms_per_request:10.2f} {row.peak_mb:8.1f} {result.errors:6d} {bad:7d}")
    by_key = {(row.setup, row.workload): row for row in rows}
    print()
    for workload in WORKLOADS:
        broker = by_key.get(("broker", workload))
        for baseline in ("mitmdump", "mitmdump -s"):
            base = by_key.get((baseline, workload))
            if broker and base and base.result.rate:
                print(f"broker / {baseline:<11} {workload:<21} throughput "
                      f"{broker.result.rate / base.result.rate:5.2f}x   cpu per request "
                      f"{broker.cpu_ms_per_request / base.cpu_ms_per_request:5.2f}x")
        doubled = by_key.get(("broker x2", workload))
        if broker and doubled and broker.result.rate:
            print(f"broker x2 / broker       {workload:<21} throughput "
                  f"{doubled.result.rate / broker.result.rate:5.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="per workload (default 6)")
    parser.add_argument("--secrets", type=int, default=1000)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--grants", type=int, default=10_000)
    parser.add_argument("--setups", default="direct,mitmdump,mitmdump -s,broker,broker x2")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help="comma-separated subset of: " + ", ".join(WORKLOADS))
    smoke.add_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.secrets, args.agents, args.grants = 0.15, 10, 3, 10
    unknown = set(args.workloads.split(",")) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
    for workload in list(WORKLOADS):
        if workload not in args.workloads.split(","):
            del WORKLOADS[workload]
    setups = args.setups.split(",")
    rows: list[Row] = []
    bench_secret = "bench-" + secrets.token_urlsafe(24)
    env = dict(os.environ, BENCH_SECRET=bench_secret,
               BROKER_PROXY_MASTER_KEY=base64.urlsafe_b64encode(os.urandom(32)).decode(),
               PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring")
    for index in range(args.secrets):
        env[f"BENCH_SECRET_{index}"] = secrets.token_urlsafe(16)
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="broker-bench-") as scratch:
        root = Path(scratch)
        pki = write_pki(root / "pki", [HOST], ["127.0.0.1"])
        with EchoServer(pki.cert_path, pki.key_path, reply=small_reply) as https_upstream, \
                EchoServer(reply=small_reply) as http_upstream:
            auth = (("Authorization", f"Bearer {PLACEHOLDER}"),)
            targets = {
                "https-keepalive": Target(HOST, https_upstream.port, "/v1/items", auth),
                "https-new-connection": Target(HOST, https_upstream.port, "/v1/items", auth),
                "http-proxy": Target(HOST, http_upstream.port, "/v1/items"),
            }
            print(f"upstreams: https :{https_upstream.port}, http :{http_upstream.port}; "
                  f"{args.seconds:.0f} s per workload", flush=True)
            if "direct" in setups:
                rows += measure("direct", None, None, targets, str(pki.ca_cert_path),
                                args.seconds)
            for name, script in (("mitmdump", None), ("mitmdump -s", HERE / "minimal_inject.py")):
                if name not in setups:
                    continue
                port = free_port()
                confdir = root / f"confdir-{port}"
                command = [str(bin_dir / "mitmdump"), "-q", "--listen-host", "127.0.0.1",
                           "--listen-port", str(port), "--set", f"confdir={confdir}",
                           "--set", f"ssl_verify_upstream_trusted_ca={pki.ca_cert_path}"]
                if script:
                    command += ["-s", str(script)]
                process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)
                try:
                    wait_for_port(port, process)
                    rows += measure(name, process.pid, ProxySpec("127.0.0.1", port), targets,
                                    str(confdir / "mitmproxy-ca-cert.pem"), args.seconds)
                finally:
                    process.terminate()
                    process.wait(timeout=10)
            for name, workers in (("broker", 1), ("broker x2", 2)):
                if name in setups:
                    rows += run_broker(root, pki.ca_cert_path, env, targets, https_upstream.port,
                                       http_upstream.port, args, name, workers)
    print_table(rows)
    return 1 if broken(rows) else 0


def broken(rows: list[Row]) -> bool:
    """Say which setups failed requests: figures of a setup that answers errors mean nothing."""
    failed = False
    for row in rows:
        result = row.result
        bad = sum(n for status, n in result.statuses.items() if not 200 <= status < 300)
        if bad or result.errors or not result.requests:
            print(f"broken: {row.setup} {row.workload}: {result.requests} answered, {bad} not "
                  f"2xx, {result.errors} errors", file=sys.stderr)
            failed = True
    return failed


def run_broker(root: Path, upstream_ca: Path, env: dict[str, str], targets: dict[str, Target],
               https_port: int, http_port: int, args: argparse.Namespace, name: str,
               workers: int) -> list[Row]:
    home = Home(root / f"broker-home-{workers}").ensure()
    policy_file = root / "bench-policy.yaml"
    policy_file.write_text(broker_policy(https_port, http_port, args.secrets, args.agents))
    started = time.monotonic()
    token = issue_bench_grants(home, policy_file, args.grants)
    print(f"  broker: {args.secrets} secrets, {args.agents} agents, {args.grants} active grants "
          f"prepared in {time.monotonic() - started:.1f} s", flush=True)
    proxy = ProxyProcess(home.root, policy_file, upstream_ca=upstream_ca, env=env,
                         extra_args=["--workers", str(workers)],
                         log_path=root / f"broker-{workers}.log").start()
    try:
        spec = ProxySpec(proxy.host, proxy.port, "bench-agent", token)
        return measure(name, proxy.process.pid if proxy.process else None, spec, targets,
                       str(proxy.ca_path), args.seconds)
    finally:
        proxy.stop()


if __name__ == "__main__":
    sys.exit(main())
