"""Live policy reload of a real proxy: on file change and on SIGHUP, all or nothing."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator

import pytest
import requests

from broker_proxy.audit.log import AuditLog
from broker_proxy.devtools.local_pki import LocalPki
from broker_proxy.grants.model import GrantStatus
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from tests.conftest import (
    API_HOST,
    E2E_POLICY,
    EGRESS_HOST,
    EVIL_HOST,
    OTHER_HOST,
    UNTRUSTED_HOST,
    Stack,
    Upstreams,
    start_stack,
)
from tests.e2e_clients import CLIENTS

pytestmark = pytest.mark.e2e

API_AUTH = {"Authorization": "Bearer {{secret:api_key}}"}
OTHER_AUTH = {"Authorization": "Bearer other-PLACEHOLDER-0000"}


@pytest.fixture(scope="module")
def reload_stack(tmp_path_factory: pytest.TempPathFactory, pki: LocalPki,
                 upstreams: Upstreams) -> Iterator[Stack]:
    """Its own proxy: these tests rewrite the policy under it."""
    running = start_stack(tmp_path_factory.mktemp("reload"), pki, upstreams)
    yield running
    running.proxy.stop()
    written = (running.root / "proxy.log").read_text() + running.home.audit_log.read_text()
    for value in running.secret_values():
        assert value not in written


@pytest.fixture(autouse=True)
def _original_policy(reload_stack: Stack, upstreams: Upstreams) -> Iterator[None]:
    upstreams.clear()
    yield
    original = policy_text(reload_stack)
    if reload_stack.policy_file.read_text() != original:
        oks = reload_count(reload_stack, "ok")
        write_policy(reload_stack, original)
        wait_for_reloads(reload_stack, "ok", at_least=1, since=oks)


def policy_text(stack: Stack, *, api_key_to_evil: bool = False, drop_other: bool = False) -> str:
    ups = stack.upstreams
    text = E2E_POLICY.format(
        api=API_HOST, api_port=ups.api.port, plain_port=ups.plain.port, other=OTHER_HOST,
        other_port=ups.other.port, egress=EGRESS_HOST, untrusted=UNTRUSTED_HOST,
        untrusted_port=ups.untrusted.port)
    if api_key_to_evil:
        text = text.replace("    inject: [header, query]\n",
                            f"      - host: {EVIL_HOST}\n        port: {ups.evil.port}\n"
                            "    inject: [header, query]\n", 1)
    if drop_other:
        text = re.sub(r"  other_key:\n(    .*\n)+", "", text)
        text = text.replace("secrets: [api_key, other_key]", "secrets: [api_key]")
    return text


def write_policy(stack: Stack, text: str) -> None:
    # Write then rename, the way editors and config management replace a file.
    staging = stack.policy_file.with_suffix(".tmp")
    staging.write_text(text)
    staging.replace(stack.policy_file)


def reload_count(stack: Stack, result: str) -> float:
    metrics = requests.get(stack.proxy.metrics_url, timeout=5).text
    found = re.search(rf'^broker_policy_reloads_total{{result="{result}"}} (\S+)$', metrics,
                      re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def wait_for_reloads(stack: Stack, result: str, *, at_least: int, since: float) -> None:
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        if reload_count(stack, result) >= since + at_least:
            return
        time.sleep(0.1)
    pytest.fail(f"no {result} policy reload within 8s: {stack.proxy.log_tail()}")


def test_changed_file_with_a_new_destination_is_in_force_without_restart(
        reload_stack: Stack) -> None:
    grant = reload_stack.issue("api_key")
    curl = CLIENTS["curl"]
    url = reload_stack.url(reload_stack.upstreams.evil, EVIL_HOST, "/v1/new")
    before = curl(reload_stack, grant.token, "GET", url, headers=API_AUTH)
    assert before.status == 403
    oks = reload_count(reload_stack, "ok")
    write_policy(reload_stack, policy_text(reload_stack, api_key_to_evil=True))
    wait_for_reloads(reload_stack, "ok", at_least=1, since=oks)
    after = curl(reload_stack, grant.token, "GET", url, headers=API_AUTH)
    assert after.status == 200
    [received] = reload_stack.upstreams.evil.requests
    assert received.header("Authorization") == f"Bearer {reload_stack.api_key}"


def test_bad_policy_is_rejected_counted_and_the_last_good_one_stays(reload_stack: Stack) -> None:
    grant = reload_stack.issue("api_key")
    rejected = reload_count(reload_stack, "rejected")
    write_policy(reload_stack, policy_text(reload_stack).replace("max_ttl: 1h", "max_ttl: often",
                                                                 1))
    wait_for_reloads(reload_stack, "rejected", at_least=1, since=rejected)
    answer = CLIENTS["curl"](reload_stack, grant.token, "GET",
                             reload_stack.url(reload_stack.upstreams.api, API_HOST, "/v1/ok"),
                             headers=API_AUTH)
    assert answer.status == 200
    log = (reload_stack.root / "proxy.log").read_text()
    [line] = [x for x in log.splitlines() if "policy reload rejected" in x]
    assert "max_ttl" in line
    events = [r["event"] for r in AuditLog.read_records(reload_stack.home.audit_log)]
    assert "policy_reload_rejected" in events
    # Still bad, unchanged: not rejected again every second.
    time.sleep(1.5)
    assert reload_count(reload_stack, "rejected") == rejected + 1


def _gauge(stack: Stack, name: str) -> str:
    metrics = requests.get(stack.proxy.metrics_url, timeout=5).text
    found = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", metrics, re.MULTILINE)
    assert found is not None, f"{name} is not exported"
    return found.group(0)


def test_a_rejected_policy_file_stays_visible_in_a_gauge_and_readyz_until_fixed(
        reload_stack: Stack) -> None:
    assert _gauge(reload_stack, "broker_policy_file_rejected").endswith(" 0.0")
    assert "version=" in _gauge(reload_stack, "broker_build_info")
    rejected = reload_count(reload_stack, "rejected")
    write_policy(reload_stack, policy_text(reload_stack).replace("max_ttl: 1h", "max_ttl: often",
                                                                 1))
    wait_for_reloads(reload_stack, "rejected", at_least=1, since=rejected)
    assert _gauge(reload_stack, "broker_policy_file_rejected").endswith(" 1.0")
    ready = requests.get(reload_stack.proxy.admin_url + "/readyz", timeout=5)
    assert ready.status_code == 200  # the last good policy serves
    policy = ready.json()["checks"]["policy"]
    assert policy["ok"] is True and policy["file_rejected"] is True
    assert "max_ttl" in policy["problem"]
    oks = reload_count(reload_stack, "ok")
    write_policy(reload_stack, policy_text(reload_stack))
    wait_for_reloads(reload_stack, "ok", at_least=1, since=oks)
    assert _gauge(reload_stack, "broker_policy_file_rejected").endswith(" 0.0")
    assert "file_rejected" not in requests.get(reload_stack.proxy.admin_url + "/readyz",
                                               timeout=5).json()["checks"]["policy"]


def test_removed_secret_blocks_the_next_request_and_never_comes_back(reload_stack: Stack) -> None:
    grant = reload_stack.issue("api_key", "other_key")
    curl = CLIENTS["curl"]
    url = reload_stack.url(reload_stack.upstreams.other, OTHER_HOST, "/x")
    assert curl(reload_stack, grant.token, "GET", url, headers=OTHER_AUTH).status == 200
    oks = reload_count(reload_stack, "ok")
    write_policy(reload_stack, policy_text(reload_stack, drop_other=True))
    wait_for_reloads(reload_stack, "ok", at_least=1, since=oks)
    blocked = curl(reload_stack, grant.token, "GET", url, headers=OTHER_AUTH)
    assert blocked.status == 403
    assert blocked.json()["error"] in ("grant_outside_policy", "grant_revoked")
    with SqliteGrantStore(reload_stack.home.grants_db) as store:
        assert store.get(grant.grant.id).status is GrantStatus.REVOKED
    # Putting the secret back does not revive the grant.
    oks = reload_count(reload_stack, "ok")
    write_policy(reload_stack, policy_text(reload_stack))
    wait_for_reloads(reload_stack, "ok", at_least=1, since=oks)
    again = curl(reload_stack, grant.token, "GET", url, headers=OTHER_AUTH)
    assert (again.status, again.json()["error"]) == (403, "grant_revoked")
    assert len(reload_stack.upstreams.other.requests) == 1


def test_sighup_reloads_and_never_unrevokes(reload_stack: Stack) -> None:
    revoked = reload_stack.issue("api_key")
    reload_stack.revoke(revoked.grant.id)
    oks = reload_count(reload_stack, "ok")
    reload_stack.proxy.process.send_signal(signal.SIGHUP)
    wait_for_reloads(reload_stack, "ok", at_least=1, since=oks)
    answer = CLIENTS["curl"](reload_stack, revoked.token, "GET",
                             reload_stack.url(reload_stack.upstreams.api, API_HOST, "/v1/x"),
                             headers=API_AUTH)
    assert (answer.status, answer.json()["error"]) == (403, "grant_revoked")
    assert reload_stack.proxy.process.poll() is None, "SIGHUP must not stop the proxy"
    reloaded = [r for r in AuditLog.read_records(reload_stack.home.audit_log)
                if r["event"] == "policy_reloaded"]
    assert reloaded[-1]["reason"] == "sighup"
