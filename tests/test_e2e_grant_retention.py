"""`run --grant-retention`: the running proxy deletes ended grants after the retention, writes
the `grants_purged` record naming them, and `grant show` then says where their history is."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from broker_proxy.audit import AuditLog
from broker_proxy.devtools.local_pki import LocalPki
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from tests.conftest import Upstreams, start_stack
from tests.test_cli import assert_one_line_failure, run_cli

pytestmark = pytest.mark.e2e


def test_a_revoked_grant_is_purged_after_the_retention_and_its_history_kept(
        tmp_path: Path, pki: LocalPki, upstreams: Upstreams) -> None:
    stack = start_stack(tmp_path, pki, upstreams, extra_args=("--grant-retention", "1s"))
    try:
        ended = stack.issue("api_key")
        live = stack.issue("api_key")
        stack.revoke(ended.grant.id)
        deadline = time.monotonic() + 20  # the watcher purges on its 5 s tick
        while time.monotonic() < deadline:
            with SqliteGrantStore(stack.home.grants_db) as store:
                if store.get(ended.grant.id) is None:
                    break
            time.sleep(0.2)
        shown = run_cli(stack.home.root, "grant", "show", ended.grant.id, env=stack.env)
        assert_one_line_failure(shown, f"grant {ended.grant.id} not found", "audit log")
        still = run_cli(stack.home.root, "grant", "show", live.grant.id, "--json",
                        env=stack.env)
        assert still.returncode == 0 and json.loads(still.stdout)["state"] == "active"
        tail = run_cli(stack.home.root, "audit", "tail", "--grant", ended.grant.id, "--json",
                       env=stack.env)
        events = [json.loads(line)["event"] for line in tail.stdout.splitlines()]
        assert events == ["grants_purged"]  # stack.issue/revoke write the store directly
    finally:
        stack.proxy.stop()
    purged = [r for r in AuditLog.read_records(stack.home.audit_log)
              if r["event"] == "grants_purged"]
    assert [r["grants"] for r in purged] == [[ended.grant.id]]
    assert purged[0]["count"] == 1 and purged[0]["reason"] == "retention"


@pytest.mark.parametrize("value", ["0s", "soon", "0"])
def test_a_bad_retention_stops_run_with_one_line(tmp_path: Path, value: str) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    done = run_cli(home, "run", "--grant-retention", value, "--listen", "127.0.0.1:0")
    assert_one_line_failure(done, "--grant-retention")
