"""Large policies: `policy check` time, reload time and request latency during a reload.

    .venv/bin/python benchmarks/policy_scale_bench.py [--sizes 1000 100000] [--rounds 2]
        [--probes 40] [--timeout 180] [--parts check reload start-up]

Policies are the end-to-end tests' policy plus filler secrets (tests/policy_scale.py: a vault
source, one destination with methods and a path glob each, ten filler agents).

  policy check   `broker-proxy policy check FILE` as a separate process: wall and CPU seconds
  reload         against one running `broker-proxy run`: from the file written (write, rename)
                 to its digest in /readyz, i.e. the new policy in force
  probes         HTTPS requests through the proxy with a placeholder swapped, one after
                 another: p50/p99 idle, and while the largest policy reloads
  start-up       `broker-proxy run` started on the largest policy: until it listens, and its RSS

Sizes are interleaved round by round (the machine is shared: compare within one run) and the
load average is printed with the figures. Each reload writes a distinct file (a comment with the
round) so every round really reloads; the proxy's RSS closes.
To compare with another checkout, run this script with PYTHONPATH=that/checkout: the proxy and
`policy check` run in child processes and take the code from there.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import requests

from benchmarks import smoke
from benchmarks.proc_stats import memory_kib
from broker_proxy.devtools.echo_server import EchoServer
from broker_proxy.devtools.local_pki import LocalPki, write_pki
from broker_proxy.devtools.proxy_process import ProxyProcess
from broker_proxy.home import Home
from tests.conftest import API_HOST, E2E_POLICY, HOSTS, Stack, Upstreams, start_stack
from tests.policy_scale import standalone, with_filler

API_AUTH = {"Authorization": "Bearer {{secret:api_key}}"}
PARTS = ("check", "reload", "start-up")


def load_average() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def check_time(path: Path) -> tuple[float, float, bool]:
    """Wall and CPU seconds of `broker-proxy policy check`, and whether it said ok."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "broker_proxy.cli", "policy", "check",
                           str(path)], capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.returncode == 0 and ": ok (" in done.stdout


def base_policy(stack: Stack) -> str:
    ups = stack.upstreams
    return E2E_POLICY.format(
        api=API_HOST, api_port=ups.api.port, plain_port=ups.plain.port, other="other.test",
        other_port=ups.other.port, egress="egress.test", untrusted="untrusted.test",
        untrusted_port=ups.untrusted.port)


def digest_in_force(stack: Stack) -> str | None:
    try:
        ready = requests.get(stack.proxy.admin_url + "/readyz", timeout=30)
        digest: str | None = ready.json()["checks"]["policy"]["digest"]  # /readyz's JSON
        return digest
    except (requests.RequestException, ValueError, KeyError):
        return None


class Prober:
    def __init__(self, stack: Stack, token: str) -> None:
        self.proxy = stack.proxy.proxy_url(token, "bot")
        self.url = stack.url(stack.upstreams.api, API_HOST, "/v1/probe")
        self.ca = str(stack.proxy.ca_path)
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def probe(self) -> None:
        started = time.perf_counter()
        try:
            ok = requests.get(self.url, headers=API_AUTH, timeout=60, verify=self.ca,
                              proxies={"https": self.proxy}).status_code == 200
        except requests.RequestException:
            ok = False
        self.latencies.append(time.perf_counter() - started)
        self.failures += not ok

    def start(self) -> None:
        def run() -> None:
            while not self._stop.is_set():
                self.probe()
                time.sleep(0.02)
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)

    def summary(self) -> str:
        if not self.latencies:
            return "no probes"
        ordered = sorted(self.latencies)
        p99 = ordered[max(0, int(len(ordered) * 0.99) - 1)]
        return (f"p50 {statistics.median(ordered) * 1000:7.1f} ms  p99 {p99 * 1000:7.1f} ms  "
                f"max {ordered[-1] * 1000:7.1f} ms  ({len(ordered)} probes, "
                f"{self.failures} failed)")


def reload_time(stack: Stack, text: str, timeout: float) -> float | None:
    staging = stack.policy_file.with_suffix(".tmp")
    staging.write_text(text)
    digest = hashlib.sha256(text.encode()).hexdigest()
    started = time.perf_counter()
    staging.replace(stack.policy_file)
    while time.perf_counter() - started < timeout:
        if digest_in_force(stack) == digest:
            return time.perf_counter() - started
        time.sleep(0.05)
    return None


def start_up(root: Path, pki: LocalPki, policy: str, timeout: float) -> str:
    """Start `broker-proxy run` on ``policy``: seconds until it listens, and its RSS then."""
    home = Home(root / "home").ensure()
    policy_file = root / "policy.yaml"
    policy_file.write_text(policy)
    proxy = ProxyProcess(home.root, policy_file, upstream_ca=pki.ca_cert_path,
                         log_path=root / "proxy.log")
    started = time.perf_counter()
    proxy.start(timeout=timeout)
    took = time.perf_counter() - started
    try:
        pid = proxy.process.pid  # type: ignore[union-attr]
        return (f"{took:6.2f} s to listen, RSS {memory_kib(pid, 'VmRSS') / 1024:.0f} MiB "
                f"(peak {memory_kib(pid, 'VmHWM') / 1024:.0f} MiB)")
    finally:
        proxy.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--probes", type=int, default=40, help="idle probes")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="seconds a reload may take before it counts as not done")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="what to measure (default: all)")
    smoke.add_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.rounds, args.probes, args.timeout = [10, 50], 1, 3, 60.0
    print(f"policy scale: sizes {args.sizes}, {args.rounds} rounds, load average "
          f"{load_average()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = {}
        for size in args.sizes:
            files[size] = root / f"policy-{size}.yaml"
            files[size].write_text(standalone(size))
        checks: dict[int, list[tuple[float, float]]] = {size: [] for size in args.sizes}
        for _ in range(args.rounds if "check" in args.parts else 0):
            for size in args.sizes:
                wall, cpu, ok = check_time(files[size])
                if not ok:
                    sys.exit(f"policy check of {size} secrets failed")
                checks[size].append((wall, cpu))
        for size in args.sizes if "check" in args.parts else ():
            walls = [wall for wall, _ in checks[size]]
            cpus = [cpu for _, cpu in checks[size]]
            print(f"policy check {size:>7,} secrets ({files[size].stat().st_size / 2**20:5.1f} "
                  f"MiB): wall {min(walls):6.2f}-{max(walls):6.2f} s, CPU {min(cpus):6.2f}-"
                  f"{max(cpus):6.2f} s   (load average {load_average()})")

        pki = write_pki(root / "pki", list(HOSTS))
        servers = [EchoServer(pki.cert_path, pki.key_path).start() for _ in range(5)]
        plain = EchoServer().start()
        upstreams = Upstreams(api=servers[0], other=servers[1], evil=servers[2],
                              egress=servers[3], plain=plain, untrusted=servers[4])
        stack = start_stack(root / "stack", pki, upstreams)
        try:
            token = stack.issue("api_key").token
            idle = Prober(stack, token)
            for _ in range(args.probes):
                idle.probe()
            print(f"probes idle                        : {idle.summary()}")
            base = base_policy(stack)
            largest = max(args.sizes)
            times: dict[int, list[float | None]] = {size: [] for size in args.sizes}
            during: list[Prober] = []  # one per round, probing while the largest reloads
            for round_number in range(args.rounds if "reload" in args.parts else 0):
                for size in args.sizes:
                    text = with_filler(base, size) + f"# round {round_number}\n"
                    if size == largest:
                        during.append(Prober(stack, token))
                        during[-1].start()
                    times[size].append(reload_time(stack, text, args.timeout))
                    if size == largest:
                        during[-1].stop()
            for size in args.sizes if "reload" in args.parts else ():
                done = [value for value in times[size] if value is not None]
                shown = (f"{min(done):6.2f}-{max(done):6.2f} s" if done else "never")
                missed = len(times[size]) - len(done)
                print(f"reload {size:>7,} secrets (written -> in force): {shown}"
                      + (f", {missed} not in force after {args.timeout:.0f} s" if missed
                         else "") + f"   (load average {load_average()})")
            for number, prober in enumerate(during, 1):
                print(f"probes during the {largest:,} reload, round {number}: "
                      f"{prober.summary()}")
            assert stack.proxy.process is not None
            pid = stack.proxy.process.pid
            print(f"proxy RSS after the reloads {memory_kib(pid, 'VmRSS') / 1024:.0f} MiB, peak "
                  f"(VmHWM) {memory_kib(pid, 'VmHWM') / 1024:.0f} MiB")
            if "start-up" in args.parts:
                started = start_up(root / "start-up", pki, with_filler(base, largest),
                                   args.timeout)
                print(f"start-up on {largest:,} secrets: {started}   (load average "
                      f"{load_average()})")
        finally:
            stack.proxy.stop()
            for server in [*servers, plain]:
                server.stop()


if __name__ == "__main__":
    main()
