"""Failed admin API and console sign-ins against the real proxy: each source is slowed, other
sources are not, and the audit log holds every failure counted in a few records."""

from __future__ import annotations

import http.client
import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker_proxy.audit import AuditLog
from broker_proxy.devtools import prefork
from broker_proxy.devtools.local_pki import LocalPki
from tests.conftest import PYTHON, Stack, Upstreams, start_stack

pytestmark = pytest.mark.e2e


@pytest.fixture
def fresh(tmp_path: Path, pki: LocalPki, upstreams: Upstreams) -> Stack:
    upstreams.clear()
    stack = start_stack(tmp_path / "stack", pki, upstreams)
    yield stack
    stack.proxy.stop()


def call(stack: Stack, method: str, path: str, *, token: str | None = None,
         body: dict | None = None, source: str = "127.0.0.1") -> tuple[int, dict]:
    host, port = stack.proxy.info["admin"].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60,
                                            source_address=(source, 0))
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        connection.request(method, path, body=json.dumps(body) if body else None,
                           headers=headers)
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


def signin_failures(stack: Stack) -> dict[str, float]:
    with urllib.request.urlopen(stack.proxy.metrics_url, timeout=10) as response:
        text = response.read().decode()
    return {sample.labels["surface"]: sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == "broker_admin_signin_failures_total"}


def test_wrong_admin_tokens_are_slowed_per_source_and_audited_in_aggregate(
        fresh: Stack) -> None:
    stack = fresh
    wrong = "bp_admin_" + "x" * 43
    started = time.monotonic()
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _n: call(stack, "GET", "/v1/grants", token=wrong),
                                range(12)))
    flood = time.monotonic() - started
    assert {status for status, _body in answers} == {401}
    assert {body["error"] for _status, body in answers} == {"unauthorized"}
    # 5 free, then 0.1 + 0.2 + 0.4 + 0.8 + 1 + 1 + 1 s, one guess at a time for this source.
    assert flood >= 3.5, flood

    # Another source address is not slowed by the first one's failures.
    started = time.monotonic()
    assert call(stack, "GET", "/v1/grants", token=wrong, source="127.0.0.2")[0] == 401
    assert time.monotonic() - started < 1.0
    # Console sign-ins with a wrong token are failed sign-ins too.
    for _attempt in range(3):
        status, body = call(stack, "POST", "/ui/session", body={"token": wrong})
        assert (status, body["error"]) == (401, "unauthorized")
    # The right token still works from the slowed source (after the checks queued before it).
    token = stack.home.admin_token.read_text().strip()
    assert call(stack, "GET", "/v1/grants", token=token)[0] == 200
    # No credentials at all is a plain 401: not a guess, not slowed, not recorded.
    assert call(stack, "GET", "/v1/grants")[0] == 401
    assert signin_failures(stack) == {"admin_api_token": 13.0, "console_signin": 3.0}
    stack.proxy.stop()

    records = [r for r in AuditLog.read_records(stack.home.audit_log)
               if r["event"] == "signin_failed"]
    counted: dict[tuple[str, str], int] = {}
    for record in records:
        key = (record["source"], record["reason"])
        counted[key] = counted.get(key, 0) + record["failed_signins"]
        assert record["decision"] == "deny" and wrong not in json.dumps(record)
    assert counted == {("127.0.0.1", "admin_api_token"): 12,
                       ("127.0.0.2", "admin_api_token"): 1,
                       ("127.0.0.1", "console_signin"): 3}
    assert len(records) <= 6  # a flood is a few records, not one per attempt
    assert stack.upstreams.api.requests == []
    done = prefork.run([PYTHON, "-m", "broker_proxy.cli", "--home", str(stack.home.root),
                           "audit", "verify"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
