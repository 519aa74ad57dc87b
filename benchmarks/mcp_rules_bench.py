"""What MCP rules add to a decision: a `tools/call` decided for a destination with `mcp:` rules
and for the same destination without them, in one process, one run (issue 26: under 0.3 ms p50).

The decision path only (grant store in memory, audit writes left out, as core_bench's `match`):
the rules are read where the broker reads them, so the difference is their whole cost. Also a
GraphQL query against `graphql:` rules, and a request without any rules on a policy that has
them elsewhere (what flows without rules pay).

    .venv/bin/python benchmarks/mcp_rules_bench.py [--rounds N] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.core_bench import MemoryGrantStore, NullAudit
from broker_proxy.decision.active_policy import ActivePolicy
from broker_proxy.decision.broker import Broker
from broker_proxy.grants.issuer import issue_grant
from broker_proxy.home import Home
from broker_proxy.metrics import BrokerMetrics
from broker_proxy.policy.loader import load_policy_text
from broker_proxy.request.outbound import Allowed, OutboundRequest
from broker_proxy.secrets.backends import SecretResolver
from broker_proxy.time_source import utc_now

POLICY = """\
version: 1
secrets:
  plain:
    from: env:MCP_BENCH_VALUE
    placeholder: "plain-PLACEHOLDER-000000000000"
    destinations: [{host: plain.example.com, paths: [/mcp]}]
  ruled:
    from: env:MCP_BENCH_VALUE
    placeholder: "ruled-PLACEHOLDER-000000000000"
    destinations:
      - host: ruled.example.com
        paths: [/mcp]
        mcp:
          tools: {allow: ["list_*", "get_*", "search_*", add_comment], deny: ["*delete*"]}
          methods: {deny: ["sampling/*"]}
  graph:
    from: env:MCP_BENCH_VALUE
    placeholder: "graph-PLACEHOLDER-000000000000"
    destinations:
      - host: graph.example.com
        paths: [/graphql]
        graphql: {operations: [query], fields: {deny: [viewer]}}
agents:
  bot: {secrets: [plain, ruled, graph]}
"""
CALL = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
    "name": "get_issue", "arguments": {"owner": "acme", "repo": "app", "number": 1234}}}).encode()
QUERY = json.dumps({"query": "query Issues { repository(owner: \"acme\", name: \"app\") { "
                             "issues(first: 20) { nodes { title number } } } }",
                    "operationName": "Issues"}).encode()


def request(host: str, secret: str, body: bytes, path: str = "/mcp",
            extra: tuple[tuple[str, str], ...] = ()) -> OutboundRequest:
    headers = (("Host", host), ("Authorization", f"Bearer {secret}-PLACEHOLDER-000000000000"),
               ("Content-Type", "application/json"),
               ("Accept", "application/json, text/event-stream"), *extra)
    return OutboundRequest("POST", "https", host, 443, path, "", headers, body,
                           host_header=host, sni=host)


def timings(broker: Broker, token: str, outbound: OutboundRequest, rounds: int) -> list[float]:
    first = broker.decide(token, outbound)
    if not isinstance(first, Allowed):
        raise SystemExit(f"the benchmark's request was refused: {first}")
    found = []
    for _ in range(rounds):
        started = time.perf_counter()
        broker.decide(token, outbound)
        found.append((time.perf_counter() - started) * 1000)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20000, help="decisions per case")
    parser.add_argument("--smoke", action="store_true",
                        help="a few hundred decisions: the script runs, figures not judged")
    args = parser.parse_args()
    if args.smoke:
        args.rounds = 300
    os.environ.setdefault("MCP_BENCH_VALUE", "bench-value-" + "x" * 24)
    with tempfile.TemporaryDirectory() as scratch:
        home = Home(Path(scratch) / "home").ensure()
        policy = load_policy_text(POLICY, "bench.yaml")
        store = MemoryGrantStore(home.grants_db)
        token = issue_grant(policy, store, agent="bot", task="bench",
                            secrets=["plain", "ruled", "graph"], ttl=None, max_uses=None,
                            now=utc_now()).token
        broker = Broker(policy=ActivePolicy.build(policy), grants=store,
                        secrets=SecretResolver(home), audit=NullAudit.beside(home),
                        metrics=BrokerMetrics())
        headers = (("Mcp-Method", "tools/call"), ("Mcp-Name", "get_issue"))
        cases = {
            "tools/call, no rules": request("plain.example.com", "plain", CALL, extra=headers),
            "tools/call, mcp rules": request("ruled.example.com", "ruled", CALL, extra=headers),
            "graphql query, graphql rules": request("graph.example.com", "graph", QUERY,
                                                    "/graphql"),
        }
        results = {}
        for _ in range(2):  # interleaved twice: the second pass is the one reported
            for name, outbound in cases.items():
                results[name] = timings(broker, token, outbound, args.rounds)
        print(f"{'case':32} {'p50 ms':>8} {'p99 ms':>8}")
        for name, found in results.items():
            cuts = statistics.quantiles(found, n=100)
            print(f"{name:32} {statistics.median(found):8.4f} {cuts[98]:8.4f}")
        added = (statistics.median(results["tools/call, mcp rules"])
                 - statistics.median(results["tools/call, no rules"]))
        print(f"MCP rules add {added:.4f} ms p50 to a tools/call decision (target < 0.3 ms)")
        return 0 if added < 0.3 or args.smoke else 1


if __name__ == "__main__":
    raise SystemExit(main())
