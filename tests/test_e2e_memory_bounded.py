"""A long-running proxy's memory stays bounded by the traffic in flight, not the traffic served.

Drives a real `broker-proxy run` with a new tunnel per request, a kept-alive tunnel, requests
that carry a placeholder (injected, echoed back, scrubbed), requests without and refused ones,
then asks the process itself for a memory report (BROKER_PROXY_TRACEMALLOC, SIGUSR2; see
broker_proxy/runtime/memory_trace.py). Once every connection is closed, nothing per connection or
per flow may be left alive (a strong reference in a per-connection table would keep them all),
the C heap must have been trimmed (see broker_proxy/runtime/heap_trim.py), what start-up built
must be out of the collector's way (gc_freeze.py), and the report must hold no secret value.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import API_HOST, LocalPki, Upstreams, start_stack
from tests.e2e_clients import via_requests

pytestmark = pytest.mark.e2e

NEW_TUNNELS = 120
KEPT_ALIVE = 120
# Live per-connection objects allowed once all clients are gone: none is expected, a few may
# still be closing.
AT_MOST = 5
PER_CONNECTION = ("mitmproxy.connection.Client", "mitmproxy.connection.Server",
                  "mitmproxy.http.HTTPFlow", "mitmproxy.proxy.mode_servers.ProxyConnectionHandler")


def _report(pid: int, prefix: Path, number: int) -> dict[str, int]:
    os.kill(pid, signal.SIGUSR2)
    path = prefix.with_name(f"{prefix.name}-{number}.txt")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.endswith("\n"):
            figures = {}
            for line in text.splitlines():
                words = line.split()
                if words[0] == "objects":
                    figures[" ".join(words[1:-1])] = int(words[-1])
                elif len(words) == 2:
                    figures[words[0]] = int(words[1])
            return figures
        time.sleep(0.1)
    raise AssertionError("the proxy wrote no memory report")


def test_nothing_per_connection_outlives_its_connection(
        tmp_path: Path, pki: LocalPki, upstreams: Upstreams,
        monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = tmp_path / "memory"
    monkeypatch.setenv("BROKER_PROXY_TRACEMALLOC", str(prefix))
    monkeypatch.setenv("BROKER_PROXY_HEAP_TRIM_SECONDS", "0.2")
    stack = start_stack(tmp_path / "stack", pki, upstreams)
    try:
        assert stack.proxy.process is not None
        pid = stack.proxy.process.pid
        token = stack.issue("api_key").token
        granted = stack.url(upstreams.api, API_HOST, "/v1/items")
        refused = stack.url(upstreams.api, API_HOST, "/admin/items")
        placeholder = {"Authorization": "Bearer {{secret:api_key}}"}
        statuses: dict[int, int] = {}
        for index in range(NEW_TUNNELS):
            answer = via_requests(stack, token, "GET", refused if index % 10 == 9 else granted,
                                  headers=placeholder if index % 2 else None)
            statuses[answer.status] = statuses.get(answer.status, 0) + 1
        proxy = stack.proxy.proxy_url(token, "bot")
        with requests.Session() as session:  # one tunnel, kept alive
            for index in range(KEPT_ALIVE):
                response = session.get(granted, headers=placeholder if index % 2 else None,
                                       proxies={"https": proxy},
                                       verify=str(stack.proxy.ca_path), timeout=15)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert statuses.get(200, 0) >= NEW_TUNNELS + KEPT_ALIVE - NEW_TUNNELS // 10 - 2
        assert statuses.get(403, 0) >= NEW_TUNNELS // 10 - 2

        # The proxy notices the last hang-ups on its own time: ask again until it has.
        for number in range(1, 21):
            figures = _report(pid, prefix, number)
            left = {kind: figures.get(kind, 0) for kind in PER_CONNECTION}
            if max(left.values()) <= AT_MOST and figures.get("heap_trims", 0) >= 1:
                break
            time.sleep(0.5)
        assert max(left.values()) <= AT_MOST, (
            f"after {NEW_TUNNELS} tunnels and {KEPT_ALIVE} kept-alive requests, all closed, "
            f"still alive: {left}")
        assert figures.get("heap_trims", 0) >= 1, "the proxy never trimmed its C heap"
        assert figures.get("gc_frozen", 0) > 10_000, "start-up objects were not frozen"
        written = "".join(path.read_text(errors="replace")
                          for path in tmp_path.glob("memory-*"))
        for value in stack.secret_values():
            assert value not in written, "a secret value reached a memory report"
    finally:
        stack.proxy.stop()
