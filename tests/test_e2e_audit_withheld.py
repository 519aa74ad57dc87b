"""An answer withheld because it could not be scrubbed is recorded as such and reported."""

from __future__ import annotations

import json

import pytest

from broker_proxy.audit.log import AuditLog
from tests.conftest import Stack
from tests.test_cli import run_cli
from tests.test_e2e_scrubbing import PLACEHOLDER, client, reflect_url
from tests.test_e2e_scrubbing import scrub_stack as scrub_stack  # the fixture, reused

pytestmark = pytest.mark.e2e


def test_withheld_answer_is_audited_and_counted_in_the_report(scrub_stack: Stack) -> None:
    grant = scrub_stack.issue("api_key")
    with client(scrub_stack, grant.token) as agent:
        withheld = agent.get(reflect_url(scrub_stack, "/v1/range"),
                             headers={"X-Reflect": PLACEHOLDER, "Range": "bytes=0-"})
        scrubbed = agent.get(reflect_url(scrub_stack, "/v1/reflect"),
                             params={"form": "raw"}, headers={"X-Reflect": PLACEHOLDER})
    assert withheld.status_code == 502 and scrubbed.status_code == 200
    responses = [r for r in AuditLog.read_records(scrub_stack.home.audit_log)
                 if r["event"] == "response" and r["grant"] == grant.grant.id]
    assert [(r["status"], r.get("withheld")) for r in responses] == [(502, True), (200, None)]
    done = run_cli(scrub_stack.home.root, "audit", "report", "--format", "json", "--grant",
                   grant.grant.id, env=scrub_stack.env)
    assert done.returncode == 0, done.stderr
    [reported] = json.loads(done.stdout)["grants"]
    assert reported["withheld"] == 1
    assert reported["scrubbed"]["responses"] == 1
