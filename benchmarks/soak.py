"""Memory over a long run: does the broker's RSS stay flat as finished flows pile up?

Drives `broker-proxy run` with HTTPS keep-alive requests that carry a secret (injection,
scrubbing and audit on) until --requests have been answered, and prints the proxy's RSS every
10% of the way. Flat means: no growth with the number of finished flows.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.loadgen import ProxySpec, Target, run_load
from benchmarks.proc_stats import memory_kib
from benchmarks.run import PLACEHOLDER, broker_policy, small_reply
from broker_proxy.devtools.echo_server import EchoServer
from broker_proxy.devtools.local_pki import write_pki
from broker_proxy.devtools.proxy_process import ProxyProcess
from broker_proxy.grants.issuer import issue_grant
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.home import Home
from broker_proxy.policy.loader import load_policy
from broker_proxy.time_source import utc_now


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
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
                        concurrency=args.concurrency, seconds=2.0))
                    before = done
                    done += result.requests
                    if done // step != before // step or done >= args.requests:
                        rss = memory_kib(pid, "VmRSS") / 1024
                        print(f"{done:9d} {rss:8.1f} {result.rate:7.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
