"""/readyz tells the truth about what requests would meet, through the real proxy: a checkpoint
copy that cannot be written (degraded, logged, counted), a grant store on a full disk and a
vault that cannot be decrypted (not ready, and the requests are refused, nothing sent)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker_proxy.audit import AuditLog
from broker_proxy.audit.files import chain_files
from broker_proxy.devtools import prefork
from broker_proxy.devtools.local_pki import LocalPki
from broker_proxy.grants.issuer import issue_grant
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.policy.loader import load_policy
from broker_proxy.time_source import utc_now
from tests.conftest import API_HOST, PYTHON, Stack, Upstreams, start_stack
from tests.e2e_clients import CLIENTS

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": "Bearer {{secret:api_key}}"}


def readyz(stack: Stack) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(stack.proxy.admin_url + "/readyz", timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def scrape(stack: Stack) -> dict[str, float]:
    with urllib.request.urlopen(stack.proxy.metrics_url, timeout=10) as response:
        text = response.read().decode()
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if not sample.labels}


def wait_for[T](condition: Callable[[], T], timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def records_of(stack: Stack) -> list[dict]:
    return [r for f in chain_files(stack.home.audit_log) for r in AuditLog.read_records(f)]


def verify(stack: Stack, *extra: str) -> subprocess.CompletedProcess[str]:
    return prefork.run([PYTHON, "-m", "broker_proxy.cli", "--home", str(stack.home.root),
                           "audit", "verify", *extra], capture_output=True, text=True,
                          env=stack.env, timeout=60)


def send(stack: Stack, token: str, path: str) -> tuple[int, dict]:
    answer = CLIENTS["requests"](stack, token, "GET",
                                 stack.url(stack.upstreams.api, API_HOST, path), headers=AUTH)
    return answer.status, answer.json()


@contextlib.contextmanager
def stack_with(tmp_path: Path, pki: LocalPki, upstreams: Upstreams,
               *extra_args: str) -> Iterator[Stack]:
    upstreams.clear()
    stack = start_stack(tmp_path / "stack", pki, upstreams, extra_args=extra_args)
    try:
        yield stack
    finally:
        stack.proxy.stop()


def test_an_unwritable_checkpoint_copy_warns_at_start_counts_and_degrades_readyz(
        tmp_path: Path, pki: LocalPki, upstreams: Upstreams) -> None:
    not_a_dir = tmp_path / "not-a-dir"
    not_a_dir.write_text("a file, so nothing can be created under it, even by root\n")
    copy = not_a_dir / "audit.checkpoints"
    with stack_with(tmp_path, pki, upstreams, "--audit-checkpoint-copy", str(copy),
                    "--audit-checkpoint-every", "1s") as stack:
        log = (stack.root / "proxy.log").read_text()
        assert f"audit checkpoint copy will fail: cannot write checkpoint file {copy}" in log
        status, body = readyz(stack)
        assert (status, body["status"]) == (200, "degraded")
        assert body["checks"]["audit_checkpoints"]["ok"] is False
        assert "Not a directory" in body["checks"]["audit_checkpoints"]["problem"]
        grant = stack.issue("api_key")
        assert send(stack, grant.token, "/v1/degraded")[0] == 200  # the agent is served
        assert [r.path for r in upstreams.api.requests if r.contains(stack.api_key)] == \
            ["/v1/degraded"]
        assert wait_for(lambda: scrape(stack).get(
            "broker_audit_checkpoint_copy_failures_total", 0) >= 1)
        assert scrape(stack)["broker_audit_checkpoint_copy_failing"] == 1
        assert "audit checkpoint copy failed" in (stack.root / "proxy.log").read_text()
    assert any(r["event"] == "request" and r["path"] == "/v1/degraded" for r in records_of(stack))
    done = verify(stack)
    assert done.returncode == 0, done.stderr


def _chattr(flag: str, path: Path) -> bool:
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


def test_a_checkpoint_copy_that_fails_later_is_logged_counted_degraded_and_then_recovers(
        tmp_path: Path, pki: LocalPki, upstreams: Upstreams) -> None:
    copies = tmp_path / "elsewhere"
    copies.mkdir()
    copy = copies / "audit.checkpoints"
    with stack_with(tmp_path, pki, upstreams, "--audit-checkpoint-copy", str(copy),
                    "--audit-checkpoint-every", "1s") as stack:
        grant = stack.issue("api_key")
        assert send(stack, grant.token, "/v1/first")[0] == 200
        assert wait_for(lambda: copy.exists() and copy.stat().st_size > 0)
        assert readyz(stack)[1]["status"] == "ready"
        if not _chattr("+i", copy):
            pytest.skip("chattr +i is not supported here")
        try:
            assert send(stack, grant.token, "/v1/while-immutable")[0] == 200
            assert wait_for(lambda: scrape(stack).get(
                "broker_audit_checkpoint_copy_failures_total", 0) >= 1)
            status, body = readyz(stack)
            assert (status, body["status"]) == (200, "degraded")
            assert str(copy) in body["checks"]["audit_checkpoints"]["problem"]
            assert "audit checkpoint copy failed" in (stack.root / "proxy.log").read_text()
        finally:
            _chattr("-i", copy)
        # The next turn writes the newest checkpoint to the copy again, log grown or not.
        assert wait_for(lambda: readyz(stack)[1]["status"] == "ready")
        assert scrape(stack)["broker_audit_checkpoint_copy_failing"] == 0
        assert "is written again" in (stack.root / "proxy.log").read_text()
    assert [r.path for r in upstreams.api.requests if r.contains(stack.api_key)] == \
        ["/v1/first", "/v1/while-immutable"]
    # The copy is behind by what it missed, but every checkpoint in it still matches.
    done = verify(stack, "--checkpoints", str(copy))
    assert done.returncode == 0, done.stderr


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def test_readyz_is_not_ready_while_the_grant_store_disk_is_full(
        tmp_path: Path, pki: LocalPki, upstreams: Upstreams) -> None:
    disk = tmp_path / "disk"
    if os.geteuid() != 0 or not _mount_tmpfs(disk, "1m"):
        pytest.skip("needs root and tmpfs mounts for a real full file system")
    try:
        db = disk / "grants.sqlite3"
        with stack_with(tmp_path, pki, upstreams, "--store", f"sqlite:///{db}") as stack:
            store = SqliteGrantStore(db)
            try:
                grant = issue_grant(load_policy(stack.policy_file), store, agent="bot",
                                    task="full disk", secrets=["api_key"], ttl=None,
                                    max_uses=None, now=utc_now(),
                                    proxy_url_base=stack.proxy.info["listen"])
            finally:
                store.close()
            assert send(stack, grant.token, "/v1/before")[0] == 200
            assert readyz(stack)[0] == 200
            filler = disk / "filler"
            with open(filler, "wb") as handle, contextlib.suppress(OSError):
                while True:
                    handle.write(b"\0" * 4096)
                    handle.flush()
            upstreams.clear()
            # The WAL may still have room for a few writes; then every use is refused.
            answers = [send(stack, grant.token, f"/v1/full{index}") for index in range(40)]
            refused = [answer for answer in answers if answer[0] != 200]
            assert refused and refused[-1][0] == 503
            assert refused[-1][1]["error"] == "grant_store_unavailable"
            status, body = wait_for(lambda: (r := readyz(stack))[0] == 503 and r)
            assert status == 503 and body["status"] == "not_ready"
            assert body["checks"]["grant_store"]["ok"] is False
            assert "full" in body["checks"]["grant_store"]["problem"]
            sent = [r.path for r in upstreams.api.requests if r.contains(stack.api_key)]
            assert len(sent) == len(answers) - len(refused)  # the refused ones sent nothing
            filler.unlink()
            assert wait_for(lambda: readyz(stack)[0] == 200)
            assert send(stack, grant.token, "/v1/again")[0] == 200
        records = records_of(stack)
        denied = [r for r in records if r["event"] == "request" and r["decision"] == "deny"]
        assert denied and denied[-1]["reason"] == "grant_store_unavailable"
        done = verify(stack)
        assert done.returncode == 0, done.stderr
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_readyz_is_not_ready_while_the_vault_cannot_be_decrypted(
        tmp_path: Path, pki: LocalPki, upstreams: Upstreams) -> None:
    from broker_proxy.secrets.vault import Vault
    from tests.conftest import random_master_key

    with stack_with(tmp_path, pki, upstreams) as stack:
        grant = stack.issue("api_key")
        assert send(stack, grant.token, "/v1/before")[0] == 200
        status, body = readyz(stack)
        assert status == 200 and body["checks"]["vault"] == {"ok": True}
        good = stack.home.vault.read_bytes()
        # The vault rewritten under another master key: the proxy's key no longer opens it.
        other = base64.urlsafe_b64decode(random_master_key())
        elsewhere = tmp_path / "other-vault.bin"
        Vault(elsewhere, other).set("api_key", "not-the-real-value")
        stack.home.vault.write_bytes(elsewhere.read_bytes())
        upstreams.clear()
        status, body = wait_for(lambda: (r := readyz(stack))[0] == 503 and r)
        assert status == 503 and body["checks"]["vault"]["ok"] is False
        assert body["checks"]["vault"]["problem"]
        assert stack.api_key not in json.dumps(body)
        answer = send(stack, grant.token, "/v1/locked")
        assert answer[0] == 503 and answer[1]["error"] == "secret_unavailable"
        assert upstreams.api.requests == []
        stack.home.vault.write_bytes(good)
        assert wait_for(lambda: readyz(stack)[0] == 200)
        assert send(stack, grant.token, "/v1/after")[0] == 200
    records = records_of(stack)
    locked = [r for r in records if r["event"] == "request" and r["path"] == "/v1/locked"]
    assert locked and locked[0]["reason"] == "secret_unavailable"
    done = verify(stack)
    assert done.returncode == 0, done.stderr
