"""Approvals from chat through the real proxy: Slack's buttons and a signed webhook.

A local stand-in for Slack's Web API records what the proxy posts; the tests post correctly and
wrongly signed payloads to the proxy's admin listener. Only a correctly signed click of a user
the policy makes an approver decides, once, and the audit names `slack:<user id>`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
import schemathesis

from broker_proxy.approvals.chat_webhook import signature
from broker_proxy.devtools import prefork
from broker_proxy.devtools.local_pki import LocalPki
from broker_proxy.grants.issuer import IssuedGrant, issue_grant
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.policy.loader import load_policy
from broker_proxy.time_source import utc_now
from tests.approval_desk_client import Approver
from tests.conftest import API_HOST, PYTHON, Stack, Upstreams, start_stack
from tests.e2e_clients import Answer, via_httpx

pytestmark = pytest.mark.e2e
OPENAPI = Path(__file__).parent.parent / "broker_proxy" / "admin_openapi.json"

APPROVER, VIEWER, STRANGER = "U024BE7LH", "U0VIEWER1", "U0STRANGE"
# An approver the policy knows as alice@example.com elsewhere (separation of duties), and the
# workspace whose clicks count.
ALICE, TEAM = "U0ALICE01", "T0ACME001"
CHAT_POLICY = """\
version: 1
approval_timeout: 60s
secrets:
  api_key:
    from: vault
    approval: per_request
    destinations:
      - host: {api}
        port: {api_port}
        paths: ["/v1/**"]
agents:
  bot:
    secrets: [api_key]
    max_ttl: 1h
network:
  allow_addresses: [127.0.0.0/8]
chat:
  slack:
    bot_token: slack-bot-token
    signing_secret: slack-signing-secret
    channel: C0APPROVE
    team_id: T0ACME001
    allow_uses: 3
    api_url: SLACK_API
    users:
      U024BE7LH: approver
      U0VIEWER1: viewer
      U0ALICE01:
        role: approver
        person: alice@example.com
  webhooks:
    bridge:
      secret: bridge-hmac
      users:
        alice: approver
        bob: viewer
"""


class SlackStandIn:
    """Slack's Web API on 127.0.0.1: records each call (method, bearer token, JSON body)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        calls = self.calls

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                body = json.loads(raw) if raw.startswith(b"{") else {}
                calls.append((self.path.rsplit("/", 1)[-1],
                              self.headers.get("Authorization", ""), body))
                answer = json.dumps({"ok": True, "channel": body.get("channel"),
                                     "ts": "1700000000.000100"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/"

    def wait_for(self, method: str, count: int = 1) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            found = [(token, body) for name, token, body in self.calls if name == method]
            if len(found) >= count:
                return [dict(body, _token=token) for token, body in found]
            time.sleep(0.05)
        raise AssertionError(f"Slack's {method} was not called")


@pytest.fixture(scope="module")
def slack() -> Iterator[SlackStandIn]:
    stand_in = SlackStandIn()
    yield stand_in
    stand_in.server.shutdown()


@pytest.fixture(scope="module")
def chat_stack(tmp_path_factory: pytest.TempPathFactory, pki: LocalPki, upstreams: Upstreams,
               slack: SlackStandIn) -> Iterator[tuple[Stack, dict[str, str]]]:
    running = start_stack(tmp_path_factory.mktemp("chat"), pki, upstreams,
                          policy=CHAT_POLICY.replace("SLACK_API", slack.url))
    keys = {"slack-bot-token": "xoxb-" + secrets.token_hex(12),
            "slack-signing-secret": secrets.token_hex(16), "bridge-hmac": secrets.token_hex(16)}
    for name, value in keys.items():
        _cli(running, "secret", "set", name, stdin=value)
    yield running, keys
    running.proxy.stop()
    written = (running.root / "proxy.log").read_text(errors="replace")
    written += running.home.audit_log.read_text(errors="replace")
    for value in [running.api_key, *keys.values()]:
        assert value not in written, "a secret value reached the log or the audit log"


@pytest.fixture(autouse=True)
def _clear(upstreams: Upstreams) -> None:
    upstreams.clear()  # the stand-in upstreams are the session's: other modules' requests go


def _cli(stack: Stack, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    done = prefork.run([PYTHON, "-m", "broker_proxy.cli", "--home", str(stack.home.root),
                           *args], input=stdin, capture_output=True, text=True, timeout=120,
                          env=stack.env)
    assert done.returncode == 0, done.stderr
    return done


def _hold(stack: Stack, pool: ThreadPoolExecutor,
          issued_by: str | None = None) -> tuple[Future[Answer], dict[str, Any]]:
    """A request held for approval, on a new grant (issued by `issued_by`, straight into the
    store: no audit record names the issuer, as for a grant another replica issued)."""
    grant = stack.issue("api_key") if issued_by is None else _issue_as(stack, issued_by)
    url = f"https://{API_HOST}:{stack.upstreams.api.port}/v1/refunds"
    answer = pool.submit(via_httpx, stack, grant.token, "POST", url,
                         {"Authorization": "Bearer {{secret:api_key}}"}, b'{"amount": 5}')
    [item] = Approver(stack).wait_for(grant.grant.id)
    return answer, item


def _issue_as(stack: Stack, issued_by: str) -> IssuedGrant:
    store = SqliteGrantStore(stack.home.grants_db)
    try:
        return issue_grant(load_policy(stack.policy_file), store, agent="bot", task="e2e test",
                           secrets=["api_key"], ttl=None, max_uses=None, now=utc_now(),
                           proxy_url_base=stack.proxy.info["listen"], issued_by=issued_by)
    finally:
        store.close()


def _click(stack: Stack, signing_secret: str, user: str, action: str, hold_id: str,
           age_s: int = 0, forged: bool = False, team: str = TEAM) -> requests.Response:
    payload = {"type": "block_actions", "user": {"id": user}, "team": {"id": team},
               "actions": [{"action_id": action, "value": hold_id}],
               "container": {"channel_id": "C0APPROVE", "message_ts": "1700000000.000100"}}
    body = urlencode({"payload": json.dumps(payload)}).encode()
    timestamp = str(int(time.time()) - age_s)
    key = secrets.token_hex(16) if forged else signing_secret
    mac = hmac.new(key.encode(), b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256)
    return requests.post(f"{stack.proxy.admin_url}/v1/chat/slack/interactions", data=body,
                         headers={"X-Slack-Request-Timestamp": timestamp,
                                  "X-Slack-Signature": "v0=" + mac.hexdigest(),
                                  "Content-Type": "application/x-www-form-urlencoded"},
                         timeout=10)


def _as_documented(path: str, *answers: requests.Response) -> None:
    """Each answer is one the admin API's OpenAPI document gives for this chat route."""
    operation = schemathesis.openapi.from_path(OPENAPI)[path]["POST"]
    for answer in answers:
        operation.validate_response(answer)


def _decisions(stack: Stack, hold_id: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in stack.home.audit_log.read_text().splitlines()]
    return [r for r in records if r.get("hold") == hold_id
            and r["event"] not in ("request", "decision_refused")]


def _refusals(stack: Stack, hold_id: str) -> list[tuple[str, str, str]]:
    """The refused chat users' records for this held request: (by, reason, decision)."""
    records = [json.loads(line) for line in stack.home.audit_log.read_text().splitlines()]
    return [(r["by"], r["reason"], r["decision"]) for r in records
            if r["event"] == "decision_refused" and r.get("hold") == hold_id]


def test_only_a_signed_approver_click_decides_once_and_the_message_says_who(
        chat_stack: tuple[Stack, dict[str, str]], slack: SlackStandIn) -> None:
    stack, keys = chat_stack
    signing = keys["slack-signing-secret"]
    with ThreadPoolExecutor(2) as pool:
        answer, item = _hold(stack, pool)
        [posted] = [m for m in slack.wait_for("chat.postMessage")
                    if item["id"] in json.dumps(m)]
        assert posted["_token"] == f"Bearer {keys['slack-bot-token']}"
        assert posted["channel"] == "C0APPROVE"
        # The approver sees what the console shows (the digest recorded with the decision is
        # of that preview): the body, with the placeholder, never the value.
        shown = posted["blocks"][0]["text"]["text"]
        assert '"amount": 5' in shown and stack.api_key not in json.dumps(posted)
        buttons = posted["blocks"][1]["elements"]
        assert [(b["action_id"], b["value"]) for b in buttons] == [
            ("allow_once", item["id"]), ("allow_uses", item["id"]), ("deny", item["id"])]

        refused = [_click(stack, signing, APPROVER, "allow_once", item["id"], forged=True),
                   _click(stack, signing, APPROVER, "allow_once", item["id"], age_s=301),
                   _click(stack, signing, STRANGER, "allow_once", item["id"]),
                   _click(stack, signing, VIEWER, "allow_once", item["id"])]
        assert [(r.status_code, r.json()["error"]) for r in refused] == [
            (401, "signature_invalid"), (401, "signature_invalid"),
            (403, "chat_user_unknown"), (403, "role_required")]
        assert "needs role approver" in refused[3].json()["message"]
        # Each refused user is evidence: who, why, which held request.
        assert _refusals(stack, item["id"]) == [
            (f"slack:{STRANGER}", "chat_user_unknown", "deny"),
            (f"slack:{VIEWER}", "role_required", "deny")]
        # A forged signature is a failed sign-in, audited like a wrong admin token.
        records = [json.loads(line) for line in stack.home.audit_log.read_text().splitlines()]
        assert any(r["event"] == "signin_failed" and r["reason"] == "chat_signature"
                   for r in records)
        assert _decisions(stack, item["id"]) == [] and not answer.done()
        assert stack.upstreams.api.requests == [], "nothing went upstream while held"

        allowed = _click(stack, signing, APPROVER, "allow_once", item["id"])
        assert allowed.status_code == 200, allowed.text
        assert allowed.json()["by"] == f"slack:{APPROVER}"
        assert answer.result(timeout=20).status == 200
    replayed = _click(stack, signing, APPROVER, "deny", item["id"])
    assert (replayed.status_code, replayed.json()["error"]) == (409, "request_already_decided")
    _as_documented("/v1/chat/slack/interactions", *refused, allowed, replayed)
    [decision] = _decisions(stack, item["id"])
    assert (decision["event"], decision["by"], decision["reason"]) == (
        "request_approved", f"slack:{APPROVER}", "once")
    assert len(stack.upstreams.api.requests) == 1
    [update] = slack.wait_for("chat.update")
    assert update["ts"] == "1700000000.000100" and update["channel"] == "C0APPROVE"
    assert f"Allowed once by slack:{APPROVER}" in json.dumps(update["blocks"])
    _cli(stack, "audit", "verify")
    ocsf = [json.loads(line) for line in
            _cli(stack, "audit", "export", "--format", "ocsf").stdout.splitlines()]
    assert {"name": f"slack:{APPROVER}", "uid": f"slack:{APPROVER}"} in [
        event.get("actor", {}).get("user") for event in ocsf]


def test_a_click_from_another_workspace_is_refused_and_audited(
        chat_stack: tuple[Stack, dict[str, str]]) -> None:
    stack, keys = chat_stack
    signing = keys["slack-signing-secret"]
    with ThreadPoolExecutor(2) as pool:
        answer, item = _hold(stack, pool)
        # Correctly signed (the app's one secret serves every workspace it is installed in),
        # by the approver's user id, but from another workspace: not the mapped person.
        refused = [_click(stack, signing, APPROVER, "allow_once", item["id"], team="T0OTHER01"),
                   _click(stack, signing, APPROVER, "allow_once", item["id"], team="")]
        assert [(r.status_code, r.json()["error"]) for r in refused] == [
            (403, "chat_team_unknown"), (403, "chat_team_unknown")]
        assert _refusals(stack, item["id"]) == [
            (f"slack:{APPROVER}", "chat_team_unknown", "deny")] * 2
        assert _decisions(stack, item["id"]) == [] and not answer.done()
        allowed = _click(stack, signing, APPROVER, "allow_once", item["id"])
        assert allowed.status_code == 200, allowed.text
        assert answer.result(timeout=20).status == 200
    _as_documented("/v1/chat/slack/interactions", *refused, allowed)


def test_nobody_approves_from_chat_a_request_on_a_grant_they_issued_elsewhere(
        chat_stack: tuple[Stack, dict[str, str]]) -> None:
    """The issuer is read from the grant: this home's audit log never saw it issued."""
    stack, keys = chat_stack
    signing = keys["slack-signing-secret"]
    with ThreadPoolExecutor(2) as pool:
        answer, item = _hold(stack, pool, issued_by="oidc:alice@example.com")
        records = [json.loads(line) for line in stack.home.audit_log.read_text().splitlines()]
        assert not any(r["event"] == "grant_issued" and r["grant"] == item["grant"]
                       for r in records)
        # Slack user U0ALICE01 is alice@example.com (the policy says so): her own grant.
        refused = _click(stack, signing, ALICE, "allow_once", item["id"])
        assert (refused.status_code, refused.json()["error"]) == (403, "separation_of_duties")
        assert refused.json()["message"] == (
            f"separation of duties: slack:{ALICE} issued grant {item['grant']} and may not "
            "approve it; another approver must")
        assert _refusals(stack, item["id"]) == [
            (f"slack:{ALICE}", "separation_of_duties", "deny")]
        records = [json.loads(line) for line in stack.home.audit_log.read_text().splitlines()]
        assert [r["grant"] for r in records if r["event"] == "decision_refused"
                and r.get("hold") == item["id"]] == [item["grant"]]
        assert _decisions(stack, item["id"]) == [] and not answer.done()
        assert stack.upstreams.api.requests == []
        allowed = _click(stack, signing, APPROVER, "allow_once", item["id"])
        assert allowed.status_code == 200, allowed.text
        assert answer.result(timeout=20).status == 200
        # A webhook's user is the name the bridge sends: alice who issued from the CLI.
        answer, item = _hold(stack, pool, issued_by="alice")
        allow = {"request": item["id"], "decision": "allow", "user": "alice"}
        own = _webhook(stack, keys["bridge-hmac"], allow)
        assert (own.status_code, own.json()["error"]) == (403, "separation_of_duties")
        # Denying their own request stays open: it gives nothing away.
        denied = _webhook(stack, keys["bridge-hmac"], allow | {"decision": "deny"})
        assert denied.status_code == 200, denied.text
        assert answer.result(timeout=20).status == 403
    _as_documented("/v1/chat/slack/interactions", refused, allowed)
    _as_documented("/v1/chat/webhooks/{name}", own, denied)
    _cli(stack, "audit", "verify")


def test_allow_n_uses_from_slack(chat_stack: tuple[Stack, dict[str, str]],
                                 slack: SlackStandIn) -> None:
    stack, keys = chat_stack
    with ThreadPoolExecutor(2) as pool:
        answer, item = _hold(stack, pool)
        allowed = _click(stack, keys["slack-signing-secret"], APPROVER, "allow_uses",
                         item["id"])
        assert allowed.status_code == 200, allowed.text
        assert answer.result(timeout=20).status == 200
    [decision] = _decisions(stack, item["id"])
    assert (decision["reason"], decision["uses"]) == ("uses", 3)


def _webhook(stack: Stack, key: str, body: dict[str, Any], age_s: int = 0,
             name: str = "bridge") -> requests.Response:
    raw = json.dumps(body).encode()
    timestamp = str(int(time.time()) - age_s)
    return requests.post(f"{stack.proxy.admin_url}/v1/chat/webhooks/{name}", data=raw,
                         headers={"X-Broker-Timestamp": timestamp,
                                  "X-Broker-Signature": signature(key, timestamp, raw),
                                  "Content-Type": "application/json"}, timeout=10)


def test_the_signed_webhook_decides_once_as_the_mapped_user(
        chat_stack: tuple[Stack, dict[str, str]]) -> None:
    stack, keys = chat_stack
    key = keys["bridge-hmac"]
    with ThreadPoolExecutor(2) as pool:
        answer, item = _hold(stack, pool)
        deny = {"request": item["id"], "decision": "deny"}
        refused = [_webhook(stack, secrets.token_hex(16), deny),
                   _webhook(stack, key, deny, age_s=301),
                   _webhook(stack, key, deny | {"user": "mallory"}),
                   _webhook(stack, key, deny | {"user": "bob"})]
        assert [(r.status_code, r.json()["error"]) for r in refused] == [
            (401, "signature_invalid"), (401, "signature_invalid"),
            (403, "chat_user_unknown"), (403, "role_required")]
        assert _refusals(stack, item["id"]) == [
            ("webhook:bridge:mallory", "chat_user_unknown", "deny"),
            ("webhook:bridge:bob", "role_required", "deny")]
        assert _decisions(stack, item["id"]) == [] and not answer.done()
        denied = _webhook(stack, key, deny | {"user": "alice"})
        assert denied.status_code == 200, denied.text
        assert answer.result(timeout=20).status == 403
    again = _webhook(stack, key, deny | {"user": "alice"})
    assert (again.status_code, again.json()["error"]) == (409, "request_already_decided")
    _as_documented("/v1/chat/webhooks/{name}", *refused, denied, again)
    [decision] = _decisions(stack, item["id"])
    assert (decision["event"], decision["by"]) == ("request_denied", "webhook:bridge:alice")
    _cli(stack, "audit", "verify")


def test_chat_paths_of_a_policy_without_chat_stay_behind_the_admin_token(
        tmp_path: Path, pki: LocalPki, upstreams: Upstreams) -> None:
    plain = CHAT_POLICY.split("chat:\n")[0]
    stack = start_stack(tmp_path, pki, upstreams, policy=plain)
    try:
        answer = requests.post(f"{stack.proxy.admin_url}/v1/chat/slack/interactions",
                               data=b"payload=%7B%7D", timeout=10)
        assert (answer.status_code, answer.json()["error"]) == (401, "unauthorized")
    finally:
        stack.proxy.stop()


def test_the_docs_worked_signature_example_is_what_the_proxy_computes() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "chat-approvals.md").read_text()
    [block] = [b for b in page.split("```sh\n")[1:] if "timestamp=1733600000" in b]
    script = block.split("```")[0]
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30,
                          check=True)
    written = script.rsplit("# ", 1)[1].strip()
    body = b'{"request":"h_0123456789abcdef","decision":"allow","user":"alice"}'
    assert done.stdout.strip() == written == signature(
        "0123456789abcdef0123456789abcdef", "1733600000", body)
