"""`scale_bench.py --part listing`: listing a big grant store page by page, and what it costs.

For each store (SQLite, Redis), --grants grants (default 1,000,000; the mix of
grant_scale_bench.mixed_grants) are loaded, `broker-proxy run --store ...` is started, and:

  API walk     GET /v1/grants?limit=PAGE, then ?after=<X-Next-Cursor> to the end: seconds per
               page (p50, max), the whole walk, and the proxy's RSS before and after (VmRSS)
               and its peak (VmHWM)
  probes       secret-carrying requests through the proxy every 0.1 s during the walk (p50,
               max): what listing does to traffic
  deep pages   one page at a cursor near the end (after=), and the old ?offset=N-PAGE
  CLI          `broker-proxy grant list --json > file`: seconds and peak RSS

Redis runs as a private redis-server (nothing on disk), never the system's Redis.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import smoke
from benchmarks.grant_scale_bench import HOST, PLACEHOLDER, mixed_grants, policy_text, small_reply
from benchmarks.proc_stats import memory_kib
from broker_proxy.devtools.echo_server import EchoServer
from broker_proxy.devtools.local_pki import write_pki
from broker_proxy.devtools.proxy_process import ProxyProcess
from broker_proxy.devtools.redis_server import RedisServer
from broker_proxy.grants.issuer import issue_grant
from broker_proxy.grants.redis_store import RedisGrantStore
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.home import Home
from broker_proxy.policy.loader import load_policy
from broker_proxy.time_source import utc_now


def _mb(pid: int, field: str) -> float:
    return memory_kib(pid, field) / 1024


def _fill(url: str, size: int, policy_file: Path) -> str:
    """Load `size` grants; the token of the benchmark's own grant (the probes')."""
    started = time.monotonic()
    opened = (SqliteGrantStore(url.removeprefix("sqlite:///")) if url.startswith("sqlite")
              else RedisGrantStore(url))
    with opened:
        now = utc_now()
        # Small batches: one pipeline's reply must come within Redis's 0.5 s command timeout
        # on a loaded machine.
        opened.load_many(mixed_grants(size - 1, now), batch=1000)
        issued = issue_grant(load_policy(policy_file), opened, agent="bench-agent",
                             task="listing benchmark", secrets=["bench"],
                             ttl=timedelta(hours=2), max_uses=None, now=now)
    print(f"  filled {size:,} grants in {time.monotonic() - started:.1f} s", flush=True)
    return issued.token


class Probes:
    """Secret-carrying requests through the proxy, one every 0.1 s, while a walk runs."""

    def __init__(self, proxy: ProxyProcess, token: str, port: int) -> None:
        self._session = requests.Session()
        self._session.trust_env = False  # NO_PROXY=localhost would send the probes direct
        self._session.proxies = {"https": proxy.proxy_url(token, "bench-agent")}
        self._session.verify = str(proxy.ca_path)
        self._url = f"https://{HOST}:{port}/v1/items"
        self.timings: list[float] = []
        self.failures = 0
        self.statuses: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Probes:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                status = self._session.get(self._url, timeout=60, headers={
                    "Authorization": f"Bearer {PLACEHOLDER}"}).status_code
            except requests.RequestException:
                status = -1
            self.timings.append(time.monotonic() - started)
            self.failures += status != 200
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self._stop.wait(0.1)


def _walk(admin: str, headers: dict[str, str], page: int) -> tuple[list[float], int, str, int]:
    """Seconds per page, grants seen, a cursor from near the end, and pages answered 503 (the
    store timed out: tried again after the circuit's second)."""
    times: list[float] = []
    seen, cursor, late_cursor, refused = 0, None, "", 0
    while True:
        started = time.monotonic()
        params: dict[str, str | int] = {"limit": page}
        if cursor:
            params["after"] = cursor
        answer = requests.get(f"{admin}/v1/grants", headers=headers, timeout=600, params=params)
        times.append(time.monotonic() - started)
        if answer.status_code == 503 and refused < 20:
            refused += 1
            time.sleep(1.1)
            continue
        answer.raise_for_status()
        seen += len(answer.json())
        cursor = answer.headers.get("X-Next-Cursor")
        if cursor is None:
            return times, seen, late_cursor, refused
        late_cursor = cursor


def _timed_get(admin: str, headers: dict[str, str], params: dict[str, str | int]) -> float:
    started = time.monotonic()
    requests.get(f"{admin}/v1/grants", headers=headers, params=params,
                 timeout=600).raise_for_status()
    return time.monotonic() - started


def _cli(home: Path, url: str, env: dict[str, str], out: Path) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of `grant list --json`, VmHWM read until it exits."""
    started = time.monotonic()
    with out.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "broker_proxy.cli", "--home", str(home), "grant", "list",
             "--json", "--store", url], stdout=sink, stderr=subprocess.DEVNULL, env=env)
        peak = 0.0
        while process.poll() is None:
            with contextlib.suppress(OSError, LookupError):
                peak = max(peak, _mb(process.pid, "VmHWM"))
            time.sleep(0.01)
    if process.returncode:
        raise SystemExit(f"grant list exited with {process.returncode}")
    return time.monotonic() - started, peak


def measure(backend: str, url: str, size: int, root: Path, pki_ca: Path, policy_file: Path,
            upstream_port: int, env: dict[str, str], page: int) -> None:
    token = _fill(url, size, policy_file)
    home = Home(root / f"home-{backend}").ensure()
    proxy = ProxyProcess(home.root, policy_file, upstream_ca=pki_ca, env=env,
                         extra_args=["--store", url], log_path=root / f"proxy-{backend}.log")
    proxy.start(timeout=300)
    assert proxy.process is not None
    pid = proxy.process.pid
    try:
        admin = proxy.admin_url
        headers = {"Authorization": f"Bearer {home.admin_token.read_text().strip()}"}
        time.sleep(2)
        rss_before = _mb(pid, "VmRSS")
        with Probes(proxy, token, upstream_port) as probes:
            started = time.monotonic()
            times, seen, late_cursor, refused = _walk(admin, headers, page)
            walk_s = time.monotonic() - started
        rss_after, peak = _mb(pid, "VmRSS"), _mb(pid, "VmHWM")
        deep = _timed_get(admin, headers, {"limit": page, "after": late_cursor})
        offset = _timed_get(admin, headers, {"limit": page, "offset": max(0, size - page)})
        rss_offset = _mb(pid, "VmHWM")
        cli_s, cli_peak = _cli(home.root, url, env, root / f"list-{backend}.json")
        p = probes.timings
        print(f"{backend:<6} {seen:>9,} grants, pages of {page}: {len(times)} pages, "
              f"per page p50 {statistics.median(times) * 1000:.0f} ms, "
              f"max {max(times) * 1000:.0f} ms, whole walk {walk_s:.1f} s, {refused} answered 503")
        print(f"       proxy RSS {rss_before:.0f} -> {rss_after:.0f} MB during the walk "
              f"(peak {peak:.0f} MB); page near the end (after=) {deep * 1000:.0f} ms; "
              f"?offset={max(0, size - page):,} {offset:.2f} s (peak after it "
              f"{rss_offset:.0f} MB)")
        print(f"       secret-carrying probes during the walk: {len(p)}, p50 "
              f"{statistics.median(p) * 1000:.0f} ms, max {max(p) * 1000:.0f} ms, "
              f"{probes.failures} not 200 {probes.statuses}")
        print(f"       grant list --json: {cli_s:.1f} s, peak RSS {cli_peak:.0f} MB", flush=True)
    finally:
        proxy.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grants", type=int, default=1_000_000)
    parser.add_argument("--stores", default="sqlite,redis", help="sqlite, redis or both")
    parser.add_argument("--page", type=int, default=1000, help="grants per API page")
    smoke.add_flag(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.grants, args.page = 300, 100
    backends = [name for name in args.stores.split(",") if name]
    if set(backends) - {"sqlite", "redis"}:
        parser.error("--stores takes sqlite and/or redis")
    env = dict(os.environ, BENCH_SECRET="bench-" + secrets.token_urlsafe(24),
               BROKER_PROXY_MASTER_KEY=base64.urlsafe_b64encode(os.urandom(32)).decode(),
               PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring")
    print(f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory(prefix="broker-listing-") as scratch:
        root = Path(scratch)
        pki = write_pki(root / "pki", [HOST], ["127.0.0.1"])
        with EchoServer(pki.cert_path, pki.key_path, reply=small_reply) as upstream:
            policy_file = root / "policy.yaml"
            policy_file.write_text(policy_text(upstream.port))
            for backend in backends:
                if backend == "sqlite":
                    measure(backend, f"sqlite:///{root / 'grants.sqlite3'}", args.grants, root,
                            pki.ca_cert_path, policy_file, upstream.port, env, args.page)
                    continue
                with RedisServer(root / "redis") as redis:
                    measure(backend, redis.url, args.grants, root, pki.ca_cert_path,
                            policy_file, upstream.port, env, args.page)
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
