"""A restart never adopts a cut or replaced audit log: the real proxy refuses to start with one
line naming `audit recover`, recover writes an `audit_gap` record naming what was lost, and
`audit verify` then passes, reporting the gap. A crash mid-write stays a torn tail."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from broker_proxy.audit import AuditLog
from broker_proxy.audit.files import chain_files
from broker_proxy.devtools import prefork
from broker_proxy.devtools.local_pki import LocalPki
from broker_proxy.devtools.proxy_process import ProxyProcess, ProxyStartError
from tests.conftest import API_HOST, HOSTS, PYTHON, Stack, Upstreams, start_stack
from tests.e2e_clients import CLIENTS

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": "Bearer {{secret:api_key}}"}


@pytest.fixture
def fresh(tmp_path: Path, pki: LocalPki, upstreams: Upstreams) -> Stack:
    upstreams.clear()
    stack = start_stack(tmp_path / "stack", pki, upstreams)
    yield stack
    stack.proxy.stop()


def records_of(stack: Stack) -> list[dict]:
    return [r for f in chain_files(stack.home.audit_log) for r in AuditLog.read_records(f)]


def cli(stack: Stack, *argv: str) -> subprocess.CompletedProcess[str]:
    return prefork.run([PYTHON, "-m", "broker_proxy.cli", "--home", str(stack.home.root),
                           *argv], capture_output=True, text=True, env=stack.env, timeout=60)


def restart(stack: Stack, pki: LocalPki) -> None:
    stack.proxy = ProxyProcess(stack.home.root, stack.policy_file, upstream_ca=pki.ca_cert_path,
                               resolve={host: "127.0.0.1" for host in HOSTS}, env=stack.env,
                               log_path=stack.root / "proxy.log").start()


def send(stack: Stack, token: str, name: str) -> tuple[int, dict]:
    answer = CLIENTS["requests"](stack, token, "GET",
                                 stack.url(stack.upstreams.api, API_HOST, f"/v1/{name}"),
                                 headers=AUTH)
    return answer.status, answer.json()


def secrets_sent(stack: Stack) -> list[str]:
    return [r.path for r in stack.upstreams.api.requests if r.contains(stack.api_key)]


def refused_start(stack: Stack) -> str:
    """Start the real proxy and return the one line it exits with."""
    done = prefork.run(
        [PYTHON, "-m", "broker_proxy.cli", "--home", str(stack.home.root), "run", "--policy",
         str(stack.policy_file), "--listen", "127.0.0.1:0", "--metrics", "off",
         "--admin", "off"], capture_output=True, text=True, env=stack.env, timeout=60)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # one clear line, no traceback
    return lines[0]


def cut_last_lines(log: Path, count: int) -> None:
    """In place (same inode), as `truncate` or an editor writing in place would."""
    lines = log.read_bytes().splitlines(keepends=True)
    os.truncate(log, sum(len(line) for line in lines[:-count]))


def test_a_log_cut_while_running_is_refused_after_sigterm_until_recover_records_the_gap(
        fresh: Stack, pki: LocalPki) -> None:
    stack = fresh
    grant = stack.issue("api_key")
    for index in range(8):
        assert send(stack, grant.token, f"use{index}")[0] == 200
    assert len(secrets_sent(stack)) == 8
    written = records_of(stack)
    cut_last_lines(stack.home.audit_log, 6)  # the last three uses (request + response each)
    status, body = send(stack, grant.token, "after-cut")
    assert (status, body["error"]) == (503, "audit_unavailable")
    assert len(secrets_sent(stack)) == 8  # nothing left unaudited
    stack.proxy.stop()  # SIGTERM: a clean stop must not launder the cut

    line = refused_start(stack)
    assert "broker-proxy audit recover" in line and "shrank" in line
    verify = cli(stack, "audit", "verify")
    assert verify.returncode != 0
    assert "records were removed from the end" in verify.stderr or "cut" in verify.stderr

    recover = cli(stack, "audit", "recover")
    assert recover.returncode == 0, recover.stderr
    assert "were lost" in recover.stdout
    gap = records_of(stack)[-1]
    assert gap["event"] == "audit_gap" and gap["reason"] == "cut"
    kept = len(written) - 6
    assert gap["found_records"] == kept
    assert gap["gap_from_seq"] == kept
    # What the writer had written: the head names every record up to the last it wrote.
    assert gap["expected_records"] >= len(written)
    assert gap["seq"] == gap["expected_records"]  # the lost seqs are never reused
    verify = cli(stack, "audit", "verify")
    assert verify.returncode == 0, verify.stderr
    assert "recorded gap" in verify.stdout and verify.stdout.splitlines()[-1] == "audit log ok"
    report = cli(stack, "audit", "report", "--format", "text")
    assert report.returncode == 0, report.stderr
    headline = report.stdout.splitlines()[0]
    assert "INTEGRITY OK" in headline and f"seq {kept}.." in headline and "lost" in headline

    restart(stack, pki)
    assert send(stack, grant.token, "after-recover")[0] == 200
    stack.proxy.stop()
    records = records_of(stack)
    injected = [r for r in records if r["event"] == "request" and r["reason"] == "injected"]
    # 9 secrets went upstream; the log holds 6 uses and one gap that names the 3 lost.
    assert len(secrets_sent(stack)) == 9 and len(injected) == 6
    assert [r["event"] for r in records].count("audit_gap") == 1
    assert cli(stack, "audit", "verify").returncode == 0


def test_a_mid_line_cut_of_a_completed_record_is_a_gap_not_a_torn_tail(
        fresh: Stack, pki: LocalPki) -> None:
    stack = fresh
    grant = stack.issue("api_key")
    for index in range(3):
        assert send(stack, grant.token, f"use{index}")[0] == 200
    assert stack.proxy.process is not None
    stack.proxy.process.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop like SIGTERM
    stack.proxy.process.wait(timeout=30)
    written = records_of(stack)
    assert written[-1]["event"] == "proxy_stopped"
    # The checkpoint written at stop signs the whole chain, proxy_stopped included.
    last = json.loads((stack.home.root / "audit.checkpoints").read_bytes().splitlines()[-1])
    assert last["count"] == written[-1]["seq"] + 1
    log = stack.home.audit_log
    os.truncate(log, log.stat().st_size - 40)  # into the middle of proxy_stopped

    line = refused_start(stack)
    assert "broker-proxy audit recover" in line
    recover = cli(stack, "audit", "recover")
    assert recover.returncode == 0, recover.stderr
    gap = records_of(stack)[-1]
    assert gap["event"] == "audit_gap" and gap["reason"] == "cut"
    assert gap["torn_bytes"] > 0 and len(gap["torn_sha256"]) == 64
    assert "audit_torn_tail" not in [r["event"] for r in records_of(stack)]
    verify = cli(stack, "audit", "verify")
    assert verify.returncode == 0, verify.stderr
    restart(stack, pki)
    assert send(stack, grant.token, "again")[0] == 200


def test_a_log_replaced_by_a_copy_of_its_first_lines_is_refused_and_recovered(
        fresh: Stack, pki: LocalPki) -> None:
    stack = fresh
    grant = stack.issue("api_key")
    for index in range(3):
        assert send(stack, grant.token, f"use{index}")[0] == 200
    stack.proxy.stop()
    log = stack.home.audit_log
    spare = log.with_name("spare.log")
    spare.write_bytes(b"".join(line + b"\n" for line in log.read_bytes().splitlines()[:4]))
    os.replace(spare, log)

    assert "replaced" in refused_start(stack)
    assert cli(stack, "audit", "recover").returncode == 0
    gap = records_of(stack)[-1]
    assert (gap["event"], gap["found_records"]) == ("audit_gap", 4)
    assert cli(stack, "audit", "verify").returncode == 0
    restart(stack, pki)
    assert send(stack, grant.token, "again")[0] == 200


def test_a_crash_mid_write_restarts_with_a_torn_tail_and_recover_has_nothing_to_do(
        fresh: Stack, pki: LocalPki) -> None:
    stack = fresh
    grant = stack.issue("api_key")
    assert send(stack, grant.token, "before")[0] == 200
    assert stack.proxy.process is not None
    os.kill(stack.proxy.process.pid, signal.SIGKILL)
    stack.proxy.process.wait()
    with open(stack.home.audit_log, "ab") as log:  # a record never completed
        log.write(b'{"agent":null,"decision":"allow","event":"requ')
    recover = cli(stack, "audit", "recover")
    assert recover.returncode == 0 and "nothing to recover" in recover.stdout
    restart(stack, pki)
    assert send(stack, grant.token, "after")[0] == 200
    stack.proxy.stop()
    events = [r["event"] for r in records_of(stack)]
    assert "audit_torn_tail" in events and "audit_gap" not in events
    assert cli(stack, "audit", "verify").returncode == 0


@pytest.mark.audit_tampered  # its log is cut on purpose and left so
def test_a_proxy_that_cannot_start_on_a_cut_log_says_so_and_sends_nothing(
        fresh: Stack, pki: LocalPki) -> None:
    stack = fresh
    grant = stack.issue("api_key")
    assert send(stack, grant.token, "one")[0] == 200
    stack.proxy.stop()
    cut_last_lines(stack.home.audit_log, 1)
    stack.upstreams.clear()
    with pytest.raises(ProxyStartError, match="audit recover"):
        restart(stack, pki)
    assert secrets_sent(stack) == []


def test_a_cut_with_the_head_state_deleted_is_still_caught_by_the_last_signed_checkpoint(
        fresh: Stack, pki: LocalPki) -> None:
    stack = fresh
    grant = stack.issue("api_key")
    for index in range(3):
        assert send(stack, grant.token, f"use{index}")[0] == 200
    stack.proxy.stop()  # the checkpoint at stop signs the whole chain, proxy_stopped included
    (stack.home.root / "audit.log.head").unlink()
    cut_last_lines(stack.home.audit_log, 2)

    line = refused_start(stack)
    assert "no head state" in line and "broker-proxy audit recover" in line
    recover = cli(stack, "audit", "recover")
    assert recover.returncode == 0, recover.stderr
    gap = records_of(stack)[-1]
    assert gap["event"] == "audit_gap" and gap["reason"] == "cut"
    assert gap["expected_records"] - gap["found_records"] == 2
    verify = cli(stack, "audit", "verify")
    assert verify.returncode == 0, verify.stderr
    restart(stack, pki)
    assert send(stack, grant.token, "again")[0] == 200


def test_workers_share_one_head_a_clean_restart_starts_and_a_cut_is_refused(
        fresh: Stack, pki: LocalPki) -> None:
    stack = fresh
    stack.proxy.stop()

    def workers() -> ProxyProcess:
        return ProxyProcess(stack.home.root, stack.policy_file, upstream_ca=pki.ca_cert_path,
                            resolve={host: "127.0.0.1" for host in HOSTS}, env=stack.env,
                            extra_args=["--workers", "2"],
                            log_path=stack.root / "workers.log").start()

    grant = stack.issue("api_key")
    for round_ in range(2):  # each process writes records and moves the shared head on
        stack.proxy = workers()
        for index in range(12):  # curl: a new connection each, so both workers answer
            answer = CLIENTS["curl"](stack, grant.token, "GET", stack.url(
                stack.upstreams.api, API_HOST, f"/v1/w{round_}-{index}"), headers=AUTH)
            assert answer.status == 200
        stack.proxy.stop()
    assert len(secrets_sent(stack)) == 24
    assert cli(stack, "audit", "verify").returncode == 0
    cut_last_lines(stack.home.audit_log, 4)
    assert "broker-proxy audit recover" in refused_start(stack)
    assert cli(stack, "audit", "recover").returncode == 0
    assert cli(stack, "audit", "verify").returncode == 0
