"""broker-proxy against its peers, side by side on this machine, in rotated rounds.

    .venv/bin/python benchmarks/peers.py [--rounds 5] [--seconds 4] [--markdown]

Peers (each a real process, all started before the first round and kept running):
  direct       the load generator talks to the upstream itself (the floor)
  mitmdump     bare `mitmdump -q`: TLS interception and nothing else
  mitmdump -s  `mitmdump -q -s benchmarks/minimal_inject.py`: swaps the placeholder in
               Authorization, the common way to build an injecting proxy
  broker       `broker-proxy run`, a policy of --secrets secrets and --agents agents,
               --grants active grants; every request authenticated, injected, audited (fsync
               before the secret leaves) and its answer scrubbed
  squid        Squid ssl-bump replacing Authorization (`request_header_access` +
               `request_header_add`); only where Debian's squid-openssl is installed, otherwise
               one line says it was skipped
Only the broker has grants, a policy per destination, an audit log and scrubbing: the others
inject one fixed value into every request to any host.

Workloads, against one local HTTPS upstream (the placeholder in every request):
  keep-alive x10   10 clients, one tunnel each, requests back to back
  new conn x4      4 clients, a new CONNECT + TLS handshake per request
  keep-alive x1    one client, keep-alive: the latency a proxy adds (p50 over direct)

Each round runs every workload through every peer, the peers' order turning each round, so
the shared machine's load falls on all alike. Per peer and workload: req/s (median of the
rounds), p50 and p99 latency (over all rounds' requests), the proxy's own CPU time per answered
request (median; its process and direct children, the fairer cost figure when the load
generator and upstream share the cores), and its RSS after the load (the largest). Ratios are
medians of per-round ratios: a round's runs were side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import secrets
import statistics
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import smoke
from benchmarks.loadgen import ProxySpec, Target, one_request, run_load
from benchmarks.peer_processes import (
    Peer,
    mitmdump,
    squid,
    squid_missing,
    squid_version,
)
from benchmarks.proc_stats import group_cpu_seconds, group_rss_kib
from benchmarks.run import PLACEHOLDER, broker_policy, issue_bench_grants, small_reply
from broker_proxy.devtools.echo_server import EchoServer
from broker_proxy.devtools.local_pki import write_pki
from broker_proxy.devtools.proxy_process import ProxyProcess
from broker_proxy.home import Home

HERE = Path(__file__).resolve().parent
HOST = "localhost"
PEERS = ("direct", "mitmdump", "mitmdump -s", "broker", "squid")
INJECTING = {"mitmdump -s", "broker", "squid"}


@dataclass(frozen=True)
class Workload:
    name: str
    kind: str  # loadgen's workload
    clients: int


WORKLOADS = (Workload("keep-alive x10", "https-keepalive", 10),
             Workload("new conn x4", "https-new-connection", 4),
             Workload("keep-alive x1", "https-keepalive", 1))


@dataclass
class Cell:
    """One peer under one workload, over the rounds."""

    rates: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)  # per answered request, per round
    latencies: list[float] = field(default_factory=list)
    rss_mb: float = float("nan")
    failures: list[str] = field(default_factory=list)

    def p(self, fraction: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


def one_run(peer: Peer, workload: Workload, target: Target, seconds: float, cell: Cell) -> None:
    before = group_cpu_seconds(peer.pid) if peer.pid else 0.0
    result = asyncio.run(run_load(workload.kind, peer.proxy, target, peer.ca_file,
                                  concurrency=workload.clients, seconds=seconds))
    bad = sum(n for status, n in result.statuses.items() if not 200 <= status < 300)
    if bad or result.errors or not result.requests:
        cell.failures.append(f"{result.requests} answered, {bad} not 2xx, "
                             f"{result.errors} errors")
        return
    cell.rates.append(result.rate)
    cell.latencies += result.latencies
    if peer.pid:
        cell.cpu_ms.append((group_cpu_seconds(peer.pid) - before) * 1000 / result.requests)
        rss = group_rss_kib(peer.pid) / 1024
        cell.rss_mb = rss if cell.rss_mb != cell.rss_mb else max(cell.rss_mb, rss)


def check_injection(peers: list[Peer], upstream: EchoServer, target: Target,
                    secret: str) -> None:
    """One request through each peer first: the injecting ones must deliver the secret."""
    for peer in peers:
        upstream.clear()
        status = asyncio.run(one_request(peer.proxy, target, peer.ca_file))
        seen = [request.header("Authorization") for request in upstream.requests]
        wanted = f"Bearer {secret}" if peer.name in INJECTING else f"Bearer {PLACEHOLDER}"
        if status != 200 or seen != [wanted]:
            raise SystemExit(f"{peer.name}: answered {status}, and the upstream did not "
                             f"receive the expected Authorization ({len(seen)} requests)")
    upstream.clear()


def rounds(peers: list[Peer], target: Target, upstream: EchoServer, count: int,
           seconds: float) -> dict[tuple[str, str], Cell]:
    cells = {(peer.name, w.name): Cell() for peer in peers for w in WORKLOADS}
    for number in range(count):
        order = peers[number % len(peers):] + peers[:number % len(peers)]
        for workload in WORKLOADS:
            line = []
            for peer in order:
                cell = cells[(peer.name, workload.name)]
                one_run(peer, workload, target, seconds, cell)
                upstream.clear()  # it keeps every request it answers
                line.append(f"{peer.name} {cell.rates[-1]:.0f}" if len(cell.rates) > number
                            else f"{peer.name} FAILED")
            print(f"round {number + 1} {workload.name:<15} req/s: {', '.join(line)}",
                  flush=True)
    return cells


def _ratio(cells: dict[tuple[str, str], Cell], a: str, b: str, workload: str,
           what: str) -> float:
    one, other = cells.get((a, workload)), cells.get((b, workload))
    if not one or not other:
        return float("nan")
    pairs = list(zip(getattr(one, what), getattr(other, what), strict=False))
    return statistics.median(x / y for x, y in pairs) if pairs else float("nan")


def report(cells: dict[tuple[str, str], Cell], peers: list[Peer], markdown: bool) -> None:
    names = [peer.name for peer in peers]
    header = (f"{'peer':<12} {'workload':<15} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'cpu ms/req':>10} {'RSS MB':>7}")
    rows = []
    for workload in WORKLOADS:
        for name in names:
            cell = cells[(name, workload.name)]
            rate = statistics.median(cell.rates) if cell.rates else float("nan")
            cpu = statistics.median(cell.cpu_ms) if cell.cpu_ms else float("nan")
            rows.append((name, workload.name, rate, cell.p(0.5), cell.p(0.99), cpu, cell.rss_mb))
    print(f"\n{header}\n{'-' * len(header)}")
    for name, label, rate, p50, p99, cpu, rss in rows:
        print(f"{name:<12} {label:<15} {rate:8.0f} {p50:8.2f} {p99:8.2f} {cpu:10.3f} "
              f"{rss:7.0f}")
    print()
    for base in ("mitmdump", "mitmdump -s", "squid"):
        if base not in names:
            continue
        for workload in WORKLOADS[:2]:
            print(f"broker / {base:<11} {workload.name:<15} throughput "
                  f"{_ratio(cells, 'broker', base, workload.name, 'rates'):5.2f}x   "
                  f"cpu per request "
                  f"{_ratio(cells, 'broker', base, workload.name, 'cpu_ms'):5.2f}x")
    single = WORKLOADS[2].name
    direct = cells[("direct", single)].p(0.5)
    added = ", ".join(f"{name} {cells[(name, single)].p(0.5) - direct:+.2f} ms"
                      for name in names if name != "direct")
    print(f"added p50 over direct, {single}: {added}")
    if markdown:
        print("\n| peer | workload | req/s | p50 ms | p99 ms | CPU ms/request | RSS MB |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for name, label, rate, p50, p99, cpu, rss in rows:
            cpu_text = "-" if cpu != cpu else f"{cpu:.3f}"  # NaN: direct has no proxy
            rss_text = "-" if rss != rss else f"{rss:.0f}"
            print(f"| {name} | {label} | {rate:.0f} | {p50:.2f} | {p99:.2f} | {cpu_text} | "
                  f"{rss_text} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0,
                        help="per peer, workload and round (default 4)")
    parser.add_argument("--secrets", type=int, default=1000)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--grants", type=int, default=10_000)
    parser.add_argument("--peers", default=",".join(PEERS),
                        help="comma-separated subset of: " + ", ".join(PEERS))
    parser.add_argument("--markdown", action="store_true", help="the table in Markdown too")
    smoke.add_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.seconds, args.secrets, args.agents, args.grants = 1, 0.2, 10, 3, 10
    wanted = args.peers.split(",")
    if set(wanted) - set(PEERS) or "direct" not in wanted:
        parser.error(f"--peers takes direct and any of: {', '.join(PEERS[1:])}")
    secret = "bench-" + secrets.token_urlsafe(24)
    env = dict(os.environ, BENCH_SECRET=secret,
               BROKER_PROXY_MASTER_KEY=base64.urlsafe_b64encode(os.urandom(32)).decode(),
               PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring")
    for index in range(args.secrets):
        env[f"BENCH_SECRET_{index}"] = secrets.token_urlsafe(16)
    print(f"{os.cpu_count()} CPUs, {platform.python_implementation()} "
          f"{platform.python_version()}, load average {os.getloadavg()[0]:.2f}; "
          f"{args.rounds} rounds of {args.seconds:g} s per peer and workload", flush=True)
    if "squid" in wanted and (why := squid_missing()):
        print(f"squid: skipped, {why}", flush=True)
        wanted.remove("squid")
    with tempfile.TemporaryDirectory(prefix="broker-peers-") as scratch, ExitStack() as stack:
        root = Path(scratch)
        # Squid started as root runs as the proxy user: it must reach its folder in here.
        os.chmod(root, 0o755)  # noqa: S103 (what is private below has its own 0700 folder)
        pki = write_pki(root / "pki", [HOST], ["127.0.0.1"])
        upstream = stack.enter_context(EchoServer(pki.cert_path, pki.key_path,
                                                  reply=small_reply))
        target = Target(HOST, upstream.port, "/v1/items",
                        (("Authorization", f"Bearer {PLACEHOLDER}"),))
        peers = [Peer("direct", None, str(pki.ca_cert_path), None)]
        for name, script in (("mitmdump", None), ("mitmdump -s", HERE / "minimal_inject.py")):
            if name in wanted:
                peers.append(stack.enter_context(mitmdump(name, root, pki.ca_cert_path, env,
                                                          script)))
        if "broker" in wanted:
            home = Home(root / "broker-home").ensure()
            policy_file = root / "policy.yaml"
            policy_file.write_text(broker_policy(upstream.port, 0, args.secrets, args.agents))
            token = issue_bench_grants(home, policy_file, args.grants)
            proxy = stack.enter_context(ProxyProcess(home.root, policy_file,
                                                     upstream_ca=pki.ca_cert_path, env=env,
                                                     log_path=root / "broker.log"))
            assert proxy.process is not None
            peers.append(Peer("broker", ProxySpec(proxy.host, proxy.port, "bench-agent", token),
                              str(proxy.ca_path), proxy.process.pid))
            print(f"broker: {args.secrets} secrets, {args.agents} agents, {args.grants} grants",
                  flush=True)
        if "squid" in wanted:
            peers.append(stack.enter_context(squid(root, pki.ca_cert_path, secret)))
            print(f"squid: {squid_version()}", flush=True)
        check_injection(peers, upstream, target, secret)
        cells = rounds(peers, target, upstream, args.rounds, args.seconds)
    report(cells, peers, args.markdown)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    failed = {key: cell.failures for key, cell in cells.items() if cell.failures}
    for (name, workload), failures in failed.items():
        print(f"broken: {name} {workload}: {'; '.join(failures)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
