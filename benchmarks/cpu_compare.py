"""CPU per request on https-keepalive: this checkout against an older revision, in one run.

    .venv/bin/python benchmarks/cpu_compare.py [--before REV | --checkout DIR] [--after REV]
        [--rounds 6] [--seconds 4] [--grants 1000]

Scrubbing every answer on a grant's connections (not only those whose request injected a
value) must not make the common request dearer. ``--before`` defaults to the commit just before
that change (the parent of the commit that added ``grant_scrub.py``); its tree is exported with
``git archive`` into a temporary directory (the repository is not touched) and run with this
virtualenv's packages, its own modules first (``PYTHONPATH``, ``PYTHONSAFEPATH``). ``--checkout``
runs an existing tree instead. ``--after REV`` runs that revision in place of this checkout, so
one change can be measured alone (``--before X^ --after Y``, X..Y being the change).

Both proxies run at once, each with the same policy (1,000 secrets, 100 agents; ``run.py``'s),
``--grants`` active grants and the same local HTTPS upstream. Rounds alternate: each round
drives one proxy, then the other (the order turns), with 10 keep-alive clients for ``--seconds``
each. The figure is the proxy process's own CPU time per answered request, not wall time, so
other work on a shared machine moves it less. Prints each round, the medians, and the ratio
(median of the per-round ratios: a round's two runs were side by side).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import smoke
from benchmarks.loadgen import ProxySpec, Target, run_load
from benchmarks.proc_stats import cpu_seconds
from benchmarks.run import PLACEHOLDER, broker_policy, small_reply
from broker_proxy.devtools.echo_server import EchoServer
from broker_proxy.devtools.local_pki import write_pki
from broker_proxy.devtools.proxy_process import ProxyProcess

HERE = Path(__file__).resolve().parent.parent
HOST = "localhost"
# Run under the checkout's own modules: issue the grants with its store and issuer, so the
# database is the schema that checkout reads. Prints the bench agent's token.
_PREPARE = """
import sys
from pathlib import Path
from broker_proxy.grants.issuer import issue_grant
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.home import Home
from broker_proxy.policy.loader import load_policy
from broker_proxy.time_source import utc_now
home, policy_file, count = Home(Path(sys.argv[1])).ensure(), Path(sys.argv[2]), int(sys.argv[3])
policy = load_policy(policy_file)
store = SqliteGrantStore(home.grants_db)
now = utc_now()
agents = sorted(name for name in policy.agents if name != "bench-agent")
for index in range(count - 1):
    agent = agents[index % len(agents)]
    issue_grant(policy, store, agent=agent, task=f"background task {index}",
                secrets=sorted(policy.agents[agent].secrets)[:2], ttl=None, max_uses=None,
                now=now)
grant = issue_grant(policy, store, agent="bench-agent", task="benchmark", secrets=["bench"],
                    ttl=policy.agents["bench-agent"].max_ttl, max_uses=None, now=now)
store.close()
import broker_proxy
try:
    import broker_proxy.addons as addons
except ImportError:  # before the layout that installs addons/ as broker_proxy.addons
    import addons  # type: ignore[no-redef]
sources = {Path(m.__file__).resolve().parent.parent for m in (broker_proxy, addons)}
print(*sources, grant.token)
"""


def _in_git() -> bool:
    """Whether this checkout is a git work tree with a commit (a CI copy may be neither)."""
    try:
        return subprocess.run(["git", "-C", str(HERE), "rev-parse", "--verify", "HEAD"],
                              capture_output=True).returncode == 0
    except OSError:  # no git
        return False


def before_revision() -> str:
    """The parent of the commit that added grant_scrub.py (scrub every grant answer)."""
    added = subprocess.run(
        ["git", "-C", str(HERE), "log", "--diff-filter=A", "--format=%H", "--",
         "broker_proxy/grant_scrub.py", "broker_proxy/scrubbing/grant_scrub.py"],
        check=True, capture_output=True, text=True).stdout.split()
    if not added:
        raise SystemExit("cannot find the commit that added grant_scrub.py; pass --before")
    return added[-1] + "^"


def export(revision: str, into: Path) -> str:
    """The tree of ``revision`` under ``into``; returns its short commit id."""
    sha = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", revision], check=True,
                         capture_output=True, text=True).stdout.strip()
    into.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(HERE), "archive", sha], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise SystemExit(f"git archive {sha} failed")
    # A tree that installs addons/ as broker_proxy.addons: without this link this virtualenv's
    # editable install would serve that package from this checkout instead.
    if (into / "addons").is_dir() and not (into / "broker_proxy" / "addons").exists():
        (into / "broker_proxy" / "addons").symlink_to("../addons")
    return sha


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="git revision to compare with (default: see above)")
    parser.add_argument("--checkout", help="an existing source tree to compare with instead")
    parser.add_argument("--after", help="git revision to run instead of this checkout (to "
                        "isolate one change: --before A^ --after B)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--grants", type=int, default=1000)
    smoke.add_flag(parser)
    args = parser.parse_args()
    secret_count, agent_count, warmup = 1000, 100, 1.0
    if args.smoke:  # this checkout against its own last commit (or itself, outside git)
        args.rounds, args.seconds, args.grants = 1, 0.2, 10
        secret_count, agent_count, warmup = 10, 3, 0.1
        if not (args.before or args.checkout):
            args.before, args.checkout = ("HEAD", None) if _in_git() else (None, str(HERE))
    base_env = dict(os.environ, BENCH_SECRET="bench-" + secrets.token_urlsafe(24),
                    BROKER_PROXY_MASTER_KEY=base64.urlsafe_b64encode(os.urandom(32)).decode(),
                    PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring")
    for index in range(1000):
        base_env[f"BENCH_SECRET_{index}"] = secrets.token_urlsafe(16)
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="cpu-compare-") as scratch:
        root = Path(scratch)
        if args.checkout:
            old_tree, old_name = Path(args.checkout).resolve(), f"checkout {args.checkout}"
        else:
            revision = args.before or before_revision()
            old_tree = root / "before"
            old_name = f"before ({export(revision, old_tree)})"
        new_tree: Path | None = None
        new_name = "this checkout"
        if args.after:
            new_tree = root / "after"
            new_name = f"after ({export(args.after, new_tree)})"
        trees = {new_name: new_tree, old_name: old_tree}
        pki = write_pki(root / "pki", [HOST], ["127.0.0.1"])
        with EchoServer(pki.cert_path, pki.key_path, reply=small_reply) as upstream:
            policy_file = root / "policy.yaml"
            policy_file.write_text(broker_policy(upstream.port, 0, secret_count, agent_count))
            target = Target(HOST, upstream.port, "/v1/items",
                            (("Authorization", f"Bearer {PLACEHOLDER}"),))
            proxies: dict[str, tuple[ProxyProcess, ProxySpec]] = {}
            try:
                for index, (name, tree) in enumerate(trees.items()):
                    env = dict(base_env)
                    if tree is not None:  # its modules first, not the current directory's
                        env |= {"PYTHONPATH": str(tree), "PYTHONSAFEPATH": "1"}
                    home = root / f"home-{index}"
                    *sources, token = subprocess.run(
                        [sys.executable, "-c", _PREPARE, str(home), str(policy_file),
                         str(args.grants)], env=env, check=True, capture_output=True,
                        text=True, cwd=root).stdout.split()
                    # The proxy starts with the same environment, so it imports the same tree.
                    if {Path(source) for source in sources} != {tree or HERE}:
                        raise SystemExit(f"{name} would run the modules in {sources}")
                    proxy = ProxyProcess(home, policy_file, upstream_ca=pki.ca_cert_path,
                                         env=env, log_path=root / f"proxy-{index}.log")
                    proxy.start()
                    proxies[name] = (proxy, ProxySpec(proxy.host, proxy.port, "bench-agent",
                                                      token))
                results = _rounds(proxies, target, args.rounds, args.seconds, warmup)
            finally:
                for proxy, _ in proxies.values():
                    proxy.stop()
    new, old = results.values()
    for name, runs in results.items():
        print(f"{name:24s}: CPU {statistics.median(runs):.3f} ms/request "
              f"({min(runs):.3f}-{max(runs):.3f}, {len(runs)} rounds)")
    ratio = statistics.median(a / b for a, b in zip(new, old, strict=True))
    print(f"CPU per request, {new_name} / {old_name}: {ratio:.2f}x "
          f"(median of per-round ratios); load average at the end: {os.getloadavg()[0]:.2f}")


def _rounds(proxies: dict[str, tuple[ProxyProcess, ProxySpec]], target: Target, rounds: int,
            seconds: float, warmup: float) -> dict[str, list[float]]:
    names = list(proxies)
    results: dict[str, list[float]] = {name: [] for name in names}
    ca = {name: str(proxy.ca_path) for name, (proxy, _) in proxies.items()}
    for name in names:  # warm up: connections, caches, the first compile of a secret
        asyncio.run(run_load("https-keepalive", proxies[name][1], target, ca[name],
                             concurrency=10, seconds=warmup))
    for r in range(rounds):
        line = []
        for name in names[r % 2:] + names[:r % 2]:
            proxy, spec = proxies[name]
            assert proxy.process is not None
            before = cpu_seconds(proxy.process.pid)
            result = asyncio.run(run_load("https-keepalive", spec, target, ca[name],
                                          concurrency=10, seconds=seconds))
            bad = sum(n for status, n in result.statuses.items() if not 200 <= status < 300)
            if bad or result.errors or not result.requests:
                raise SystemExit(f"{name}: {bad} non-2xx answers, {result.errors} errors, "
                                 f"{result.requests} requests: {proxy.log_tail()}")
            per_request = (cpu_seconds(proxy.process.pid) - before) * 1000 / result.requests
            results[name].append(per_request)
            line.append(f"{name} {per_request:.3f} ms/req ({result.rate:.0f} req/s)")
        print(f"round {r + 1}: " + ", ".join(line), flush=True)
    return results


if __name__ == "__main__":
    main()
