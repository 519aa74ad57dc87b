"""The admin API answers what its published OpenAPI document says, for generated requests too."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

from tests.conftest import Stack

pytestmark = pytest.mark.e2e

OPENAPI = Path(__file__).parent.parent / "broker_proxy" / "admin_openapi.json"
schema = schemathesis.openapi.from_path(OPENAPI)


def bearer(stack: Stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.home.admin_token.read_text().strip()}",
            "X-Broker-Actor": "schema-tests"}


@schema.parametrize()
# Derandomized: the same generated requests every run. Random runs sometimes flag a "negative"
# request whose only invalid parts never reach the server (an extra query parameter the HTTP
# client drops, the Authorization header this test always sets), which is noise, not a finding.
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_admin_api_conforms_to_its_openapi_document(case: schemathesis.Case,
                                                    stack: Stack) -> None:
    # A schema-valid issue request is still refused (422) when the policy does not allow the
    # grant, which is most random ones; acceptance is checked with real names below.
    excluded = [schemathesis.checks.positive_data_acceptance]
    if case.path.startswith("/v1/chat/"):
        # This stack's policy has no chat section, so the chat routes are not served here (an
        # unknown route: 404 for any method or header); tests/test_e2e_chat_approvals.py checks
        # their answers against this document with chat on.
        excluded += [schemathesis.checks.missing_required_header,
                     schemathesis.checks.unsupported_method]
    case.call_and_validate(base_url=stack.proxy.admin_url, headers=bearer(stack),
                           excluded_checks=excluded)


def test_issued_grant_and_changes_match_the_document(stack: Stack) -> None:
    base = stack.proxy.admin_url
    issued = requests.post(f"{base}/v1/grants", headers=bearer(stack), timeout=10, json={
        "agent": "careful-bot", "task": "schema", "secrets": ["api_key"], "max_uses": 2})
    assert issued.status_code == 201
    schema["/v1/grants"]["POST"].validate_response(issued)
    grant_id = issued.json()["id"]
    for action in ("approve", "revoke"):
        changed = requests.post(f"{base}/v1/grants/{grant_id}/{action}", headers=bearer(stack),
                                timeout=10)
        assert changed.status_code == 200
        schema[f"/v1/grants/{{id}}/{action}"]["POST"].validate_response(changed)
    listed = requests.get(f"{base}/v1/grants", headers=bearer(stack), timeout=10)
    schema["/v1/grants"]["GET"].validate_response(listed)
