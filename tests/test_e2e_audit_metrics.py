"""The audit log and metrics of a real proxy process: exact counts, fail-closed when the log
cannot be written, a complete chain after SIGKILLs, and no secret value in anything it wrote."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import threading
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from broker_proxy.audit import AuditLog, verify_chain
from broker_proxy.audit.files import chain_files
from broker_proxy.devtools import prefork
from broker_proxy.devtools.local_pki import LocalPki
from broker_proxy.devtools.proxy_process import ProxyProcess
from tests.conftest import (
    API_HOST,
    EGRESS_HOST,
    EVIL_HOST,
    HOSTS,
    OTHER_HOST,
    PYTHON,
    Stack,
    Upstreams,
    start_stack,
)
from tests.e2e_clients import CLIENTS

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": "Bearer {{secret:api_key}}"}


def scrape(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(stack.proxy.metrics_url, timeout=10) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if not sample.name.endswith("_created")}


def records_of(stack: Stack) -> list[dict]:
    return [r for f in chain_files(stack.home.audit_log) for r in AuditLog.read_records(f)]


def restart(stack: Stack, pki: LocalPki) -> None:
    stack.proxy = ProxyProcess(stack.home.root, stack.policy_file, upstream_ca=pki.ca_cert_path,
                               resolve={host: "127.0.0.1" for host in HOSTS}, env=stack.env,
                               log_path=stack.root / "proxy.log").start()


@pytest.fixture
def fresh(tmp_path: Path, pki: LocalPki, upstreams: Upstreams) -> Stack:
    upstreams.clear()
    stack = start_stack(tmp_path / "stack", pki, upstreams)
    yield stack
    stack.proxy.stop()


def test_metrics_scrape_after_known_traffic_has_exact_counts(fresh: Stack) -> None:
    stack = fresh
    client = CLIENTS["requests"]
    grant = stack.issue("api_key", "other_key")
    for index in range(3):
        answer = client(stack, grant.token, "GET",
                        stack.url(stack.upstreams.api, API_HOST, f"/v1/m{index}"), headers=AUTH)
        assert answer.status == 200
    answer = client(stack, grant.token, "GET", stack.url(stack.upstreams.other, OTHER_HOST, "/x"),
                    headers={"X-Key": "other-PLACEHOLDER-0000"})
    assert answer.status == 200
    for _ in range(2):
        answer = client(stack, grant.token, "GET",
                        stack.url(stack.upstreams.evil, EVIL_HOST, "/v1/x"), headers=AUTH)
        assert answer.status == 403
    answer = client(stack, grant.token, "GET",
                    stack.url(stack.upstreams.egress, EGRESS_HOST, "/simple/"), headers={})
    assert answer.status == 200
    revoked = stack.issue("api_key")
    stack.revoke(revoked.grant.id)
    stack.issue("api_key", agent="careful-bot")  # waits for approval
    stack.issue("api_key", ttl=timedelta(seconds=1))
    time.sleep(1.6)  # the short grant expires; the scrape's sweep records it

    metrics = scrape(stack)
    records = records_of(stack)
    expected = {
        ("broker_requests_total", (("decision", "allow"), ("reason", "injected"))): 4,
        ("broker_requests_total", (("decision", "deny"), ("reason", "destination_not_allowed"))): 2,
        ("broker_requests_total", (("decision", "allow"), ("reason", "allowed"))): 1,
        ("broker_injections_total", (("secret", "api_key"),)): 3,
        ("broker_injections_total", (("secret", "other_key"),)): 1,
        # The echo server sends the request back, so each injected secret is scrubbed once.
        ("broker_redactions_total", (("secret", "api_key"),)): 3,
        ("broker_redactions_total", (("secret", "other_key"),)): 1,
        ("broker_decision_seconds_count", ()): 7,
        ("broker_grants_issued_total", ()): 4,
        ("broker_grants_revoked_total", ()): 1,
        ("broker_grants_expired_total", ()): 1,
        ("broker_grants_active", ()): 1,
        ("broker_grants_pending", ()): 1,
        ("broker_grants_expiring_in_use", ()): 0,
        ("broker_policy_reloads_total", (("result", "ok"),)): 1,
        ("broker_audit_write_errors_total", ()): 0,
        # Every record in the log was written by this proxy (the test issues grants directly).
        ("broker_audit_records_total", ()): len(records),
    }
    assert {key: metrics.get(key) for key in expected} == expected
    events = [r["event"] for r in records]
    assert events.count("grant_expired") == 1
    assert events.count("response") == 4  # one per injected request
    assert events.count("request") == 7
    injected = [r for r in records if r["event"] == "request" and r["reason"] == "injected"]
    assert all(len(r["fingerprints"]) == len(r["secrets"]) for r in injected)
    # Bounded labels only: no grant id, token or path in any series.
    text = urllib.request.urlopen(stack.proxy.metrics_url, timeout=10).read().decode()
    assert grant.grant.id not in text and grant.token not in text and "/v1/m" not in text


@pytest.mark.audit_tampered
def test_requests_fail_closed_when_the_log_is_replaced_by_a_directory(fresh: Stack) -> None:
    stack = fresh
    client = CLIENTS["curl"]
    grant = stack.issue("api_key")
    url = stack.url(stack.upstreams.api, API_HOST, "/v1/before")
    assert client(stack, grant.token, "GET", url, headers=AUTH).status == 200
    stack.upstreams.clear()
    log = stack.home.audit_log
    log.unlink()
    log.mkdir()  # root ignores permission bits, but not this
    try:
        answer = client(stack, grant.token, "GET",
                        stack.url(stack.upstreams.api, API_HOST, "/v1/after"), headers=AUTH)
        assert answer.status == 503
        assert answer.json()["error"] == "audit_unavailable"
        no_secret = client(stack, grant.token, "GET",
                           stack.url(stack.upstreams.egress, EGRESS_HOST, "/simple/"))
        assert no_secret.status == 503 and no_secret.json()["error"] == "audit_unavailable"
        assert stack.upstreams.api.requests == [] and stack.upstreams.egress.requests == []
        assert scrape(stack)[("broker_audit_write_errors_total", ())] >= 2
    finally:
        stack.proxy.stop()
        log.rmdir()


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True)
    return done.returncode == 0


# Its log lives on a tmpfs unmounted at the end (it verifies its chain itself before that).
@pytest.mark.audit_tampered
def test_requests_fail_closed_on_a_full_disk_and_recover_when_space_returns(
        tmp_path: Path, pki: LocalPki, upstreams: Upstreams) -> None:
    disk = tmp_path / "disk"
    if os.geteuid() != 0 or not _mount_tmpfs(disk, "256k"):
        pytest.skip("needs root and tmpfs mounts for a real full file system")
    home_log = tmp_path / "stack" / "home" / "audit.log"
    home_log.parent.mkdir(parents=True, mode=0o700)
    (disk / "audit.log").touch(mode=0o600)
    home_log.touch(mode=0o600)
    mounted = subprocess.run(["mount", "--bind", str(disk / "audit.log"), str(home_log)],
                             capture_output=True).returncode == 0
    try:
        if not mounted:
            pytest.skip("cannot bind-mount a file")
        upstreams.clear()
        stack = start_stack(tmp_path / "stack", pki, upstreams)
        try:
            client = CLIENTS["requests"]
            grant = stack.issue("api_key")
            url = stack.url(upstreams.api, API_HOST, "/v1/ok")
            assert client(stack, grant.token, "GET", url, headers=AUTH).status == 200
            filler = disk / "filler"
            with open(filler, "wb") as handle, contextlib.suppress(OSError):
                while True:
                    handle.write(b"\0" * 4096)
                    handle.flush()
            # The log's last page may still have room for a few records; then the disk is full.
            answers = []
            for index in range(60):
                upstreams.clear()
                url = stack.url(upstreams.api, API_HOST, f"/v1/full{index}")
                answers.append(client(stack, grant.token, "GET", url, headers=AUTH))
                if answers[-1].status != 200:
                    break
            assert (answers[-1].status, answers[-1].json()["error"]) == (503, "audit_unavailable")
            assert upstreams.api.requests == []
            status, body = _readyz(stack)
            assert status == 503 and body["checks"]["audit_log"]["ok"] is False
            filler.unlink()
            assert _readyz(stack)[0] == 200
            url = stack.url(upstreams.api, API_HOST, "/v1/again")
            assert client(stack, grant.token, "GET", url, headers=AUTH).status == 200
        finally:
            stack.proxy.stop()
        result = verify_chain(home_log, stack.home.audit_key)
        assert result.ok, result.message
    finally:
        if mounted:
            subprocess.run(["umount", str(home_log)], check=False)
        subprocess.run(["umount", str(disk)], check=False)


def test_sigkill_during_traffic_leaves_a_verifying_chain_with_every_secret_use_recorded(
        fresh: Stack, pki: LocalPki) -> None:
    stack = fresh
    grant = stack.issue("api_key")
    counter = iter(range(1_000_000))
    lock = threading.Lock()

    def traffic(stop: threading.Event) -> None:
        while not stop.is_set():
            with lock:
                path = f"/v1/crash/{next(counter)}"
            proxy = stack.proxy.proxy_url(grant.token, "bot")
            with contextlib.suppress(requests.RequestException):
                requests.get(stack.url(stack.upstreams.api, API_HOST, path), headers=AUTH,
                             proxies={"https": proxy}, verify=str(stack.proxy.ca_path),
                             timeout=5)

    for _round in range(4):
        stop = threading.Event()
        workers = [threading.Thread(target=traffic, args=(stop,)) for _ in range(3)]
        before = len(stack.upstreams.api.requests)
        for worker in workers:
            worker.start()
        time.sleep(1.0)
        # At least a second of traffic, and on a loaded machine until some of it got through.
        deadline = time.monotonic() + 60
        while len(stack.upstreams.api.requests) < before + 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stack.proxy.process is not None
        os.kill(stack.proxy.process.pid, signal.SIGKILL)
        stack.proxy.process.wait()
        stop.set()
        for worker in workers:
            worker.join()
        restart(stack, pki)
    stack.proxy.stop()

    result = verify_chain(stack.home.audit_log, stack.home.audit_key)
    assert result.ok, result.message
    recorded = {r["path"] for r in records_of(stack)
                if r["event"] == "request" and r["reason"] == "injected"}
    sent = [r.path for r in stack.upstreams.api.requests if r.contains(stack.api_key)]
    assert len(sent) >= 20, "too little traffic reached the upstream to prove anything"
    assert [path for path in sent if path not in recorded] == []
    started = [r for r in records_of(stack) if r["event"] == "proxy_started"]
    assert len(started) == 5


def test_no_secret_value_in_any_file_the_broker_wrote_or_anything_it_printed(
        fresh: Stack) -> None:
    stack = fresh
    client = CLIENTS["httpx"]
    grant = stack.issue("api_key", "other_key")
    for path in ("/v1/a", f"/v1/q?key={{{{secret:api_key}}}}&n={secrets.token_hex(4)}"):
        client(stack, grant.token, "GET", stack.url(stack.upstreams.api, API_HOST, path),
               headers=AUTH)
    client(stack, grant.token, "GET", stack.url(stack.upstreams.other, OTHER_HOST, "/x"),
           headers={"X-Key": "other-PLACEHOLDER-0000"})
    client(stack, grant.token, "GET", stack.url(stack.upstreams.evil, EVIL_HOST, "/v1/x"),
           headers=AUTH)
    printed = []
    for argv in (["audit", "tail", "-n", "100"], ["audit", "tail", "--json", "-n", "100"],
                 ["audit", "verify"], ["audit", "checkpoint"], ["grant", "list", "--json"],
                 ["secret", "list"]):
        done = prefork.run([PYTHON, "-m", "broker_proxy.cli", "--home", str(stack.home.root),
                               *argv], capture_output=True, env=stack.env, timeout=60)
        printed += [done.stdout, done.stderr]
    stack.proxy.stop()
    written = [(path, path.read_bytes()) for path in sorted(stack.root.rglob("*"))
               if path.is_file()]
    assert any(path.name == "audit.log" for path, _ in written)
    for value in stack.secret_values():
        for form in {value, value.encode().hex(), json.dumps(value)[1:-1]}:
            needle = form.encode()
            assert [str(path) for path, data in written if needle in data] == []
            assert not any(needle in output for output in printed)


def _readyz(stack: Stack) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(stack.proxy.admin_url + "/readyz", timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _truncate(log: Path) -> None:
    os.truncate(log, 0)


def _swap_for_its_first_lines(log: Path) -> None:
    spare = log.with_name("spare.log")
    spare.write_bytes(b"".join(line + b"\n" for line in log.read_bytes().splitlines()[:3]))
    os.replace(spare, log)


def _swap_for_junk(log: Path) -> None:
    spare = log.with_name("spare.log")
    spare.write_bytes(b"not an audit record\n")
    os.replace(spare, log)


@pytest.mark.audit_tampered
@pytest.mark.parametrize("tamper", [_truncate, _swap_for_its_first_lines, _swap_for_junk])
def test_a_log_cut_or_swapped_under_the_running_proxy_gets_503_until_restart(
        fresh: Stack, tamper) -> None:
    stack = fresh
    client = CLIENTS["requests"]
    grant = stack.issue("api_key")
    for index in range(4):
        url = stack.url(stack.upstreams.api, API_HOST, f"/v1/before{index}")
        assert client(stack, grant.token, "GET", url, headers=AUTH).status == 200
    assert _readyz(stack)[0] == 200
    tamper(stack.home.audit_log)
    stack.upstreams.clear()
    for index in range(2):
        answer = client(stack, grant.token, "GET",
                        stack.url(stack.upstreams.api, API_HOST, f"/v1/after{index}"),
                        headers=AUTH)
        assert (answer.status, answer.json()["error"]) == (503, "audit_unavailable")
    assert stack.upstreams.api.requests == []
    status, body = _readyz(stack)
    assert status == 503 and body["checks"]["audit_log"]["ok"] is False
    metrics = scrape(stack)
    assert metrics[("broker_audit_log_unusable", ())] == 1
    assert metrics[("broker_audit_write_errors_total", ())] >= 2
    stack.proxy.stop()
    assert "refusing to write" in (stack.root / "proxy.log").read_text()
    assert b"/v1/after" not in stack.home.audit_log.read_bytes()


@pytest.mark.audit_tampered
def test_signed_checkpoints_are_written_by_default_and_catch_a_cut_of_the_log(
        fresh: Stack) -> None:
    stack = fresh
    grant = stack.issue("api_key")
    for index in range(3):
        url = stack.url(stack.upstreams.api, API_HOST, f"/v1/cp{index}")
        assert CLIENTS["requests"](stack, grant.token, "GET", url, headers=AUTH).status == 200
    stack.proxy.stop()
    checkpoints = stack.home.root / "audit.checkpoints"
    assert checkpoints.exists()  # the final one at stop, with no flag asking for it
    cli = [PYTHON, "-m", "broker_proxy.cli", "--home", str(stack.home.root), "audit", "verify"]
    done = prefork.run(cli, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "audit log ok"
    log = stack.home.audit_log
    log.write_bytes(b"".join(line + b"\n" for line in log.read_bytes().splitlines()[:-2]))
    done = prefork.run(cli, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "records were removed from the end" in done.stderr


def test_a_wrong_master_key_is_said_in_the_proxy_log(fresh: Stack, pki: LocalPki) -> None:
    from tests.conftest import random_master_key

    stack = fresh
    stack.proxy.stop()
    stack.env = dict(stack.env, BROKER_PROXY_MASTER_KEY=random_master_key())
    restart(stack, pki)
    grant = stack.issue("api_key")
    answer = CLIENTS["requests"](stack, grant.token, "GET",
                                 stack.url(stack.upstreams.api, API_HOST, "/v1/k"), headers=AUTH)
    assert (answer.status, answer.json()["error"]) == (503, "secret_unavailable")
    stack.proxy.stop()
    logged = (stack.root / "proxy.log").read_text()
    assert "cannot decrypt vault" in logged and "api_key" in logged


def test_head_on_metrics_answers_like_get_without_a_body(fresh: Stack) -> None:
    answer = requests.head(fresh.proxy.metrics_url, timeout=10)
    assert answer.status_code == 200 and answer.content == b""
    assert answer.headers["Content-Type"].startswith("text/plain")
    assert "broker_requests_total" in requests.get(fresh.proxy.metrics_url, timeout=10).text
